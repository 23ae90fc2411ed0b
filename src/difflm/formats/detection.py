"""Which layout a checkpoint directory is in, and why: the layouts of `difflm.registry.FORMATS`.

A layout is a module (or a `Format`) with

* ``detect(ckpt) -> str | None``: why the checkpoint is in this layout (one line), or None;
* ``plan(ckpt, tokenizer, overrides) -> LoadPlan``: the stock config, key mapping and diffusion
  conventions, decided from config.json and the safetensors headers alone;
* optionally ``TOKENIZER_FALLBACK``: the stock tokenizer class of checkpoints whose own is custom code.

Detection looks at config.json and the weight names, never at the directory name. The first layout
of `registry.FORMATS` whose ``detect`` answers wins (the table's order: explicit markers first, the
plain causal LM last); `register_format` adds one from outside difflm.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import ModelLoadError
from ..registry import FORMATS
from .checkpoint import Checkpoint, inspect_checkpoint, load_tokenizer
from .generation import GenerationDefaults
from .loading import LoadPlan

Detector = Callable[[Checkpoint], "str | None"]
Planner = Callable[[Checkpoint, Any, dict[str, Any]], LoadPlan]
AR_FORMAT = "causal-lm"  # the layout of a plain transformers causal LM: no diffusion conventions of its own


@dataclass(frozen=True)
class Format:
    """A layout given as functions (`register_format`); difflm's own layouts are modules with the same names."""

    name: str
    detect: Detector
    plan: Planner
    tokenizer_fallback: type | None = None  # stock tokenizer class for checkpoints whose own is custom code


# layouts registered from outside difflm by `register_format`: registry.FORMATS names them here
REGISTERED: dict[str, Format] = {}


def register_format(name: str, detect: Detector, plan: Planner, tokenizer_fallback: type | None = None) -> None:
    """Add a layout; it is tried after the ones registered before it (``registry.FORMATS``'s order)."""
    REGISTERED[name] = Format(name, detect, plan, tokenizer_fallback)
    FORMATS.register(name, f"{__name__}:REGISTERED.{name}")


def layout(name: str) -> Format:
    """The layout registered as ``name`` (`ModelLoadError` listing the known ones if there is none)."""
    found = FORMATS.get(name, ModelLoadError)
    if isinstance(found, Format):
        return found
    return Format(name, found.detect, found.plan, getattr(found, "TOKENIZER_FALLBACK", None))


@dataclass
class Detection:
    """Which layout a checkpoint is in and why."""

    checkpoint: Checkpoint
    format: str
    reason: str


def check_format(format: str | None) -> str | None:
    """``format`` if it is None or names a layout of `registry.FORMATS`; else `ModelLoadError`."""
    if format is not None and format not in FORMATS:
        raise ModelLoadError(f"unknown format {format!r}; supported: {', '.join(FORMATS)}")
    return format


def detect(path: str | os.PathLike, format: str | None = None) -> Detection:
    """Detect the layout of ``path`` (or take ``format``) and say why."""
    ckpt = inspect_checkpoint(path)
    if check_format(format) is not None:
        return Detection(ckpt, format, "format given by the caller")
    for name in FORMATS:
        reason = layout(name).detect(ckpt)
        if reason:
            return Detection(ckpt, name, reason)
    raise ModelLoadError(
        f"{ckpt.path}: unknown checkpoint layout ({ckpt.summary()}); supported: {', '.join(FORMATS)} - "
        "pass format=... if it is one of them"
    )


def detect_format(path: str | os.PathLike) -> str:
    """Name of the layout of a checkpoint directory (see `registry.FORMATS`)."""
    return detect(path).format


def published_generation(found: Detection) -> tuple[GenerationDefaults | None, dict[str, GenerationDefaults]]:
    """How checkpoints of this layout decode when their directory saved no settings (the layout module's
    optional ``generation_defaults(ckpt)``), and its named presets (``generation_presets(ckpt)``); from
    config.json alone. Layouts without them: (None, {}). A directory in difflm's own layout whose
    difflm_config.json names a published family (a converted checkpoint) decodes as that family's layout does."""
    name = found.format
    if name == "difflm":
        family = _saved_family(found.checkpoint)
        name = family if family in FORMATS and family != "difflm" else name
    module = FORMATS.get(name, ModelLoadError)
    defaults = getattr(module, "generation_defaults", None)
    presets = getattr(module, "generation_presets", None)
    return (defaults(found.checkpoint) if defaults else None), (presets(found.checkpoint) if presets else {})


def _saved_family(ckpt: Checkpoint) -> str | None:
    """``family`` of the directory's difflm_config.json (None when unreadable: the loader says why)."""
    try:
        family = json.loads((ckpt.path / "difflm_config.json").read_text("utf-8")).get("family")
    except (OSError, ValueError, AttributeError):
        return None
    return family if isinstance(family, str) else None


def plan_checkpoint(found: Detection, overrides: dict[str, Any]) -> tuple[LoadPlan, Any]:
    """The load plan of a detected checkpoint and its tokenizer (no tensor is read)."""
    fmt = layout(found.format)
    tokenizer = load_tokenizer(found.checkpoint.path, fmt.tokenizer_fallback)
    return fmt.plan(found.checkpoint, tokenizer, dict(overrides)), tokenizer
