"""The four plugin hooks (contract: ARCHITECTURE.md, "Plugin contract").

Each hook is called exactly once per process, when the plugin registry is first built (the first time a
command resolves a verifier, task, delimiter rule or model, or lists plugins). Every implementation is
called; results are not used: a plugin contributes by calling `register(name, factory)`.

`factory` is a callable (usually a class) that the core calls with keyword options only — the user's
`--set <section>.options.KEY=VALUE` entries, none by default — and that returns the plugin object.
"""

from __future__ import annotations

from typing import Any, Callable

import pluggy

PROJECT_NAME = "treerpo"
hookspec = pluggy.HookspecMarker(PROJECT_NAME)

Register = Callable[[str, Callable[..., Any]], None]


@hookspec
def treerpo_register_verifiers(register: Register) -> None:
    """Register verifiers: `register("name", Factory)`; the factory's object has
    `verify(completion, reference, **metadata) -> VerifyResult` and optionally `verify_batch`,
    `extract_answer`, `same_answer`."""


@hookspec
def treerpo_register_tasks(register: Register) -> None:
    """Register tasks: `register("name", Factory)`; the factory's object has `examples(split)` and the
    attributes `default_verifier`, `default_delimiter`, `tree_defaults`."""


@hookspec
def treerpo_register_delimiters(register: Register) -> None:
    """Register delimiter rules: `register("name", Factory)`; the factory's object has
    `vocab_mask(tokenizer) -> torch.BoolTensor[vocab]` and optionally `allows_split(prefix_ids, next_id)`."""


@hookspec
def treerpo_register_models(register: Register) -> None:
    """Register model aliases: `register("alias", factory)`; the factory takes keyword options (plus the
    core's `dtype`, `device`, `attn_implementation`) and returns `(model, tokenizer)`."""
