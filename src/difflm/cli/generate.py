"""`difflm generate` and `difflm infill`: sample from a diffusion LM on the command line.

    difflm generate "And God said" --length 64 --strategy threshold --block-length 16 --cache dual
    difflm infill "And God said, Let there be [MASK:8] and there was light" --show-steps
    difflm infill --prefix "To be, or not" --suffix "that is the question" --length 4

Every option of `difflm.sampling.SamplerOptions` is a flag; the flags become one `SamplerOptions`,
validated before the model loads. ``--json`` prints one JSON object per line; ``--show-steps``
shows the denoising live (`difflm.visualize.DenoisingView`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from typing import TYPE_CHECKING, Any

from ..errors import InputError, ModelLoadError
from .choices import ATTENTION_NAMES, CACHE_MODE_NAMES, FILTER_ORDER_NAMES, SCHEDULE_NAMES, STRATEGY_NAMES

if TYPE_CHECKING:
    from ..sampling import Generation, SamplerOptions



def register(subparsers: Any) -> None:
    generate_parser = subparsers.add_parser(
        "generate", help="continue a prompt by iterative denoising",
        description="Generate text after each PROMPT with a diffusion LM (all decoding strategies, blocks, CFG, "
        "EOS handling and the block-wise KV cache are flags).",
    )
    generate_parser.add_argument("prompt", nargs="+", help="prompt text (several prompts run as one left-padded batch)")
    generate_parser.add_argument("--length", type=int, help="new tokens per prompt (default 64; a task model: what "
                                 "its answers need)")
    generate_parser.add_argument("--chat", action="store_true", help="wrap each prompt in the checkpoint's chat "
                                 "template; print the reply up to the end of the turn")
    # multimodal models (difflm.multimodal.cli)
    generate_parser.add_argument("--image-out", metavar="PATH", help="multimodal models: draw an image of each PROMPT "
                                 "and write it as a PNG (several prompts: PATH-1.png, ...); --length does not apply")
    generate_parser.add_argument("--image", metavar="PATH", help="multimodal models: a grayscale PNG to describe; "
                                 "PROMPT is the question (\"\" for none) and --length caps the answer")
    _add_sampling_arguments(generate_parser)
    generate_parser.set_defaults(func=run_generate)

    infill_parser = subparsers.add_parser(
        "infill", help="fill [MASK:n] gaps in a text (or the gap between --prefix and --suffix)",
        description="Fill every [MASK:n] placeholder of TEMPLATE with n tokens (several gaps at once), or "
        "--length tokens between --prefix and --suffix.",
    )
    infill_parser.add_argument("template", nargs="?",
                               help='text with placeholders, e.g. "Let there be [MASK:4] and there was light"')
    infill_parser.add_argument("--prefix", help="text before the gap (instead of a template)")
    infill_parser.add_argument("--suffix", default="", help="text after the gap (a separating space is added)")
    infill_parser.add_argument("--length", type=int, help="tokens to fill between --prefix and --suffix")
    _add_sampling_arguments(infill_parser)
    infill_parser.set_defaults(func=run_infill)


def _add_sampling_arguments(parser: argparse.ArgumentParser) -> None:
    from ..bundled import DEFAULT_DLM

    parser.add_argument("--model", default=DEFAULT_DLM, help=f"model directory or bundled model name (default {DEFAULT_DLM})")
    parser.add_argument("--steps", type=int, help="denoising steps = model calls at most (default: one per token)")
    parser.add_argument("--strategy", metavar="NAME",
                        help=f"which positions to commit: {', '.join(STRATEGY_NAMES)} (default low_confidence; a task model: its task's, e.g. topk_margin for sudoku)")
    parser.add_argument("--block-length", type=int, help="semi-autoregressive block size (default: one block)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus mass in (0, 1] (default 1 = off)")
    parser.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (default 0 = off)")
    parser.add_argument("--gumbel", action="store_true", help="draw tokens by float64 Gumbel-max (LLaDA)")
    parser.add_argument("--threshold", type=float, help="confidence threshold in (0, 1] of --strategy threshold (default 0.9)")
    parser.add_argument("--alg-temp", type=float, default=0.0, help="> 0 samples positions instead of the top scores (Dream)")
    parser.add_argument("--cfg-scale", type=float, default=0.0, help="classifier-free guidance scale >= 0 (default 0 = off)")
    parser.add_argument("--cache", choices=CACHE_MODE_NAMES, default="none", help="block-wise KV cache (default none)")
    parser.add_argument("--attention", choices=ATTENTION_NAMES,
                        help="override the model's attention (block_causal makes the caches exact)")
    parser.add_argument("--schedule", choices=SCHEDULE_NAMES,
                        help="tokens committed per step: equal shares (LLaDA) or Dream's time grid "
                        "(default: the model family's convention)")
    parser.add_argument("--filter-order", choices=FILTER_ORDER_NAMES,
                        help="order of the top-k and top-p filters (default: the model family's convention)")
    parser.add_argument("--sub-block-length", type=int, metavar="N",
                        help="decode each block in sub-blocks of N tokens (Fast-dLLM v2; with --cache block the "
                        "rest of the block is read from a cache made at each sub-block's first step)")
    parser.add_argument("--editing-threshold", type=float, metavar="P",
                        help="token editing (LLaDA 2.1): replace a committed token of the current block when the "
                        "model's top prediction there differs and is above P (default off)")
    parser.add_argument("--remask", type=float, default=0.0, metavar="P",
                        help="ReMDM-style remasking: mask each committed token of the block again with probability P "
                        "at every step but the block's last (default 0 = off)")
    parser.add_argument("--max-edits", type=int, default=2, help="edits or remasks per position at most (default 2)")
    parser.add_argument("--stop-at-eos", action="store_true", help="stop a row once a finished block holds EOS")
    parser.add_argument("--suppress-eos", action="store_true", help="commit EOS only when nothing else is left")
    parser.add_argument("--eta", type=float, default=0.0,
                        help="continuous DLMs: 0 = DDIM (default), 1 = DDPM ancestral sampling")
    parser.add_argument("--clamp", action="store_true",
                        help="continuous DLMs: snap each step's x0 estimate to the nearest embedding (Diffusion-LM)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N, mps, ... (default cpu)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per prompt")
    parser.add_argument("--show-steps", action="store_true", help="show the denoising step by step in the terminal")
    parser.add_argument("--delay", type=float, default=0.0, help="with --show-steps: seconds to pause per step")


def sampler_options(args: argparse.Namespace) -> SamplerOptions:
    """The one validated `SamplerOptions` of the sampling flags (`InputError` on a bad value)."""
    from ..sampling.options import SamplerOptions

    return SamplerOptions(
        steps=args.steps, strategy=args.strategy or "low_confidence", block_length=args.block_length,
        temperature=args.temperature,
        top_p=args.top_p, top_k=args.top_k, gumbel=args.gumbel, threshold=args.threshold, alg_temp=args.alg_temp,
        cfg_scale=args.cfg_scale, cache=args.cache, attention=args.attention, stop_at_eos=args.stop_at_eos,
        suppress_eos=args.suppress_eos, schedule=args.schedule, filter_order=args.filter_order,
        sub_block_length=args.sub_block_length, editing_threshold=args.editing_threshold, remask=args.remask,
        max_edits=args.max_edits,
    )


def check_device(name: str) -> str:
    """``name`` if torch can put tensors there; else `InputError`, both for a string that names no
    torch device ("quantum") and for a device this machine lacks (cuda without a GPU or without a
    CUDA build, a GPU index past the last one, mps off Apple silicon)."""
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise InputError(f"--device {name!r} is not a torch device; use e.g. cpu, cuda, cuda:1 or mps") from None
    if device.type == "meta":
        raise InputError("--device meta holds no data and cannot sample; use e.g. cpu or cuda")
    try:
        torch.empty(1, device=device)
    except Exception as exc:  # AssertionError (no CUDA build), RuntimeError (no driver, bad index), ...
        reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        reason = reason.split(". ")[0].rstrip(".")  # torch's messages go on with build advice
        raise InputError(f"--device {name}: not available on this machine ({reason})") from None
    return name


def _check_run_args(args: argparse.Namespace) -> None:
    """The flags that are not sampler options: --seed and --delay."""
    if not 0 <= args.seed < 2**63:
        raise InputError(f"--seed must be an integer in [0, 2**63), got {args.seed}")
    if not (math.isfinite(args.delay) and args.delay >= 0):
        raise InputError(f"--delay must be a number of seconds >= 0, got {args.delay}")


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


def _model_task(name_or_path: str) -> str | None:
    """The task a fine-tuned model was trained on (its task.json), or None."""
    from ..bundled import resolve_model
    from ..tasks.model_task import read_model_task

    path = resolve_model(name_or_path)
    return read_model_task(path) if path.is_dir() else None


def run_generate(args: argparse.Namespace) -> int:
    task = None if args.chat or args.image or args.image_out else _model_task(args.model)
    if task is not None:  # a task model (dlm-sudoku, dlm-gsm): the task's input, length and decoding order
        from ..tasks.model_task import DEFAULTS

        defaults = DEFAULTS[task]
        args.length = defaults.length if args.length is None else args.length
        args.strategy = args.strategy or defaults.strategy
        args.stop_at_eos = args.stop_at_eos or defaults.stop_at_eos
    args.length = 64 if args.length is None else args.length
    if args.length < 1:
        raise InputError(f"--length must be >= 1, got {args.length}")
    # every bad value fails before the model loads
    _check_run_args(args)
    options = sampler_options(args)
    check_device(args.device)
    if args.image or args.image_out:  # a multimodal model: image -> text or text -> image
        from ..multimodal.cli import check_image_args, run_image

        image = check_image_args(args)
        return run_image(args, options, load_dlm(args.model, args.device), image)
    from ..continuous import cli as continuous

    if continuous.continuous_model_dir(args.model) is not None:  # an embedding-space DLM: its own sampler
        from ..sampling.templates import continuation_ids

        return continuous.run(args, lambda tok: [continuation_ids(p, tok, -1, args.length) for p in args.prompt],
                              args.prompt)
    prompts = args.prompt
    if task is not None:
        from ..tasks.model_task import task_prompt

        prompts = [task_prompt(task, p) for p in args.prompt]  # bad input fails before the model loads
    model = load_dlm(args.model, args.device)
    mask_id = model.config.mask_token_id
    if args.chat:
        from ..chat import chat_prompt_ids

        templates = [chat_prompt_ids(model, prompt) + [mask_id] * args.length for prompt in args.prompt]
    else:
        from ..sampling.templates import continuation_ids

        templates = [continuation_ids(prompt, model.tokenizer, mask_id, args.length) for prompt in prompts]
    return _sample_and_print(args, options, model, templates, args.prompt, task=task)


def run_infill(args: argparse.Namespace) -> int:
    from ..sampling.templates import encode_template, gap_template, parse_template

    if (args.template is None) == (args.prefix is None):
        raise InputError("give either a TEMPLATE with [MASK:n] gaps or --prefix (with --suffix and --length)")
    if args.template is not None:
        parts = parse_template(args.template)
    else:
        if args.length is None or args.length < 1:
            raise InputError("--prefix needs --length >= 1 (tokens to fill)")
        parts = gap_template(args.prefix, args.suffix, args.length)
    _check_run_args(args)
    options = sampler_options(args)
    check_device(args.device)
    from ..continuous import cli as continuous

    if continuous.continuous_model_dir(args.model) is not None:  # an embedding-space DLM: its own sampler
        return continuous.run(args, lambda tok: [encode_template(tok, parts, -1)], [args.template or ""])
    model = load_dlm(args.model, args.device)
    template = encode_template(model.tokenizer, parts, model.config.mask_token_id)
    return _sample_and_print(args, options, model, [template], [args.template or ""])


def _sample_and_print(args: argparse.Namespace, options: SamplerOptions, model, templates: list[list[int]],
                      labels: list[str], task: str | None = None) -> int:
    import torch

    from ..sampling import fill

    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    start = time.perf_counter()
    if args.show_steps:
        from ..visualize import DenoisingView

        with DenoisingView(model.tokenizer, title=f"difflm {args.command}", delay=args.delay) as view:
            result = fill(model, templates, options=options, generator=generator, callback=view, return_dict=True)
    else:
        result = fill(model, templates, options=options, generator=generator, return_dict=True)
    seconds = time.perf_counter() - start
    tokenizer = model.tokenizer
    total_new = sum(len(tokens) for tokens in result.new_tokens)
    chat = getattr(args, "chat", False)
    if chat:  # the reply alone, up to the family's end of turn
        from ..chat import end_of_turn_ids
        from ..sampling import trim_at_stop

        result.new_tokens = [trim_at_stop(row, end_of_turn_ids(model)) for row in result.new_tokens]
    for b, label in enumerate(labels):
        # a task model's answer alone (the prompt is the task's scaffolding, not the user's words)
        answer_only = chat or task is not None
        text = tokenizer.decode(result.new_tokens[b] if answer_only else visible_ids(result, b), skip_special_tokens=True)
        verdict = None
        if task == "sudoku":
            from ..tasks.model_task import sudoku_verdict

            verdict = sudoku_verdict(label, text)
        if args.json:
            print(json.dumps({
                "prompt": label, "text": text, "generated": tokenizer.decode(result.new_tokens[b], skip_special_tokens=True),
                "new_tokens": result.new_tokens[b], "steps": result.steps, "seconds": round(seconds, 4),
                "tokens_per_second": round(total_new / seconds, 2),
                "tokens_per_call": round(len(result.new_tokens[b]) / max(result.steps, 1), 2),
                **({"verdict": verdict} if verdict else {}), "options": dataclasses.asdict(options),
            }))
            continue
        if not args.show_steps:  # the view already left the final text on screen
            print(text)
        if task is not None:
            if verdict:
                print(verdict)
            print(f"({len(result.new_tokens[b])} tokens in {result.steps} model calls, "
                  f"{len(result.new_tokens[b]) / max(result.steps, 1):.1f} per call)")
    return 0


def visible_ids(result: Generation, b: int) -> list[int]:
    """Row ``b`` of a `Generation` as text ids: generated tokens beyond ``new_tokens`` (cut at
    EOS with stop_at_eos) are dropped; padding and BOS go when decoding (special tokens)."""
    keep = len(result.new_tokens[b])
    out, seen = [], 0
    for token, generated in zip(result.sequences[b].tolist(), result.generate_mask[b].tolist()):
        if generated:
            seen += 1
            if seen > keep:
                continue
        out.append(token)
    return out
