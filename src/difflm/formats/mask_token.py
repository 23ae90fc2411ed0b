"""The [MASK] token of an autoregressive checkpoint being adapted into a DLM (`DiffusionLM.from_causal_lm`).

DiffuGPT-S reuses a rare token of the vocabulary as [MASK]; DiffuGPT-M adds a new one. These helpers
decide which, add the embedding row when it is new, and read the special ids a wrapped model keeps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from transformers import PreTrainedModel

from ..errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["NEW_MASK_TOKEN", "add_embedding_row", "resolve_mask_token", "special_ids"]

NEW_MASK_TOKEN = "<|mask|>"


def special_ids(model: PreTrainedModel, tokenizer: "PreTrainedTokenizerBase | None") -> dict[str, int]:
    """pad/bos/eos ids from the tokenizer, else the model config; ids outside the vocabulary
    (stale config defaults such as GPT-2's 50256 on a smaller model) are ignored."""
    rows = model.get_input_embeddings().weight.shape[0]
    ids = {}
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None) if tokenizer is not None else None
        if value is None:
            value = getattr(model.config, name, None)
        if isinstance(value, list):  # some configs list several EOS ids
            value = value[0] if value else None
        if isinstance(value, int) and 0 <= value < rows:
            ids[name] = value
    return ids


def resolve_mask_token(model: PreTrainedModel, tokenizer: "PreTrainedTokenizerBase | None", mask_token: int | str | None) -> int:
    """The [MASK] id of a causal LM being adapted: ``mask_token`` (an id, or a token string) reused when it
    exists, the tokenizer's own mask token, or a new token (`NEW_MASK_TOKEN`) whose embedding row is
    added (`add_embedding_row`)."""
    rows = model.get_input_embeddings().weight.shape[0]
    if isinstance(mask_token, bool):
        raise ConfigError("mask_token must be a token id, a token string or None")
    if isinstance(mask_token, int):
        if not 0 <= mask_token < rows:
            raise ConfigError(
                f"mask token id {mask_token} is outside the vocabulary (size {rows}); "
                "pass an existing id, or mask_token=None to add a new [MASK] token"
            )
        return mask_token
    if isinstance(mask_token, str) and tokenizer is None:
        raise ConfigError(f"mask_token={mask_token!r} is a string but there is no tokenizer; pass a token id instead")
    if tokenizer is not None:
        if mask_token is None and tokenizer.mask_token_id is not None:
            return int(tokenizer.mask_token_id)
        if isinstance(mask_token, str):
            existing = tokenizer.convert_tokens_to_ids(mask_token)
            if existing is not None and existing != tokenizer.unk_token_id:
                return int(existing)
        tokenizer.add_special_tokens({"mask_token": mask_token or NEW_MASK_TOKEN})
        new_id = int(tokenizer.mask_token_id)
    else:
        new_id = rows
    add_embedding_row(model, new_id)
    return new_id


@torch.no_grad()
def add_embedding_row(model: PreTrainedModel, new_id: int) -> None:
    """Make row ``new_id`` exist and set it (input and output side) to the mean of the old rows:
    a neutral start for a token the backbone never saw."""
    old_rows = model.get_input_embeddings().weight.shape[0]
    if new_id >= old_rows:
        model.resize_token_embeddings(new_id + 1, mean_resizing=False)
    limit = min(old_rows, new_id) or old_rows
    emb = model.get_input_embeddings().weight
    emb[new_id] = emb[:limit].float().mean(0).to(emb.dtype)
    head = model.get_output_embeddings()
    if head is not None and head.weight.data_ptr() != emb.data_ptr():
        head.weight[new_id] = head.weight[:limit].float().mean(0).to(head.weight.dtype)
        if getattr(head, "bias", None) is not None:
            head.bias[new_id] = head.bias[:limit].mean()
