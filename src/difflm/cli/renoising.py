"""The renoising sampler's flags of `difflm generate` / `infill` (`difflm.sampling.renoise`): the
`SamplerOptions` fields of uniform-state decoding - DiffusionGemma, and difflm's own uniform-state DLMs given
``--entropy-bound``. Torch-free, like every flag definition."""

from __future__ import annotations

import argparse
import math

from ..registry import RANDOM_STREAMS
from . import integer, number

NON_NEGATIVE = number(">= 0 and finite", lambda x: 0 <= x < math.inf)


def add_renoising_arguments(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The renoising sampler's flags (`difflm.sampling.renoise`), a group of their own."""
    group = parser.add_argument_group(
        "renoising sampler", "how a uniform-state model (DiffusionGemma; difflm's uniform DLMs with --entropy-bound) "
        "decodes: random canvases, entropy-bound acceptance, the rest renoised; --steps is then per block")
    positive = number("> 0 and finite", lambda x: 0 < x < math.inf)
    return [
        group.add_argument("--entropy-bound", type=positive, metavar="NATS",
                           help="accept the lowest-entropy draws while their summed entropy minus the largest stays "
                           "within NATS; renoise the rest (DiffusionGemma: its generation config's, else 0.1)"),
        group.add_argument("--t-min", type=NON_NEGATIVE, metavar="T",
                           help="linear temperature schedule, with --t-max: t_max at a block's first step down to t_min"),
        group.add_argument("--t-max", type=positive, metavar="T", help="the schedule's first temperature (> --t-min)"),
        group.add_argument("--stability-threshold", type=integer(0), metavar="N",
                           help="adaptive stopping, with --confidence-threshold: a row's block ends once its argmax "
                           "draft held for N steps ..."),
        group.add_argument("--confidence-threshold", type=positive, metavar="NATS",
                           help="... and its mean entropy is below NATS"),
        group.add_argument("--random-stream", choices=RANDOM_STREAMS,
                           help="difflm (default; a row's output does not depend on its batch) or transformers (torch's "
                           "own draws in transformers' order: DiffusionGemma's generate() with torch.manual_seed(--seed))"),
    ]
