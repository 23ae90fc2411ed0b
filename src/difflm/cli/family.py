"""How a model family joins `difflm generate` and `difflm infill` without the core naming it.

The masked core (a `DiffusionLM` denoising [MASK] tokens) is what the commands run by default. A family
beyond it - continuous, multimodal, the next one - is a plug-in: one module that defines ``PLUGIN`` and
one line of `difflm.registry.FAMILIES`. The commands

1. build their parser from every registered plug-in's flags (``add_arguments``: in one argument group of
   the family's own; building the parser must not import torch, so neither may the plug-in module);
2. check the flags they own (the masked sampler's `SamplerOptions`, ``--device``, ``--seed``, ...) before
   anything loads;
3. hand the run to the first family whose ``claims(args)`` is True (its flag was given, or the model
   directory holds its marker file), with a `GenerationJob`: what the core parsed, ready to use.

A plug-in does not import this module (families sit below the command line; `FamilyPlugin` is a
`Protocol`: having the three methods and a ``name`` is what makes one). docs/plugins.md is a worked
example; tests/test_family_contracts.py runs every registered family through the contract.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol, runtime_checkable

from ..registry import FAMILIES

if TYPE_CHECKING:
    from ..sampling import SamplerOptions

__all__ = ["FamilyPlugin", "GenerationJob", "add_family_arguments", "claiming_family", "masked_flags_given"]

# The `set_defaults` key under which the commands record their masked-sampler flags: (flag, dest, default)
# of each, so that a family can tell which of them a command line set (`masked_flags_given`).
MASKED_FLAGS_KEY = "masked_sampler_flags"


@dataclass
class GenerationJob:
    """What the command parsed and validated before handing a run to a family.

    options:      the masked sampler's validated `SamplerOptions` (a family that samples with
                  `difflm.sampling` uses them; another one ignores them, having refused ``masked_flags``).
    masked_flags: the flags of the masked sampler's argument group that the command line set away from
                  their defaults (e.g. ``("--strategy",)``), for a family to refuse what it cannot honour.
    labels:       one label per row to print (the prompt; the infill template).
    templates:    ``templates(tokenizer, placeholder_id)`` -> the token templates, one list of ids per
                  row, ``placeholder_id`` at every position to generate.
    load_model:   the command's masked-DLM loader for ``--model`` on ``--device`` (its errors are the
                  command's: a missing bundled model, a directory without a tokenizer).
    """

    options: SamplerOptions
    masked_flags: tuple[str, ...]
    labels: list[str]
    templates: Callable[[Any, int], list[list[int]]]
    load_model: Callable[[], Any]


@runtime_checkable
class FamilyPlugin(Protocol):
    """A model family of `difflm generate` / `difflm infill` (see the module docstring)."""

    name: str

    def add_arguments(self, parser: argparse.ArgumentParser, command: str) -> None:
        """Add this family's flags to the parser of ``command`` ("generate" or "infill"), in an argument
        group of its own (``parser.add_argument_group``); add nothing to a command it does not serve."""

    def claims(self, args: argparse.Namespace) -> bool:
        """Whether this invocation is this family's: one of its flags was given, or ``args.model`` holds
        its marker file. Torch-free and cheap: it runs before anything loads, for every run."""

    def run(self, args: argparse.Namespace, job: GenerationJob) -> int:
        """Generate and print; the exit status. Refuse (`difflm.errors.InputError`, one line) any of
        ``job.masked_flags`` this family cannot honour: nothing is silently ignored."""


def add_family_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    """Every registered family's flags for ``command`` (imports the plug-in modules: torch-free)."""
    for _, plugin in FAMILIES.items():
        plugin.add_arguments(parser, command)


def claiming_family(args: argparse.Namespace) -> FamilyPlugin | None:
    """The first registered family that claims this run, or None (the masked core runs it)."""
    return next((plugin for _, plugin in FAMILIES.items() if plugin.claims(args)), None)


def masked_flags_given(args: argparse.Namespace) -> tuple[str, ...]:
    """The masked-sampler flags of this command line whose value is not their default."""
    recorded = getattr(args, MASKED_FLAGS_KEY, ())
    return tuple(flag for flag, dest, default in recorded if getattr(args, dest, default) != default)
