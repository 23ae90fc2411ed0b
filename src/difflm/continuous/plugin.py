"""The continuous family on the command line: `difflm generate` / `difflm infill` hand a run to it when
``--model`` is a continuous DLM directory (it holds continuous_config.json); `difflm.registry.FAMILIES`
points here. Torch-free: the parser is built from this module (``difflm generate --help``).

Its flags are the continuous sampler's own (``--eta``, ``--clamp``); of the shared ones it takes
``--length``, ``--steps``, ``--cfg-scale``, ``--seed``, ``--device``, ``--json``, ``--show-steps`` and
``--delay``, and it refuses any flag of the masked sampler's group (`difflm.continuous.cli.run`).
"""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import InputError
from ..io import has_marker, resolve_model
from ..registry import MODEL_KINDS

__all__ = ["ContinuousPlugin", "PLUGIN"]


class ContinuousPlugin:
    """`difflm.cli.family.FamilyPlugin` of embedding-space (continuous) DLMs."""

    name = "continuous"

    def add_arguments(self, parser: argparse.ArgumentParser, command: str) -> None:
        group = parser.add_argument_group(
            "continuous DLMs", f"a model directory with {MODEL_KINDS.entry(self.name).meta['marker']} samples with its own sampler: it takes "
            "--steps, --cfg-scale and these, and refuses the masked sampler's flags")
        group.add_argument("--eta", type=float, default=0.0,
                           help="continuous DLMs: 0 = DDIM (default), 1 = DDPM ancestral sampling")
        group.add_argument("--clamp", action="store_true",
                           help="continuous DLMs: snap each step's x0 estimate to the nearest embedding (Diffusion-LM)")

    def claims(self, args: argparse.Namespace) -> bool:
        """``--model`` is a continuous DLM directory (its marker file, `registry.MODEL_KINDS`, decides; nothing
        loads), or the command line set one of this family's flags (``run`` then refuses another model)."""
        return has_marker(resolve_model(args.model), self.name) or bool(args.eta) or args.clamp

    def run(self, args: argparse.Namespace, job: Any) -> int:
        if not has_marker(resolve_model(args.model), self.name):  # a continuous flag on another model: never ignored
            given = ", ".join(flag for flag, on in (("--eta", bool(args.eta)), ("--clamp", args.clamp)) if on)
            raise InputError(f"{given}: flag(s) of continuous DLMs, and {args.model} is not one (no "
                             f"{MODEL_KINDS.entry(self.name).meta['marker']}); drop them or pass a continuous model")
        from .cli import run  # torch: only once the run is this family's

        return run(args, job)


PLUGIN = ContinuousPlugin()
