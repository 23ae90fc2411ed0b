"""A plain transformers causal-LM directory used as a DLM as-is (the caller states the mask id).

Without a ``mask_token_id`` override it is refused: an AR checkpoint is not a diffusion model, and
loading it as one silently would give garbage. `DiffusionLM.from_causal_lm` adapts it instead.
"""

from __future__ import annotations

from typing import Any

from ..errors import ModelLoadError
from .checkpoint import Checkpoint
from .conventions import diffusion_config, special_ids
from .loading import LoadPlan, stock_config


def detect(ckpt: Checkpoint) -> str | None:
    from transformers import CONFIG_MAPPING

    if ckpt.model_type in CONFIG_MAPPING:
        return (
            f"a stock {ckpt.model_type} config.json without diffusion markers "
            "(no difflm_config.json, no mask_token_id): a plain causal LM"
        )
    return None


def plan(ckpt: Checkpoint, tokenizer: Any, overrides: dict[str, Any]) -> LoadPlan:
    hf_config = stock_config(ckpt)
    if "mask_token_id" not in overrides:
        arch = (ckpt.architectures or [ckpt.model_type or "unknown type"])[0]
        hint = " pass format='diffullama' (CLI: --format diffullama) if it is DiffuLLaMA," if ckpt.model_type == "llama" else ""
        raise ModelLoadError(
            f"{ckpt.path} is a plain causal LM ({arch}), not a diffusion LM: adapt it with "
            f"DiffusionLM.from_causal_lm(path) / `difflm train --objective adapt`,{hint} or pass "
            "mask_token_id=... (CLI: --mask-token-id; and shift=..., attention=...) to use it as a DLM as it is"
        )
    fields = {**special_ids(hf_config, tokenizer, hf_config.vocab_size), "family": "causal-lm"}
    return LoadPlan("causal-lm", hf_config, diffusion_config(fields, overrides))
