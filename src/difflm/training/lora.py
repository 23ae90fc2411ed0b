"""LoRA adapters (through peft) for supervised fine-tuning: attach, save, load, merge.

A LoRA run (``lora:`` in the training config) freezes the ``init`` checkpoint and trains low-rank
adapters on its linear layers (``target_modules``). Its ``output_dir/model`` is then an *adapter
directory*, small and loadable wherever a model directory is:

    adapter_config.json, adapter_model.safetensors   peft's own files (the adapters only)
    difflm_adapter.json                              the base checkpoint, the loss (diffusion | ar),
                                                     the DLM's conventions (DiffusionConfig)
    tokenizer files                                  the tokenizer trained with (chat template included)

``DiffusionLM.from_pretrained(ADAPTER)`` (so ``difflm generate``, ``difflm convert``, the server) and
``difflm eval --model ADAPTER`` load the base, apply the adapters and merge them in memory;
`load_adapter` keeps them unmerged (the exact trained computation). ``lora.merge: true`` also writes
``output_dir/model-merged``, a plain model directory; ``difflm convert ADAPTER OUT`` does the same
later. The base is recorded as a bundled model name or an absolute path: keep it where it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_directory
from ..errors import ConfigError, ModelLoadError

ADAPTER_FILE = "difflm_adapter.json"


def is_adapter_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an adapter directory written by a LoRA run."""
    return (Path(path) / ADAPTER_FILE).is_file()


@contextlib.contextmanager
def _quiet() -> Any:
    """peft asks transformers a deprecated question (is_gradient_checkpointing): not the user's concern."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def _peft() -> Any:
    try:
        import peft
    except ImportError:
        raise ConfigError("LoRA needs the peft package: pip install 'difflm[sft]'") from None
    return peft


def attach_lora(backbone: torch.nn.Module, settings: dict[str, Any]) -> torch.nn.Module:
    """``backbone`` (a transformers causal LM) with LoRA adapters on ``settings["target_modules"]``;
    only the adapters are trainable. Their initialisation draws from torch's global RNG (seeded by
    the trainer); the B matrices start at zero, so the model starts as the base."""
    peft = _peft()
    config = peft.LoraConfig(r=settings["r"], lora_alpha=settings["alpha"], lora_dropout=settings["dropout"],
                             target_modules=settings["target_modules"], bias="none", task_type="CAUSAL_LM")
    try:
        with _quiet():
            return peft.get_peft_model(backbone, config)
    except ValueError as exc:  # no module matched target_modules, ...
        raise ConfigError(f"lora: {exc}") from None


def save_adapter(peft_model: Any, directory: str | os.PathLike, *, base: str, loss: str, tokenizer: Any,
                 diffusion: dict[str, Any] | None, settings: dict[str, Any]) -> Path:
    """Write an adapter directory (see the module doc), atomically."""
    with atomic_directory(directory) as tmp:
        peft_model.save_pretrained(tmp)
        (Path(tmp) / "README.md").unlink(missing_ok=True)  # peft's empty model-card template
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        meta = {"base": base, "loss": loss, "diffusion": diffusion, "lora": settings}
        (Path(tmp) / ADAPTER_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return Path(directory)


def read_adapter(path: str | os.PathLike) -> tuple[dict[str, Any], Path]:
    """(difflm_adapter.json, the base directory) of an adapter directory."""
    from ..bundled import MODELS

    path = Path(path)
    try:
        meta = json.loads((path / ADAPTER_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path / ADAPTER_FILE} cannot be read: {exc}") from None
    base = MODELS.get(meta.get("base"), None) or Path(meta.get("base", ""))
    if not base.is_absolute():
        base = path / base
    if not (base / "config.json").is_file():
        raise ModelLoadError(f"the adapter {path} was trained on {meta.get('base')!r}, which is not a model directory "
                             "any more; put the base checkpoint back there")
    return meta, base


def load_adapter(path: str | os.PathLike, *, merge: bool = False, dtype: torch.dtype | str | None = torch.float32) -> Any:
    """The model of an adapter directory: its base with the adapters applied.

    A diffusion adapter gives a `DiffusionLM` (its conventions as trained, the adapter's tokenizer);
    an AR adapter a transformers causal LM. With ``merge`` the adapters are folded into the weights
    (a plain backbone, the same logits up to float rounding); without, the backbone is peft's
    wrapper and computes exactly what training computed."""
    from ..formats import load_tokenizer

    peft = _peft()
    meta, base = read_adapter(path)
    tokenizer = load_tokenizer(Path(path))
    if meta.get("loss") == "diffusion":
        from ..model import DiffusionLM

        model = DiffusionLM.from_pretrained(base, dtype=dtype, **(meta.get("diffusion") or {}))
        if tokenizer is not None:
            model.tokenizer = tokenizer
        with _quiet():
            model.model = peft.PeftModel.from_pretrained(model.model, str(path))
        if merge:
            model.model = model.model.merge_and_unload()
        return model.eval()
    from transformers import AutoModelForCausalLM

    backbone = AutoModelForCausalLM.from_pretrained(base, dtype=dtype or "auto")
    with _quiet():
        backbone = peft.PeftModel.from_pretrained(backbone, str(path))
    if merge:
        backbone = backbone.merge_and_unload()
    return backbone.eval()


def merge_adapter(path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write the adapter directory ``path`` merged into its base as a plain model directory ``out``
    (difflm layout for a DLM, transformers layout for an AR model)."""
    from ..formats import load_tokenizer
    from ..model import DiffusionLM

    model = load_adapter(path, merge=True)
    if isinstance(model, DiffusionLM):
        return model.save_pretrained(out)
    tokenizer = load_tokenizer(Path(path))
    with atomic_directory(out) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return Path(out)


def load_adapter_as_dlm(path: str | os.PathLike, *, dtype: torch.dtype | str | None = None) -> Any:
    """What ``DiffusionLM.from_pretrained(ADAPTER)`` returns: the DLM with its adapters merged in."""
    meta, _ = read_adapter(path)
    if meta.get("loss") != "diffusion":
        raise ModelLoadError(f"{path} holds LoRA adapters of an AR model (sft.loss ar), not of a DLM; evaluate it with "
                             "`difflm eval --model` or load it with difflm.training.lora.load_adapter")
    return load_adapter(path, merge=True, dtype=dtype)


def load_adapter_for_eval(path: str | os.PathLike, settings: Any, *, name: str,
                          dtype: torch.dtype | str | None = torch.float32) -> Any:
    """An `EvalLM` of an adapter directory (adapters merged in memory): AR or DLM as trained."""
    from ..evaluation.lm import AREvalLM, DiffusionEvalLM, Layout
    from ..formats import load_tokenizer

    meta, base = read_adapter(path)
    model = load_adapter(path, merge=True, dtype=dtype)
    reason = f"a LoRA adapter (rank {(meta.get('lora') or {}).get('r')}) on {base}, merged in memory"
    if meta.get("loss") == "diffusion":
        return DiffusionEvalLM(model, model.tokenizer, settings, name=name, layout=Layout("difflm", False, reason))
    return AREvalLM(model, load_tokenizer(Path(path)), settings, name=name, layout=Layout("causal-lm", False, reason))

