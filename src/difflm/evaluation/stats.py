"""Point estimates with standard errors: every number the evaluator reports carries one.

Two kinds of uncertainty appear in an evaluation and are never mixed up:

* ``monte-carlo``: the noise of a stochastic estimator (the ELBO) on a fixed data set - it shrinks
  with more samples per sequence;
* ``examples``: the sampling error of a mean over a finite set of examples (accuracy, ROUGE) - it
  shrinks with more examples;
* ``exact``: no uncertainty from the estimator (an AR model's NLL is computed exactly).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Sequence

STDERR_SOURCES = ("monte-carlo", "examples", "exact")


@dataclass(frozen=True)
class Estimate:
    """A value, its standard error, and what the standard error measures (see module doc)."""

    value: float
    stderr: float
    n: int
    stderr_source: str = "examples"

    def to_dict(self) -> dict[str, Any]:
        """Plain types for JSON; an unknown (NaN) value or error becomes None."""
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}

    def scaled(self, factor: float) -> "Estimate":
        """The same estimate times a constant (e.g. nats -> bits, fraction -> percent)."""
        return Estimate(self.value * factor, self.stderr * abs(factor), self.n, self.stderr_source)

    def __str__(self) -> str:
        return f"{self.value:.4g} ± {self.stderr:.2g}"


def mean_stderr(values: Sequence[float] | Iterable[float], *, source: str = "examples") -> Estimate:
    """Sample mean and its standard error std(ddof=1) / sqrt(n); the error is unknown (NaN) for n = 1.

    For 0/1 outcomes (accuracy) this is lm-evaluation-harness's ``mean_stderr``, so numbers compare."""
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        return Estimate(float("nan"), float("nan"), 0, source)
    mean = sum(xs) / n
    if n == 1:
        return Estimate(mean, float("nan"), 1, source)
    var = sum((x - mean) ** 2 for x in xs) / (n - 1)
    return Estimate(mean, math.sqrt(var / n), n, source)


@dataclass(frozen=True)
class PairedComparison:
    """Two systems scored on the same examples: how many only ``a`` got right, how many only ``b``
    did, and the two-sided exact McNemar p-value of "they are equally accurate"."""

    only_a: int
    only_b: int
    n: int
    p_value: float


def paired_comparison(a: Sequence[bool], b: Sequence[bool]) -> PairedComparison:
    """Exact McNemar test on per-example outcomes ``a``, ``b`` (same examples, same order).

    Only the discordant examples carry information: under equal accuracy each is equally likely to
    favour either system, so the count favouring ``a`` is Binomial(discordant, 1/2). Paired, it
    detects differences that two separate standard errors hide (both systems find the same items hard)."""
    if len(a) != len(b):
        raise ValueError(f"paired outcomes need the same examples: {len(a)} against {len(b)}")
    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    k, m = min(only_a, only_b), only_a + only_b
    # two-sided: twice the smaller tail, capped at 1 (exact, no normal approximation at small counts)
    tail = sum(math.comb(m, i) for i in range(k + 1)) / 2**m if m else 1.0
    return PairedComparison(only_a, only_b, len(a), min(1.0, 2 * tail))
