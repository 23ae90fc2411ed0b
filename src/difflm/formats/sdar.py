"""SDAR (JetLM/SDAR-1.7B/4B/8B-Chat, "Synergy of Diffusion and AutoRegression"): a block diffusion
model adapted from Qwen3. Its weights are named exactly as `Qwen3ForCausalLM` (per-head q_norm /
k_norm, no biases) under a config.json with model_type "sdar" / architectures ["SDARForCausalLM"]
and Qwen3's field names; its modeling code is a copy of Qwen3's with block-diffusion masks.

Conventions (from its published generate.py): block size 4, blocks tile the sequence from
position 0, block-causal attention (bidirectional inside a block, causal across blocks), no shift
(the logit at i predicts token i), mask <|MASK|> (id 151669 in its tokenizer). The 30B-A3B MoE
variant is Qwen3-MoE underneath and is not mapped here.
"""

from __future__ import annotations

from typing import Any

from transformers import Qwen2Tokenizer

from ..errors import ModelLoadError
from .checkpoint import Checkpoint
from .conventions import diffusion_config, published_tokens
from .loading import LoadPlan, stock_config

MASK_ID, EOS_ID, IM_END_ID = 151669, 151643, 151645
IM_END_TOKEN = "<|im_end|>"
BLOCK_SIZE = 4  # what every published SDAR checkpoint was trained and is decoded with
TOKENIZER_FALLBACK = Qwen2Tokenizer  # its tokenizer class is custom code over a Qwen2-style BPE (as Dream's)


def detect(ckpt: Checkpoint) -> str | None:
    if (ckpt.model_type or "").lower() == "sdar" or "SDARForCausalLM" in ckpt.architectures:
        return f"config.json names model_type {ckpt.model_type!r} / architectures {ckpt.architectures} (SDAR)"
    return None


def plan(ckpt: Checkpoint, tokenizer: Any, overrides: dict[str, Any]) -> LoadPlan:
    if "model.layers.0.self_attn.q_norm.weight" not in ckpt.tensors:
        raise ModelLoadError(f"{ckpt.path} is not in the SDAR (Qwen3) layout: no per-head q_norm ({ckpt.summary()}); "
                             "the SDAR MoE checkpoints are not supported")
    hf_config = stock_config(ckpt, "qwen3", architectures=["Qwen3ForCausalLM"])
    tokens = published_tokens(ckpt, tokenizer, hf_config.vocab_size, overrides, mask=MASK_ID, eos=EOS_ID,
                              end_of_turn=(IM_END_TOKEN, IM_END_ID))
    block = ckpt.hf_config.get("block_size") or ckpt.hf_config.get("block_length") or BLOCK_SIZE
    fields = {**tokens, "shift": False, "attention": "block_causal", "block_size": int(block), "family": "sdar"}
    return LoadPlan("sdar", hf_config, diffusion_config(fields, overrides))
