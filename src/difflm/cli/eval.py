"""`difflm eval --model DIR --tasks a,b=PATH,c`: score an AR model or a DLM on benchmark tasks."""

from __future__ import annotations

import argparse

from ..registry import (CACHE_MODES as CACHE_MODE_NAMES, EVAL_TASKS as TASK_NAMES, FORMATS as FORMAT_NAMES,
                        STRATEGIES as STRATEGY_NAMES)


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
    p.add_argument("--format", metavar="F",
                   help="checkpoint layout instead of detection: " + ", ".join(FORMAT_NAMES) + " (causal-lm: a plain "
                   "causal LM, scored as AR; the others as DLMs). DiffuLLaMA's files are a plain LLaMA: without "
                   "--format diffullama it is scored as an AR model")
    p.add_argument("--tasks", default="perplexity,last-word,multiple-choice,infilling",
                   help="comma-separated tasks (default: the four bundled ones)")
    p.add_argument("--output", default="difflm-eval.json", help="where to write the JSON report (default: %(default)s)")
    p.add_argument("--n-samples", type=int, default=32, help="Monte Carlo samples per sequence for a DLM (default: %(default)s)")
    p.add_argument("--estimator", default="count", choices=("count", "time"),
                   help="ELBO estimator: count = LLaDA's l-sampling, time = t-sampling (default: %(default)s)")
    p.add_argument("--no-stratify", action="store_true", help="draw the Monte Carlo samples independently")
    p.add_argument("--independent-options", action="store_true",
                   help="give each multiple-choice option its own random draws (default: the options of a "
                   "question share them, which makes their comparison less noisy)")
    p.add_argument("--reference-steps", type=int, default=0, metavar="T",
                   help="also score multiple choice with DiffuGPT's unweighted T-step score (0 = off; the paper uses 32)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass (default: %(default)s)")
    p.add_argument("--steps", type=int, help="denoising steps per generation (default: one per token)")
    p.add_argument("--block-length", type=int, help="semi-autoregressive block length for DLM generation")
    p.add_argument("--strategy", default="low_confidence", metavar="NAME",
                   help=f"DLM commit strategy: {', '.join(STRATEGY_NAMES)} (default: %(default)s)")
    p.add_argument("--threshold", type=float,
                   help="confidence threshold in (0, 1] of --strategy threshold (default 0.9)")
    p.add_argument("--cache", choices=CACHE_MODE_NAMES, default="none",
                   help="block-wise KV cache of DLM generation (default none)")
    p.add_argument("--stop-at-eos", action="store_true",
                   help="DLM generation: stop a row once a finished block holds EOS (variable-length answers, "
                   "e.g. GSM8K; use with --block-length)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="generation budget of GSM8K / HumanEval")
    p.add_argument("--limit", type=int, help="evaluate only the first N examples of each task")
    p.add_argument("--device", help="torch device (default: cpu)")
    p.add_argument("--threads", type=int,
                   help="CPU threads for torch (default: torch's choice; on a busy machine 1 can be much faster)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from ..errors import InputError
    from ..evaluation import EvalSettings, load_eval_lm, parse_tasks, print_report, run_evaluation, write_report
    from ..evaluation.loading import check_format, scoring_summary

    if args.threads is not None:
        if args.threads < 1:
            raise InputError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)

    settings = EvalSettings(
        n_samples=args.n_samples, estimator=args.estimator, stratified=not args.no_stratify,
        common_random_numbers=not args.independent_options, seed=args.seed,
        batch_size=args.batch_size, reference_steps=args.reference_steps, steps=args.steps,
        block_length=args.block_length, strategy=args.strategy, threshold=args.threshold, cache=args.cache,
        stop_at_eos=args.stop_at_eos, max_new_tokens=args.max_new_tokens, limit=args.limit,
        progress=not args.no_progress,
    )  # validates every value, the sampler options too: before loading anything, a typo should fail fast
    check_format(args.format)
    tasks = parse_tasks(args.tasks)
    lm = load_eval_lm(args.model, settings, format=args.format, device=args.device)
    print(scoring_summary(lm, "--format"), file=sys.stderr)
    report = run_evaluation(lm, tasks)
    print_report(report)
    path = write_report(report, args.output)
    print(f"report written to {path}")
    return 0
