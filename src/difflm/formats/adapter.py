"""LoRA adapter directories (written by an SFT run with ``lora:``, `difflm.training.lora`): a format.

An adapter directory is small and loads wherever a model directory does:

    adapter_config.json, adapter_model.safetensors   peft's own files (the adapters only)
    difflm_adapter.json                              the base checkpoint, the loss (diffusion | ar),
                                                     the DLM's conventions (DiffusionConfig), the LoRA settings
    tokenizer files                                  the tokenizer trained with (chat template included)

`difflm.formats.load` (so ``difflm generate``, ``difflm eval``, the server) and
``DiffusionLM.from_pretrained(ADAPTER)`` load the base, apply the adapters and merge them in memory;
`load_adapter` keeps them unmerged (the exact trained computation). The base is recorded as a bundled
model name or an absolute path: keep it where it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Iterator

import torch

from ..bundled import MODELS
from ..errors import ConfigError, ModelLoadError
from ..io import ADAPTER_FILE, HF_CONFIG, has_marker
from .checkpoint import load_tokenizer
from .detection import detect, published_generation
from .generation import GenerationDefaults, read_generation_defaults
from .loaders import AR_FORMAT, LoadedModel, load_causal_lm, load_dlm

__all__ = ["ADAPTER_FILE", "is_adapter_dir", "load_adapter", "load_adapter_as_dlm", "load_adapter_dir", "peft",
           "quiet_peft", "read_adapter"]


def is_adapter_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an adapter directory written by a LoRA run (it holds difflm_adapter.json)."""
    return has_marker(path, "adapter")


@contextlib.contextmanager
def quiet_peft() -> Iterator[None]:
    """peft asks transformers a deprecated question (is_gradient_checkpointing): not the user's concern."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def peft() -> Any:
    """The peft package (an optional dependency: ``pip install 'difflm[sft]'``)."""
    try:
        import peft as package
    except ImportError:
        raise ConfigError("LoRA needs the peft package: pip install 'difflm[sft]'") from None
    return package


def read_adapter(path: str | os.PathLike) -> tuple[dict[str, Any], Path]:
    """(difflm_adapter.json, the base directory) of an adapter directory."""
    path = Path(path)
    try:
        meta = json.loads((path / ADAPTER_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path / ADAPTER_FILE} cannot be read: {exc}") from None
    base = MODELS.get(meta.get("base"), None) or Path(meta.get("base", ""))
    if not base.is_absolute():
        base = path / base
    if not (base / HF_CONFIG).is_file():
        raise ModelLoadError(f"the adapter {path} was trained on {meta.get('base')!r}, which is not a model directory "
                             "any more; put the base checkpoint back there")
    return meta, base


def saved_generation_defaults(path: str | os.PathLike) -> GenerationDefaults | None:
    """The decoding defaults a model directory saved, read before any weight: its own
    generation_config.json, else - an adapter directory - its base's (what `load` gives the model).
    `ModelLoadError` for a bad file."""
    found = read_generation_defaults(path)
    if found is None:  # an adapter: its base's; a published checkpoint: its layout's own decoding
        found = read_generation_defaults(read_adapter(path)[1]) if is_adapter_dir(path) else _published(path)[0]
    return found


def generation_presets(path: str | os.PathLike) -> dict[str, GenerationDefaults]:
    """The named decoding modes a model directory's layout offers (``--preset NAME``; e.g. LLaDA 2.1's
    "quality" and "speed"), an adapter's those of its base; {} when it offers none. Configs only."""
    return _published(read_adapter(path)[1] if is_adapter_dir(path) else path)[1]


def _published(path: str | os.PathLike) -> tuple[GenerationDefaults | None, dict[str, GenerationDefaults]]:
    try:
        found = detect(path)
    except ModelLoadError:  # not a checkpoint layout (a family's model): the loader says what it is
        return None, {}
    return published_generation(found)


def load_adapter(path: str | os.PathLike, *, merge: bool = False, dtype: torch.dtype | str | None = torch.float32,
                 cls: type | None = None, **overrides: Any) -> Any:
    """The model of an adapter directory: its base with the adapters applied.

    A diffusion adapter gives a DLM (class ``cls``, default `difflm.model.DiffusionLM`; its conventions
    as trained, updated by ``overrides``; the adapter's tokenizer); an AR adapter a transformers causal
    LM. With ``merge`` the adapters are folded into the weights (a plain backbone, the same logits up to
    float rounding); without, the backbone is peft's wrapper and computes exactly what training computed."""
    lora = peft()
    meta, base = read_adapter(path)
    if meta.get("loss") == "diffusion":
        model = load_dlm(cls, base, dtype=dtype, **{**(meta.get("diffusion") or {}), **overrides})
        tokenizer = load_tokenizer(Path(path))
        if tokenizer is not None:
            model.tokenizer = tokenizer
        defaults = read_generation_defaults(path)  # the adapter's own decoding settings, else its base's
        if defaults is not None:
            model.generation_defaults = defaults
        with quiet_peft():
            model.model = lora.PeftModel.from_pretrained(model.model, str(path))
        if merge:
            model.model = model.model.merge_and_unload()
        return model.eval()
    if overrides:
        raise ModelLoadError(f"{path} holds LoRA adapters of an AR model (sft.loss ar): it takes no diffusion "
                             f"settings ({', '.join(sorted(overrides))})")
    backbone = load_causal_lm(base, dtype=dtype)
    with quiet_peft():
        backbone = lora.PeftModel.from_pretrained(backbone, str(path))
    if merge:
        backbone = backbone.merge_and_unload()
    return backbone.eval()


def load_adapter_as_dlm(path: str | os.PathLike, *, dtype: torch.dtype | str | None = None,
                        cls: type | None = None) -> Any:
    """What ``DiffusionLM.from_pretrained(ADAPTER)`` returns: the DLM with its adapters merged in."""
    meta, _ = read_adapter(path)
    if meta.get("loss") != "diffusion":
        raise ModelLoadError(f"{path} holds LoRA adapters of an AR model (sft.loss ar), not of a DLM; evaluate it with "
                             "`difflm eval --model` or load it with difflm.formats.load")
    return load_adapter(path, merge=True, dtype=dtype, cls=cls)


def load_adapter_dir(path: str | os.PathLike, *, format: str | None = None,
                     dtype: torch.dtype | str | None = torch.float32, cls: type | None = None,
                     **overrides: Any) -> LoadedModel:
    """The "adapter" kind of `registry.MODEL_KINDS`: the adapters merged into their base in memory, a DLM
    (format "difflm") or a plain causal LM (format "causal-lm"), as trained."""
    meta, base = read_adapter(path)
    model = load_adapter(path, merge=True, dtype=dtype, cls=cls, **overrides)
    reason = f"a LoRA adapter (rank {(meta.get('lora') or {}).get('r')}) on {base}, merged in memory"
    if meta.get("loss") == "diffusion":
        return LoadedModel("adapter", model, model.tokenizer, Path(path), "difflm", reason, meta=meta)
    return LoadedModel("adapter", model, load_tokenizer(Path(path)), Path(path), AR_FORMAT, reason,
                       autoregressive=True, meta=meta)
