"""Directories written atomically: a model or checkpoint directory is built beside its target
and renamed into place, so an interruption at any moment leaves either the old directory or the
new one, never a half-written mix. Used by `DiffusionLM.save_pretrained`, the trainer's model
saves and its checkpoints. Files too (`atomic_write_text`): reports, data splits, results."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


def replace_directory(src: Path, target: Path) -> None:
    """Move directory ``src`` to ``target``, replacing any existing ``target`` with two renames."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(src, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file renamed into place: a reader (or a
    resumed run) sees the old file or the new one, never half of one."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)
    return out


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, *, staging: str | os.PathLike | None = None,
                     publish: bool = True) -> Iterator[Path]:
    """Yield an empty staging directory beside ``target``; when the block ends without an error
    it replaces ``target`` (if ``publish``), otherwise it is removed and ``target`` is untouched.

    ``staging`` names the staging directory (default: a fresh private name), for writers in
    several processes that must agree on it; ``publish=False`` lets all but one of them write
    without renaming."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if staging is None:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a model directory should not be
    else:
        tmp = Path(staging)
        tmp.mkdir(parents=True, exist_ok=True)
    try:
        yield tmp
        if publish:
            replace_directory(tmp, target)
    finally:
        if publish:
            shutil.rmtree(tmp, ignore_errors=True)
