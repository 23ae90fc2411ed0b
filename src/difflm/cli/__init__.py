"""The `difflm` command. Each subcommand lives in its own module of this package and exposes
``register(subparsers)``, which adds its parser and sets ``func`` (args -> exit code)."""

from __future__ import annotations

import argparse
import importlib
import sys

from .. import __version__
from ..errors import DiffLMError

# Modules of this package that define subcommands, in the order `difflm --help` lists them.
COMMAND_MODULES = ("generate", "train", "eval", "demo", "inspect", "convert")  # generate also registers infill


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="difflm", description="Diffusion language models: adapt, train, sample, evaluate."
    )
    parser.add_argument("--version", action="version", version=f"difflm {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def _quiet_transformers() -> None:
    """transformers' own warnings and progress bars (weight loading, long tokenizer inputs when
    packing a corpus) are noise on a command line whose output is the product."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    _quiet_transformers()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may follow flags (`difflm train cfg.yaml --resume lr=1e-4`), which
    # argparse cannot interleave with positionals on its own
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except DiffLMError as exc:
        print(f"difflm: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("difflm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
