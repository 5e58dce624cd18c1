"""`treerpo sandbox build | check`: prepare and inspect the sandboxes the unit-tests verifier runs code in."""

from __future__ import annotations

import sys

import click

from .common import user_errors


@click.group()
def sandbox():
    """Build the docker sandbox image, or test which containment guarantees hold on this machine."""


@sandbox.command()
@click.option("--image", default=None, help="Tag to build (default: treerpo-sandbox:py3).")
@click.option("--python", "python", default="/usr/bin/python3", show_default=True,
              help="Host interpreter whose files make up the image.")
@click.option("--force", is_flag=True, help="Rebuild even when an identical image is present.")
@user_errors
def build(image, python, force):
    """Build the default docker image from the host's python3 (no registry needed). Idempotent."""
    from treerpo_verifiers.sandbox.docker_pool import _client
    from treerpo_verifiers.sandbox.image import DEFAULT_IMAGE, build_image

    tag = image or DEFAULT_IMAGE
    image_id, built = build_image(_client(), tag, python, force=force)
    click.echo(f"{tag}: {'built' if built else 'already up to date'} ({image_id[:19]})")


@sandbox.command()
@click.option("--sandbox", "names", multiple=True, type=click.Choice(["bwrap", "docker"]),
              help="Backend to test (repeatable; default: both).")
@click.option("--timeout-s", default=2.0, show_default=True, help="Wall-clock limit for each probe.")
@user_errors
def check(names, timeout_s):
    """Run a short containment self-test and print which guarantee holds on this machine.

    Exits 1 when a guarantee fails on an available backend, 0 otherwise (an unavailable backend is reported
    with how to install it)."""
    from treerpo_verifiers.sandbox import Limits, SandboxUnavailable, make_backend
    from treerpo_verifiers.sandbox.selftest import run_selftest

    broken = False
    for name in names or ("bwrap", "docker"):
        try:
            backend = make_backend(name, Limits(timeout_s=timeout_s))
        except SandboxUnavailable as exc:
            click.echo(f"{name}: unavailable: {exc}")
            continue
        try:
            click.echo(f"{name}:")
            for guarantee, held, detail in run_selftest(backend):
                broken |= not held
                click.echo(f"  {'holds ' if held else 'FAILS '} {guarantee:45s} {detail}")
        finally:
            backend.close()
    sys.exit(1 if broken else 0)
