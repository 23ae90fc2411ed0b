"""DiffuGPT (Gong et al. 2024) on the hub: a plain gpt2 config.json next to a model.safetensors whose
keys belong to the paper's wrapper - ``embed_tokens.weight``, ``denoise_model.{wpe,h.N,ln_f}.*``
and an ``lm_head.weight`` tied to the embedding (often not stored). Weights may be float16.

Conventions: shift, bidirectional attention, no time embedding. DiffuGPT-S reuses GPT-2 token
10541 as [MASK] (vocab 50257); DiffuGPT-M adds token "[¨M¨]" = 50257 (vocab 50258) and uses "¨"
as pad and "======" as the prompt/response separator (ids read from the tokenizer when present).
"""

from __future__ import annotations

from typing import Any

from ..errors import ModelLoadError
from .checkpoint import Checkpoint
from .conventions import diffusion_config, first_id, pick_mask_id, token_id
from .loading import LoadPlan, stock_config

DIFFUGPT_S_MASK_ID = 10541
DIFFUGPT_M_MASK_ID = 50257
GPT2_EOS_ID = 50256
M_MASK_TOKEN, M_PAD_TOKEN, M_SEP_TOKEN = "[¨M¨]", "¨", "======"


def detect(ckpt: Checkpoint) -> str | None:
    if "embed_tokens.weight" in ckpt.tensors and any(k.startswith("denoise_model.") for k in ckpt.tensors):
        return "weights named embed_tokens.weight + denoise_model.* (the DiffuGPT wrapper around GPT-2)"
    return None


def map_key(key: str) -> str | None:
    """Wrapper key -> GPT2LMHeadModel key (None: drop, it is tied)."""
    if key == "embed_tokens.weight":
        return "transformer.wte.weight"
    if key.startswith("denoise_model."):
        return "transformer." + key[len("denoise_model.") :]
    if key == "lm_head.weight":
        return None  # tied to the embedding in GPT-2
    raise ModelLoadError(f"unexpected key {key!r} in a DiffuGPT checkpoint")


def plan(ckpt: Checkpoint, tokenizer: Any, overrides: dict[str, Any]) -> LoadPlan:
    if "embed_tokens.weight" not in ckpt.tensors:
        raise ModelLoadError(f"{ckpt.path} is not in the DiffuGPT layout: no embed_tokens.weight ({ckpt.summary()})")
    hf_config = stock_config(ckpt, "gpt2", tie_word_embeddings=True)
    _check_shapes(ckpt, hf_config)
    vocab = hf_config.vocab_size
    is_medium = vocab > DIFFUGPT_M_MASK_ID
    mask_id = pick_mask_id(
        ckpt, vocab, overrides, token_id(tokenizer, M_MASK_TOKEN), DIFFUGPT_M_MASK_ID if is_medium else DIFFUGPT_S_MASK_ID
    )
    fields: dict[str, Any] = dict(
        mask_token_id=mask_id, shift=True, attention="bidirectional", family="diffugpt",
        eos_token_id=first_id(vocab, GPT2_EOS_ID), bos_token_id=first_id(vocab, GPT2_EOS_ID),
    )
    notes = []
    if is_medium:
        fields["pad_token_id"] = first_id(vocab, getattr(tokenizer, "pad_token_id", None), token_id(tokenizer, M_PAD_TOKEN))
        sep = token_id(tokenizer, M_SEP_TOKEN)
        if sep is not None:
            fields["extra"] = {"sep_token_id": sep}
        if tokenizer is None:
            notes.append(f"no tokenizer: the pad ({M_PAD_TOKEN!r}) and sep ({M_SEP_TOKEN!r}) ids of DiffuGPT-M are unknown")
    return LoadPlan("diffugpt", hf_config, diffusion_config(fields, overrides), map_key, notes)


def _check_shapes(ckpt: Checkpoint, config: Any) -> None:
    """The common mistake is DiffuGPT-M weights with a gpt2-small config.json: say which config they need."""
    rows, width = ckpt.tensors["embed_tokens.weight"].shape
    layers = len({k.split(".")[2] for k in ckpt.tensors if k.startswith("denoise_model.h.")})
    if (rows, width, layers) != (config.vocab_size, config.n_embd, config.n_layer):
        hint = " (DiffuGPT-M needs the gpt2-medium config: n_embd 1024, n_layer 24, n_head 16, vocab_size 50258)" if width == 1024 else ""
        raise ModelLoadError(
            f"{ckpt.path}: the weights need a config with vocab_size {rows}, n_embd {width}, n_layer {layers}, "
            f"but config.json says vocab_size {config.vocab_size}, n_embd {config.n_embd}, n_layer {config.n_layer}{hint}"
        )
