"""difflm's own layout: a transformers causal-LM directory plus difflm_config.json."""

from __future__ import annotations

from typing import Any

from transformers import AutoModelForCausalLM

from ..config import DiffusionConfig
from ..errors import ModelLoadError
from . import Checkpoint, load_tokenizer


def detect(ckpt: Checkpoint) -> bool:
    return ckpt.has_difflm_config


def load(cls: Any, ckpt: Checkpoint, *, dtype: Any, attn_implementation: str, overrides: dict[str, Any]) -> Any:
    config = DiffusionConfig.load(ckpt.path)
    if overrides:
        config = config.replace(**overrides)
    try:
        model = AutoModelForCausalLM.from_pretrained(ckpt.path, dtype=dtype or "auto", attn_implementation=attn_implementation)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"could not load the backbone in {ckpt.path}: {exc}") from None
    return cls(model, config, load_tokenizer(ckpt.path))
