"""Checkpoint layouts: detection and loading of local directories onto stock transformers classes.

A layout ("format") is a small module with

* ``detect(ckpt) -> str | None``: why the checkpoint is in this layout (one line), or None;
* ``plan(ckpt, tokenizer, overrides) -> LoadPlan``: the stock config, key mapping and diffusion
  conventions, decided from config.json and the safetensors headers alone.

Detection looks at config.json and the weight names, never at the directory name. The first
format whose ``detect`` answers wins (registration order below); a plain causal LM comes last
and is refused unless the caller says how to use it. Loading itself is shared by all formats
(`loading.load_backbone`: meta device, shard by shard). No checkpoint code is ever run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch

from ..errors import ModelLoadError
from .checkpoint import (
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
    Checkpoint,
    TensorInfo,
    inspect_checkpoint,
    iter_tensors,
    load_tokenizer,
    require_model_dir,
    weight_files,
)
from .loading import LoadPlan, empty_model, load_backbone, parameter_count, plan_key_mapping

if TYPE_CHECKING:
    from ..model import DiffusionLM

__all__ = [
    "FORMATS", "WEIGHTS_INDEX_NAME", "WEIGHTS_NAME", "Checkpoint", "Detection", "LoadPlan", "TensorInfo",
    "describe_checkpoint", "detect_format", "inspect_checkpoint", "iter_tensors", "load_checkpoint",
    "load_tokenizer", "register_format", "require_model_dir", "weight_files",
]

Detector = Callable[[Checkpoint], "str | None"]
Planner = Callable[[Checkpoint, Any, dict[str, Any]], LoadPlan]


@dataclass(frozen=True)
class Format:
    name: str
    detect: Detector
    plan: Planner
    tokenizer_fallback: type | None = None  # stock tokenizer class for checkpoints whose own is custom code


FORMATS: dict[str, Format] = {}


def register_format(name: str, detect: Detector, plan: Planner, tokenizer_fallback: type | None = None) -> None:
    """Add a layout; it is tried after the ones registered before it."""
    FORMATS[name] = Format(name, detect, plan, tokenizer_fallback)


@dataclass
class Detection:
    """Which layout a checkpoint is in and why."""

    checkpoint: Checkpoint
    format: str
    reason: str


def detect(path: str | os.PathLike, format: str | None = None) -> Detection:
    """Detect the layout of ``path`` (or take ``format``) and say why."""
    ckpt = inspect_checkpoint(path)
    if format is not None:
        if format not in FORMATS:
            raise ModelLoadError(f"unknown format {format!r}; supported: {', '.join(FORMATS)}")
        return Detection(ckpt, format, "format given by the caller")
    for fmt in FORMATS.values():
        reason = fmt.detect(ckpt)
        if reason:
            return Detection(ckpt, fmt.name, reason)
    raise ModelLoadError(
        f"{ckpt.path}: unknown checkpoint layout ({ckpt.summary()}); supported: {', '.join(FORMATS)} - "
        "pass format=... if it is one of them"
    )


def detect_format(path: str | os.PathLike) -> str:
    """Name of the layout of a checkpoint directory (see `FORMATS`)."""
    return detect(path).format


def plan_checkpoint(found: Detection, overrides: dict[str, Any]) -> tuple[LoadPlan, Any]:
    """The load plan of a detected checkpoint and its tokenizer (no tensor is read)."""
    fmt = FORMATS[found.format]
    tokenizer = load_tokenizer(found.checkpoint.path, fmt.tokenizer_fallback)
    return fmt.plan(found.checkpoint, tokenizer, dict(overrides)), tokenizer


def load_checkpoint(
    cls: type["DiffusionLM"],
    path: str | os.PathLike,
    *,
    format: str | None = None,
    dtype: torch.dtype | str | None = None,
    attn_implementation: str = "sdpa",
    progress: bool | None = None,
    **overrides: Any,
) -> "DiffusionLM":
    """Detect (or take) the layout of ``path`` and load it as a `DiffusionLM` (see `DiffusionLM.from_pretrained`).
    A LoRA adapter directory (`difflm.training.lora`) loads its base with the adapters merged in."""
    if format is None and not overrides and os.path.isfile(os.path.join(path, "difflm_adapter.json")):
        from ..training.lora import load_adapter_as_dlm

        return load_adapter_as_dlm(path, dtype=dtype)
    found = detect(path, format)
    plan, tokenizer = plan_checkpoint(found, overrides)
    model = load_backbone(plan, found.checkpoint, dtype=dtype, attn_implementation=attn_implementation, progress=progress)
    return cls(model, plan.config, tokenizer)


def describe_checkpoint(path: str | os.PathLike, *, format: str | None = None, **overrides: Any) -> dict[str, Any]:
    """Everything `difflm inspect` shows, read from config.json, the headers and the tokenizer;
    the backbone is built on the meta device only, to count parameters and check every shape."""
    found = detect(path, format)
    ckpt = found.checkpoint
    plan, tokenizer = plan_checkpoint(found, overrides)
    model = empty_model(plan.hf_config, "sdpa")
    plan_key_mapping(plan, ckpt, model)  # raises if names or shapes do not fit
    cfg = plan.config
    named = {"bos": cfg.bos_token_id, "eos": cfg.eos_token_id, "pad": cfg.pad_token_id, "mask": cfg.mask_token_id}
    for name, value in sorted(cfg.extra.items()):
        if name.endswith("_ids"):
            for i, v in enumerate(value):
                named[f"{name[:-4]}[{i}]"] = v
        elif name.endswith("_id"):
            named[name[:-3]] = value
    tokens = {name: (tid, _token_text(tokenizer, tid)) for name, tid in named.items() if tid is not None}
    return {
        "path": str(ckpt.path),
        "format": found.format,
        "reason": found.reason,
        "family": cfg.family,
        "architecture": type(model).__name__,
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


def _token_text(tokenizer: Any, token_id: int) -> str | None:
    if tokenizer is None:
        return None
    text = tokenizer.convert_ids_to_tokens(token_id)
    return text if isinstance(text, str) else None


from . import causal_lm, diffugpt, diffullama, dream, llada, native, sdar  # noqa: E402

# registration order = detection order: explicit markers first, the plain causal LM last
register_format("difflm", native.detect, native.plan)
register_format("diffugpt", diffugpt.detect, diffugpt.plan)
register_format("llada", llada.detect, llada.plan)
register_format("dream", dream.detect, dream.plan, dream.TOKENIZER_FALLBACK)
register_format("sdar", sdar.detect, sdar.plan, dream.TOKENIZER_FALLBACK)  # a Qwen2-style BPE tokenizer too
register_format("diffullama", diffullama.detect, diffullama.plan)
register_format("causal-lm", causal_lm.detect, causal_lm.plan)
