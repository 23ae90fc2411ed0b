"""Disjoint train / validation / test splits of a generated task, decided by content, not by seed.

Every generated example has a *key*: what makes two examples the same problem (a sudoku's solution
grid; a word problem's arithmetic - start value, operations and operands - whatever the names and
objects). The split an example belongs to is a function of that key alone (its SHA-256), so train
and test never share a problem, whatever seeds or sizes were used to write them: a generator for
one split draws problems at random and keeps those whose key falls in that split.
"""

from __future__ import annotations

import hashlib

from ..registry import DATA_SPLITS

SPLITS = DATA_SPLITS  # `difflm data make --split` offers the same table
# out of 10 buckets of the key's hash: 8 train, 1 validation, 1 test
_BUCKETS = {"test": (0,), "validation": (1,), "train": tuple(range(2, 10))}


def split_of(key: str) -> str:
    """The split ("train" | "validation" | "test") the problem with this key belongs to."""
    bucket = int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16) % 10
    return next(name for name, buckets in _BUCKETS.items() if bucket in buckets)
