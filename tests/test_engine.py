"""The tree engine on real transformers models: stored tokens and log-probs match a plain forward pass over
each root-to-leaf path (so the PPO ratio starts at 1), splits obey the rules on real entropies, and the
sampler's pieces do what the config says."""

from __future__ import annotations

import pytest
import torch

from treerpo_core.config import SamplingConfig, TreeConfig
from treerpo_core.logprobs import token_logprobs, topk_entropy
from treerpo_core.models import load_model
from treerpo_core.rollout import sampler
from treerpo_core.rollout.engine import TreeEngine
from treerpo_core.types import Example

PROMPTS = ["What is 12 + 30?", "Tom has 3 apples and buys 4 more bags of 5 apples each. How many apples now? Think."]


class EveryTenthToken:
    """Delimiter rule for a random model: any token id divisible by 10, so splits happen often."""

    def vocab_mask(self, tokenizer):
        return torch.arange(len(tokenizer)) % 10 == 0


def examples():
    return [Example(id=f"q{i}", prompt=[{"role": "user", "content": p}], reference="0") for i, p in enumerate(PROMPTS)]


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-random", device="cpu")


def full_forward(model, tree, leaf_id):
    """Log-probs and top-k entropies of a path, from one plain forward over prompt + path (no cache)."""
    path = tree.path_token_ids(leaf_id)
    ids = torch.tensor([tree.prompt_token_ids + path])
    with torch.no_grad():
        logits = model(ids).logits[0, len(tree.prompt_token_ids) - 1:-1].float()
    return path, logits


def check_against_plain_forward(model, trees, tree_cfg, temperature, delimiter_mask=None):
    """Every path's stored log-probs equal the plain forward's within 1e-4; every regular split sits right
    after a delimiter token at a position whose recomputed entropy is the recorded one and >= h_th.
    Returns the number of regular splits seen along paths."""
    n_splits = 0
    for tree in trees:
        for leaf in tree.leaves():
            path, logits = full_forward(model, tree, leaf.id)
            stored = torch.tensor([lp for n in tree.path(leaf.id) for lp in n.logprobs])
            assert len(stored) == len(path)
            expected = token_logprobs(logits, torch.tensor(path), temperature)
            assert (stored - expected).abs().max().item() < 1e-4
            nodes, offset = tree.path(leaf.id), 0
            for node, child in zip(nodes, nodes[1:]):
                offset += len(node.token_ids)  # logits[offset] predicted the child's first token
                if child.kind != "entropy":
                    continue
                n_splits += 1
                assert delimiter_mask is None or delimiter_mask[node.token_ids[-1]]
                assert len(node.token_ids) >= tree_cfg.l_min and node.depth < tree_cfg.max_depth
                h = topk_entropy(logits[offset], tree_cfg.entropy_top).item()
                assert node.split_entropy == pytest.approx(h, abs=1e-4) and h >= tree_cfg.h_th
    return n_splits


def test_stored_logprobs_match_plain_forward_tiny(tiny):
    model, tokenizer = tiny
    cfg = TreeConfig(l_min=4, h_th=0.5, max_depth=2, max_leaves=10, s_min=10)  # leaves room for coverage
    sampling = SamplingConfig(max_new_tokens=24)
    delimiter = EveryTenthToken()
    trees = TreeEngine(model, tokenizer, tree=cfg, sampling=sampling, delimiter=delimiter).grow(examples(), seed=0)
    assert check_against_plain_forward(model, trees, cfg, sampling.temperature, delimiter.vocab_mask(tokenizer)) > 0
    assert any(n.kind == "coverage" for t in trees for n in t.nodes)


def test_flat_mode_logprobs_match_plain_forward_tiny(tiny):
    model, tokenizer = tiny
    cfg = TreeConfig(mode="flat", n_flat=3)
    trees = TreeEngine(model, tokenizer, tree=cfg, sampling=SamplingConfig(max_new_tokens=16)).grow(examples(), seed=1)
    assert [len(t.leaves()) for t in trees] == [3, 3]
    check_against_plain_forward(model, trees, cfg, 0.6)


def test_prompt_ids_and_tree_fields(tiny):
    model, tokenizer = tiny
    from treerpo_core.models import encode_prompt

    trees = TreeEngine(model, tokenizer, tree=TreeConfig(), sampling=SamplingConfig(max_new_tokens=4)).grow(
        examples(), seed=0, step=7)
    for tree, ex in zip(trees, examples()):
        assert tree.prompt_id == ex.id and tree.step == 7 and tree.reference == "0"
        assert tree.prompt_token_ids == encode_prompt(tokenizer, ex.prompt)
        assert tree.nodes[0].kind == "root" and tree.nodes[0].token_ids == []
        assert all(n.text == tokenizer.decode(n.token_ids) for n in tree.nodes[1:])
        assert all(n.verdict is None and n.reward is None for n in tree.nodes)


