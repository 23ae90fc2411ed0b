"""One answer to "what is in this directory?": `survey` (from the configs, no tensor read) and `load`.

A model directory is one of the kinds of `registry.MODEL_KINDS`, told by a marker file
(`difflm.io.directory_kind`): a LoRA adapter (difflm_adapter.json), a family's model (continuous_config.json,
...), or - no marker - a checkpoint in one of the layouts of `registry.FORMATS`, detected from config.json
and the weight names. Each kind registers its loader; `load` resolves a bundled name, asks the directory
its kind and hands back a `LoadedModel`: the kind, the model, its tokenizer, and the layout and the
reason it was read so (what `difflm inspect` and the evaluation summaries print).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelLoadError
from ..bundled import MODELS, resolve_model
from ..config import DiffusionConfig
from ..io import ADAPTER_FILE, CHECKPOINT, directory_kind, require_model
from ..registry import MODEL_KINDS
from .adapter import load_adapter_as_dlm, read_adapter
from .detection import AR_FORMAT, check_format, detect, plan_checkpoint
from .loaders import LoadedModel, load_dlm


@dataclass(frozen=True)
class Survey:
    """What a model directory holds, read from its configs and marker files alone (no weights).

    kind: "dlm", "causal-lm", "adapter" or a family's kind of `registry.MODEL_KINDS`; path: the directory;
    format: the layout of `registry.FORMATS` its weights are in (an adapter: its base's; a family's kind:
    the kind); reason: why, in one line; autoregressive: a plain causal LM (or an AR adapter) rather
    than a diffusion model; config: the `DiffusionConfig` it would load with (a DLM or a DLM adapter),
    else None."""

    kind: str
    path: Path
    format: str
    reason: str
    autoregressive: bool = False
    config: DiffusionConfig | None = None


def survey(path_or_name: str | os.PathLike, *, format: str | None = None) -> Survey:
    """What ``path_or_name`` (a directory or a bundled name) holds, without reading a tensor: its kind,
    layout, whether it is autoregressive and the conventions a DLM would load with. `ModelLoadError`
    when nothing loadable is there. `load` loads what this describes."""
    path = require_model(path_or_name)
    kind = CHECKPOINT if check_format(format) is not None else directory_kind(path)
    if kind == "adapter":
        meta, base = read_adapter(path)
        reason = f"{ADAPTER_FILE} (LoRA adapters on {base})"
        if meta.get("loss") != "diffusion":  # adapters of an AR model (sft.loss ar)
            return Survey("adapter", path, AR_FORMAT, reason, autoregressive=True)
        found = detect(base)  # a DLM adapter loads its base with the conventions it was trained under
        return Survey("adapter", path, found.format, reason,
                      config=plan_checkpoint(found, meta.get("diffusion") or {})[0].config)
    if kind != CHECKPOINT:  # a family's model: its marker file says what it is
        return Survey(kind, path, kind, f"{MODEL_KINDS.entry(kind).meta['marker']} (a {kind} model)")
    found = detect(path, format)
    reason = "given by the caller" if format is not None else found.reason
    if found.format == AR_FORMAT:
        return Survey("causal-lm", path, AR_FORMAT, reason, autoregressive=True)
    return Survey("dlm", path, found.format, reason, config=plan_checkpoint(found, {})[0].config)


def load(
    path_or_name: str | os.PathLike,
    *,
    format: str | None = None,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    **overrides: Any,
) -> LoadedModel:
    """Load whatever model ``path_or_name`` (a directory, or a bundled name such as ``dlm-adapted``) holds.

    Args:
        format: read the directory as this layout of `registry.FORMATS` (skips the marker files and
            detection); ``"causal-lm"`` without a ``mask_token_id`` gives the plain causal LM.
        dtype: the dtype to load in (None: as the checkpoint declares or stores it; a kind may have its
            own default, e.g. an adapter loads in float32).
        device: where to put the model (None: the CPU).
        overrides: `DiffusionConfig` fields that replace the detected conventions of a DLM.

    Returns a `LoadedModel` (kind "dlm", "causal-lm", "adapter", or a family's kind). Raises
    `ModelLoadError` when nothing loadable is there, saying what was found.
    """
    path = require_model(path_or_name)
    kind = CHECKPOINT if check_format(format) is not None else directory_kind(path)
    loader = MODEL_KINDS.get(kind, ModelLoadError)
    kwargs: dict[str, Any] = {"format": format, **overrides}
    if dtype is not None:  # else the kind's own default
        kwargs["dtype"] = dtype
    return loader(path, **kwargs).to(device)


def load_diffusion_lm(name_or_path: str | os.PathLike, *, device: str | torch.device | None = None) -> Any:
    """The masked diffusion LM (a `DiffusionLM`, with its tokenizer) that ``name_or_path`` holds - a DLM
    checkpoint, a DLM adapter or a bundled name - on ``device``: what `difflm generate` and `difflm serve`
    decode. `ModelLoadError` for anything else, a plain causal LM before its weights load."""
    path = resolve_model(name_or_path)
    if not path.exists() and str(name_or_path) not in MODELS:
        raise ModelLoadError(f"{path} is not a directory; point to a model directory (config.json + weights)")
    found = survey(name_or_path)
    if found.kind == "causal-lm":
        plan_checkpoint(detect(path), {})  # the layout's own refusal: a causal LM is a DLM only with a mask id
    if found.autoregressive or found.kind not in ("dlm", "adapter"):
        raise ModelLoadError(f"{found.path} holds a {found.format} model, not a masked diffusion LM; "
                             "adapt it first (`difflm train --objective adapt`)")
    loaded = load(name_or_path, device=device)
    if loaded.model.tokenizer is None:
        raise ModelLoadError(f"{path} has no tokenizer; text prompts need one (save the tokenizer next to the weights)")
    return loaded.model


def load_checkpoint(
    cls: type,
    path: str | os.PathLike,
    *,
    format: str | None = None,
    dtype: torch.dtype | str | None = None,
    attn_implementation: str = "sdpa",
    progress: bool | None = None,
    **overrides: Any,
) -> Any:
    """Detect (or take) the layout of ``path`` and load it as a ``cls`` (see `DiffusionLM.from_pretrained`).
    An adapter directory loads its base with the adapters merged in."""
    if format is None and not overrides and directory_kind(path) == "adapter":
        return load_adapter_as_dlm(path, dtype=dtype, cls=cls)
    return load_dlm(cls, path, format=format, dtype=dtype, attn_implementation=attn_implementation,
                    progress=progress, **overrides)
