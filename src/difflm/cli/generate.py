"""`difflm generate` and `difflm infill`: sample from a diffusion LM on the command line.

    difflm generate "And God said" --length 64 --strategy threshold --block-length 16 --cache dual
    difflm infill "And God said, Let there be [MASK:8] and there was light" --show-steps
    difflm infill --prefix "To be, or not" --suffix "that is the question" --length 4

Every option of `difflm.sampling.SamplerOptions` is a flag; the flags become one `SamplerOptions`,
validated before the model loads. ``--json`` prints one JSON object per line; ``--show-steps``
shows the denoising live (`difflm.visualize.DenoisingView`).

The commands name no model family and no task: a family beyond the masked core (continuous, multimodal)
adds its flags and takes the run through `difflm.registry.FAMILIES` (`difflm.cli.family`, docs/plugins.md);
a task model (its task.json) brings its length, strategy and answer check (`difflm.tasks.model_task.DEFAULTS`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from typing import TYPE_CHECKING, Any

from ..bundled import DEFAULT_DLM
from ..errors import InputError
from ..io import require_model
from ..registry import ATTENTION_OVERRIDES, CACHE_MODES, FILTER_ORDERS, REVEAL_SCHEDULES, STRATEGIES
from . import choice, device_name, integer, number
from .family import MASKED_FLAGS_KEY, GenerationJob, add_family_arguments, claiming_family, masked_flags_given
from .precheck import check_sampler_flags, no_preset_error
from .renoising import add_renoising_arguments

if TYPE_CHECKING:
    from ..formats import GenerationDefaults
    from ..sampling import Generation, SamplerOptions
    from ..tasks.model_task import TaskDefaults

# the flags' value ranges (those of `SamplerOptions`), checked by argparse before anything loads
NON_NEGATIVE = number(">= 0 and finite", lambda x: 0 <= x < math.inf)
PROBABILITY = number("in [0, 1)", lambda p: 0 <= p < 1)


def register(subparsers: Any) -> None:
    generate_parser = subparsers.add_parser(
        "generate", help="continue a prompt by iterative denoising",
        description="Generate text after each PROMPT with a diffusion LM (all decoding strategies, blocks, CFG, "
        "EOS handling and the block-wise KV cache are flags).",
    )
    generate_parser.add_argument("prompt", nargs="+", help="prompt text (several prompts run as one left-padded batch)")
    generate_parser.add_argument("--length", type=integer(1), help="new tokens per prompt (default 64; a task model: what "
                                 "its answers need)")
    _add_sampling_arguments(generate_parser, "generate")
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
    infill_parser.add_argument("--length", type=integer(1), help="tokens to fill between --prefix and --suffix")
    _add_sampling_arguments(infill_parser, "infill")
    infill_parser.set_defaults(func=run_infill)


def _add_sampling_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    add_core_arguments(parser, command)
    add_family_arguments(parser, command)  # each registered family's own group (difflm.cli.family)


def add_core_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    """The flags of ``command`` ("generate" or "infill") that are not a family's: those every family shares,
    then the masked sampler's, in their own group."""
    parser.add_argument("--model", default=DEFAULT_DLM, help=f"model directory or bundled model name (default {DEFAULT_DLM})")
    parser.add_argument("--preset", metavar="NAME",
                        help="a named decoding mode of the model's layout instead of its default settings "
                        "(e.g. LLaDA 2.1: quality, speed); flags still override it")
    parser.add_argument("--steps", type=integer(1), help="denoising steps = model calls at most (default: one per token)")
    parser.add_argument("--cfg-scale", type=NON_NEGATIVE, default=0.0, help="classifier-free guidance scale >= 0 (default 0 = off)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--device", default="cpu", type=device_name, help="torch device: cpu, cuda, cuda:N, mps, ... (default cpu)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per prompt")
    parser.add_argument("--show-steps", action="store_true", help="show the denoising step by step in the terminal")
    parser.add_argument("--delay", type=float, default=0.0, help="with --show-steps: seconds to pause per step")
    _add_masked_arguments(parser, command)


