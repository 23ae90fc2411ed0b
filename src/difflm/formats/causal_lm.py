"""A plain transformers causal-LM directory used as a DLM as-is (the caller states the mask id).

Without a ``mask_token_id`` override it is refused: an AR checkpoint is not a diffusion model, and
loading it as one silently would give garbage. `DiffusionLM.from_causal_lm` adapts it instead.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoModelForCausalLM

from ..config import DiffusionConfig
from ..errors import ModelLoadError
from . import Checkpoint, load_tokenizer


def detect(ckpt: Checkpoint) -> bool:
    return bool(ckpt.hf_config.get("architectures") or ckpt.model_type)


def load(cls: Any, ckpt: Checkpoint, *, dtype: Any, attn_implementation: str, overrides: dict[str, Any]) -> Any:
    if "mask_token_id" not in overrides:
        raise ModelLoadError(
            f"{ckpt.path} is a plain causal LM ({ckpt.model_type or 'unknown type'}), not a diffusion LM: "
            "adapt it with DiffusionLM.from_causal_lm(path) / `difflm train --objective adapt`, "
            "or pass mask_token_id=... (and shift=..., attention=...) to use it as a DLM as it is"
        )
    try:
        model = AutoModelForCausalLM.from_pretrained(ckpt.path, dtype=dtype or "auto", attn_implementation=attn_implementation)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"could not load a causal LM from {ckpt.path}: {exc}") from None
    tokenizer = load_tokenizer(ckpt.path)
    from ..model import _special_ids

    fields = {**_special_ids(model, tokenizer), "family": "causal-lm", **overrides}
    return cls(model, DiffusionConfig(**fields), tokenizer)
