"""A checkpoint directory in one of the layouts of `registry.FORMATS`, loaded: a DLM, or a plain causal LM.

`LoadedModel` is what `difflm.formats.load` hands back for every kind of model directory (this module's
`load_checkpoint_dir` is the ``"checkpoint"`` kind of `registry.MODEL_KINDS`; adapters and the families
register theirs). The class a DLM checkpoint becomes (`difflm.model.DiffusionLM`) sits above this
package: it is passed in (``cls``) or named by the ``"checkpoint"`` entry of `registry.MODEL_KINDS`
(``meta["dlm_class"]``), never imported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from ..errors import ModelLoadError
from ..io import CHECKPOINT
from ..registry import MODEL_KINDS, Entry
from .checkpoint import load_tokenizer
from .detection import AR_FORMAT, detect, plan_checkpoint, published_generation
from .generation import read_generation_defaults
from .loading import DTYPES, load_backbone

# layouts whose weights a stock transformers causal LM finds under their own names (another layout read
# as a plain causal LM would be initialised at random)
STOCK_WEIGHTS = ("difflm", "diffullama", AR_FORMAT)


@dataclass
class LoadedModel:
    """What a model directory holds, loaded (`difflm.formats.load`).

    kind: "dlm" (a `DiffusionLM`), "causal-lm" (a plain transformers causal LM), "adapter" (LoRA adapters
        merged into their base: a DLM or a causal LM, see ``autoregressive``), or a family's kind of
        `registry.MODEL_KINDS` ("continuous", ...).
    model: the model in eval mode (on the device asked for).
    tokenizer: its tokenizer, None when the directory holds none that loads.
    path: the directory (a bundled name resolved).
    format: the layout the weights were read as (a `registry.FORMATS` name: "difflm", "llada", ...,
        "causal-lm"); for an adapter the layout of what it makes ("difflm" or "causal-lm"); for a
        family's kind, the kind's name.
    reason: why, in one line (the detection's reason, "given by the caller", the marker file).
    given: whether the caller gave ``format`` (else it was detected).
    autoregressive: whether ``model`` is a plain causal LM (exact likelihoods, AR decoding) rather than
        a diffusion model.
    model_type: config.json's model_type, where there is one.
    meta: what the directory says of itself beyond that (an adapter's difflm_adapter.json).
    """

    kind: str
    model: Any = field(repr=False)
    tokenizer: Any = field(repr=False)
    path: Path
    format: str
    reason: str
    given: bool = False
    autoregressive: bool = False
    model_type: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to(self, device: str | torch.device | None) -> "LoadedModel":
        """Move the model to ``device`` (None: leave it where it is); returns self."""
        if device is not None:
            self.model.to(device)
        return self


def dlm_class() -> type:
    """The class a DLM checkpoint becomes: ``meta["dlm_class"]`` of the "checkpoint" kind of
    `registry.MODEL_KINDS` (`difflm.model.DiffusionLM`, which sits above formats)."""
    return Entry("dlm class", MODEL_KINDS.entry(CHECKPOINT).meta["dlm_class"]).load()


def hf_dtype(dtype: torch.dtype | str | None) -> torch.dtype | str:
    """``dtype`` as transformers' ``from_pretrained`` takes it (None: "auto", the config's own)."""
    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype or "auto"
    if dtype.lower() in DTYPES:
        return DTYPES[dtype.lower()]
    raise ModelLoadError(f"unknown dtype {dtype!r}; choose one of auto, float32, bfloat16, float16")


def load_dlm(
    cls: type | None,
    path: str | os.PathLike,
    *,
    format: str | None = None,
    dtype: torch.dtype | str | None = None,
    attn_implementation: str = "sdpa",
    progress: bool | None = None,
    **overrides: Any,
) -> Any:
    """Detect (or take) the layout of ``path`` and load it as a DLM of class ``cls`` (default: `dlm_class`),
    shard by shard onto a model built on the meta device (see `DiffusionLM.from_pretrained`)."""
    return _load_dlm(cls, detect(path, format), dtype, attn_implementation, progress, overrides)


def _load_dlm(cls: type | None, found: Any, dtype: Any, attn_implementation: str, progress: bool | None,
              overrides: dict[str, Any]) -> Any:
    plan, tokenizer = plan_checkpoint(found, overrides)
    # a bad file fails before the weights load; without saved settings, the layout's published decoding
    defaults = read_generation_defaults(found.checkpoint.path) or published_generation(found)[0]
    model = load_backbone(plan, found.checkpoint, dtype=dtype, attn_implementation=attn_implementation, progress=progress)
    dlm = (cls or dlm_class())(model, plan.config, tokenizer)
    dlm.generation_defaults = defaults  # the difflm section of generation_config.json (formats.generation)
    return dlm


def load_causal_lm(path: str | os.PathLike, *, dtype: torch.dtype | str | None = None) -> Any:
    """A plain transformers causal LM (stock class, no remote code), in eval mode."""
    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=hf_dtype(dtype)).eval()
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"could not load a causal LM from {path}: {exc}") from None


def load_checkpoint_dir(
    path: str | os.PathLike,
    *,
    format: str | None = None,
    dtype: torch.dtype | str | None = None,
    cls: type | None = None,
    attn_implementation: str = "sdpa",
    progress: bool | None = None,
    **overrides: Any,
) -> LoadedModel:
    """The "checkpoint" kind of `registry.MODEL_KINDS`: a directory in a layout of `registry.FORMATS`.

    A DLM layout becomes a DLM (kind "dlm"). The ``causal-lm`` layout (detected, or given) becomes the
    stock transformers causal LM with its tokenizer (kind "causal-lm"), unless ``overrides`` give a
    ``mask_token_id`` - then it is used as a DLM as it is (kind "dlm", see `difflm.formats.causal_lm`).
    Forcing ``format="causal-lm"`` onto a layout whose weights a stock class would not find is refused
    (they would be initialised at random)."""
    found = detect(path, format)
    given = format is not None
    reason = "given by the caller" if given else found.reason
    model_type = found.checkpoint.model_type
    if found.format == AR_FORMAT and "mask_token_id" not in overrides:
        if given:
            try:
                stored = detect(path).format
            except ModelLoadError:
                stored = AR_FORMAT
            if stored not in STOCK_WEIGHTS:
                raise ModelLoadError(f"{path} is in the {stored} layout, whose weights a stock causal LM cannot load; "
                                     f"it can only be loaded as a DLM (format {stored})")
        model = load_causal_lm(found.checkpoint.path, dtype=dtype)
        return LoadedModel("causal-lm", model, load_tokenizer(found.checkpoint.path), found.checkpoint.path, AR_FORMAT,
                           reason, given, autoregressive=True, model_type=model_type)
    model = _load_dlm(cls, found, dtype, attn_implementation, progress, overrides)
    return LoadedModel("dlm", model.eval(), model.tokenizer, found.checkpoint.path, found.format, reason, given,
                       model_type=model_type)
