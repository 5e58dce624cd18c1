"""Load a model and tokenizer from a registered alias, a hub id or a local directory.

Aliases (`smollm2-135m`, `tiny-random`) are registered through `treerpo_register_models` like any plugin's
(see `model_aliases.py`); anything else goes to `AutoModelForCausalLM.from_pretrained`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


class ModelLoadError(RuntimeError):
    pass


def cache_dir() -> Path:
    """Where converted models are kept between runs (TREERPO_CACHE, else ~/.cache/treerpo)."""
    return Path(os.environ.get("TREERPO_CACHE", Path.home() / ".cache" / "treerpo"))


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """`auto` is bf16 on a GPU that supports it, fp32 on CPU (bf16 matmuls on CPU are slow and lossy)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in DTYPES:
        raise ModelLoadError(f"model.dtype {dtype!r} is not one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def load_model(name: str, *, dtype: str = "auto", attn_implementation: str = "sdpa",
               device: str | torch.device | None = None, options: dict | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) for an alias, hub id or directory; the model is in eval mode on `device`."""
    from .plugins import get_registry

    device = torch.device(device) if device is not None else default_device()
    torch_dtype = resolve_dtype(dtype, device)
    registry = get_registry()
    if name in registry.entries["model"]:
        model, tokenizer = registry.create("model", name, options, dtype=torch_dtype,
                                           attn_implementation=attn_implementation)
    else:
        model, tokenizer = load_pretrained(name, dtype=torch_dtype, attn_implementation=attn_implementation,
                                           **(options or {}))
    prepare_tokenizer(tokenizer)
    model.to(device)
    model.eval()
    return model, tokenizer


def load_pretrained(name_or_dir: str, *, dtype: torch.dtype, attn_implementation: str, **kwargs) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = Path(name_or_dir)
    if not p.is_dir() and (p.exists() or name_or_dir.startswith((".", "/"))):
        raise ModelLoadError(f"model {name_or_dir!r}: not a model directory")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_dir, **{k: v for k, v in kwargs.items() if k == "revision"})
        model = AutoModelForCausalLM.from_pretrained(name_or_dir, dtype=dtype,
                                                     attn_implementation=attn_implementation, **kwargs)
    except OSError as exc:
        raise ModelLoadError(
            f"could not load model {name_or_dir!r}: {exc}\n"
            "Give a registered alias (`treerpo plugins`), a local model directory, or a hub id when the hub is reachable."
        ) from exc
    return model, tokenizer


def prepare_tokenizer(tokenizer) -> None:
    """Generation and packing need a pad token; left padding keeps every row's last token at the end."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"


def strip_quantization_mark(model) -> Any:
    """Return a plain copy of a model that transformers still marks as quantized (GGUF loads are
    dequantized to float but keep `quantization_config` / `hf_quantizer`, and `Trainer` or `save_pretrained`
    then treat them as quantized). Rebuilt once from the config without the mark."""
    from transformers import AutoModelForCausalLM

    config = model.config
    if getattr(config, "quantization_config", None) is None and getattr(model, "hf_quantizer", None) is None:
        return model
    config = config.__class__.from_dict({k: v for k, v in config.to_dict().items() if k != "quantization_config"})
    plain = AutoModelForCausalLM.from_config(config, dtype=next(model.parameters()).dtype,
                                             attn_implementation=model.config._attn_implementation)
    plain.load_state_dict(model.state_dict())
    return plain


def encode_prompt(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of a chat prompt, ending with the assistant turn's opening (generation prompt).
    Falls back to plain text for tokenizers without a chat template."""
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # BatchEncoding in newer transformers
            ids = ids["input_ids"]
        return list(ids)
    text = "\n\n".join(m["content"] for m in messages) + "\n"
    return tokenizer(text, add_special_tokens=True)["input_ids"]
