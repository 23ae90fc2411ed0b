"""9x9 Sudoku: random grids, puzzles with a chosen number of blanks, a solver, the checker and the
text layout models read and write.

Records are ``{"puzzle": "<81 chars, row-major, 0 = blank>", "solution": "<81 digits>"}``.

Text layout (one token per cell with the bundled BPE tokenizer). That tokenizer merges runs of
digits ("00", "45") and has no " 0" token, so a digit string or "0 0 7" would give a variable
number of tokens per cell. Every cell is therefore written as a space and one symbol - " 1" ...
" 9", and " X" for a blank, all single tokens - nine cells per line, lines separated by "\\n"::

    Sudoku:
     5 3 X X 7 X X X X
     6 X X 1 9 5 X X X
     ...
    Solution:
     5 3 4 6 7 8 9 1 2
     ...

so cell i of the puzzle and cell i of the solution always sit at fixed token offsets (89 tokens per
grid, 81 cells + 8 line breaks; tests/test_tasks.py checks it on the bundled tokenizer).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ..errors import InputError
from .generators import TaskGenerator

DIGITS = "123456789"
MAX_UNIQUE_BLANKS = 56  # beyond it, unique puzzles get rare (at 58 most random grids give none)
BLANK = "X"  # how a blank cell is written in the text layout (" X" is one token of the bundled BPE)
PROMPT_HEADER = "Sudoku:\n"
SOLUTION_HEADER = "\nSolution:\n"

_ROW = [i // 9 for i in range(81)]
_COL = [i % 9 for i in range(81)]
_BOX = [(i // 27) * 3 + (i % 9) // 3 for i in range(81)]
_ALL = 0b1111111110  # bits 1..9


# -- the solver ---------------------------------------------------------------------------------
def _search(cells: list[int], limit: int, rng: random.Random | None) -> tuple[int, list[int] | None]:
    """Count solutions of ``cells`` (81 ints, 0 = blank) up to ``limit``; also return the first one.
    Depth-first with the most constrained cell first; ``rng`` shuffles the candidate order (to draw
    random grids). Conflicting givens have no solution."""
    rows, cols, boxes = [0] * 9, [0] * 9, [0] * 9
    for i, v in enumerate(cells):
        if v:
            bit = 1 << v
            if (rows[_ROW[i]] | cols[_COL[i]] | boxes[_BOX[i]]) & bit:
                return 0, None
            rows[_ROW[i]] |= bit
            cols[_COL[i]] |= bit
            boxes[_BOX[i]] |= bit
    grid = list(cells)
    empties = [i for i in range(81) if not grid[i]]
    found: list[list[int]] = []
    count = 0

    def recurse(remaining: list[int]) -> bool:  # True = stop (limit reached)
        nonlocal count
        if not remaining:
            count += 1
            if not found:
                found.append(list(grid))
            return count >= limit
        best, best_free, best_n = -1, 0, 10
        for k, i in enumerate(remaining):
            free = _ALL & ~(rows[_ROW[i]] | cols[_COL[i]] | boxes[_BOX[i]])
            n = bin(free).count("1")
            if n < best_n:
                best, best_free, best_n = k, free, n
                if n <= 1:
                    break
        if best_n == 0:
            return False
        i = remaining[best]
        rest = remaining[:best] + remaining[best + 1 :]
        candidates = [v for v in range(1, 10) if best_free >> v & 1]
        if rng is not None:
            rng.shuffle(candidates)
        r, c, b = _ROW[i], _COL[i], _BOX[i]
        for v in candidates:
            bit = 1 << v
            grid[i] = v
            rows[r] |= bit
            cols[c] |= bit
            boxes[b] |= bit
            stop = recurse(rest)
            rows[r] &= ~bit
            cols[c] &= ~bit
            boxes[b] &= ~bit
            grid[i] = 0
            if stop:
                return True
        return False

    recurse(empties)
    return count, (found[0] if found else None)


def count_solutions(puzzle: str, limit: int = 2) -> int:
    """Number of solutions of ``puzzle`` (81 chars, 0 = blank), counted up to ``limit``."""
    return _search([int(c) for c in puzzle], limit, None)[0]


def solve(puzzle: str) -> str | None:
    """A solution of ``puzzle`` (the first found), or None."""
    _, first = _search([int(c) for c in puzzle], 1, None)
    return None if first is None else "".join(map(str, first))


def random_grid(rng: random.Random) -> str:
    """A complete valid grid: a randomised depth-first fill of the empty grid (every valid grid
    can come out, not only relabellings of one pattern)."""
    _, first = _search([0] * 81, 1, rng)
    assert first is not None
    return "".join(map(str, first))


def make_puzzle(rng: random.Random, solution: str, blanks: int, *, unique: bool = True) -> str | None:
    """``solution`` with ``blanks`` cells set to 0; with ``unique``, only if the puzzle then has one
    solution (None when this grid gives no such puzzle within the search: draw another grid)."""
    order = list(range(81))
    rng.shuffle(order)
    cells = list(solution)
    for i in order[:blanks]:
        cells[i] = "0"
    puzzle = "".join(cells)
    if not unique or count_solutions(puzzle) == 1:
        return puzzle
    # Dig one cell at a time, keeping a removal only while the solution stays unique.
    cells, removed = list(solution), 0
    for i in order:
        cells[i] = "0"
        if count_solutions("".join(cells)) == 1:
            removed += 1
            if removed == blanks:
                return "".join(cells)
        else:
            cells[i] = solution[i]
    return None


# -- checking -----------------------------------------------------------------------------------
def is_valid_grid(grid: str) -> bool:
    """Whether ``grid`` is 81 digits 1-9 with every row, column and box a permutation of 1-9."""
    if len(grid) != 81 or any(c not in DIGITS for c in grid):
        return False
    for unit in range(9):
        for index in (_ROW, _COL, _BOX):
            if len({grid[i] for i in range(81) if index[i] == unit}) != 9:
                return False
    return True


def keeps_givens(puzzle: str, grid: str) -> bool:
    """Whether ``grid`` has every given (non-zero) digit of ``puzzle`` in its place."""
    return len(grid) == 81 and all(p == "0" or p == g for p, g in zip(puzzle, grid))


def solves(puzzle: str, grid: str | None) -> bool:
    """Whether ``grid`` is a solution of ``puzzle``: a valid complete grid that keeps every given
    digit. Any valid solution counts, not only a stored one."""
    return grid is not None and is_valid_grid(grid) and keeps_givens(puzzle, grid)


def check_record(puzzle: object, solution: object = None, *, where: str = "") -> tuple[str, str | None]:
    """Validate a record's fields; `InputError` naming ``where`` (file:line) on anything wrong."""
    at = f"{where}: " if where else ""
    if not isinstance(puzzle, str) or len(puzzle) != 81 or any(c not in "0123456789" for c in puzzle):
        got = f"{len(puzzle)} characters" if isinstance(puzzle, str) else type(puzzle).__name__
        raise InputError(f"{at}\"puzzle\" must be 81 digits, row-major, 0 = blank (got {got})")
    if solution is None:
        return puzzle, None
    if not isinstance(solution, str) or len(solution) != 81 or any(c not in DIGITS for c in solution):
        got = f"{len(solution)} characters" if isinstance(solution, str) else type(solution).__name__
        raise InputError(f"{at}\"solution\" must be 81 digits 1-9 (got {got})")
    if not solves(puzzle, solution):
        raise InputError(f"{at}\"solution\" does not solve \"puzzle\" (an invalid grid, or a given digit changed)")
    return puzzle, solution


