"""Which `EvalLM` a model directory becomes, and the one line that tells the user.

`load_eval_lm` loads through `difflm.formats.load` (the one answer to "what is in this directory") and
wraps what it found: a plain causal LM (the ``causal-lm`` layout, or an AR LoRA adapter) becomes an
`AREvalLM` (exact NLL), a DLM a `DiffusionEvalLM` (ELBO), and a family's model the evaluation adapter its
kind registered in `difflm.registry.MODEL_KINDS` (``meta["eval"]``: a continuous DLM's bound, ...).
DiffuLLaMA's published files *are* a plain LLaMA, so it is detected as ``causal-lm`` (and scored as AR)
unless ``format="diffullama"`` says otherwise; `scoring_summary` says which layout and which score were used.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ..errors import InputError
from ..formats import AR_FORMAT, FORMATS, LoadedModel, load
from ..registry import MODEL_KINDS, Entry
from .lm import AREvalLM, DiffusionEvalLM, EvalLM, Layout
from .settings import EvalSettings
from .uniform import UniformEvalLM, is_uniform_state

__all__ = ["AR_FORMAT", "check_format", "eval_lm", "load_eval_lm", "scoring_summary"]


def check_format(format: str | None) -> str | None:
    """``format`` if it names a checkpoint layout (`difflm.registry.FORMATS`) or is None; else `InputError`."""
    if format is not None and format not in FORMATS:
        raise InputError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)} "
                         f"({AR_FORMAT}: a plain causal LM, scored as an AR model; the others: scored as DLMs)")
    return format


def eval_lm(loaded: LoadedModel, settings: EvalSettings | None = None, *, name: str = "model") -> EvalLM:
    """The `EvalLM` of a loaded model directory (see the module doc)."""
    entry = MODEL_KINDS.entry(loaded.kind) if loaded.kind in MODEL_KINDS else None
    if entry is not None and entry.meta.get("eval"):  # a family's own evaluation adapter
        adapter: Any = Entry(f"{loaded.kind} evaluation", entry.meta["eval"]).load()
        return adapter(loaded, settings, name=name)
    layout = Layout(loaded.format, loaded.given, loaded.reason, loaded.model_type)
    cls = AREvalLM if loaded.autoregressive else DiffusionEvalLM
    if cls is DiffusionEvalLM and is_uniform_state(loaded.model):  # UDLM / Duo: no mask token, their own bound
        cls = UniformEvalLM
    return cls(loaded.model, loaded.tokenizer, settings, name=name, layout=layout)


def load_eval_lm(name_or_path: str | os.PathLike, settings: EvalSettings | None = None, *, format: str | None = None,
                 dtype: torch.dtype | str = torch.float32, device: str | None = None) -> EvalLM:
    """Load a model for evaluation: a bundled name (``ar-base``, ``dlm-adapted``, ...) or a directory.

    ``format`` (a name of `difflm.registry.FORMATS`, as for `DiffusionLM.from_pretrained`) gives the
    checkpoint layout instead of detecting it. The ``causal-lm`` layout becomes an `AREvalLM` (exact
    NLL); every other layout a `DiffusionEvalLM` (ELBO). A plain LLaMA directory is detected as
    ``causal-lm``: DiffuLLaMA needs ``format="diffullama"``. The result's ``layout`` records the
    choice; `scoring_summary` says it in one line. Weights are cast to ``dtype`` (float32 by default:
    scores should not depend on the storage precision).
    """
    check_format(format)
    return eval_lm(load(name_or_path, format=format, dtype=dtype, device=device), settings, name=str(name_or_path))


def scoring_summary(lm: EvalLM, option: str = "--format") -> str:
    """One line for stderr: which layout ``lm`` was loaded as (given or detected, and why) and how it is
    scored. ``option`` is how the user gives a layout (``--format`` on difflm's command line,
    ``format`` in lm-eval's model arguments)."""

    def given(fmt: str) -> str:
        return f"{option} {fmt}" if option.startswith("-") else f"{option}={fmt}"

    layout = lm.layout
    if layout is None:
        where = f"layout unknown ({type(lm).__name__} built directly)"
    elif layout.given:
        where = f"layout {layout.format} (given by {option})"
    else:
        where = f"layout {layout.format} (detected: {layout.reason})"
    line = f"difflm: model {lm.name}: {where}, scored by {lm.scoring}"
    if layout is not None and not layout.given and layout.format == AR_FORMAT and layout.model_type == "llama":
        line += f"; if it is a DiffuLLaMA checkpoint, pass {given('diffullama')}"
    return line
