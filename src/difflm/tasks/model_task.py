"""Which task a fine-tuned model was trained on, so that `difflm generate` can take a task's own input.

SFT on files of one task layout (gsm, sudoku, countdown) writes ``task.json`` next to the weights::

    {"task": "sudoku"}

and ``difflm generate --model dlm-sudoku PUZZLE`` then takes an 81-character puzzle (digits, 0 or . for
a blank), builds the prompt the model was trained on, decodes as many tokens as an answer needs and
says whether the grid solves the puzzle; ``--model dlm-gsm "QUESTION"`` writes the worked answer.
A plain text model has no ``task.json`` and generate continues its prompt as before.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import InputError
from ..io import TASK_FILE
from . import sudoku
from .formatting import GSM_PROMPT

MODEL_TASKS = ("gsm", "sudoku", "countdown")  # the tasks a fine-tuned model may carry in its task.json


def write_model_task(directory: str | os.PathLike, task: str) -> Path:
    """Record ``task`` (one of `MODEL_TASKS`) in ``directory``/task.json."""
    if task not in MODEL_TASKS:
        raise ValueError(f"unknown task {task!r}; one of {', '.join(MODEL_TASKS)}")
    path = Path(directory) / TASK_FILE
    path.write_text(json.dumps({"task": task}) + "\n", "utf-8")
    return path


def read_model_task(directory: str | os.PathLike) -> str | None:
    """The task ``directory`` was fine-tuned on, or None (no task.json: a general text model)."""
    path = Path(directory) / TASK_FILE
    if not path.is_file():
        return None
    try:
        task = json.loads(path.read_text("utf-8")).get("task")
    except (json.JSONDecodeError, AttributeError):
        raise InputError(f"{path} is not a task file ({{\"task\": \"sudoku\"}})") from None
    if task not in MODEL_TASKS:
        raise InputError(f"{path}: unknown task {task!r}; one of {', '.join(MODEL_TASKS)}")
    return task


def parse_puzzle(text: str) -> str:
    """A puzzle typed by a user -> 81 chars, 0 = blank. Accepts digits with 0, '.', '_' or 'X' for
    blanks; spaces, line breaks and the '|' / '-' / '+' of drawn grids are ignored."""
    cells = [c for c in text if not c.isspace() and c not in "|-+"]
    cells = ["0" if c in "0._xX" else c for c in cells]
    if len(cells) != 81 or any(c not in "0123456789" for c in cells):
        bad = sorted({c for c in cells if c not in "0123456789"})
        what = f"characters {' '.join(map(repr, bad))}" if bad else f"{len(cells)} cells"
        raise InputError(f"a sudoku puzzle is 81 cells, row-major, digits with 0 or . for a blank; got {what}")
    return "".join(cells)


def task_prompt(task: str, text: str) -> str:
    """The prompt a model fine-tuned on ``task`` was trained on, for the user's input ``text``
    (a sudoku puzzle; a word problem's question)."""
    if task == "sudoku":
        return sudoku.sudoku_prompt(parse_puzzle(text))
    if task == "gsm":
        return GSM_PROMPT.format(question=text.strip())
    raise InputError(f"difflm generate takes no {task} input yet; pass the prompt text the model was trained on "
                     "with a general model, or use `difflm eval --tasks {task}=FILE`")


def sudoku_verdict(puzzle_text: str, output: str) -> str:
    """One line on the grid a model wrote for ``puzzle_text``: solved, or what is wrong with it."""
    puzzle = parse_puzzle(puzzle_text)
    grid = sudoku.parse_grid(output)
    if grid is None:
        return "not solved: fewer than 81 cells written"
    if sudoku.solves(puzzle, grid):
        return "solved: a valid grid that keeps every given digit"
    if not sudoku.keeps_givens(puzzle, grid):
        return "not solved: a given digit was changed"
    return "not solved: a row, column or box repeats a digit"


@dataclass(frozen=True)
class TaskDefaults:
    """How `difflm generate` runs a task model unless told otherwise: new tokens (``length``), the
    commit strategy, whether a row stops at its EOS (answers of varying length), and ``verdict``:
    (the user's input, the model's answer) -> one line on whether the answer is right (None: no check)."""

    length: int
    strategy: str
    stop_at_eos: bool
    verdict: Callable[[str, str], str] | None = None


# what the command line needs to know of each task lives here, so it names none of them
DEFAULTS = {
    # the grid (81 cells + 8 line breaks) and EOS; easy-first order (Kim et al. 2025)
    "sudoku": TaskDefaults(90, "topk_margin", False, verdict=sudoku_verdict),
    # the longest answer is 115 tokens with EOS; prompts are at most 90 tokens of the 208-token context
    "gsm": TaskDefaults(118, "low_confidence", True),
    "countdown": TaskDefaults(64, "low_confidence", True),
}
