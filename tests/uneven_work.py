"""Uneven work for the multi-process probes (test_fsdp.py, test_deepspeed.py): the trees one rank grows."""

from __future__ import annotations

import random


def uneven_trees(model, tokenizer, rank: int) -> list:
    """Rank 1 grows three trees of up to 24 tokens a path, rank 0 one of up to 8, so the ranks run different
    numbers of forwards; every node below the root gets a seeded nonzero advantage, so the loss has a gradient."""
    from treerpo_core.config import SamplingConfig, TreeConfig
    from treerpo_core.rollout.engine import TreeEngine
    from treerpo_core.types import Example

    prompts = ["What is 2 + 3?", "Count to five.", "Name a colour.", "Say hello."]
    examples = [Example(id=f"q{i}", prompt=[{"role": "user", "content": p}], reference="0")
                for i, p in enumerate(prompts)][:1 + 2 * rank]
    trees = TreeEngine(model, tokenizer, tree=TreeConfig(l_min=2, h_th=0.1, max_leaves=6, s_min=6),
                       sampling=SamplingConfig(max_new_tokens=8 + 16 * rank)).grow(examples, seed=rank)
    rng = random.Random(rank)
    for tree in trees:
        for node in tree.nodes[1:]:
            node.advantage = rng.choice([-0.5, 0.25, 0.75])
    return trees
