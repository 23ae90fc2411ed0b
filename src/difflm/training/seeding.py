"""The random streams of a training run: every draw of step k is a function of (seed, k) alone, so a
resumed run retraces an uninterrupted one and any number of processes draws the same global batch."""

from __future__ import annotations

import torch

from ..rng import seeded_generator

NOISE, ANNEALING, BLOCKS = 0, 1, 2  # the streams of one step: the noise draw, the attention annealing, the noised blocks
VALIDATION_SEED = 4321  # validation draws the same noise at every evaluation: curves compare like with like


def step_generator(seed: int, step: int, stream: int) -> torch.Generator:
    """The RNG of one ``stream`` (`NOISE`, `ANNEALING`, `BLOCKS`) of one step: a function of (seed, step)
    alone, for exact resumption. A CPU generator whose draws are moved to the training device
    (`difflm.rng`), so a run draws the same noise on any device."""
    return seeded_generator((seed * 1_000_003 + step) * 8 + stream)
