"""The diffusion conventions of a checkpoint: mask id and special tokens, picked from config.json,
the tokenizer and the family's published ids (in that order), and merged with the caller's
overrides into a `DiffusionConfig`. A published id is used only if it lies inside the vocabulary,
so a tiny model in a published layout never gets an id it cannot embed.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

from ..config import DiffusionConfig
from ..errors import ModelLoadError
from .checkpoint import Checkpoint


def token_id(tokenizer: Any, token: str) -> int | None:
    """Id of ``token`` if the tokenizer has it as one token (special or not), else None."""
    if tokenizer is None:
        return None
    value = tokenizer.convert_tokens_to_ids(token)
    if isinstance(value, int) and value != tokenizer.unk_token_id:
        return value
    ids = tokenizer.encode(token, add_special_tokens=False)
    return ids[0] if len(ids) == 1 and ids[0] != tokenizer.unk_token_id else None


def first_id(vocab_size: int, *candidates: Any) -> int | None:
    """The first candidate that is a token id inside the vocabulary (lists: their first item)."""
    for value in candidates:
        if isinstance(value, list):
            value = value[0] if value else None
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < vocab_size:
            return value
    return None


def special_ids(hf_config: PretrainedConfig, tokenizer: Any, vocab_size: int) -> dict[str, int]:
    """pad/bos/eos ids from the tokenizer, else config.json; ids outside the vocabulary (stale
    defaults such as GPT-2's 50256 on a smaller model) are left out."""
    ids = {}
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        value = first_id(vocab_size, getattr(tokenizer, name, None), getattr(hf_config, name, None))
        if value is not None:
            ids[name] = value
    return ids


def pick_mask_id(ckpt: Checkpoint, vocab_size: int, overrides: dict[str, Any], *candidates: Any) -> int:
    """The caller's ``mask_token_id`` if given, else the first candidate inside the vocabulary,
    else an error that says how to set one."""
    if "mask_token_id" in overrides:
        return overrides["mask_token_id"]
    found = first_id(vocab_size, *candidates)
    if found is None:
        tried = [c for c in candidates if c is not None]
        raise ModelLoadError(
            f"{ckpt.path}: no usable mask token (candidates {tried} are not ids inside the vocabulary of {vocab_size}); "
            "pass mask_token_id=ID (CLI: --mask-token-id ID) with the id of the [MASK] token"
        )
    return found


def published_tokens(
    ckpt: Checkpoint,
    tokenizer: Any,
    vocab_size: int,
    overrides: dict[str, Any],
    *,
    mask: int,
    eos: int,
    end_of_turn: tuple[str, int],
    bos: int | None = None,
) -> dict[str, Any]:
    """Special-token fields of a family that publishes its ids (LLaDA, Dream): config.json first,
    then the tokenizer, then the published id (only if it lies inside the vocabulary).

    ``end_of_turn`` is (token text, published id); with a tokenizer only its own token counts.
    """
    cfg = ckpt.hf_config

    def pick(name: str, published: int | None) -> int | None:
        return first_id(vocab_size, cfg.get(name), getattr(tokenizer, name, None), published)

    eos_id = pick("eos_token_id", eos)
    text, published_eot = end_of_turn
    eot_id = first_id(vocab_size, token_id(tokenizer, text), published_eot if tokenizer is None else None)
    return {
        "mask_token_id": pick_mask_id(ckpt, vocab_size, overrides, cfg.get("mask_token_id"),
                                      getattr(tokenizer, "mask_token_id", None), mask),
        "bos_token_id": pick("bos_token_id", bos),
        "eos_token_id": eos_id,
        "pad_token_id": pick("pad_token_id", eos_id),
        "extra": {"end_of_turn_ids": [i for i in (eot_id, eos_id) if i is not None]},
    }


def diffusion_config(fields: dict[str, Any], overrides: dict[str, Any]) -> DiffusionConfig:
    """The family's conventions with the caller's overrides on top (unknown names are an error)."""
    merged = {**fields, **overrides}
    merged["extra"] = {**fields.get("extra", {}), **overrides.get("extra", {})}
    return DiffusionConfig.from_dict(merged)
