"""Check a rollout dump against the rules: forced split, regular splits at delimiters with l_min/h_th/depth,
coverage rule, log-probs vs plain forward (issue 5's "done when" check on real dumps).

    treerpo rollout --task gsm8k --data-file ../shared/data/gsm8k/test.jsonl --model smollm2-135m \
        --num-prompts 2 --set tree.l_min=16 --set tree.h_th=0.5 --output trees.jsonl
    python scripts/check_tree_dump.py trees.jsonl tree.l_min=16 tree.h_th=0.5

The overrides must be the ones the dump was grown with. Uses the engine tests' path checker
(tests/test_engine.py) so the rules are stated once."""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_engine import check_against_plain_forward
from treerpo_core.config import Config
from treerpo_core.models import load_model
from treerpo_core.plugins import create_delimiter
from treerpo_core.types import Tree
path, overrides = sys.argv[1], sys.argv[2:]
cfg = Config.load(None, overrides)
trees = [Tree.from_json(l) for l in open(path)]
model, tok = load_model("smollm2-135m", device="cpu")
mask = create_delimiter(cfg.tree.delimiter or "text").vocab_mask(tok)  # gsm8k and numina use text
n = check_against_plain_forward(model, trees, cfg.tree, cfg.sampling.temperature, mask)
for t in trees:
    kids = t.children(0)
    assert [k.kind for k in kids][:2] == ["forced", "forced"] and kids[0].token_ids[0] != kids[1].token_ids[0]
    for node in t.nodes:
        ch = t.children(node.id)
        assert len(ch) <= 4
        cov = [c for c in ch if c.kind == "coverage"]
        long_leaves = [c for c in ch if c.kind != "coverage" and not t.children(c.id) and len(c.token_ids) > cfg.tree.s_min]
        assert len(cov) <= len(long_leaves), (node.id, len(cov), len(long_leaves))
        assert all(not t.children(c.id) for c in cov)
    assert len(t.leaves()) <= cfg.tree.max_leaves
print(f"{len(trees)} trees OK, {n} regular splits checked along paths")
