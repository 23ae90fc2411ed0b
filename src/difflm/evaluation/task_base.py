"""The task base class: what every task is (examples + a protocol that turns an `EvalLM` into metrics
with standard errors), its result type, and helpers shared by the tasks.

The concrete tasks live in `text_tasks.py` (text benchmarks) and `humaneval.py` (code); the names
``difflm eval --tasks`` accepts, and the data each one reads, are in `registry.py`.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..errors import InputError
from .lm import EvalLM
from .stats import Estimate

N_SAMPLES_SHOWN = 5  # predictions kept in the JSON for eyeballing


@dataclass
class TaskResult:
    """Scores of one task. ``protocol`` records how they were obtained (score used, lengths, ...);
    ``samples`` holds the first few predictions."""

    task: str
    metrics: dict[str, Estimate]
    n_examples: int
    seconds: float = 0.0
    protocol: dict[str, Any] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task, "n_examples": self.n_examples, "seconds": round(self.seconds, 3),
            "metrics": {k: v.to_dict() for k, v in self.metrics.items()}, "protocol": self.protocol,
            "samples": self.samples,
        }


@dataclass
class Outcome:
    """What a protocol returns; `Task.run` adds the name, size and timing."""

    metrics: dict[str, Estimate]
    protocol: dict[str, Any] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)


class Task(ABC):
    """A named set of examples scored by one protocol. ``primary`` names the headline metric."""

    primary = ""
    higher_is_better = True

    def __init__(self, name: str, examples: Sequence[Any], source: str = "") -> None:
        if not examples:
            raise InputError(f"task {name} has no examples")
        self.name, self.examples, self.source = name, list(examples), source

    def run(self, lm: EvalLM) -> TaskResult:
        """Score ``lm`` on the first ``lm.settings.limit`` examples (all when None)."""
        examples = self.examples[: lm.settings.limit] if lm.settings.limit else self.examples
        start = time.perf_counter()
        outcome = self.evaluate(lm, examples)
        protocol = {"source": self.source, "primary": self.primary, **outcome.protocol}
        return TaskResult(self.name, outcome.metrics, len(examples), time.perf_counter() - start, protocol,
                          outcome.samples[:N_SAMPLES_SHOWN])

    @abstractmethod
    def evaluate(self, lm: EvalLM, examples: list[Any]) -> Outcome:
        """Score ``examples``; return metrics (with standard errors), protocol notes and samples."""


# -- helpers shared by the protocols ------------------------------------------------------------
def fit_context(lm: EvalLM, context: list[int], reserve: int) -> list[int]:
    """Drop the oldest context tokens (keeping a leading BOS) so that context + ``reserve`` more tokens
    fit the model. Raises `InputError` when even the reserved tokens alone do not fit."""
    limit = lm.max_length
    if limit is None or len(context) + reserve <= limit:
        return context
    keep_bos = lm.bos if context[: len(lm.bos)] == lm.bos else []
    room = limit - reserve - len(keep_bos)
    if room < 1:
        raise InputError(f"{reserve} target tokens do not fit the model's context of {limit}; use shorter examples")
    return keep_bos + context[len(context) - room :]


def estimate_kind(lm: EvalLM) -> str:
    """The stderr source of a likelihood from ``lm``: exact for AR models, Monte Carlo for DLMs."""
    return "exact" if lm.kind == "ar" else "monte-carlo"
