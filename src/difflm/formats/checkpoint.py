"""What a checkpoint directory holds, read without loading a single tensor: config.json, the
safetensors headers (names, dtypes, shapes) and the tokenizer files.

Nothing here runs code shipped with a checkpoint: a tokenizer that names a custom class
(``auto_map``) is loaded with a stock transformers class instead, and transformers' interactive
"trust remote code?" prompt is never reached.
"""

from __future__ import annotations

import json
import os
import warnings
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from ..errors import ModelLoadError
from ..io import require_directory

WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
# safetensors header dtype names -> torch dtypes (the ones checkpoints of LMs use)
_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


@dataclass
class TensorInfo:
    """One stored tensor as its safetensors header describes it."""

    dtype: str  # safetensors name: "BF16", "F16", "F32", "I64", ...
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass
class Checkpoint:
    """What detection sees of a directory: its config.json and the headers of its weights."""

    path: Path
    hf_config: dict[str, Any]
    weight_files: list[Path]
    tensors: dict[str, TensorInfo] = field(default_factory=dict)
    has_difflm_config: bool = False

    @property
    def model_type(self) -> str | None:
        return self.hf_config.get("model_type")

    @property
    def architectures(self) -> list[str]:
        return list(self.hf_config.get("architectures") or [])

    @property
    def weight_keys(self) -> set[str]:
        return set(self.tensors)

    @property
    def stored_dtype(self) -> torch.dtype | None:
        """The floating dtype most of the stored numbers have (None if no floating tensor)."""
        counts: Counter[str] = Counter()
        for info in self.tensors.values():
            if info.dtype in _SAFETENSORS_DTYPES:
                counts[info.dtype] += info.numel
        return _SAFETENSORS_DTYPES[counts.most_common(1)[0][0]] if counts else None

    @property
    def stored_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.weight_files)

    def summary(self, limit: int = 4) -> str:
        """One line naming what was found, for errors about unrecognised layouts."""
        keys = sorted(self.tensors)
        shown = ", ".join(keys[:limit]) + (", ..." if len(keys) > limit else "")
        remote = " (custom code via auto_map)" if "auto_map" in self.hf_config else ""
        return (
            f"model_type {self.model_type!r}, architectures {self.architectures}{remote}, "
            f"{len(keys)} weights [{shown}]"
        )


def require_model_dir(path: str | os.PathLike) -> Path:
    """Return ``path`` as a Path if it is a directory with a config.json, else raise a clear error."""
    p = require_directory(path)
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
    if any(path.glob("*.bin")) or any(path.glob("*.pt")):
        raise ModelLoadError(f"{path} holds pickled weights (*.bin / *.pt); difflm reads safetensors only - convert them first")
    raise ModelLoadError(f"{path} holds no weights: expected {WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME}")


def inspect_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read config.json and the safetensors headers (names, dtypes, shapes; no tensor data)."""
    from safetensors import safe_open

    p = require_model_dir(path)
    try:
        hf_config = json.loads((p / "config.json").read_text())
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{p / 'config.json'} is not valid JSON: {exc}") from None
    files = weight_files(p)
    tensors: dict[str, TensorInfo] = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as handle:
                for key in handle.keys():
                    view = handle.get_slice(key)
                    tensors[key] = TensorInfo(view.get_dtype(), tuple(view.get_shape()))
        except Exception as exc:  # safetensors raises its own error types
            raise ModelLoadError(f"{f} is not a readable safetensors file: {exc}") from None
    return Checkpoint(p, hf_config, files, tensors, (p / "difflm_config.json").is_file())


def iter_tensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) from safetensors files one file at a time. The tensors are backed by
    a private memory map of the file: nothing is read until used, and writing to them never
    touches the file."""
    from safetensors import safe_open

    for f in files:
        with safe_open(str(f), framework="pt") as handle:
            for key in handle.keys():
                yield key, handle.get_tensor(key)


def load_tokenizer(path: str | os.PathLike, fallback: type | None = None) -> Any:
    """The tokenizer saved in ``path``, or None (with a warning) if there is none that loads.

    A tokenizer_config.json that points at custom code (``auto_map``) is not given to
    AutoTokenizer; ``tokenizer.json`` is loaded as a `PreTrainedTokenizerFast`, else the stock
    ``fallback`` class (e.g. Qwen2Tokenizer for Dream's vocab.json + merges.txt) reads the files.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    p = Path(path)
    if not any((p / name).is_file() for name in _TOKENIZER_FILES):
        return None
    attempts: list[type] = []
    # AutoTokenizer follows an auto_map in either file to custom code, and may stop to ask on stdin
    if "auto_map" not in _read_json(p / "tokenizer_config.json") and "auto_map" not in _read_json(p / "config.json"):
        attempts.append(AutoTokenizer)
    if (p / "tokenizer.json").is_file():
        attempts.append(PreTrainedTokenizerFast)
    if fallback is not None:
        attempts.append(fallback)
    errors = []
    for klass in attempts:
        try:
            with _quiet_transformers():  # "the class this checkpoint names differs from ..."
                return klass.from_pretrained(p)
        except Exception as exc:  # a broken tokenizer should not block loading the weights
            errors.append(f"{klass.__name__}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    warnings.warn(f"could not load the tokenizer in {p} ({'; '.join(errors) or 'custom code only'})", stacklevel=2)
    return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' warnings about a checkpoint's own class names while a stock class reads it."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(level)
