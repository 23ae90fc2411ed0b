"""`difflm eval --model DIR --tasks a,b=PATH,c`: score an AR model or a DLM on benchmark tasks."""

from __future__ import annotations

import argparse

from ..errors import InputError
from ..io import require_model
from ..registry import (CACHE_MODES as CACHE_MODE_NAMES, EVAL_TASKS as TASK_NAMES, FORMATS as FORMAT_NAMES,
                        STRATEGIES as STRATEGY_NAMES)
from . import choice, device_name, integer, number
from .generate import given_options
from .precheck import check_sampler_flags


def register(subparsers: argparse._SubParsersAction) -> None:
    names = ", ".join(TASK_NAMES)
    p = subparsers.add_parser(
        "eval", help="evaluate a model (AR: exact NLL; DLM: ELBO) on benchmark tasks",
        description="Score a model on tasks and print a table; the JSON report (scores, standard errors, "
        "settings, seed) goes to --output. A plain transformers causal LM is scored exactly; a DLM by the "
        "Monte Carlo ELBO; stderr says which layout was detected (or given) and which score is used. "
        "Tasks: NAME or NAME=PATH (a local data file). Available: " + names + ".",
    )
    p.add_argument("--model", required=True, help="model directory or bundled name (ar-base, dlm-adapted, dlm-scratch)")
    p.add_argument("--format", metavar="F", type=choice(FORMAT_NAMES, "format"),
                   help="checkpoint layout instead of detection: " + ", ".join(FORMAT_NAMES) + " (causal-lm: a plain "
                   "causal LM, scored as AR; the others as DLMs). DiffuLLaMA's files are a plain LLaMA: without "
                   "--format diffullama it is scored as an AR model")
    p.add_argument("--tasks", default="perplexity,last-word,multiple-choice,infilling",
                   help="comma-separated tasks (default: the four bundled ones)")
    p.add_argument("--output", default="difflm-eval.json", help="where to write the JSON report (default: %(default)s)")
    p.add_argument("--n-samples", type=integer(1), default=32, help="Monte Carlo samples per sequence for a DLM (default: %(default)s)")
    p.add_argument("--estimator", default="count", choices=("count", "time"),
                   help="ELBO estimator: count = LLaDA's l-sampling, time = t-sampling (default: %(default)s)")
    p.add_argument("--no-stratify", action="store_true", help="draw the Monte Carlo samples independently")
    p.add_argument("--independent-options", action="store_true",
                   help="give each multiple-choice option its own random draws (default: the options of a "
                   "question share them, which makes their comparison less noisy)")
    p.add_argument("--reference-steps", type=integer(0), default=0, metavar="T",
                   help="also score multiple choice with DiffuGPT's unweighted T-step score (0 = off; the paper uses 32)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw (default: %(default)s)")
    p.add_argument("--batch-size", type=integer(1), default=16, help="sequences per forward pass (default: %(default)s)")
    p.add_argument("--steps", type=integer(1), help="denoising steps per generation (default: one per token)")
    p.add_argument("--block-length", type=integer(1), help="semi-autoregressive block length for DLM generation")
    p.add_argument("--strategy", metavar="NAME", type=choice(STRATEGY_NAMES, "strategy"),
                   help=f"DLM commit strategy: {', '.join(STRATEGY_NAMES)} (default: the model's generation_config.json, "
                   "else low_confidence)")
    p.add_argument("--threshold", type=number("in (0, 1]", lambda p: 0 < p <= 1),
                   help="confidence threshold in (0, 1] of --strategy threshold (default 0.9)")
    p.add_argument("--cache", choices=CACHE_MODE_NAMES,
                   help="block-wise KV cache of DLM generation (default: the model's generation_config.json, else none)")
    p.add_argument("--stop-at-eos", action=argparse.BooleanOptionalAction,
                   help="DLM generation: stop a row once a finished block holds EOS (variable-length answers, "
                   "e.g. GSM8K; use with --block-length; default: the model's generation_config.json, else off)")
    p.add_argument("--speculative", action=argparse.BooleanOptionalAction,
                   help="DLM generation: self-speculative decoding of a block model with a causal view (the output is "
                   "its AR view's own decoding, in fewer calls; open-ended tasks only)")
    p.add_argument("--max-new-tokens", type=integer(1), help="generation budget of GSM8K / HumanEval (default: the "
                   "model's recommended length, else 256)")
    p.add_argument("--limit", type=integer(1), help="evaluate only the first N examples of each task")
    p.add_argument("--device", type=device_name, help="torch device (default: cpu)")
    p.add_argument("--threads", type=integer(1),
                   help="CPU threads for torch (default: torch's choice; on a busy machine 1 can be much faster)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _check_task_names(spec: str) -> None:
    """The torch-free part of `difflm.evaluation.parse_tasks`: every NAME of "NAME[=PATH],..." is a task of
    `difflm.registry.EVAL_TASKS` (the data files are checked when the tasks are built)."""
    names = [item.partition("=")[0].strip() for item in spec.split(",") if item.strip()]
    if not names:
        raise InputError(f"no tasks given; available: {', '.join(TASK_NAMES)}")
    unknown = next((name for name in names if name not in TASK_NAMES), None)
    if unknown is not None:  # the words of `difflm.evaluation.registry.build_task`
        raise InputError(f"unknown task {unknown!r}; available: {', '.join(TASK_NAMES)}")


def run(args: argparse.Namespace) -> int:
    import sys

    _check_task_names(args.tasks)  # before torch loads: a typo answers at once
    require_model(args.model)
    # the sampler flags over the model's saved defaults, as far as its files tell (the run checks them again below)
    check_sampler_flags(args.model, given_options(args), renoising=False)
    from ..evaluation import EvalSettings, load_eval_lm, parse_tasks, print_report, run_evaluation, write_report
    from ..evaluation.loading import check_format, scoring_summary

    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)

    settings = EvalSettings(
        n_samples=args.n_samples, estimator=args.estimator, stratified=not args.no_stratify,
        common_random_numbers=not args.independent_options, seed=args.seed,
        batch_size=args.batch_size, reference_steps=args.reference_steps, steps=args.steps,
        block_length=args.block_length, strategy=args.strategy, threshold=args.threshold, cache=args.cache,
        stop_at_eos=args.stop_at_eos, speculative=args.speculative, max_new_tokens=args.max_new_tokens, limit=args.limit,
        progress=not args.no_progress,
    )  # validates every value, the sampler options too: before loading anything, a typo should fail fast
    check_format(args.format)
    from ..sampling.options import defaults_options
    from .generate import saved_defaults

    # the flags over the model's own decoding settings (generation_config.json): they too fail before the weights load
    settings.sampler_options(defaults_options(saved_defaults(args.model)))
    tasks = parse_tasks(args.tasks)
    lm = load_eval_lm(args.model, settings, format=args.format, device=args.device)
    print(scoring_summary(lm, "--format"), file=sys.stderr)
    saved = getattr(lm.model, "generation_defaults", None)
    if saved is not None and lm.kind == "dlm":
        print(f"difflm: decoding defaults of {args.model} ({saved.source}), under the flags given: {saved.describe()}",
              file=sys.stderr)
    report = run_evaluation(lm, tasks)
    print_report(report)
    path = write_report(report, args.output)
    print(f"report written to {path}")
    return 0
