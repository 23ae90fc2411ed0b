"""Dream (HKUNLP; Dream-v0-Base-7B / -Instruct-7B, adapted from Qwen2.5-7B): weights named exactly
as `Qwen2ForCausalLM` (q/k/v biases, no o_proj bias, untied head) under a config.json with
model_type "Dream" / architectures ["DreamModel"] and Qwen2's field names.

Conventions: fully bidirectional, shifted logits (aligned = cat(logits[:, :1], logits[:, :-1])),
mask <|mask|> 151666, pad/eos <|endoftext|> 151643, end of turn <|im_end|> 151645. Dream's own
tokenizer class is custom code; its vocab.json + merges.txt load with the stock Qwen2Tokenizer.
"""

from __future__ import annotations

from typing import Any

from transformers import Qwen2Tokenizer

from ..errors import ModelLoadError
from .checkpoint import Checkpoint
from .conventions import diffusion_config, published_tokens
from .loading import LoadPlan, stock_config

MASK_ID, EOS_ID, IM_END_ID = 151666, 151643, 151645
IM_END_TOKEN = "<|im_end|>"
TOKENIZER_FALLBACK = Qwen2Tokenizer
_QWEN2_MARKER = "model.layers.0.self_attn.q_proj.bias"  # Qwen2's q/k/v biases tell it from Llama


def detect(ckpt: Checkpoint) -> str | None:
    if (ckpt.model_type or "").lower() == "dream" or "DreamModel" in ckpt.architectures:
        return f"config.json names model_type {ckpt.model_type!r} / architectures {ckpt.architectures} (Dream)"
    if ckpt.model_type == "qwen2" and "mask_token_id" in ckpt.hf_config and _QWEN2_MARKER in ckpt.tensors:
        return "Qwen2 weights with a mask_token_id in config.json (Dream conventions)"
    return None


def plan(ckpt: Checkpoint, tokenizer: Any, overrides: dict[str, Any]) -> LoadPlan:
    if "model.embed_tokens.weight" not in ckpt.tensors:
        raise ModelLoadError(f"{ckpt.path} is not in the Dream (Qwen2) layout: no model.embed_tokens.weight ({ckpt.summary()})")
    hf_config = stock_config(ckpt, "qwen2", architectures=["Qwen2ForCausalLM"])
    tokens = published_tokens(ckpt, tokenizer, hf_config.vocab_size, overrides, mask=MASK_ID, eos=EOS_ID,
                              end_of_turn=(IM_END_TOKEN, IM_END_ID))
    fields = {**tokens, "shift": True, "attention": "bidirectional", "family": "dream"}
    return LoadPlan("dream", hf_config, diffusion_config(fields, overrides))
