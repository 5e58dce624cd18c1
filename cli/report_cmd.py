"""`treerpo report RUN_DIR`: plots and an interactive tree viewer for a run directory (finished or not)."""

from __future__ import annotations

import click


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--output-dir", "-o", type=click.Path(file_okay=False), default=None,
              help="Where to write the report (default: RUN_DIR/report).")
@click.option("--max-tree-steps", type=click.IntRange(min=1), default=None,
              help="Embed the trees of at most this many dumped steps, evenly spread (default 20).")
@click.option("--max-trees-per-step", type=click.IntRange(min=1), default=None,
              help="Embed at most this many prompts' trees per dumped step (default 8).")
@click.option("--no-prompt-text", is_flag=True,
              help="Do not load the checkpoint's tokenizer to show prompts as text (faster).")
def report(run_dir, output_dir, max_tree_steps, max_trees_per_step, no_prompt_text):
    """Write RUN_DIR/report/: PNG training curves and index.html, one self-contained page with the curves,
    the resolved config and a viewer of the dumped trees (choose a step and a prompt, click a node).

    Works on a run still in progress: truncated last lines are skipped and listed in the page.
    """
    from treerpo_core.report import MAX_TREE_STEPS, MAX_TREES_PER_STEP, ReportError, build_report

    try:
        index = build_report(run_dir, output_dir, max_tree_steps=max_tree_steps or MAX_TREE_STEPS,
                             max_trees_per_step=max_trees_per_step or MAX_TREES_PER_STEP,
                             decode_prompts=not no_prompt_text)
    except ReportError as exc:
        raise click.UsageError(str(exc)) from exc
    click.echo(f"wrote {index} and the plots beside it; open file://{index.resolve()} in a browser")