@pytest.mark.slow
def test_smollm2_trees_obey_the_rules_and_match_plain_forward():
    """The real model with the real `text` delimiter rule (tasks/delimiters.py) on one prompt."""
    from treerpo_core.plugins import create_delimiter

    model, tokenizer = load_model("smollm2-135m", device="cpu")
    cfg = TreeConfig(l_min=16, h_th=0.5, max_leaves=6, s_min=30)
    sampling = SamplingConfig(max_new_tokens=48)
    delimiter = create_delimiter("text")
    trees = TreeEngine(model, tokenizer, tree=cfg, sampling=sampling, delimiter=delimiter).grow(examples()[1:], seed=0)
    assert check_against_plain_forward(model, trees, cfg, sampling.temperature, delimiter.vocab_mask(tokenizer)) > 0


# -- sampler ---------------------------------------------------------------------------------------

def test_candidates_keep_top_k_then_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    cfg = SamplingConfig(temperature=1.0, top_k=4, top_p=0.8, repetition_penalty=1.0)
    probs, ids = sampler.candidates(logits, torch.zeros(1, 0, dtype=torch.long), cfg)
    # top-4 drops 0.05; within the rest (renormalised by 0.95) the mass above 0.15 is 0.737 < 0.8, so 0.15
    # stays; the mass above 0.1 is 0.895 >= 0.8, so 0.1 goes. The kept three are renormalised.
    assert ids[0].tolist() == [0, 1, 2, 3]
    assert probs[0].tolist() == pytest.approx([0.5 / 0.85, 0.2 / 0.85, 0.15 / 0.85, 0.0])


def test_temperature_applies_before_the_nucleus():
    logits = torch.log(torch.tensor([[0.6, 0.4]]))
    cfg = SamplingConfig(temperature=0.5, top_k=0, top_p=0.65, repetition_penalty=1.0)
    probs, _ = sampler.candidates(logits, torch.zeros(1, 0, dtype=torch.long), cfg)
    # at T=0.5 the probabilities are 0.36/0.52, 0.16/0.52 = 0.692, 0.308: the first alone reaches 0.65
    assert probs[0].tolist() == pytest.approx([1.0, 0.0])


def test_repetition_penalty_divides_positive_and_multiplies_negative_seen_logits():
    logits = torch.tensor([[2.0, -2.0, 2.0]])
    history = torch.tensor([[0, 1, 1]])  # repeats count once
    assert sampler.apply_repetition_penalty(logits, history, 2.0).tolist() == [[1.0, -4.0, 2.0]]
    assert logits.tolist() == [[2.0, -2.0, 2.0]]  # the raw logits (used for log-probs) are untouched


def test_topk_alternative_stays_in_top_k_and_differs_from_taken():
    g = torch.Generator().manual_seed(0)
    logits = torch.arange(50, dtype=torch.float32).repeat(200, 1) / 10  # top-20 are ids 30..49
    taken = torch.full((200,), 49)
    alt = sampler.topk_alternative(logits, taken, 20, g)
    assert set(alt.tolist()) <= set(range(30, 49))
    # renormalised over the other 19: the largest of them (48) is the most likely
    assert (alt == 48).float().mean() > (alt == 30).float().mean()


def test_draw_excluding_falls_back_when_truncation_left_one_token():
    g = torch.Generator().manual_seed(0)
    probs, ids = torch.tensor([[1.0, 0.0]]), torch.tensor([[3, 1]])
    out = sampler.draw_excluding(probs, ids, torch.tensor([3]), g, fallback_logits=torch.zeros(1, 5))
    assert out.item() != 3 and 0 <= out.item() < 5


def test_sampling_is_seeded():
    logits = torch.randn(4, 100, generator=torch.Generator().manual_seed(1))
    probs, ids = sampler.candidates(logits, torch.zeros(4, 0, dtype=torch.long), SamplingConfig())
    draws = [sampler.draw(probs, ids, torch.Generator().manual_seed(5)).tolist() for _ in range(2)]
    assert draws[0] == draws[1]
    assert probs.sum(-1).tolist() == pytest.approx([1.0] * 4)
