"""Plugin manager: built-in plugins and entry points, collected into one registry of named factories.

Built-ins register exactly as a third party does: `DEFAULT_PLUGINS` lists the modules holding their
hook implementations. Third-party plugins are modules named in the `treerpo` entry-point group.

Rules (ARCHITECTURE.md, "Plugin contract"):
- a name registered twice for the same kind is an error naming both plugins;
- `TREERPO_DISABLE_PLUGIN_AUTOLOAD=1` skips entry points;
- a plugin that fails to import, has a misnamed hook or argument, or raises in its hook is reported once on
  stderr (distribution, version, error) and skipped; everything else keeps working.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import inspect
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import pluggy

from . import __version__, hookspecs

hookimpl = pluggy.HookimplMarker(hookspecs.PROJECT_NAME)

ENTRY_POINT_GROUP = "treerpo"
AUTOLOAD_ENV = "TREERPO_DISABLE_PLUGIN_AUTOLOAD"

# Modules of the built-in plugins, registered through the same hooks as any third-party plugin.
DEFAULT_PLUGINS: list[str] = [
    "treerpo_core.model_aliases",
    "treerpo_tasks.delimiters",
    "treerpo_verifiers.unit_tests",
    "treerpo_verifiers.boxed",
    "treerpo_tasks.arithmetic",
    "treerpo_tasks.gsm8k",
    "treerpo_tasks.numina",
    "treerpo_tasks.code",
]

# hook name -> plugin kind as shown by `treerpo plugins`
KINDS = {
    "treerpo_register_verifiers": "verifier",
    "treerpo_register_tasks": "task",
    "treerpo_register_delimiters": "delimiter",
    "treerpo_register_models": "model",
}


class PluginError(Exception):
    """A configuration-level plugin problem: unknown name, duplicate name, bad option."""


@dataclass(frozen=True)
class Registration:
    kind: str  # verifier | task | delimiter | model
    name: str
    factory: Callable[..., Any]
    plugin: str  # module (or registered name) of the plugin that registered it
    distribution: str
    version: str

    def describe(self) -> str:
        return f"{self.plugin} ({self.distribution} {self.version})"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "name": self.name, "distribution": self.distribution, "version": self.version}


@dataclass
class _PluginInfo:
    distribution: str
    version: str


class Registry:
    """Everything the plugins registered, by kind and name."""

    def __init__(self) -> None:
        self.entries: dict[str, dict[str, Registration]] = {k: {} for k in KINDS.values()}
        self.problems: list[str] = []  # one line per plugin that was skipped

    def add(self, reg: Registration) -> None:
        table = self.entries[reg.kind]
        if reg.name in table:
            other = table[reg.name]
            raise PluginError(
                f"{reg.kind} {reg.name!r} is registered twice: by {other.describe()} and by {reg.describe()}; "
                f"uninstall one of them or set {AUTOLOAD_ENV}=1 to skip entry-point plugins"
            )
        table[reg.name] = reg

    def all(self) -> list[Registration]:
        return [r for kind in self.entries.values() for r in kind.values()]

    def get(self, kind: str, name: str) -> Registration:
        table = self.entries[kind]
        if name not in table:
            known = sorted(table)
            close = difflib.get_close_matches(name, known, n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise PluginError(
                f"unknown {kind} {name!r}.{hint} Registered {kind}s: {', '.join(known) or '(none)'}. "
                f"`treerpo plugins` lists everything installed."
            )
        return table[name]

    def create(self, kind: str, name: str, options: dict | None = None, **core_kwargs) -> Any:
        """Call the factory registered as `name` with the user's options (plus keyword arguments the core
        passes, e.g. a model's dtype). An option the factory does not accept is an error naming it."""
        reg = self.get(kind, name)
        options = dict(options or {})
        check_options(reg, options)
        return reg.factory(**core_kwargs, **options)


