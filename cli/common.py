"""Options and helpers shared by the commands: --config/--set, error reporting."""

from __future__ import annotations

import functools

import click

from treerpo_core.config import Config, ConfigError
from treerpo_core.plugins import PluginError


def config_options(f):
    """`--config FILE.yaml` and repeatable `--set section.key=value`, available on every command."""
    f = click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
                     help="Override one config key (repeatable); e.g. --set tree.h_th=0.5")(f)
    f = click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
                     help="YAML config file (sections as in ARCHITECTURE.md).")(f)
    return f


def load_config(config_file, overrides, **flags) -> Config:
    """Config from file, then command-line flags that map onto keys, then --set (last wins)."""
    cfg = Config.load(config_file)
    for key, value in flags.items():
        if value is not None:
            cfg.assign(key, value, source="command line")
    for item in overrides:
        cfg.set(item)
    return cfg


def user_errors(f):
    """Turn configuration and plugin errors into a one-line message and exit code 2, no traceback."""
    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        try:
            return f(*args, **kwargs)
        except (ConfigError, PluginError) as exc:
            raise click.UsageError(str(exc)) from exc
    return wrapper
