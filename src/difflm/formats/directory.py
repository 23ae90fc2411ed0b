"""One answer to "what is in this directory?": `load`.

A model directory is one of the kinds of `registry.MODEL_KINDS`, told by a marker file
(`difflm.io.directory_kind`): a LoRA adapter (difflm_adapter.json), a family's model (continuous_config.json,
...), or - no marker - a checkpoint in one of the layouts of `registry.FORMATS`, detected from config.json
and the weight names. Each kind registers its loader; `load` resolves a bundled name, asks the directory
its kind and hands back a `LoadedModel`: the kind, the model, its tokenizer, and the layout and the
reason it was read so (what `difflm inspect` and the evaluation summaries print).
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ..errors import ModelLoadError
from ..bundled import MODELS, resolve_model
from ..io import CHECKPOINT, directory_kind, require_model
from ..registry import MODEL_KINDS
from .adapter import load_adapter_as_dlm
from .detection import AR_FORMAT, check_format, detect, plan_checkpoint
from .loaders import LoadedModel, load_dlm


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
    if path.is_dir() and directory_kind(path) == CHECKPOINT:
        found = detect(path)
        if found.format == AR_FORMAT:
            plan_checkpoint(found, {})  # the layout's own refusal: a causal LM is a DLM only with a mask id
    loaded = load(name_or_path, device=device)
    if loaded.autoregressive or loaded.kind not in ("dlm", "adapter"):
        raise ModelLoadError(f"{loaded.path} holds a {loaded.format} model, not a masked diffusion LM; "
                             "adapt it first (`difflm train --objective adapt`)")
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
