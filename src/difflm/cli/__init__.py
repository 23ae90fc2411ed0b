"""The `difflm` command. Each subcommand lives in its own module of this package and exposes
``register(subparsers)``, which adds its parser and sets ``func`` (args -> exit code).

Building the parser imports neither torch nor transformers (``register`` must not either: choice
lists are torch-free constants, everything heavy is imported inside the command's ``func``), so
``difflm --help``, ``difflm --version`` and argument errors answer at once.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn

from .. import __version__
from ..errors import DiffLMError, InputError

# Modules of this package that define subcommands, in the order `difflm --help` lists them.
COMMAND_MODULES = ("generate", "train", "eval", "serve", "data", "experiment", "demo", "inspect", "convert")  # generate also registers infill


class UsageError(Exception):
    """A command line argparse rejects (unknown option, bad int, invalid choice); `main` prints it as
    one line and returns 2."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad command line raises `UsageError` instead of printing the usage block and
    exiting, so that every bad input ends the same way: one line on stderr, exit status 2. The
    subcommand parsers are of this class too (``add_subparsers`` uses the parent's class)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(self.prog, message)


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="difflm", description="Diffusion language models: adapt, train, sample, evaluate.")
    parser.add_argument("--version", action="version", version=f"difflm {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def check_output_dir(path: str, flag: str) -> Path:
    """``path`` as a Path if a directory can be written there (it exists as a directory, or its
    nearest existing parent is a writable directory); else `InputError` naming ``flag``."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise InputError(f"{flag} {path} is a file, not a directory")
    existing = next(p for p in (out, *out.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise InputError(f"{flag} {path} cannot be created: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {path} cannot be written: no write permission in {existing}")
    return out


def integer(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: an int in [minimum, maximum). A count out of range is a usage error that
    argparse reports at once (one line, exit 2), before any command imports torch; the library checks
    the value again where it is used (tests/test_cli_startup.py holds the two in step)."""
    bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum})"

    def parse(text: str) -> int:
        value = int(text)  # a ValueError reads "invalid int value: 'many'"
        if value < minimum or (maximum is not None and value >= maximum):
            raise argparse.ArgumentTypeError(f"must be an integer {bound}, got {value}")
        return value

    parse.__name__ = "int"
    return parse


def number(bound: str, accepts: Callable[[float], bool]) -> Callable[[str], float]:
    """An argparse ``type``: a float that ``accepts`` (NaN never does), described as ``bound`` ("in (0, 1]")."""

    def parse(text: str) -> float:
        value = float(text)  # a ValueError reads "invalid float value: 'high'"
        if value != value or not accepts(value):
            raise argparse.ArgumentTypeError(f"must be a number {bound}, got {value}")
        return value

    parse.__name__ = "float"
    return parse


def choice(table: Any, what: str) -> Callable[[str], str]:
    """An argparse ``type``: a name of the `difflm.registry` table ``table`` (torch-free; its help
    lists the names, unlike ``choices``, which would also print them in the usage line)."""

    def parse(text: str) -> str:
        if text not in table:
            raise argparse.ArgumentTypeError(f"unknown {what} {text!r}; choose one of {', '.join(table)}")
        return text

    parse.__name__ = what
    return parse


def _quiet_transformers() -> None:
    """transformers' own warnings and progress bars (weight loading, long tokenizer inputs when
    packing a corpus) are noise on a command line whose output is the product. Nothing is imported
    here - importing transformers takes seconds, and a usage error must answer before that: the
    environment variables transformers and huggingface_hub read when they are imported say it (a
    value the user set wins); when they are already imported (a caller of `main`), their switches."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


def _parse(parser: ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    args, unparsed = parser.parse_known_args(argv)
    # key=value overrides may follow flags (`difflm train cfg.yaml --resume lr=1e-4`), which
    # argparse cannot interleave with positionals on its own
    if unparsed and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in unparsed):
        args.overrides = [*args.overrides, *unparsed]
    elif unparsed:
        parser.error(f"unrecognized arguments: {' '.join(unparsed)}")
    return args


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = _parse(parser, argv)
    except UsageError as exc:
        print(f"difflm: error: {exc} (see `{exc.prog} --help`)", file=sys.stderr)
        return 2
    if args.command is None:
        parser.print_help()
        return 0
    try:
        _quiet_transformers()
        return int(args.func(args) or 0)
    except DiffLMError as exc:
        print(f"difflm: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("difflm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())


# torch.device's device types (c10 DeviceType names): a name outside them fails at once, before torch
# loads; whether this machine has the device is checked later, with torch (cli.generate.check_device)
_DEVICE = re.compile(r"(cpu|cuda|mps|xpu|hpu|npu|mtia|maia|xla|meta|ipu|ve|vulkan|fpga|hip|lazy|ideep|mkldnn"
                     r"|opengl|opencl|privateuseone)(:\d+)?")


def device_name(text: str) -> str:
    """An argparse ``type`` for --device: a torch device string ("cpu", "cuda", "cuda:1", "mps", ...)."""
    if _DEVICE.fullmatch(text) is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device; use e.g. cpu, cuda, cuda:1 or mps")
    return text


device_name.__name__ = "device"
