"""DiffuGPT (Gong et al. 2024) on the hub: a plain gpt2 config.json next to a model.safetensors whose
keys belong to the paper's wrapper - ``embed_tokens.weight``, ``denoise_model.{wpe,h.N,ln_f}.*``
and an ``lm_head.weight`` tied to the embedding (often not stored). Weights may be float16.

Conventions: shift, bidirectional attention, no time embedding. DiffuGPT-S reuses GPT-2 token
10541 as [MASK] (vocab 50257); DiffuGPT-M adds token 50257 (vocab 50258).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from ..config import DiffusionConfig
from ..errors import ModelLoadError
from . import Checkpoint, iter_tensors, load_tokenizer

DIFFUGPT_S_MASK_ID = 10541
DIFFUGPT_M_MASK_ID = 50257


def detect(ckpt: Checkpoint) -> bool:
    return "embed_tokens.weight" in ckpt.weight_keys and any(k.startswith("denoise_model.") for k in ckpt.weight_keys)


def map_key(key: str) -> str | None:
    """Wrapper key -> GPT2LMHeadModel key (None: drop, it is tied)."""
    if key == "embed_tokens.weight":
        return "transformer.wte.weight"
    if key.startswith("denoise_model."):
        return "transformer." + key[len("denoise_model.") :]
    if key == "lm_head.weight":
        return None  # tied to the embedding in GPT-2
    raise ModelLoadError(f"unexpected key {key!r} in a DiffuGPT checkpoint")


def load(cls: Any, ckpt: Checkpoint, *, dtype: Any, attn_implementation: str, overrides: dict[str, Any]) -> Any:
    state = {}
    stored_dtype = None
    for key, tensor in iter_tensors(ckpt.weight_files):
        new = map_key(key)
        if new is not None:
            state[new] = tensor
            stored_dtype = stored_dtype or tensor.dtype
    config = GPT2Config.from_dict(ckpt.hf_config)
    _check_shapes(ckpt, config, state)
    config.tie_word_embeddings = True
    config._attn_implementation = attn_implementation
    target_dtype = dtype if isinstance(dtype, torch.dtype) else stored_dtype
    model = GPT2LMHeadModel(config).to(target_dtype)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "lm_head.weight" and not k.endswith(".attn.bias") and not k.endswith("masked_bias")]
    if missing or unexpected:
        raise ModelLoadError(f"{ckpt.path}: DiffuGPT weights do not match the config (missing {missing[:5]}, unexpected {unexpected[:5]})")
    model.tie_weights()
    model.eval()
    vocab = config.vocab_size
    mask_id = overrides.pop("mask_token_id", DIFFUGPT_M_MASK_ID if vocab > DIFFUGPT_M_MASK_ID else DIFFUGPT_S_MASK_ID)
    fields = dict(mask_token_id=mask_id, shift=True, attention="bidirectional", family="diffugpt", eos_token_id=50256, bos_token_id=50256)
    fields.update(overrides)
    if fields["eos_token_id"] >= vocab:
        fields["eos_token_id"] = fields["bos_token_id"] = None
    return cls(model, DiffusionConfig(**fields), load_tokenizer(ckpt.path))


def _check_shapes(ckpt: Checkpoint, config: GPT2Config, state: dict[str, torch.Tensor]) -> None:
    wte = state.get("transformer.wte.weight")
    if wte is None:
        raise ModelLoadError(f"{ckpt.path}: DiffuGPT checkpoint has no embed_tokens.weight")
    layers = len({k.split(".")[2] for k in state if k.startswith("transformer.h.")})
    rows, width = wte.shape
    if (rows, width, layers) != (config.vocab_size, config.n_embd, config.n_layer):
        hint = " (DiffuGPT-M needs the gpt2-medium config: n_embd 1024, n_layer 24, n_head 16, vocab_size 50258)" if width == 1024 else ""
        raise ModelLoadError(
            f"{ckpt.path}: the weights need a config with vocab_size {rows}, n_embd {width}, n_layer {layers}, "
            f"but config.json says vocab_size {config.vocab_size}, n_embd {config.n_embd}, n_layer {config.n_layer}{hint}"
        )