def _add_masked_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    """The masked sampler's flags, in their own group; the group is what tells a family which flags are not
    its own (`difflm.cli.family.masked_flags_given`)."""
    group = parser.add_argument_group("masked diffusion sampler", "how a masked DLM decodes (a model family of "
                                      "its own, below, may refuse these)")
    strategies = ", ".join(STRATEGIES.names())
    actions = [
        group.add_argument("--strategy", metavar="NAME", type=choice(STRATEGIES, "strategy"), help=f"which positions to commit: {strategies} (default "
                           "low_confidence; a task model: its task's, e.g. topk_margin for sudoku)"),
        group.add_argument("--block-length", type=integer(1), help="semi-autoregressive block size (default: one block)"),
        group.add_argument("--temperature", type=NON_NEGATIVE, help="0 = greedy (default)"),
        group.add_argument("--top-p", type=number("in (0, 1]", lambda p: 0 < p <= 1), help="nucleus mass in (0, 1] (default 1 = off)"),
        group.add_argument("--top-k", type=integer(0), help="keep the k most likely tokens (default 0 = off)"),
        group.add_argument("--gumbel", action=argparse.BooleanOptionalAction, help="draw tokens by float64 Gumbel-max (LLaDA)"),
        group.add_argument("--threshold", type=number("in (0, 1]", lambda p: 0 < p <= 1),
                           help="confidence threshold in (0, 1] of --strategy threshold (default 0.9)"),
        group.add_argument("--alg-temp", type=NON_NEGATIVE,
                           help="> 0 samples positions instead of the top scores (Dream)"),
        group.add_argument("--cache", choices=CACHE_MODES, help="block-wise KV cache (default none)"),
        group.add_argument("--attention", choices=ATTENTION_OVERRIDES,
                           help="override the model's attention (block_causal makes the caches exact)"),
        group.add_argument("--schedule", choices=REVEAL_SCHEDULES,
                           help="tokens committed per step: equal shares (LLaDA) or Dream's time grid "
                           "(default: the model family's convention)"),
        group.add_argument("--filter-order", choices=FILTER_ORDERS,
                           help="order of the top-k and top-p filters (default: the model family's convention)"),
        group.add_argument("--sub-block-length", type=integer(1), metavar="N",
                           help="decode each block in sub-blocks of N tokens (Fast-dLLM v2; with --cache block the "
                           "rest of the block is read from a cache made at each sub-block's first step)"),
        group.add_argument("--editing-threshold", type=PROBABILITY, metavar="P",
                           help="token editing (LLaDA 2.1): replace a committed token of the current block when the "
                           "model's top prediction there differs and is above P (default off)"),
        group.add_argument("--remask", type=PROBABILITY, metavar="P",
                           help="ReMDM-style remasking: mask each committed token of the block again with probability "
                           "P at every step but the block's last (default 0 = off)"),
        group.add_argument("--max-edits", type=integer(1), help="edits or remasks per position at most (default 2)"),
        group.add_argument("--post-edit-steps", type=integer(0), metavar="N",
                           help="with --editing-threshold: up to N edit-only model calls once a block is filled, "
                           "until one edits nothing (LLaDA 2.1's max_post_steps; default 0)"),
        group.add_argument("--stop-at-eos", action=argparse.BooleanOptionalAction,
                           help="stop a row once a finished block holds EOS"),
        group.add_argument("--suppress-eos", action=argparse.BooleanOptionalAction,
                           help="commit EOS only when nothing else is left"),
        group.add_argument("--speculative", action=argparse.BooleanOptionalAction,
                           help="self-speculative decoding of a block model with a causal view (block_context causal): "
                           "draft a block with the diffusion view, verify it with the AR view in the same call; the "
                           "output is the AR view's own decoding"),
    ]
    actions += add_renoising_arguments(parser)  # refused by a family like the masked flags
    if command == "generate":
        actions.append(group.add_argument("--chat", action="store_true", help="wrap each prompt in the checkpoint's "
                                          "chat template; print the reply up to the end of the turn"))
    parser.set_defaults(**{MASKED_FLAGS_KEY: tuple((a.option_strings[0], a.dest, a.default) for a in actions)})


def given_options(args: argparse.Namespace) -> dict[str, Any]:
    """The `SamplerOptions` fields this command line sets: the flags given (a flag left out is None;
    ``--cfg-scale``, shared with the families, counts when it is not 0)."""
    from ..sampling.options import SamplerOptions

    given = {name: getattr(args, name) for name in SamplerOptions.names() if getattr(args, name, None) is not None}
    if given.get("cfg_scale") == 0.0:
        del given["cfg_scale"]
    return given


