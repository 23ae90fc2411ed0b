"""Synthetic task suites for fine-tuning and evaluation: seeded, reproducible, and with train /
validation / test splits that never share a problem (`difflm.tasks.splits`).

| task | record | evaluation task |
|---|---|---|
| ``gsm`` | GSM8K's ``{"question", "answer"}``, the answer's last line ``#### <integer>`` | ``gsm8k=FILE`` |
| ``sudoku`` | ``{"puzzle": 81 chars (0 = blank), "solution": 81 digits}`` | ``sudoku=FILE`` |
| ``countdown`` | ``{"numbers": [...], "target": T, "solution": "x op y = z" lines}`` | ``countdown=FILE`` |

``difflm data make TASK --n N --seed S --split train --out FILE`` writes them (docs/tasks.md);
`difflm.tasks.formatting` turns any record into the prompt and response a model is fine-tuned on.
This package imports neither torch nor transformers.
"""

from __future__ import annotations

import json
import os
import random
import re
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text
from ..errors import InputError
from ..registry import DATA_TASKS
from .generators import TaskGenerator
from .splits import SPLITS, split_of

# name -> TaskGenerator (settings class, generator): `difflm.registry.DATA_TASKS` resolved, the one table
# the command line offers too (`keyed_examples` reads the registry itself, so a task registered later counts)
GENERATORS: dict[str, TaskGenerator] = dict(DATA_TASKS.items())


def parse_range(text: str | int | tuple[int, int], name: str) -> tuple[int, int]:
    """"3" -> (3, 3), "2-5" -> (2, 5); an (int, int) pair passes through."""
    if isinstance(text, tuple):
        return text
    if isinstance(text, int) and not isinstance(text, bool):
        return (text, text)
    found = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", str(text))
    if not found:
        raise InputError(f"{name} must be a number or a range LOW-HIGH, got {text!r}")
    low = int(found.group(1))
    high = int(found.group(2)) if found.group(2) else low
    if low > high:
        raise InputError(f"{name}: {low}-{high} is an empty range (LOW must be <= HIGH)")
    return low, high


def make_examples(task: str, n: int, *, seed: int = 0, split: str = "train", **knobs: Any) -> list[dict[str, Any]]:
    """``n`` distinct examples of ``task`` from ``split``: the same arguments always give the same
    examples, and the splits never share a problem.

    knobs: the task's settings - gsm: ``steps``, ``numbers``, ``sums``; sudoku: ``blanks``, ``unique``;
    countdown: ``count``, ``numbers`` (ranges as (low, high) or "LOW-HIGH")."""
    return [record for _, record in keyed_examples(task, n, seed=seed, split=split, **knobs)]


def keyed_examples(task: str, n: int, *, seed: int = 0, split: str = "train",
                   **knobs: Any) -> list[tuple[str, dict[str, Any]]]:
    """`make_examples` with each example's key (what the split is decided on, `difflm.tasks.splits`)."""
    if task not in DATA_TASKS:
        raise InputError(f"unknown task {task!r}; choose one of {', '.join(DATA_TASKS)}")
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"--n must be an integer >= 1, got {n!r}")
    settings_class, generate = DATA_TASKS.get(task)
    fields = settings_class.__dataclass_fields__
    unknown = sorted(set(knobs) - set(fields))
    if unknown:
        raise InputError(f"task {task} has no setting(s) {', '.join(unknown)}; its settings: {', '.join(fields)}")
    knobs = {k: (parse_range(v, k) if isinstance(fields[k].default, tuple) else v) for k, v in knobs.items()}
    settings = settings_class(**knobs)
    rng = random.Random(f"difflm:{task}:{split}:{seed}")  # str seeds hash with SHA-512: same on every run
    seen: set[str] = set()
    tries = 0

    def accept(key: str) -> bool:
        nonlocal tries
        tries += 1
        if tries > 10_000 + 1_000 * n:
            raise InputError(f"task {task}: found only {len(seen)} distinct {split} problems with these settings; "
                             f"ask for fewer (--n) or widen the settings")
        return key not in seen and split_of(key) == split

    out = []
    while len(out) < n:
        key, record = generate(rng, settings, accept)
        seen.add(key)
        out.append((key, record))
    return out


def write_jsonl(records: list[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Write one JSON object per line, atomically (a temporary file renamed into place)."""
    return atomic_write_text(path, "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))


__all__ = [
    "GENERATORS", "SPLITS", "TaskGenerator", "keyed_examples", "make_examples", "parse_range", "split_of", "write_jsonl",
]