def check_options(reg: Registration, options: dict) -> None:
    try:
        sig = inspect.signature(reg.factory)
    except (TypeError, ValueError):  # builtins without a signature: let the call itself complain
        return
    params = sig.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    accepted = [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    for key in options:
        if key not in accepted:
            raise PluginError(
                f"{reg.kind} {reg.name!r} ({reg.describe()}) does not accept option {key!r}; "
                f"it accepts: {', '.join(accepted) or '(no options)'}"
            )


# -- building the registry ------------------------------------------------------------------------

_registry: Registry | None = None
_extra_plugins: list[tuple[object, str]] = []  # in-process plugins (tests, notebooks)


def get_registry() -> Registry:
    """The registry for this process, built on first use."""
    global _registry
    if _registry is None:
        _registry = build_registry()
    return _registry


def reset_registry() -> None:
    global _registry
    _registry = None


@contextmanager
def plugin_registered(plugin: object, name: str | None = None) -> Iterator[Registry]:
    """Register an in-process plugin object for the duration of a block (used by tests)."""
    entry = (plugin, name or getattr(plugin, "__name__", None) or type(plugin).__name__)
    _extra_plugins.append(entry)
    reset_registry()
    try:
        yield get_registry()
    finally:
        _extra_plugins.remove(entry)
        reset_registry()


def _report(problem: str) -> None:
    print(f"treerpo: warning: {problem}", file=sys.stderr)


def build_registry(*, autoload: bool | None = None) -> Registry:
    if autoload is None:
        autoload = os.environ.get(AUTOLOAD_ENV, "").strip().lower() not in ("1", "true", "yes")
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    registry = Registry()
    info: dict[str, _PluginInfo] = {}

    def add_plugin(obj: object, name: str, dist: str, version: str) -> None:
        bad = [a for a in dir(obj) if a.startswith("treerpo_") and a not in KINDS and callable(getattr(obj, a))]
        if bad:
            raise PluginError(f"unknown hook {bad[0]!r}; hooks are: {', '.join(KINDS)}")
        pm.register(obj, name=name)  # pluggy rejects arguments that the spec does not have
        info[name] = _PluginInfo(dist, version)

    for module_name in DEFAULT_PLUGINS:
        # A missing built-in is a broken install, not a third-party problem: fail loudly.
        add_plugin(importlib.import_module(module_name), module_name, "treerpo", __version__)
    for obj, name in _extra_plugins:
        add_plugin(obj, name, "(in-process)", "")
    if autoload:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist else "?"
            version = ep.dist.version if ep.dist else "?"
            try:
                add_plugin(ep.load(), f"{ep.name}={ep.value}", dist, version)
            except Exception as exc:  # report and skip: one broken plugin must not stop the tool
                msg = f"plugin {ep.name!r} from {dist} {version} failed to load and was skipped: {type(exc).__name__}: {exc}"
                registry.problems.append(msg)
                _report(msg)

    for hook_name, kind in KINDS.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls()[::-1]:  # registration order
            plugin_info = info[impl.plugin_name]
            pending: list[Registration] = []

            def register(name: str, factory: Callable[..., Any], _pending=pending, _impl=impl, _info=plugin_info):
                if not isinstance(name, str) or not name:
                    raise PluginError(f"register() needs a non-empty string name, got {name!r}")
                if not callable(factory):
                    raise PluginError(f"register({name!r}, ...) needs a callable factory, got {factory!r}")
                _pending.append(Registration(kind, name, factory, _impl.plugin_name, _info.distribution, _info.version))

            try:
                impl.function(register=register)
            except Exception as exc:
                if plugin_info.distribution == "treerpo":
                    raise
                msg = (f"plugin {impl.plugin_name!r} from {plugin_info.distribution} {plugin_info.version} raised in "
                       f"{hook_name} and was skipped: {type(exc).__name__}: {exc}")
                registry.problems.append(msg)
                _report(msg)
                continue
            for reg in pending:
                registry.add(reg)
    return registry


# -- convenience ----------------------------------------------------------------------------------

def create_verifier(name: str, options: dict | None = None) -> Any:
    return get_registry().create("verifier", name, options)


def create_task(name: str, options: dict | None = None) -> Any:
    return get_registry().create("task", name, options)


def create_delimiter(name: str, options: dict | None = None) -> Any:
    return get_registry().create("delimiter", name, options)
