"""LoRA adapters (through peft) for supervised fine-tuning: attach, save, merge.

A LoRA run (``lora:`` in the training config) freezes the ``init`` checkpoint and trains low-rank
adapters on its linear layers (``target_modules``). Its ``output_dir/model`` is then an *adapter
directory*, small and loadable wherever a model directory is: a format of its own, read by
`difflm.formats.adapter` (``difflm.formats.load(ADAPTER)``, ``DiffusionLM.from_pretrained(ADAPTER)``,
``difflm eval --model ADAPTER``: the base with the adapters merged in memory; `load_adapter` keeps them
unmerged, the exact trained computation). ``lora.merge: true`` also writes ``output_dir/model-merged``,
a plain model directory; ``difflm convert ADAPTER OUT`` does the same later.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_directory
from ..errors import ConfigError
from ..formats import load_tokenizer
from ..formats.adapter import (  # the loading half lives with the format; re-exported for older imports
    ADAPTER_FILE,
    is_adapter_dir,
    load_adapter,
    load_adapter_as_dlm,
    peft,
    quiet_peft,
    read_adapter,
)

__all__ = ["ADAPTER_FILE", "attach_lora", "is_adapter_dir", "load_adapter", "load_adapter_as_dlm", "merge_adapter",
           "read_adapter", "save_adapter"]


def attach_lora(backbone: torch.nn.Module, settings: dict[str, Any]) -> torch.nn.Module:
    """``backbone`` (a transformers causal LM) with LoRA adapters on ``settings["target_modules"]``;
    only the adapters are trainable. Their initialisation draws from torch's global RNG (seeded by
    the trainer); the B matrices start at zero, so the model starts as the base."""
    lora = peft()
    config = lora.LoraConfig(r=settings["r"], lora_alpha=settings["alpha"], lora_dropout=settings["dropout"],
                             target_modules=settings["target_modules"], bias="none", task_type="CAUSAL_LM")
    try:
        with quiet_peft():
            return lora.get_peft_model(backbone, config)
    except ValueError as exc:  # no module matched target_modules, ...
        raise ConfigError(f"lora: {exc}") from None


def save_adapter(peft_model: Any, directory: str | os.PathLike, *, base: str, loss: str, tokenizer: Any,
                 diffusion: dict[str, Any] | None, settings: dict[str, Any]) -> Path:
    """Write an adapter directory (see `difflm.formats.adapter`), atomically."""
    with atomic_directory(directory) as tmp:
        peft_model.save_pretrained(tmp)
        (Path(tmp) / "README.md").unlink(missing_ok=True)  # peft's empty model-card template
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        meta = {"base": base, "loss": loss, "diffusion": diffusion, "lora": settings}
        (Path(tmp) / ADAPTER_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return Path(directory)


def merge_adapter(path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write the adapter directory ``path`` merged into its base as a plain model directory ``out``
    (difflm layout for a DLM, transformers layout for an AR model)."""
    meta, _ = read_adapter(path)
    model = load_adapter(path, merge=True)
    if meta.get("loss") == "diffusion":
        return model.save_pretrained(out)
    tokenizer = load_tokenizer(Path(path))
    with atomic_directory(out) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return Path(out)
