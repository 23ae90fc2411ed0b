"""Verifiable rewards from the task checkers of `difflm.tasks`: exact answers and answer formats.

Every reward is ``reward(prompt, completion, /, **example_fields) -> float`` in [0, 1], where the
example fields are the task record the prompt was made from (``difflm data make``): gsm
``{"question", "answer"}``, sudoku ``{"puzzle", "solution"}``, countdown ``{"numbers", "target"}``.
Each reward agrees with its evaluation task's metric on the same text, so a reward's mean over held-out
problems is the accuracy ``difflm eval`` reports:

| reward | 1.0 when | eval metric |
|---|---|---|
| ``gsm_correct`` | the number after ``####`` (else the last number) equals the record's ``#### <n>`` | ``gsm8k`` exact_match |
| ``sudoku_solved`` | the first 81 non-space symbols are a valid grid keeping every given | ``sudoku`` acc |
| ``sudoku_valid`` | ... a valid complete grid, givens kept or not | ``sudoku`` valid_grid |
| ``sudoku_cells`` | partial credit: the share of blank cells filled as the stored solution (1.0 if solved) | ``sudoku`` cell_acc |
| ``countdown_solved`` | the steps use every number once, are correct and end at the target | ``countdown`` acc |
| ``*_format`` | the completion is in the task's answer layout, right or wrong | - |
| ``correct`` / ``format`` | the task's reward above, the task told by the record's fields (`task_correct`, `task_format`) | - |

Torch-free (it imports `difflm.tasks` only).
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import InputError
from ..tasks import countdown, gsm, sudoku

_GSM_STOPS = ("\n\nQuestion:", "\nQuestion:")  # where the gsm8k evaluation cuts a generation
_GSM_FINAL = re.compile(r"^\s*####\s*-?\$?\d[\d,]*(?:\.\d+)?\s*$", re.MULTILINE)
_COUNTDOWN_STEP = re.compile(r"^\s*\d+\s*[-+*/]\s*\d+\s*=\s*\d+\s*$")


def gsm_extract(completion: str) -> str | None:
    """The final answer of a gsm completion as the ``gsm8k`` evaluation reads it: the text cut at the next
    "Question:", then `difflm.tasks.gsm.extract_answer` (the number after '####', else the last number)."""
    return gsm.extract_answer(min((completion.split(stop)[0] for stop in _GSM_STOPS), key=len))


def _field(fields: dict[str, Any], name: str, reward: str) -> Any:
    if name not in fields:
        raise InputError(f"reward {reward} needs the example's {name!r} field; it got {', '.join(fields) or 'none'}")
    return fields[name]


def gsm_correct(prompt: str, completion: str, /, **fields: Any) -> float:
    """1.0 when the completion's final answer equals the record's (``answer``: GSM8K's "... #### 42" or a number)."""
    answer = str(_field(fields, "answer", "gsm_correct"))
    want = gsm.canonical_number(answer.split("####")[-1])
    got = gsm_extract(completion)
    return float(got is not None and got == want)


def gsm_format(prompt: str, completion: str, /, **fields: Any) -> float:
    """1.0 when the completion (cut at the next "Question:") has a line ``#### <number>``."""
    text = min((completion.split(stop)[0] for stop in _GSM_STOPS), key=len)
    return float(_GSM_FINAL.search(text) is not None)


def sudoku_solved(prompt: str, completion: str, /, **fields: Any) -> float:
    """1.0 when the grid written (its first 81 non-space symbols) solves the record's ``puzzle``."""
    puzzle = _field(fields, "puzzle", "sudoku_solved")
    return float(sudoku.solves(puzzle, sudoku.parse_grid(completion)))


def sudoku_valid(prompt: str, completion: str, /, **fields: Any) -> float:
    """1.0 when the grid written is a valid complete sudoku grid (the givens kept or not)."""
    grid = sudoku.parse_grid(completion)
    return float(grid is not None and sudoku.is_valid_grid(grid))


def sudoku_cells(prompt: str, completion: str, /, **fields: Any) -> float:
    """Partial credit: the share of the puzzle's blank cells written as in the record's ``solution``
    (solved by `difflm.tasks.sudoku.solve` when the record has none); 1.0 for any grid that solves it."""
    puzzle = _field(fields, "puzzle", "sudoku_cells")
    grid = sudoku.parse_grid(completion)
    if sudoku.solves(puzzle, grid):
        return 1.0
    solution = fields.get("solution") or sudoku.solve(puzzle)
    blanks = [i for i, c in enumerate(puzzle) if c == "0"]
    if grid is None or solution is None or not blanks:
        return 0.0
    return sum(grid[i] == solution[i] for i in blanks) / len(blanks)


def sudoku_format(prompt: str, completion: str, /, **fields: Any) -> float:
    """1.0 when the completion's first 81 non-space symbols are digits 1-9 (a full grid, right or wrong)."""
    grid = sudoku.parse_grid(completion)
    return float(grid is not None and all(c in sudoku.DIGITS for c in grid))


def countdown_solved(prompt: str, completion: str, /, **fields: Any) -> float:
    """1.0 when the steps reach ``target`` using each of ``numbers`` once (`difflm.tasks.countdown.solves`)."""
    numbers = _field(fields, "numbers", "countdown_solved")
    target = _field(fields, "target", "countdown_solved")
    return float(countdown.solves(list(numbers), target, completion))


def countdown_format(prompt: str, completion: str, /, **fields: Any) -> float:
    """1.0 when every non-empty line is a step ``x op y = z`` and there is one step fewer than ``numbers``
    (at least one step when the record has no ``numbers``), whatever the arithmetic."""
    lines = [line for line in completion.strip().split("\n") if line.strip()]
    want = len(fields["numbers"]) - 1 if "numbers" in fields else max(1, len(lines))
    return float(len(lines) == want and all(_COUNTDOWN_STEP.match(line) for line in lines))


def _task_of(fields: dict[str, Any], reward: str) -> str:
    """The task an example belongs to, told by its fields (the layouts of `difflm.tasks.formatting`)."""
    if "puzzle" in fields:
        return "sudoku"
    if "numbers" in fields and "target" in fields:
        return "countdown"
    if "answer" in fields:
        return "gsm"
    raise InputError(f"reward {reward} knows gsm (answer), sudoku (puzzle) and countdown (numbers, target) "
                     f"examples; this one has {', '.join(fields) or 'no fields'}")


_CORRECT = {"gsm": gsm_correct, "sudoku": sudoku_solved, "countdown": countdown_solved}
_FORMAT = {"gsm": gsm_format, "sudoku": sudoku_format, "countdown": countdown_format}


def task_correct(prompt: str, completion: str, /, **fields: Any) -> float:
    """The exact-answer reward of the example's task (gsm_correct, sudoku_solved or countdown_solved)."""
    return _CORRECT[_task_of(fields, "correct")](prompt, completion, **fields)


def task_format(prompt: str, completion: str, /, **fields: Any) -> float:
    """The format reward of the example's task (gsm_format, sudoku_format or countdown_format)."""
    return _FORMAT[_task_of(fields, "format")](prompt, completion, **fields)
