"""Plugin system: entry points from real (on-disk) distributions, duplicates, broken plugins, autoload switch,
option checking. In-process plugins are registered in a `with` block and gone afterwards."""

import importlib
import sys
import textwrap

import pytest

from treerpo_core import plugins
from treerpo_core.plugins import PluginError, build_registry, get_registry, hookimpl, plugin_registered


def make_distribution(root, dist, version, modules: dict[str, str], entry_points: dict[str, str]):
    """Write a real distribution (dist-info + modules) under `root`, as pip would install it."""
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    eps = "\n".join(f"{k} = {v}" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[treerpo]\n{eps}\n")
    for name, src in modules.items():
        (root / f"{name}.py").write_text(textwrap.dedent(src))


GOOD = """
    from treerpo_core.plugins import hookimpl
    from treerpo_core.types import VerifyResult

    class Always:
        def __init__(self, verdict="PASS"):
            self.verdict = verdict
        def verify(self, completion, reference, **metadata):
            return VerifyResult(self.verdict, "always")

    @hookimpl
    def treerpo_register_verifiers(register):
        register("always", Always)
"""


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A fresh directory on sys.path that holds distributions; entry-point autoload switched on."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(plugins.AUTOLOAD_ENV, "0")
    yield tmp_path
    importlib.invalidate_caches()
    for name in [m for m in sys.modules if m.startswith("tp_")]:
        del sys.modules[name]


def test_entry_point_plugin_is_registered_with_its_distribution(site):
    make_distribution(site, "tp-good", "1.2.3", {"tp_good": GOOD}, {"good": "tp_good"})
    reg = build_registry().get("verifier", "always")
    assert (reg.distribution, reg.version) == ("tp-good", "1.2.3")
    assert reg.factory().verify("x", "y").reason == "always"


def test_autoload_switch_hides_entry_points(site, monkeypatch):
    make_distribution(site, "tp-good", "1.2.3", {"tp_good": GOOD}, {"good": "tp_good"})
    monkeypatch.setenv(plugins.AUTOLOAD_ENV, "1")
    assert "always" not in build_registry().entries["verifier"]


def test_plugin_that_fails_to_import_is_reported_and_skipped(site, capsys):
    make_distribution(site, "tp-good", "1.0", {"tp_good": GOOD}, {"good": "tp_good"})
    make_distribution(site, "tp-broken", "0.9", {"tp_broken": "raise ImportError('no numpy for you')"},
                      {"broken": "tp_broken"})
    registry = build_registry()
    assert "always" in registry.entries["verifier"]  # the healthy plugin still works
    err = capsys.readouterr().err
    assert "tp-broken 0.9" in err and "no numpy for you" in err
    assert err.count("tp-broken") == 1  # reported once


def test_plugin_raising_in_its_hook_is_reported_and_contributes_nothing(site, capsys):
    src = """
        from treerpo_core.plugins import hookimpl
        @hookimpl
        def treerpo_register_verifiers(register):
            register("half", object)
            raise RuntimeError("config file missing")
    """
    make_distribution(site, "tp-raises", "2.0", {"tp_raises": src}, {"raises": "tp_raises"})
    registry = build_registry()
    assert "half" not in registry.entries["verifier"]
    assert "tp-raises 2.0" in capsys.readouterr().err


@pytest.mark.parametrize("src, what", [
    ("def treerpo_register_verifiers(reg):\n    reg('x', object)\n", "reg"),  # misnamed argument
    ("def treerpo_register_verifier(register):\n    register('x', object)\n", "treerpo_register_verifier"),  # misnamed hook
])
def test_misnamed_hooks_and_arguments_are_rejected(site, capsys, src, what):
    src = "from treerpo_core.plugins import hookimpl\n@hookimpl\n" + src
    make_distribution(site, "tp-typo", "0.1", {"tp_typo": src}, {"typo": "tp_typo"})
    registry = build_registry()
    assert "x" not in registry.entries["verifier"]
    err = capsys.readouterr().err
    assert "tp-typo" in err and what in err


def test_same_name_twice_is_an_error_naming_both_plugins(site):
    make_distribution(site, "tp-good", "1.0", {"tp_good": GOOD}, {"good": "tp_good"})
    make_distribution(site, "tp-clash", "3.1", {"tp_clash": GOOD}, {"clash": "tp_clash"})
    with pytest.raises(PluginError) as info:
        build_registry()
    msg = str(info.value)
    assert "'always'" in msg and "tp-good 1.0" in msg and "tp-clash 3.1" in msg


class InProcess:
    @staticmethod
    @hookimpl
    def treerpo_register_tasks(register):
        def factory(*, data_file=None, size: int = 3):
            return ("task", data_file, size)
        register("toy", factory)


def test_in_process_plugin_is_gone_after_the_block():
    with plugin_registered(InProcess, "inproc") as registry:
        assert registry.create("task", "toy", {"size": 5}) == ("task", None, 5)
    assert "toy" not in get_registry().entries["task"]


def test_unknown_option_is_an_error_naming_it():
    with plugin_registered(InProcess, "inproc") as registry:
        with pytest.raises(PluginError, match="does not accept option 'sise'.*size"):
            registry.create("task", "toy", {"sise": 5})


def test_unknown_name_suggests_close_matches():
    with plugin_registered(InProcess, "inproc") as registry:
        with pytest.raises(PluginError, match="Did you mean 'toy'"):
            registry.get("task", "toyy")


def test_builtins_register_through_the_hooks():
    registry = get_registry()
    for module in plugins.DEFAULT_PLUGINS:
        assert any(r.plugin == module for r in registry.all()), f"{module} registered nothing"
    assert all(r.distribution == "treerpo" for r in registry.all())
