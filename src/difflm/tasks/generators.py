"""`TaskGenerator`: what a synthetic task of `difflm data make` registers. Each task module defines its
``GENERATOR`` and `difflm.registry.DATA_TASKS` points at it (a new task: its module, a registry line).
"""

from __future__ import annotations

import random
from typing import Any, Callable, NamedTuple

__all__ = ["TaskGenerator"]


class TaskGenerator(NamedTuple):
    """A task's settings dataclass (its knobs, validated on construction) and its generator:
    ``generate(rng, settings, accept) -> (key, record)``, drawing problems until ``accept(key)``."""

    settings: type
    generate: Callable[[random.Random, Any, Callable[[str], bool]], tuple[str, dict[str, Any]]]
