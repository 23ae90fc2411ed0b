"""Files and directories, torch-free: JSONL, bundled model names, tokenizer directories, and what a
model directory holds.

This is a foundation module (it imports only `difflm.errors`, `difflm.bundled` and `difflm.registry`,
never torch or transformers), so the command line, the data tools and every layer above can answer
"which file is this?" and "what kind of directory is this?" without loading a model:

* `read_jsonl`: the one JSONL (and .jsonl.gz) reader, with ``file:line`` errors;
* `resolve_model` / `require_model`: a bundled name (``dlm-adapted``) or a path, as a directory;
* `tokenizer_dir`: a tokenizer spec (``"bundled"`` or a directory) as a directory;
* the marker file names, and `directory_kind`: the first `registry.MODEL_KINDS` entry whose marker
  file is in a directory (an adapter, a continuous DLM, ...), else ``"checkpoint"`` (a transformers
  layout that `difflm.formats` detects from config.json and the weight names).
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import IO, Any, Iterator

from .bundled import MODELS, TOKENIZER_DIR, resolve_model
from .errors import InputError, ModelLoadError
from .registry import MODEL_KINDS

__all__ = [
    "ADAPTER_FILE", "CHECKPOINT", "DIFFLM_CONFIG", "HF_CONFIG", "TASK_FILE", "directory_kind", "has_marker",
    "open_text", "read_jsonl", "require_directory", "require_file", "require_model", "resolve_model", "tokenizer_dir",
]

# -- the files that say what a directory is ------------------------------------------------------------
HF_CONFIG = "config.json"  # a transformers checkpoint's own config
DIFFLM_CONFIG = "difflm_config.json"  # difflm's layout: the DiffusionConfig beside config.json
ADAPTER_FILE = "difflm_adapter.json"  # a LoRA adapter directory (difflm.formats.adapter)
TASK_FILE = "task.json"  # the task a model was fine-tuned on (difflm.tasks.model_task)
CHECKPOINT = "checkpoint"  # the kind of a directory with no marker: a layout of registry.FORMATS


# -- JSONL -----------------------------------------------------------------------------------------------
def open_text(path: Path) -> IO[str]:
    """``path`` opened for reading text (UTF-8), gunzipped when it ends in .gz."""
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")


def require_file(path: str | os.PathLike) -> Path:
    """``path`` as a Path if it is a file, else an `InputError` that says to point at local data."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such file; pass the path of a local copy of the data")
    return p


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for every non-blank line of a JSONL (or .jsonl.gz) file; a line that
    is not a JSON object is an `InputError` naming ``file:line``."""
    p = require_file(path)
    with open_text(p) as handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{p}:{lineno}: not valid JSON ({exc.msg}); fix or remove the line") from None
            if not isinstance(obj, dict):
                raise InputError(f"{p}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


# -- model names and tokenizer specs ---------------------------------------------------------------------
def require_model(name_or_path: str | os.PathLike) -> Path:
    """The directory of a bundled model name or a path; `ModelLoadError` when a bundled model is not
    built yet or nothing is at the path."""
    path = resolve_model(name_or_path)
    if str(name_or_path) in MODELS and not path.is_dir():
        raise ModelLoadError(f"bundled model {str(name_or_path)!r} is not built yet ({path} is missing); pass --model DIR")
    if not path.exists():
        raise ModelLoadError(f"no model at {path}; pass a model directory or a bundled name "
                             "(ar-base, dlm-adapted, dlm-scratch)")
    return path


def require_directory(path: str | os.PathLike) -> Path:
    """``path`` as a Path if it is a directory, else `ModelLoadError` saying to point at a model directory."""
    p = Path(path)
    if not p.is_dir():
        raise ModelLoadError(f"{p} is not a directory; point to a model directory (config.json + weights)")
    return p


def tokenizer_dir(spec: str | os.PathLike) -> Path:
    """The directory of a tokenizer spec: ``"bundled"`` (difflm's bundled tokenizer) or a directory;
    `InputError` when it is not a directory."""
    path = TOKENIZER_DIR if str(spec) == "bundled" else Path(spec)
    if not path.is_dir():
        raise InputError(f"tokenizer directory {path} not found")
    return path


# -- what a directory holds ------------------------------------------------------------------------------
def has_marker(path: str | os.PathLike, kind: str) -> bool:
    """Whether ``path`` holds the marker file of the `registry.MODEL_KINDS` entry ``kind``."""
    marker = MODEL_KINDS.entry(kind).meta.get("marker")
    return bool(marker) and (Path(path) / marker).is_file()


def directory_kind(path: str | os.PathLike) -> str:
    """The kind of model directory ``path`` is: the first `registry.MODEL_KINDS` entry whose marker file
    it holds (``"adapter"``, ``"continuous"``, ...), else ``"checkpoint"`` (config.json + weights in one
    of the layouts of `registry.FORMATS`, told apart by `difflm.formats.detect`)."""
    for kind in MODEL_KINDS.names():
        if has_marker(path, kind):
            return kind
    return CHECKPOINT
