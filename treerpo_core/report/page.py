"""`RUN_DIR/report/index.html`: one self-contained page (inline CSS and JS, plots as data: URIs, trees as
embedded JSON) that opens from a file:// URL with no network, so it can be mailed or archived with the run.

Run text is untrusted (completions are model output, prompts are dataset rows): on the Python side it is
HTML-escaped, in the embedded JSON every `<`, `>` and `&` is a \\u escape so no string can close the
<script> element, and the viewer script writes it with textContent only.
"""

from __future__ import annotations

import base64
import html
import json
import re
from importlib import resources
from pathlib import Path
from typing import Callable

from treerpo_core.types import Tree

from .plots import Plot, spread_steps
from .rundir import RunData, finite_number

ASSETS = resources.files(__package__)
PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
# the headline numbers shown for the last logged step
HEADLINE_METRICS = ("reward_mean", "loss", "tree/leaves", "tree/depth_mean", "entropy", "clip_ratio")


def script_json(data) -> str:
    """JSON safe inside <script type="application/json">: ASCII only, and no `<`, `>`, `&` anywhere.

    Those three only occur inside JSON strings, where their \\u escapes decode to the same text, so
    `</script>` or `<!--` in a completion cannot end or change the element.
    """
    text = json.dumps(data, ensure_ascii=True, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def tree_payload(tree: Tree, decode: Callable[[list[int]], str] | None) -> dict:
    """What the viewer needs of a tree: per-node text and numbers, not the token ids and log-probs,
    which would multiply the page size and are not shown."""
    reference = tree.reference if isinstance(tree.reference, str) else json.dumps(tree.reference, indent=2)
    return {
        "prompt_id": str(tree.prompt_id),
        "reference": reference,
        "prompt_text": decode(tree.prompt_token_ids) if decode else None,
        # engine notes are free-form: stringify what JSON cannot hold, and NaN/inf become null
        "info": json.loads(json.dumps(tree.info, default=str), parse_constant=lambda _: None),
        "nodes": [{
            "id": n.id, "parent": n.parent, "depth": n.depth, "kind": n.kind, "text": n.text,
            "tokens": len(n.token_ids),
            "split_entropy": finite_number(n.split_entropy),
            "verdict": n.verdict.value if n.verdict is not None else None,
            "reward": finite_number(n.reward), "advantage": finite_number(n.advantage),
        } for n in tree.nodes],
    }


def viewer_data(run: RunData, max_tree_steps: int, max_trees_per_step: int, decode=None) -> dict:
    """The trees the viewer can show: at most `max_tree_steps` dumped steps (evenly spread) and the first
    `max_trees_per_step` prompts of each, so a long GPU run with many prompts per step stays browsable."""
    shown = spread_steps(sorted(run.trees), max_tree_steps)
    return {"steps": [{"step": s, "dumped": len(run.trees[s]),
                       "trees": [tree_payload(t, decode) for t in run.trees[s][:max_trees_per_step]]}
                      for s in shown]}


def find_tokenizer_dir(run_dir: Path) -> Path | None:
    """The newest `checkpoint-<step>/` that holds a tokenizer, to turn prompt token ids back into text."""
    found = []
    for p in run_dir.glob("checkpoint-*"):
        m = re.fullmatch(r"checkpoint-(\d+)", p.name)
        if m and (p / "tokenizer_config.json").is_file():
            found.append((int(m.group(1)), p))
    return max(found)[1] if found else None


def prompt_decoder(run: RunData) -> Callable[[list[int]], str] | None:
    path = find_tokenizer_dir(run.run_dir)
    if path is None:
        return None
    try:
        from transformers import AutoTokenizer  # slow import: only when there is a tokenizer to load

        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, ImportError) as exc:
        run.notes.append(f"{path.name}: tokenizer could not be loaded ({exc}); prompts shown as ids only")
        return None
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=False)


def _kv_table(rows: list[tuple[str, str]]) -> str:
    cells = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f'<table class="kv">{cells}</table>'


def summary_html(run: RunData, data: dict) -> str:
    steps = [m["step"] for m in run.metrics]
    n_trees = sum(len(t) for t in run.trees.values())
    n_shown = sum(len(s["trees"]) for s in data["steps"])
    rows = [
        ("run directory", str(run.run_dir.resolve())),
        ("mode", "flat (GRPO samples)" if run.mode == "flat" else "tree (TreeRPO)"),
        ("steps logged", f"{len(steps)} (steps {steps[0]}–{steps[-1]})" if steps else "none yet"),
        ("tree dumps", f"{len(run.trees)} steps, {n_trees} trees" if run.trees else "none yet"),
    ]
    if n_shown < n_trees:
        rows.append(("trees in the viewer", f"{n_shown} of {n_trees} ({len(data['steps'])} steps evenly spread; "
                                            "see --max-tree-steps, --max-trees-per-step)"))
    if run.metrics:
        last = run.metrics[-1]
        rows += [(f"{key} at step {last['step']}", f"{last[key]:.4g}") for key in HEADLINE_METRICS if key in last]
    parts = [_kv_table(rows)]
    if run.summary is not None:
        parts.append("<h3>summary.json</h3><pre id=\"summary-json\">"
                     + html.escape(json.dumps(run.summary, indent=2, default=str)) + "</pre>")
    if run.notes:
        items = "".join(f"<li>{html.escape(n)}</li>" for n in run.notes)
        parts.append(f'<h3>Skipped while reading</h3><ul class="notes">{items}</ul>')
    return "\n".join(parts)


def plots_html(plots: list[Plot]) -> str:
    figures = []
    for plot in plots:
        title = html.escape(plot.title)
        if plot.path is None:
            figures.append(f'<figure data-plot="{plot.name}"><div class="missing">{title}: no data yet</div></figure>')
            continue
        data = base64.b64encode(plot.path.read_bytes()).decode("ascii")
        figures.append(f'<figure data-plot="{plot.name}"><img alt="{title}" src="data:image/png;base64,{data}">'
                       f"<figcaption>{title} ({html.escape(plot.path.name)})</figcaption></figure>")
    return "\n".join(figures)


def config_html(run: RunData) -> str:
    if run.config_text is None:
        return "<p>No config.yaml in the run directory.</p>"
    return f'<pre id="config-text">{html.escape(run.config_text)}</pre>'


def render_page(run: RunData, plots: list[Plot], data: dict) -> str:
    finished = not run.in_progress
    parts = {
        "run_name": html.escape(run.run_dir.resolve().name),
        "status": "finished (summary.json written)" if finished else "in progress (no summary.json yet)",
        "status_class": "finished" if finished else "in-progress",
        "summary": summary_html(run, data),
        "plots": plots_html(plots),
        "config": config_html(run),
        "data": script_json(data),
        "css": ASSETS.joinpath("viewer.css").read_text(encoding="utf-8"),
        "js": ASSETS.joinpath("viewer.js").read_text(encoding="utf-8"),
    }
    template = ASSETS.joinpath("viewer.html").read_text(encoding="utf-8")
    # one pass, so text inserted for one placeholder is never scanned for another
    return PLACEHOLDER.sub(lambda m: parts[m.group(1)], template)
