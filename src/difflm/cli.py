"""The `difflm` command."""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .errors import DiffLMError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="difflm", description="Diffusion language models: adapt, train, sample, evaluate.")
    parser.add_argument("--version", action="version", version=f"difflm {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except DiffLMError as exc:
        print(f"difflm: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
