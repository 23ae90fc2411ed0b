"""The ``countdown`` task: reach a target from given numbers (``difflm data make countdown``), scored by
the rules.

Examples are ``{"numbers": [...], "target": T, "solution": "..."}`` lines (the solution is optional).
The model is prompted with `difflm.tasks.countdown.countdown_prompt` - the prompt SFT trains on - and
writes one step ``x op y = z`` per line. A problem counts as solved when the steps are correct
arithmetic on available numbers, use every given number exactly once and end at the target: any
valid solution counts, not only the stored one.

Metrics: ``acc`` and accuracy by how many numbers are given (``acc_count_K``).
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from ..errors import InputError
from ..tasks.countdown import check_record, countdown_prompt, solves
from .data import read_jsonl
from .lm import EvalLM
from .stats import mean_stderr
from .task_base import Outcome, Task


@dataclass(frozen=True)
class CountdownExample:
    numbers: tuple[int, ...]
    target: int
    solution: str | None = None


def load_countdown(path: str | os.PathLike) -> list[CountdownExample]:
    """Problems of a JSONL file; `InputError` naming the file and line of a malformed one."""
    out = []
    for lineno, obj in read_jsonl(path):
        where = f"{path}:{lineno}"
        missing = [f for f in ("numbers", "target") if f not in obj]
        if missing:
            raise InputError(f"{where}: missing field(s) {', '.join(missing)} (this layout needs numbers, target, "
                             "and optionally solution)")
        numbers, target, solution = check_record(obj["numbers"], obj["target"], obj.get("solution"), where=where)
        out.append(CountdownExample(tuple(numbers), target, solution))
    if not out:
        raise InputError(f"{path}: no examples")
    return out


class CountdownTask(Task):
    """Countdown protocol (examples: `CountdownExample`): greedy generation of the steps, rule-based check."""

    primary = "acc"

    def evaluate(self, lm: EvalLM, examples: list[CountdownExample]) -> Outcome:
        per_step = len(lm.encode("1000 * 1000 = 1000\n")) + 2  # the widest step the generator writes, and slack
        budgets = [(len(ex.numbers) - 1) * per_step + 1 for ex in examples]
        prompts = [lm.bos + lm.encode(countdown_prompt(list(ex.numbers), ex.target)) for ex in examples]
        texts = [""] * len(examples)
        for budget in sorted(set(budgets)):  # one generation length per batch
            idx = [i for i, b in enumerate(budgets) if b == budget]
            longest = max(len(prompts[i]) for i in idx)
            if lm.max_length is not None and longest + budget > lm.max_length:
                raise InputError(f"a countdown prompt ({longest} tokens) and its steps ({budget}) do not fit the "
                                 f"model's context of {lm.max_length}")
            for i, ids in zip(idx, lm.generate([prompts[i] for i in idx], budget)):
                texts[i] = lm.decode(ids)
        solved = [solves(list(ex.numbers), ex.target, t) for ex, t in zip(examples, texts)]
        metrics = {"acc": mean_stderr(solved)}
        by_count: dict[int, list[bool]] = defaultdict(list)
        for ex, ok in zip(examples, solved):
            by_count[len(ex.numbers)].append(ok)
        for count in sorted(by_count):
            metrics[f"acc_count_{count}"] = mean_stderr(by_count[count])
        samples: list[dict[str, Any]] = [
            {"numbers": list(ex.numbers), "target": ex.target, "prediction": t[:200], "solved": ok}
            for ex, t, ok in zip(examples, texts, solved)]
        protocol = {"max_new_tokens": sorted(set(budgets)), "decoding": "greedy; one step 'x op y = z' per line",
                    "solved": "correct steps on available numbers, each given number used once, ending at the "
                              "target (any valid solution counts)"}
        return Outcome(metrics, protocol, samples)