# -- text layout --------------------------------------------------------------------------------
def format_grid(cells: str) -> str:
    """Nine lines of nine cells, each cell " d" (" X" for a blank)."""
    symbols = [BLANK if c == "0" else c for c in cells]
    return "\n".join(" " + " ".join(symbols[r * 9 : r * 9 + 9]) for r in range(9))


def sudoku_prompt(puzzle: str) -> str:
    """The prompt a model sees for ``puzzle`` (SFT and the ``sudoku`` evaluation task alike)."""
    return PROMPT_HEADER + format_grid(puzzle) + SOLUTION_HEADER


def sudoku_response(solution: str) -> str:
    """The response a model is trained to write: the solved grid."""
    return format_grid(solution)


def parse_grid(text: str) -> str | None:
    """The grid a model wrote: its first 81 non-space characters (None when there are fewer). Symbols
    other than 1-9 stay in, so such a grid is then invalid."""
    symbols = [c for c in text if not c.isspace()]
    return "".join(symbols[:81]) if len(symbols) >= 81 else None


# -- the generator ------------------------------------------------------------------------------
@dataclass(frozen=True)
class SudokuSettings:
    """blanks: (low, high) number of blank cells, drawn uniformly per puzzle; unique: only puzzles
    with exactly one solution."""

    blanks: tuple[int, int] = (30, 50)
    unique: bool = True

    def __post_init__(self) -> None:
        low, high = self.blanks
        if not 1 <= low <= high <= 64:
            raise InputError(f"blanks must lie in 1..64 (low <= high), got {low}-{high}")
        if self.unique and high > MAX_UNIQUE_BLANKS:
            raise InputError(f"puzzles with a unique solution and more than {MAX_UNIQUE_BLANKS} blanks are too rare to "
                             f"draw at random; got up to {high} (lower --blanks, or pass --no-unique)")


def generate_sudoku(rng: random.Random, settings: SudokuSettings, accept) -> tuple[str, dict[str, str]]:
    """One (key, record) whose key ``accept`` keeps (the split filter). The key is the solution grid:
    train and test never share a grid, so never a puzzle."""
    while True:
        solution = random_grid(rng)
        if not accept(solution):
            continue
        blanks = rng.randint(*settings.blanks)
        for _ in range(4):
            puzzle = make_puzzle(rng, solution, blanks, unique=settings.unique)
            if puzzle is not None:
                return solution, {"puzzle": puzzle, "solution": solution}


# what `difflm data make sudoku` runs (difflm.registry.DATA_TASKS)
GENERATOR = TaskGenerator(SudokuSettings, generate_sudoku)
