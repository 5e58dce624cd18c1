"""`treerpo verify`: grade completions with any registered verifier, through the core's worker pool."""

from __future__ import annotations

import collections
import json
import sys

import click

from .common import config_options, load_config, user_errors


def read_items(path: str) -> list[dict]:
    """JSONL lines `{"completion", "reference", ...metadata}`; a bad line is an error naming its number."""
    items = []
    with click.open_file(path, encoding="utf-8", errors="surrogateescape") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise click.UsageError(f"{path}, line {lineno}: not valid JSON ({exc.msg})") from exc
            if not isinstance(item, dict) or "completion" not in item or "reference" not in item:
                raise click.UsageError(f"{path}, line {lineno}: expected an object with 'completion' and 'reference'")
            items.append(item)
    return items


@click.command()
@click.option("--verifier", "-v", "verifier_name", required=True, help="Registered verifier name (see `treerpo plugins`).")
@click.option("--reference", "-r", default=None, help="Reference answer or tests for a single COMPLETION.")
@click.option("--input", "input_file", type=click.Path(dir_okay=False, allow_dash=True), default=None,
              help="JSONL file of {completion, reference, ...metadata}; '-' reads stdin.")
@click.option("--unsafe", is_flag=True, help="Allow verifier.sandbox=local (no isolation).")
@click.argument("completion", required=False)
@config_options
@user_errors
def verify(verifier_name, reference, input_file, unsafe, completion, config_file, overrides):
    """Grade COMPLETION against --reference, or every line of --input.

    Prints one JSON line per item ({"verdict", "reason"}) in input order, and a summary on stderr.
    Exits 0 whatever the verdicts.
    """
    if (input_file is None) == (completion is None):
        raise click.UsageError("give either COMPLETION with --reference, or --input FILE.jsonl")
    if completion is not None:
        if reference is None:
            raise click.UsageError("COMPLETION needs --reference")
        items = [{"completion": completion, "reference": reference}]
    else:
        items = read_items(input_file)
    from treerpo_core.verify_pool import VerifierPool, check_sandbox_allowed

    cfg = load_config(config_file, overrides, **{"verifier.name": verifier_name})
    check_sandbox_allowed(cfg.verifier, unsafe)
    with VerifierPool.from_config(cfg.verifier) as pool:
        results = pool.verify(items)
    counts = collections.Counter(r.verdict.value for r in results)
    for r in results:
        click.echo(json.dumps(r.to_dict(), ensure_ascii=False))
    summary = ", ".join(f"{k} {counts.get(k, 0)}" for k in ("PASS", "FAIL", "ERROR", "TIMEOUT"))
    print(f"{len(results)} checked: {summary}", file=sys.stderr)
