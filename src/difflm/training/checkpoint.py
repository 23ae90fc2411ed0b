"""Atomic training checkpoints: written to a staging directory, then renamed into place
(`difflm.atomic`), so an interruption at any moment leaves the previous checkpoint intact."""

from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any, Iterator

from ..atomic import atomic_directory
from ..errors import InputError

_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (those with trainer_state.json), oldest first."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and (p / "trainer_state.json").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(output_dir: str | Path) -> tuple[int, Path]:
    """(step, directory) of the newest checkpoint, or a clear error when there is none."""
    found = list_checkpoints(output_dir)
    if not found:
        raise InputError(f"--resume: no checkpoint in {checkpoint_root(output_dir)}; start without --resume")
    return found[-1]


class _DropSharedTensorNotice(logging.Filter):
    """accelerate warns "Removed shared tensor ..." when it stores weights tied to the embedding
    once - which is what a checkpoint of a tied model should do, so users need not see it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Removed shared tensor" not in record.getMessage()


@contextlib.contextmanager
def _quiet_tied_weights() -> Iterator[None]:
    logger, notice = logging.getLogger("accelerate.utils.other"), _DropSharedTensorNotice()
    logger.addFilter(notice)
    try:
        yield
    finally:
        logger.removeFilter(notice)


def save_checkpoint(accelerator: Any, output_dir: str | Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Save model/optimizer/RNG state (accelerate) + ``state`` as checkpoints/step-N, atomically.
    Must be called on every process; returns the final directory."""
    root = checkpoint_root(output_dir)
    final = root / f"step-{step:07d}"
    staging = root / f".step-{step:07d}.tmp"
    main = accelerator.is_main_process
    if main:
        shutil.rmtree(staging, ignore_errors=True)
    accelerator.wait_for_everyone()
    # Every process writes its part into the staging directory; the main process publishes it
    # after the others are done (the wait inside the block).
    with atomic_directory(final, staging=staging, publish=main) as tmp:
        with _quiet_tied_weights():
            accelerator.save_state(str(tmp), safe_serialization=True)
        accelerator.wait_for_everyone()
        if main:
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
    if main:
        for _, old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_trainer_state(directory: Path) -> dict[str, Any]:
    return json.loads((directory / "trainer_state.json").read_text())