def sampler_options(args: argparse.Namespace, base: SamplerOptions | None = None) -> SamplerOptions:
    """The one validated `SamplerOptions` of the sampling flags over ``base`` (a model's saved defaults,
    `difflm.sampling.options.model_options`; None: the sampler's defaults). `InputError` on a bad value."""
    from ..sampling.options import over_model

    return over_model(base, **given_options(args))


def saved_defaults(name_or_path: str, preset: str | None = None) -> GenerationDefaults | None:
    """The decoding defaults a model directory (or bundled name) saved - its generation_config.json, an
    adapter's own or else its base's, else its layout's published decoding - or the named ``preset`` of
    its layout; read before the weights (`ModelLoadError` for a bad file, `InputError` for an unknown preset)."""
    from ..bundled import resolve_model
    from ..formats import generation_presets, saved_generation_defaults

    path = resolve_model(name_or_path)
    if preset is not None:
        presets = generation_presets(path) if path.is_dir() else {}
        if preset not in presets:
            raise no_preset_error(name_or_path, preset, list(presets))
        return presets[preset]
    return saved_generation_defaults(path) if path.is_dir() else None


def _used_defaults(args: argparse.Namespace, defaults: GenerationDefaults, options: SamplerOptions,
                   length_used: bool) -> str:
    """One line for stderr: which of the model's saved settings this run uses (those no flag replaced)."""
    given = given_options(args)
    used = [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in defaults.options.items()
            if k not in given and getattr(options, k, None) == v]
    if length_used and defaults.max_new_tokens is not None:
        used.insert(0, f"length={defaults.max_new_tokens}")
    what = ", ".join(used) if used else "none (every one replaced by a flag)"
    return f"difflm: decoding defaults of {args.model} ({defaults.source}): {what}"


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
    """The torch-free checks of the flags that are not sampler options: --seed, --delay and that
    --model names something (a bundled model or an existing path)."""
    if not 0 <= args.seed < 2**63:
        raise InputError(f"--seed must be an integer in [0, 2**63), got {args.seed}")
    if not (math.isfinite(args.delay) and args.delay >= 0):
        raise InputError(f"--delay must be a number of seconds >= 0, got {args.delay}")
    require_model(args.model)


def load_dlm(name_or_path: str, device: str = "cpu") -> Any:
    """The masked `DiffusionLM` of a bundled model name or a directory, on ``device``, with its tokenizer
    (`difflm.formats.load_diffusion_lm`); `ModelLoadError` for anything else."""
    from ..formats import load_diffusion_lm

    return load_diffusion_lm(name_or_path, device=device)


def _model_task(name_or_path: str) -> tuple[str, TaskDefaults] | None:
    """The task a fine-tuned model was trained on (its task.json) with how generate runs such a model
    (`difflm.tasks.model_task.DEFAULTS`: its length, strategy, EOS rule and answer check), or None."""
    from ..bundled import resolve_model
    from ..tasks.model_task import DEFAULTS, read_model_task

    path = resolve_model(name_or_path)
    task = read_model_task(path) if path.is_dir() else None
    return None if task is None else (task, DEFAULTS[task])


def _job(args: argparse.Namespace, options: SamplerOptions, labels: list[str], templates: Any) -> GenerationJob:
    return GenerationJob(options=options, masked_flags=masked_flags_given(args), labels=labels, templates=templates,
                         load_model=lambda: load_dlm(args.model, args.device))


