"""What `difflm inspect` shows of a checkpoint directory, read without loading a tensor."""

from __future__ import annotations

import os
from typing import Any

from .detection import detect, plan_checkpoint
from .loading import empty_model, parameter_count, plan_key_mapping


def describe_checkpoint(path: str | os.PathLike, *, format: str | None = None, **overrides: Any) -> dict[str, Any]:
    """Everything `difflm inspect` shows, read from config.json, the headers and the tokenizer;
    the backbone is built on the meta device only, to count parameters and check every shape."""
    found = detect(path, format)
    ckpt = found.checkpoint
    plan, tokenizer = plan_checkpoint(found, overrides)
    model = empty_model(plan.hf_config, "sdpa")
    model.tie_weights()  # a meta model comes untied: DiffusionGemma's shared encoder layers would count twice
    plan_key_mapping(plan, ckpt, model)  # raises if names or shapes do not fit
    cfg = plan.config
    named = {"bos": cfg.bos_token_id, "eos": cfg.eos_token_id, "pad": cfg.pad_token_id, "mask": cfg.mask_token_id}
    for name, value in sorted(cfg.extra.items()):
        if name.endswith("_ids"):
            for i, v in enumerate(value):
                named[f"{name[:-4]}[{i}]"] = v
        elif name.endswith("_id"):
            named[name[:-3]] = value
    tokens = {name: (tid, token_text(tokenizer, tid)) for name, tid in named.items() if tid is not None}
    return {
        "path": str(ckpt.path),
        "format": found.format,
        "reason": found.reason,
        "family": cfg.family,
        "architecture": type(model).__name__,
        # a class of difflm.backbones (a published architecture transformers has no class for), else stock
        "native_backbone": type(model).__module__.startswith("difflm.backbones"),
        "parameters": parameter_count(model),
        "stored_dtype": str(ckpt.stored_dtype).removeprefix("torch."),
        "stored_bytes": ckpt.stored_bytes,
        "files": len(ckpt.weight_files),
        "vocab_size": model.get_input_embeddings().weight.shape[0],
        "config": cfg,
        "tokens": tokens,
        "tokenizer": type(tokenizer).__name__ if tokenizer is not None else None,
        "chat_template": bool(getattr(tokenizer, "chat_template", None)),
        "notes": plan.notes,
    }


def token_text(tokenizer: Any, token_id: int) -> str | None:
    """The text of ``token_id`` in ``tokenizer`` (None without a tokenizer or for a non-string token)."""
    if tokenizer is None:
        return None
    text = tokenizer.convert_ids_to_tokens(token_id)
    return text if isinstance(text, str) else None
