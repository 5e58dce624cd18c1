"""Tree attention: the per-segment key sets of a pack, its refusals, and a switched model that behaves as plain
SDPA everywhere outside the packed forward (generation, padded batches, saved checkpoints). Its exactness
against separate root-to-node paths, log-probs and gradients, is in test_packing.py (every test there runs
with tree attention and with the dense mask)."""

from __future__ import annotations

import pytest
import torch
from test_packing import _hand_tree as hand_tree  # prompt [p0 p1]; root -> a [a0 a1] -> c [c0]; root -> b [b0 b1]
from transformers import AutoModelForCausalLM

from treerpo_core.models import load_model
from treerpo_core.packing import build_pack, tree_logprobs
from treerpo_core.tree_attention import NAME, TreeLayoutError, tree_layout, use_tree_attention


def test_each_segment_sees_its_path_by_hand():
    # packed as p0 p1 a0 a1 c0 b0 b1
    pack = build_pack(hand_tree(), [1, 2, 3])
    layout = tree_layout(pack.slot, pack.slot_visible)
    got = [(s.start, s.end, s.keys.tolist(), None if s.mask is None else s.mask.int().tolist())
           for s in layout.segments]
    assert got == [
        (0, 2, [0, 1], None),  # the prompt: plain causal over itself
        (2, 4, [0, 1, 2, 3], [[1, 1, 1, 0], [1, 1, 1, 1]]),  # a: the prompt, then causal over itself
        (4, 5, [0, 1, 2, 3, 4], [[1, 1, 1, 1, 1]]),  # c: the prompt and its parent a
        (5, 7, [0, 1, 5, 6], [[1, 1, 1, 0], [1, 1, 1, 1]]),  # b: the prompt only, never a or c
    ]
    assert layout.length == 7


def test_block_diagonal_rows_attend_to_themselves_only():
    """The SFT packing: each sample its own segment, seeing only itself."""
    layout = tree_layout(torch.tensor([0, 0, 0, 1, 1, 2]), torch.eye(3, dtype=torch.bool))
    assert [(s.keys.tolist(), s.mask) for s in layout.segments] == [([0, 1, 2], None), ([3, 4], None), ([5], None)]


def test_layouts_attention_cannot_follow_are_refused():
    eye = torch.eye(2, dtype=torch.bool)
    with pytest.raises(TreeLayoutError, match="split"):
        tree_layout(torch.tensor([0, 1, 0]), eye)
    sees_later = torch.tensor([[True, True], [False, True]])  # segment 0 would see segment 1, placed after it
    with pytest.raises(TreeLayoutError, match="before it"):
        tree_layout(torch.tensor([0, 0, 1]), sees_later)


@pytest.fixture(scope="module")
def models():
    plain, tokenizer = load_model("tiny-random", dtype="float32", device="cpu")
    switched, _ = load_model("tiny-random", dtype="float32", device="cpu")
    assert use_tree_attention(switched) and switched.config._attn_implementation == NAME
    return plain, switched, tokenizer


def test_switched_model_is_plain_sdpa_outside_the_packed_forward(models):
    plain, switched, _ = models
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [0, 0, 11, 12, 13, 14]])  # the second row left-padded
    mask = torch.tensor([[1] * 6, [0, 0, 1, 1, 1, 1]])
    with torch.no_grad():
        assert torch.equal(plain(ids, attention_mask=mask).logits, switched(ids, attention_mask=mask).logits)
        kwargs = {"attention_mask": mask, "max_new_tokens": 6, "do_sample": False}
        assert torch.equal(plain.generate(ids, **kwargs), switched.generate(ids, **kwargs))


def test_switched_model_packs_like_the_dense_mask(models):
    plain, switched, _ = models
    tree = hand_tree()
    with torch.no_grad():
        dense = tree_logprobs(plain, tree, temperature=1.0, max_packed_tokens=64)
        sparse = tree_logprobs(switched, tree, temperature=1.0, max_packed_tokens=64)
    assert max(float((dense[k] - sparse[k]).abs().max()) for k in dense) < 1e-5


def test_checkpoint_of_a_switched_model_loads_as_plain_sdpa(models, tmp_path):
    _, switched, _ = models
    switched.save_pretrained(tmp_path)
    assert NAME not in (tmp_path / "config.json").read_text()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="sdpa")
    assert loaded.config._attn_implementation == "sdpa"


def test_other_implementations_are_left_alone():
    eager, _ = load_model("tiny-random", dtype="float32", device="cpu", attn_implementation="eager")
    assert not use_tree_attention(eager)
    assert eager.config._attn_implementation == "eager"
