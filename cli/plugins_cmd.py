"""`treerpo plugins`: what is installed, and who registered it."""

from __future__ import annotations

import json

import click

from treerpo_core.plugins import get_registry

from .common import config_options, load_config, user_errors


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of {kind, name, distribution, version}.")
@config_options
@user_errors
def plugins(as_json, config_file, overrides):
    """List every registered verifier, task, delimiter rule and model alias."""
    load_config(config_file, overrides)  # validated like every command's, though listing needs none of it
    regs = sorted(get_registry().all(), key=lambda r: (r.kind, r.name))
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in regs], indent=2))
        return
    kind = None
    for r in regs:
        if r.kind != kind:
            kind = r.kind
            click.echo(f"{kind}s:")
        click.echo(f"  {r.name:<20} {r.distribution} {r.version}".rstrip())
