"""`difflm generate` and `difflm infill`: sample from a diffusion LM on the command line.

    difflm generate "And God said" --length 64 --strategy threshold --block-length 16 --cache dual
    difflm infill "And God said, Let there be [MASK:8] and there was light" --show-steps
    difflm infill --prefix "To be, or not" --suffix "that is the question" --length 4

Every option of `difflm.sampling.SamplerOptions` is a flag; ``--json`` prints one JSON object per
line; ``--show-steps`` shows the denoising live (`difflm.visualize.DenoisingView`).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from typing import Any

from ..errors import InputError, ModelLoadError
from ..sampling.options import SamplerOptions

PLACEHOLDER = re.compile(r"\[MASK:(\d+)\]")


def register(subparsers: Any) -> None:
    gen = subparsers.add_parser(
        "generate", help="continue a prompt by iterative denoising",
        description="Generate text after each PROMPT with a diffusion LM (all decoding strategies, blocks, CFG, "
        "EOS handling and the block-wise KV cache are flags).",
    )
    gen.add_argument("prompt", nargs="+", help="prompt text (several prompts run as one left-padded batch)")
    gen.add_argument("--length", type=int, default=64, help="new tokens per prompt (default 64)")
    gen.add_argument("--chat", action="store_true", help="wrap each prompt in the checkpoint's chat template; "
                     "print the reply up to the end of the turn")
    _add_common(gen)
    gen.set_defaults(func=run_generate)

    inf = subparsers.add_parser(
        "infill", help="fill [MASK:n] gaps in a text (or the gap between --prefix and --suffix)",
        description="Fill every [MASK:n] placeholder of TEMPLATE with n tokens (several gaps at once), or "
        "--length tokens between --prefix and --suffix.",
    )
    inf.add_argument("template", nargs="?", help='text with placeholders, e.g. "Let there be [MASK:4] and there was light"')
    inf.add_argument("--prefix", help="text before the gap (instead of a template)")
    inf.add_argument("--suffix", default="", help="text after the gap (a separating space is added)")
    inf.add_argument("--length", type=int, help="tokens to fill between --prefix and --suffix")
    _add_common(inf)
    inf.set_defaults(func=run_infill)


def _add_common(parser: argparse.ArgumentParser) -> None:
    from ..bundled import DEFAULT_DLM
    from ..sampling import CACHE_MODES, STRATEGIES

    parser.add_argument("--model", default=DEFAULT_DLM, help=f"model directory or bundled model name (default {DEFAULT_DLM})")
    parser.add_argument("--steps", type=int, help="denoising steps = model calls at most (default: one per token)")
    parser.add_argument("--strategy", default="low_confidence", help=f"which positions to commit: {', '.join(STRATEGIES)}")
    parser.add_argument("--block-length", type=int, help="semi-autoregressive block size (default: one block)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus mass in (0, 1] (default 1 = off)")
    parser.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (default 0 = off)")
    parser.add_argument("--gumbel", action="store_true", help="draw tokens by float64 Gumbel-max (LLaDA)")
    parser.add_argument("--threshold", type=float, help="confidence threshold in (0, 1] of --strategy threshold (default 0.9)")
    parser.add_argument("--alg-temp", type=float, default=0.0, help="> 0 samples positions instead of the top scores (Dream)")
    parser.add_argument("--cfg-scale", type=float, default=0.0, help="classifier-free guidance scale >= 0 (default 0 = off)")
    parser.add_argument("--cache", choices=CACHE_MODES, default="none", help="block-wise KV cache (default none)")
    parser.add_argument("--attention", choices=("causal", "bidirectional", "block_causal"),
                        help="override the model's attention (block_causal makes the caches exact)")
    parser.add_argument("--stop-at-eos", action="store_true", help="stop a row once a finished block holds EOS")
    parser.add_argument("--suppress-eos", action="store_true", help="commit EOS only when nothing else is left")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per prompt")
    parser.add_argument("--show-steps", action="store_true", help="show the denoising live in the terminal")
    parser.add_argument("--delay", type=float, default=0.0, help="with --show-steps: seconds to pause per step")


def _options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "steps": args.steps, "strategy": args.strategy, "block_length": args.block_length,
        "temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k, "gumbel": args.gumbel,
        "threshold": args.threshold, "alg_temp": args.alg_temp, "cfg_scale": args.cfg_scale, "cache": args.cache,
        "attention": args.attention, "stop_at_eos": args.stop_at_eos, "suppress_eos": args.suppress_eos,
    }


def load_dlm(name_or_path: str, device: str = "cpu"):
    """A `DiffusionLM` from a bundled model name or a directory, with its tokenizer."""
    from ..bundled import MODELS, resolve_model
    from ..model import DiffusionLM

    path = resolve_model(name_or_path)
    if name_or_path in MODELS and not path.is_dir():
        raise ModelLoadError(f"bundled model {name_or_path!r} is not built yet ({path} is missing); pass --model DIR")
    model = DiffusionLM.from_pretrained(path).to(device).eval()
    if model.tokenizer is None:
        raise ModelLoadError(f"{path} has no tokenizer; text prompts need one (save the tokenizer next to the weights)")
    return model


def parse_template(template: str) -> list[str | int]:
    """Split a template into text pieces and gap lengths: "a [MASK:2] b" -> ["a", 2, " b"]."""
    parts: list[str | int] = []
    pos = 0
    for match in PLACEHOLDER.finditer(template):
        n = int(match.group(1))
        if n < 1:
            raise InputError(f"placeholder {match.group(0)} asks for no tokens; use [MASK:n] with n >= 1")
        # A gap's tokens carry their own leading space (byte-level BPE), so the text before it
        # gives up its trailing whitespace.
        parts += [template[pos : match.start()].rstrip(), n]
        pos = match.end()
    if not parts:
        raise InputError("the template has no [MASK:n] placeholder; write e.g. \"Let there be [MASK:4] and there was light\"")
    return parts + [template[pos:]]


def encode_template(tokenizer, parts: list[str | int], mask_id: int) -> list[int]:
    """Token ids of a parsed template, gaps as mask ids; only the first piece gets special tokens (BOS)."""
    ids: list[int] = []
    for i, part in enumerate(parts):
        if isinstance(part, int):
            ids += [mask_id] * part
        elif part or i == 0:
            ids += tokenizer(part, add_special_tokens=i == 0)["input_ids"]
    return ids


def run_generate(args: argparse.Namespace) -> int:
    if args.length < 1:
        raise InputError(f"--length must be >= 1, got {args.length}")
    SamplerOptions(**_options(args))  # bad options fail before the model loads
    model = load_dlm(args.model, args.device)
    if args.chat:
        from ..chat import chat_prompt_ids

        prompts = [chat_prompt_ids(model, p) for p in args.prompt]
    else:
        prompts = [model.tokenizer(p)["input_ids"] for p in args.prompt]
    mask = model.config.mask_token_id
    return _run(args, model, [p + [mask] * args.length for p in prompts], args.prompt)


def run_infill(args: argparse.Namespace) -> int:
    if (args.template is None) == (args.prefix is None):
        raise InputError("give either a TEMPLATE with [MASK:n] gaps or --prefix (with --suffix and --length)")
    if args.template is not None:
        parts = parse_template(args.template)
    else:
        if args.length is None or args.length < 1:
            raise InputError("--prefix needs --length >= 1 (tokens to fill)")
        # words after a gap start with a space, as in running text (byte-level BPE keeps it)
        suffix = " " + args.suffix if args.suffix[:1].isalnum() else args.suffix
        parts = [args.prefix.rstrip(), args.length, suffix]
    SamplerOptions(**_options(args))
    model = load_dlm(args.model, args.device)
    return _run(args, model, [encode_template(model.tokenizer, parts, model.config.mask_token_id)], [args.template or ""])


def _run(args: argparse.Namespace, model, templates: list[list[int]], labels: list[str]) -> int:
    import torch

    from ..sampling import fill

    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    options = _options(args)
    start = time.perf_counter()
    if args.show_steps:
        from ..visualize import DenoisingView

        with DenoisingView(model.tokenizer, title=f"difflm {args.func.__name__.removeprefix('run_')}", delay=args.delay) as view:
            result = fill(model, templates, generator=generator, callback=view, return_dict=True, **options)
    else:
        result = fill(model, templates, generator=generator, return_dict=True, **options)
    seconds = time.perf_counter() - start
    tok = model.tokenizer
    total_new = sum(len(t) for t in result.new_tokens)
    chat = getattr(args, "chat", False)
    if chat:  # the reply alone, up to the family's end of turn
        from ..chat import end_of_turn_ids
        from ..sampling import trim_at_stop

        result.new_tokens = [trim_at_stop(row, end_of_turn_ids(model)) for row in result.new_tokens]
    for b, label in enumerate(labels):
        text = tok.decode(result.new_tokens[b] if chat else visible_ids(result, b), skip_special_tokens=True)
        if args.json:
            print(json.dumps({
                "prompt": label, "text": text, "generated": tok.decode(result.new_tokens[b], skip_special_tokens=True),
                "new_tokens": result.new_tokens[b], "steps": result.steps, "seconds": round(seconds, 4),
                "tokens_per_second": round(total_new / seconds, 2), "options": options,
            }))
        elif not args.show_steps:  # the live view already left the final text on screen
            print(text)
    return 0


def visible_ids(result, b: int) -> list[int]:
    """Row ``b`` of a `Generation` as text ids: generated tokens beyond ``new_tokens`` (cut at
    EOS with stop_at_eos) are dropped; padding and BOS go when decoding (special tokens)."""
    keep = len(result.new_tokens[b])
    out, seen = [], 0
    for tok, generated in zip(result.sequences[b].tolist(), result.generate_mask[b].tolist()):
        if generated:
            seen += 1
            if seen > keep:
                continue
        out.append(tok)
    return out
