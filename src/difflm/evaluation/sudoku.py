"""The ``sudoku`` task: solve 9x9 puzzles (``difflm data make sudoku``), scored by the rules.

Examples are ``{"puzzle": "<81 chars, 0 = blank>", "solution": "<81 digits>"}`` lines (the solution is
optional). The model is prompted with `difflm.tasks.sudoku.sudoku_prompt` - the prompt SFT trains on -
and writes the grid (89 tokens with the bundled tokenizer) and EOS. The first 81 non-space characters
it writes are its grid; a puzzle counts as solved when that grid is a valid complete grid that keeps
every given digit: any valid solution counts, not only the stored one.

Metrics: ``acc`` (solved), accuracy by number of blanks (``acc_blanks_K``; ranges ``acc_blanks_LO-HI``
when the file has more than ten different counts), ``valid_grid`` (a valid complete grid, givens kept
or not) and ``cell_acc`` (blank cells equal to the stored solution's; puzzles that have one).
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from ..errors import InputError
from ..tasks.sudoku import check_record, is_valid_grid, parse_grid, solves, sudoku_prompt, sudoku_response
from .data import read_jsonl
from .lm import EvalLM
from .stats import mean_stderr
from .task_base import Outcome, Task

MAX_BUCKETS = 10


@dataclass(frozen=True)
class SudokuExample:
    puzzle: str
    solution: str | None = None

    @property
    def blanks(self) -> int:
        return self.puzzle.count("0")


def load_sudoku(path: str | os.PathLike) -> list[SudokuExample]:
    """Puzzles of a JSONL file; `InputError` naming the file and line of a malformed one."""
    out = []
    for lineno, obj in read_jsonl(path):
        where = f"{path}:{lineno}"
        if "puzzle" not in obj:
            raise InputError(f"{where}: missing field puzzle (this layout needs puzzle, and optionally solution)")
        puzzle, solution = check_record(obj["puzzle"], obj.get("solution"), where=where)
        out.append(SudokuExample(puzzle, solution))
    if not out:
        raise InputError(f"{path}: no examples")
    return out


def blank_buckets(counts: list[int]) -> dict[int, str]:
    """Metric suffix of every number of blanks: the number itself, or a range when there are more than
    `MAX_BUCKETS` different numbers."""
    distinct = sorted(set(counts))
    if len(distinct) <= MAX_BUCKETS:
        return {b: str(b) for b in distinct}
    low, high = distinct[0], distinct[-1]
    width = math.ceil((high - low + 1) / MAX_BUCKETS)

    def name(b: int) -> str:
        first = low + (b - low) // width * width
        last = min(high, first + width - 1)
        return str(first) if first == last else f"{first}-{last}"

    return {b: name(b) for b in distinct}


class SudokuTask(Task):
    """Sudoku protocol (examples: `SudokuExample`): greedy generation of the grid, rule-based check."""

    primary = "acc"

    def evaluate(self, lm: EvalLM, examples: list[SudokuExample]) -> Outcome:
        budget = len(lm.encode(sudoku_response("1" * 81))) + 1  # the grid and EOS
        prompts = [lm.bos + lm.encode(sudoku_prompt(ex.puzzle)) for ex in examples]
        longest = max(len(p) for p in prompts)
        if lm.max_length is not None and longest + budget > lm.max_length:
            raise InputError(f"a sudoku prompt ({longest} tokens) and its grid ({budget}) do not fit the model's "
                             f"context of {lm.max_length}")
        texts = [lm.decode(ids) for ids in lm.generate(prompts, budget)]
        grids = [parse_grid(t) for t in texts]
        solved = [solves(ex.puzzle, g) for ex, g in zip(examples, grids)]
        metrics = {"acc": mean_stderr(solved)}
        buckets = blank_buckets([ex.blanks for ex in examples])
        by_blanks: dict[str, list[bool]] = defaultdict(list)
        for ex, ok in zip(examples, solved):
            by_blanks[buckets[ex.blanks]].append(ok)
        for name in sorted(by_blanks, key=lambda s: int(s.split("-")[0])):
            metrics[f"acc_blanks_{name}"] = mean_stderr(by_blanks[name])
        metrics["valid_grid"] = mean_stderr(g is not None and is_valid_grid(g) for g in grids)
        cells = []
        for ex, g in zip(examples, grids):
            if ex.solution is not None:
                blanks = [i for i, c in enumerate(ex.puzzle) if c == "0"]
                cells.append(sum(g is not None and g[i] == ex.solution[i] for i in blanks) / max(1, len(blanks)))
        if cells:
            metrics["cell_acc"] = mean_stderr(cells)
        samples: list[dict[str, Any]] = [
            {"puzzle": ex.puzzle, "blanks": ex.blanks, "prediction": g or t[:200], "solved": ok}
            for ex, g, t, ok in zip(examples, grids, texts, solved)]
        protocol = {"max_new_tokens": budget, "decoding": "greedy; the first 81 non-space characters are the grid",
                    "solved": "a valid complete grid keeping every given digit (any valid solution counts)",
                    "blanks": {name: len(v) for name, v in by_blanks.items()}}
        return Outcome(metrics, protocol, samples)
