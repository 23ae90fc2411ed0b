"""Checkpoint layouts: detection and loading of local directories onto stock transformers classes.

Each layout ("format") is a small module with ``detect(ckpt) -> bool`` and
``load(cls, ckpt, dtype, attn_implementation, overrides) -> DiffusionLM``. Detection looks at
config.json and the weight keys, never at the directory name. Order matters: the first format
whose ``detect`` accepts the checkpoint wins; the plain causal LM is the fallback.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch

from ..errors import ModelLoadError

if TYPE_CHECKING:
    from ..model import DiffusionLM

WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


@dataclass
class Checkpoint:
    """What detection sees of a directory: its config.json and the names of its weights."""

    path: Path
    hf_config: dict[str, Any]
    weight_files: list[Path]
    weight_keys: set[str] = field(default_factory=set)
    has_difflm_config: bool = False

    @property
    def model_type(self) -> str | None:
        return self.hf_config.get("model_type")


def require_model_dir(path: str | os.PathLike) -> Path:
    """Return ``path`` as a Path if it is a directory with a config.json, else raise a clear error."""
    p = Path(path)
    if not p.is_dir():
        raise ModelLoadError(f"{p} is not a directory; point to a model directory (config.json + weights)")
    if not (p / "config.json").is_file():
        raise ModelLoadError(f"{p} holds no model: config.json is missing")
    return p


def weight_files(path: Path) -> list[Path]:
    """The safetensors files of a checkpoint: one file, or the shards its index names."""
    index = path / WEIGHTS_INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise ModelLoadError(f"{index} is not a valid safetensors index: {exc}") from None
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            raise ModelLoadError(f"{path} is missing shard(s) named in its index: {', '.join(missing)}")
        return [path / s for s in shards]
    single = path / WEIGHTS_NAME
    if single.is_file():
        return [single]
    found = sorted(path.glob("*.safetensors"))
    if found:
        return found
    raise ModelLoadError(f"{path} holds no weights: expected {WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME}")


def inspect_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read config.json and the weight names (safetensors headers only, no tensors)."""
    from safetensors import safe_open

    p = require_model_dir(path)
    try:
        hf_config = json.loads((p / "config.json").read_text())
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{p / 'config.json'} is not valid JSON: {exc}") from None
    files = weight_files(p)
    keys: set[str] = set()
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as handle:
                keys.update(handle.keys())
        except Exception as exc:  # safetensors raises its own error types
            raise ModelLoadError(f"{f} is not a readable safetensors file: {exc}") from None
    return Checkpoint(p, hf_config, files, keys, (p / "difflm_config.json").is_file())


def iter_tensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) from safetensors files one file at a time."""
    from safetensors import safe_open

    for f in files:
        with safe_open(str(f), framework="pt") as handle:
            for key in handle.keys():
                yield key, handle.get_tensor(key)


def load_tokenizer(path: str | os.PathLike) -> Any:
    """The tokenizer saved in ``path``, or None if the directory has none."""
    p = Path(path)
    if not any((p / name).is_file() for name in _TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(p)
    except Exception as exc:  # a broken tokenizer should not block loading the weights
        import warnings

        warnings.warn(f"could not load the tokenizer in {p}: {exc}", stacklevel=2)
        return None


# -- the registry ----------------------------------------------------------------------------------
Detector = Callable[[Checkpoint], bool]
Loader = Callable[..., "DiffusionLM"]
FORMATS: dict[str, tuple[Detector, Loader]] = {}


def register_format(name: str, detect: Detector, load: Loader) -> None:
    FORMATS[name] = (detect, load)


def detect_format(path: str | os.PathLike) -> str:
    """Name of the layout of a checkpoint directory (see `FORMATS`)."""
    ckpt = inspect_checkpoint(path)
    for name, (detect, _) in FORMATS.items():
        if detect(ckpt):
            return name
    raise ModelLoadError(f"{path}: unknown checkpoint layout; supported: {', '.join(FORMATS)}")


def load_checkpoint(
    cls: type["DiffusionLM"],
    path: str | os.PathLike,
    *,
    format: str | None = None,
    dtype: torch.dtype | str | None = None,
    attn_implementation: str = "sdpa",
    **overrides: Any,
) -> "DiffusionLM":
    """Detect (or take) the layout of ``path`` and load it as a `DiffusionLM`."""
    ckpt = inspect_checkpoint(path)
    if format is None:
        format = next((name for name, (detect, _) in FORMATS.items() if detect(ckpt)), None)
        if format is None:
            raise ModelLoadError(f"{path}: unknown checkpoint layout; supported: {', '.join(FORMATS)}")
    elif format not in FORMATS:
        raise ModelLoadError(f"unknown format {format!r}; supported: {', '.join(FORMATS)}")
    _, load = FORMATS[format]
    return load(cls, ckpt, dtype=dtype, attn_implementation=attn_implementation, overrides=overrides)


from . import causal_lm, diffugpt, native  # noqa: E402  (registration order = detection order)

register_format("difflm", native.detect, native.load)
register_format("diffugpt", diffugpt.detect, diffugpt.load)
register_format("causal-lm", causal_lm.detect, causal_lm.load)
