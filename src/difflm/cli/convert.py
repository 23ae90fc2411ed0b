"""`difflm convert DIR OUT`: rewrite a published checkpoint in difflm's own layout.

The output is a stock transformers directory (config.json, safetensors, tokenizer) plus
difflm_config.json with the conventions (mask id, shift, attention, special and end-of-turn
ids), so it loads without detection rules and plain transformers can read the backbone.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import InputError
from . import check_output_dir
from ..io import require_directory
from .inspect import add_load_arguments, config_overrides, human_count

DTYPES = ("auto", "float32", "bfloat16", "float16")  # what `difflm.formats` loads weights as


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "convert", help="rewrite a checkpoint (DiffuGPT, DiffuLLaMA, LLaDA, Dream, ...) in difflm's own layout",
        description="Load DIR in whatever layout it has and save it to OUT as a stock transformers directory "
        "plus difflm_config.json.",
    )
    parser.add_argument("dir", help="checkpoint directory to read")
    parser.add_argument("out", help="directory to write (replaced if it exists)")
    add_load_arguments(parser)
    parser.add_argument("--dtype", default="auto", choices=DTYPES, help="auto (as stored), float32, bfloat16 or float16 (default auto)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    require_directory(args.dir)
    if Path(args.out).resolve() == Path(args.dir).resolve():
        raise InputError("OUT must be a new directory, not DIR itself (converting in place would delete the original)")
    check_output_dir(args.out, "OUT")  # before the (possibly long) load
    from ..model import DiffusionLM

    model = DiffusionLM.from_pretrained(args.dir, format=args.format, dtype=args.dtype, **config_overrides(args))
    try:
        out = model.save_pretrained(args.out)
    except OSError as exc:  # disk full, permissions changed since the check, ...
        raise InputError(f"cannot write OUT {args.out}: {exc.strerror or exc}") from None
    params = sum(p.numel() for p in model.model.parameters())
    print(f"wrote {out}: {model.config.family}, {human_count(params)} parameters, "
          f"{str(model.dtype).removeprefix('torch.')}, mask id {model.mask_token_id}, shift {model.config.shift}")
    return 0
