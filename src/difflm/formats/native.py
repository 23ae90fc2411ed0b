"""difflm's own layout: a transformers causal-LM directory plus difflm_config.json."""

from __future__ import annotations

from typing import Any

from ..config import DiffusionConfig
from .checkpoint import Checkpoint
from .loading import LoadPlan, stock_config


def detect(ckpt: Checkpoint) -> str | None:
    return "difflm_config.json next to the weights (saved by difflm)" if ckpt.has_difflm_config else None


def plan(ckpt: Checkpoint, tokenizer: Any, overrides: dict[str, Any]) -> LoadPlan:
    config = DiffusionConfig.load(ckpt.path)
    if overrides:
        config = config.replace(**overrides)
    return LoadPlan("difflm", stock_config(ckpt), config)