def run_generate(args: argparse.Namespace) -> int:
    family = claiming_family(args)
    found = None if family is not None or args.chat else _model_task(args.model)
    task, defaults = found if found is not None else (None, None)
    # every bad value fails before the model loads, those that need no torch first
    _check_run_args(args)
    if family is not None and args.preset is not None:
        raise InputError(f"--preset applies to masked DLMs; {args.model} is decoded by the {family.name} family's sampler")
    check_sampler_flags(args.model, given_options(args), preset=args.preset, fallback=_base_options(None, defaults),  # torch-free
                        model_defaults=family is None, renoising=family is None)
    saved = None if family is not None else saved_defaults(args.model, args.preset)  # generation_config.json
    base = _base_options(saved, defaults)
    length_given = args.length is not None
    if args.length is None:  # the model's recommended length; a task model saved without one: its task's
        args.length = (saved.max_new_tokens if saved is not None else None) or (defaults.length if defaults else 64)
    if args.length < 1:
        raise InputError(f"--length must be >= 1, got {args.length}")
    options = sampler_options(args, base)
    check_device(args.device)
    # said once the run is sure to start (a bad input or model is one line of error, alone)
    notice = _used_defaults(args, saved, options, not length_given) if saved is not None and not args.json else None
    prompts = args.prompt
    if task is not None:
        from ..tasks.model_task import task_prompt

        prompts = [task_prompt(task, p) for p in args.prompt]  # bad input fails before the model loads

    def templates(tokenizer: Any, placeholder: int) -> list[list[int]]:
        from ..sampling.templates import continuation_ids

        return [continuation_ids(prompt, tokenizer, placeholder, args.length) for prompt in prompts]

    if family is not None:  # a model family of its own (registry.FAMILIES): its runner
        return family.run(args, _job(args, options, args.prompt, templates))
    model = load_dlm(args.model, args.device)
    mask_id = model.config.mask_token_id
    if args.chat:
        from ..chat import chat_prompt_ids

        rows = [chat_prompt_ids(model, prompt) + [mask_id] * args.length for prompt in args.prompt]
    else:
        rows = templates(model.tokenizer, mask_id)
    if notice is not None:
        print(notice, file=sys.stderr)
    return _sample_and_print(args, options, model, rows, args.prompt, task=defaults)


def _base_options(saved: GenerationDefaults | None, task: TaskDefaults | None) -> SamplerOptions | None:
    """What the flags apply to: the model's saved defaults, else (a task model saved before models carried
    their settings) its task's strategy and EOS rule, else None (the sampler's defaults)."""
    from ..sampling.options import SamplerOptions, defaults_options

    if saved is not None:
        return defaults_options(saved)
    if task is not None:
        return SamplerOptions(strategy=task.strategy, stop_at_eos=task.stop_at_eos)
    return None


def run_infill(args: argparse.Namespace) -> int:
    if (args.template is None) == (args.prefix is None):
        raise InputError("give either a TEMPLATE with [MASK:n] gaps or --prefix (with --suffix and --length)")
    if args.template is None and args.length is None:
        raise InputError("--prefix needs --length >= 1 (tokens to fill)")
    _check_run_args(args)
    from ..sampling.templates import encode_template, gap_template, parse_template

    parts = parse_template(args.template) if args.template is not None else gap_template(args.prefix, args.suffix, args.length)
    family = claiming_family(args)
    if family is not None and args.preset is not None:
        raise InputError(f"--preset applies to masked DLMs; {args.model} is decoded by the {family.name} family's sampler")
    check_sampler_flags(args.model, given_options(args), preset=args.preset,  # torch-free
                        model_defaults=family is None, renoising=family is None)
    saved = None if family is not None else saved_defaults(args.model, args.preset)  # generation_config.json
    options = sampler_options(args, _base_options(saved, None))
    check_device(args.device)
    notice = _used_defaults(args, saved, options, False) if saved is not None and not args.json else None
    labels = [args.template or ""]

    def templates(tokenizer: Any, placeholder: int) -> list[list[int]]:
        return [encode_template(tokenizer, parts, placeholder)]

    if family is not None:  # a model family of its own (registry.FAMILIES): its runner
        return family.run(args, _job(args, options, labels, templates))
    model = load_dlm(args.model, args.device)
    rows = templates(model.tokenizer, model.config.mask_token_id)
    if notice is not None:  # said once the run is sure to start
        print(notice, file=sys.stderr)
    return _sample_and_print(args, options, model, rows, labels)


def _sample_and_print(args: argparse.Namespace, options: SamplerOptions, model, templates: list[list[int]],
                      labels: list[str], task: TaskDefaults | None = None) -> int:
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
        verdict = task.verdict(label, text) if task is not None and task.verdict is not None else None
        if args.json:
            print(json.dumps({
                "prompt": label, "text": text, "generated": tokenizer.decode(result.new_tokens[b], skip_special_tokens=True),
                "new_tokens": result.new_tokens[b], "steps": result.steps, "seconds": round(seconds, 4),
                "tokens_per_second": round(total_new / seconds, 2),
                "tokens_per_call": round(result.tokens_per_call()[b], 2),
                **({"verdict": verdict} if verdict else {}), "options": dataclasses.asdict(options),
            }))
            continue
        if not args.show_steps:  # the view already left the final text on screen
            print(text)
        if task is not None:
            if verdict:
                print(verdict)
            print(f"({len(result.new_tokens[b])} tokens in {result.steps} model calls, "
                  f"{result.tokens_per_call()[b]:.1f} per call)")
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
