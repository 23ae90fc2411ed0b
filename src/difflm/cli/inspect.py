"""`difflm inspect DIR`: what difflm sees in a checkpoint directory and why, without loading it.

Reads config.json, the safetensors headers and the tokenizer; the backbone is built on the meta
device only (to count parameters and check every weight's name and shape), so inspecting an 8B
checkpoint takes seconds and no memory.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..errors import InputError
from ..bundled import resolve_model
from ..io import require_directory
from ..registry import FORMATS as FORMAT_NAMES
from . import integer


def add_load_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by the commands that read a checkpoint directory."""
    parser.add_argument("--format", choices=FORMAT_NAMES, metavar="FORMAT",
                        help=f"skip detection and read DIR as this layout: {', '.join(FORMAT_NAMES)}")
    parser.add_argument("--mask-token-id", type=integer(0), help="id of the [MASK] token (needed for plain causal LMs)")


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The `DiffusionConfig` fields the load options replace (``--mask-token-id``)."""
    return {} if args.mask_token_id is None else {"mask_token_id": args.mask_token_id}


def check_mask_token_id(mask_token_id: int | None, vocab_size: int) -> None:
    """`InputError` when the mask id (given or detected) is not a token of the vocabulary."""
    if mask_token_id is not None and not 0 <= mask_token_id < vocab_size:
        raise InputError(f"mask token id {mask_token_id} is outside the vocabulary (0 .. {vocab_size - 1}); "
                         "pass --mask-token-id with the id of a token of this checkpoint")


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "inspect", help="show the layout, conventions and special tokens of a checkpoint directory",
        description="Detect the layout of a checkpoint directory and print what difflm would load: family, "
        "architecture, parameters, dtype, mask id, shift, attention, special tokens - and why.",
    )
    parser.add_argument("dir", help="checkpoint directory (config.json + safetensors) or bundled model name")
    add_load_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    args.dir = str(resolve_model(args.dir))  # a bundled name reads as its directory
    require_directory(args.dir)
    from ..formats import describe_checkpoint, detect, read_adapter
    from ..io import CHECKPOINT, directory_kind
    from ..registry import MODEL_KINDS

    directory, overrides, extra = args.dir, config_overrides(args), {}
    kind = CHECKPOINT if args.format is not None else directory_kind(args.dir)
    if kind == "adapter":  # a LoRA adapter directory: say so, then show its base with the trained conventions
        meta, directory = read_adapter(args.dir)
        overrides = {**(meta.get("diffusion") or {}), **overrides}
        extra = {"kind": kind, "adapter": meta}
        if not args.json:
            print(f"{'adapter':<13} {args.dir}  (LoRA rank {(meta.get('lora') or {}).get('r')}, "
                  f"{meta.get('loss')} loss; merged into its base when loaded)")
    elif kind != CHECKPOINT:
        marker = MODEL_KINDS.entry(kind).meta.get("marker")
        raise InputError(f"{args.dir} holds a {kind} model ({marker}), not a transformers checkpoint; "
                         "difflm inspect reads checkpoints only - load it with difflm generate or difflm eval")
    found = detect(directory, args.format)  # printed first: a refusal below still says what was seen
    if not args.json:
        print(f"{'path':<13} {found.checkpoint.path}")
        print(f"{'format':<13} {found.format}  ({found.reason})")
    info = describe_checkpoint(directory, format=args.format, **overrides)
    check_mask_token_id(info["config"].mask_token_id, info["vocab_size"])
    if args.json:
        print(json.dumps({**extra, **info, "config": info["config"].to_dict()}, indent=2, default=str))
        return 0
    cfg = info["config"]
    rows = [
        ("family", cfg.family),
        ("architecture", f"{info['architecture']}  ("
                         + ("difflm's native backbone" if info["native_backbone"] else "stock transformers class")
                         + ", no remote code)"),
        ("parameters", human_count(info["parameters"])),
        ("weights", f"{info['stored_dtype']}, {human_bytes(info['stored_bytes'])} in {info['files']} file(s)"),
        ("vocabulary", str(info["vocab_size"])),
        ("process", _process(cfg)),
        ("mask id", _describe_token(cfg.mask_token_id, info["tokens"].get("mask"))
         + ("  (a placeholder: no [MASK] is ever written)" if (cfg.extra or {}).get("process") == "uniform" else "")),
        ("shift", "yes (the logit at i-1 predicts token i)" if cfg.shift else "no (the logit at i predicts token i)"),
        ("attention", cfg.attention + (f", blocks of {cfg.block_size}" if cfg.block_size else "")),
        ("tokens", ", ".join(f"{name} {_describe_token(*value)}" for name, value in info["tokens"].items()
                             if name != "mask") or "none"),
        ("tokenizer", f"{info['tokenizer'] or 'none'}; chat template: {'yes' if info['chat_template'] else 'no'}"),
    ]
    rows += [("note", note) for note in info["notes"]]
    for name, value in rows:
        print(f"{name:<13} {value}")
    return 0


def _process(cfg: Any) -> str:
    """The diffusion process in words: what a noisy token is."""
    extra = cfg.extra or {}
    if extra.get("process") != "uniform":
        return "masked (absorbing state: a noisy token is [MASK])"
    if extra.get("denoiser") == "encoder-decoder":
        return "uniform-state (a noisy token is a uniformly random token), an encoder cache + a canvas decoder"
    return "uniform-state (a noisy token is a uniformly random token; ancestral steps, or renoising with entropy_bound)"


def human_count(n: int) -> str:
    """1234567 -> '1.23M'."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit} ({n:,})"
    return str(n)


def human_bytes(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def _describe_token(token_id: int, text: Any = None) -> str:
    """'5' or "5 '<mask>'"."""
    if isinstance(text, tuple):  # (id, text) from describe_checkpoint
        text = text[1]
    return f"{token_id} {text!r}" if text else str(token_id)
