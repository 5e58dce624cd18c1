"""`treerpo` entry point: a click group whose commands live one per module and are imported on use,
so `treerpo --help` and `treerpo plugins` stay fast (no torch import)."""

from __future__ import annotations

import importlib

import click

from treerpo_core import __version__

# command name -> "module:attribute"; each module holds one thin click command
COMMANDS = {
    "plugins": "treerpo_cli.plugins_cmd:plugins",
    "verify": "treerpo_cli.verify_cmd:verify",
    "sandbox": "treerpo_cli.sandbox_cmd:sandbox",
    "eval": "treerpo_cli.eval_cmd:eval_cmd",
    "report": "treerpo_cli.report_cmd:report",
    "run": "treerpo_cli.run_cmd:run",
    "sft": "treerpo_cli.sft_cmd:sft",
    "rollout": "treerpo_cli.rollout_cmd:rollout",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name].split(":")
        return getattr(importlib.import_module(module), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="treerpo")
def cli():
    """TreeRPO: train language models with tree-structured RL on pass/fail tasks.

    \b
    Quick start (CPU, offline, minutes):  treerpo run
    Paper recipe (GPU):                   treerpo run --config recipes/paper-gsm8k.yaml
    What is installed:                    treerpo plugins
    """


if __name__ == "__main__":
    cli()
