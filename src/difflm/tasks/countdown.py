"""Countdown: reach a target by combining given numbers with + - * /, each number used exactly once.

Records are ``{"numbers": [a, b, ...], "target": T, "solution": "<one step per line>"}``, a step
being ``"x op y = z"``: it takes two numbers still available (given ones or earlier results) and
makes z available instead. A solution is valid when every step is correct arithmetic on available
numbers (positive whole numbers only, exact division), every given number is used, and the last
number left is the target - any valid solution counts, not only the stored one (`solves`).

Text layout: prompt ``"Countdown: reach {T} with {a}, {b}, {c}.\\nSteps:\\n"``, response the steps.
Problems are drawn by combining random numbers in random order; a problem's key (for the split) is
its multiset of numbers and its target, so a test problem never appears in train, however solved.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from dataclasses import dataclass

from ..errors import InputError
from .generators import TaskGenerator

MAX_VALUE = 1000  # largest intermediate value (and target) the generator makes
_STEP = re.compile(r"^\s*(\d+)\s*([-+*/])\s*(\d+)\s*=\s*(\d+)\s*$")


@dataclass(frozen=True)
class CountdownSettings:
    """count: (low, high) how many numbers are given; numbers: (low, high) their range."""

    count: tuple[int, int] = (3, 4)
    numbers: tuple[int, int] = (1, 50)

    def __post_init__(self) -> None:
        lo, hi = self.count
        if not 2 <= lo <= hi <= 6:
            raise InputError(f"count must lie in 2..6 (low <= high), got {lo}-{hi}")
        lo, hi = self.numbers
        if not 1 <= lo < hi <= 100:
            raise InputError(f"numbers must lie in 1..100 (low < high), got {lo}-{hi}")


def apply(x: int, op: str, y: int) -> int | None:
    """x op y if it is a positive whole number, else None."""
    if op == "+":
        return x + y
    if op == "*":
        return x * y
    if op == "-":
        return x - y if x > y else None
    return x // y if y > 0 and x % y == 0 else None


def solves(numbers: list[int], target: int, text: str | None) -> bool:
    """Whether ``text`` (one step per line) reaches ``target`` using each number exactly once."""
    if text is None:
        return False
    pool = Counter(numbers)
    lines = [line for line in text.strip().split("\n") if line.strip()]
    if len(lines) != len(numbers) - 1:
        return False
    for line in lines:
        found = _STEP.match(line)
        if not found:
            return False
        x, op, y, z = int(found.group(1)), found.group(2), int(found.group(3)), int(found.group(4))
        pool[x] -= 1
        pool[y] -= 1
        if pool[x] < 0 or pool[y] < 0 or apply(x, op, y) != z:
            return False
        pool[z] += 1
    return +pool == Counter([target])


def check_record(numbers: object, target: object, solution: object = None, *,
                 where: str = "") -> tuple[list[int], int, str | None]:
    """Validate a record's fields; `InputError` naming ``where`` (file:line) on anything wrong."""
    at = f"{where}: " if where else ""
    if (not isinstance(numbers, list) or not 2 <= len(numbers) <= 6
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in numbers)):
        raise InputError(f"{at}\"numbers\" must be a list of 2 to 6 positive integers, got {numbers!r}")
    if isinstance(target, bool) or not isinstance(target, int) or target < 1:
        raise InputError(f"{at}\"target\" must be a positive integer, got {target!r}")
    if solution is not None:
        if not isinstance(solution, str) or not solves(numbers, target, solution):
            raise InputError(f"{at}\"solution\" does not reach the target using each number once")
    return numbers, target, solution


def countdown_prompt(numbers: list[int], target: int) -> str:
    """The prompt a model sees (SFT and the ``countdown`` evaluation task alike)."""
    return f"Countdown: reach {target} with {', '.join(map(str, numbers))}.\nSteps:\n"


def generate_countdown(rng: random.Random, settings: CountdownSettings, accept) -> tuple[str, dict]:
    """One (key, record) whose key ``accept`` keeps (the split filter)."""
    while True:
        numbers = [rng.randint(*settings.numbers) for _ in range(rng.randint(*settings.count))]
        pool, steps = list(numbers), []
        while len(pool) > 1:
            i, j = rng.sample(range(len(pool)), 2)
            x, y = max(pool[i], pool[j]), min(pool[i], pool[j])
            ops = [op for op in "+-*/" if (z := apply(x, op, y)) is not None and z <= MAX_VALUE
                   and not (op in "*/" and y == 1)]
            if not ops:
                break
            op = rng.choice(ops)
            z = apply(x, op, y)
            pool = [v for k, v in enumerate(pool) if k not in (i, j)] + [z]
            steps.append(f"{x} {op} {y} = {z}")
        if len(pool) != 1:
            continue
        target = pool[0]
        key = f"{sorted(numbers)}->{target}"
        if accept(key):
            return key, {"numbers": numbers, "target": target, "solution": "\n".join(steps)}


# what `difflm data make countdown` runs (difflm.registry.DATA_TASKS)
GENERATOR = TaskGenerator(CountdownSettings, generate_countdown)
