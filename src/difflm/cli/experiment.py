"""`difflm experiment ablations [--quick] [--out DIR]`: the paper's ablations, resumable."""

from __future__ import annotations

import argparse

EXPERIMENTS = ("ablations",)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "experiment", help="reproduce a paper's experiment by one command (ablations: DiffuLLaMA Table 3)",
        description="ablations: from the bundled AR base, adapt with the full recipe, without attention annealing "
        "and without the shift operation, fine-tune as an AR model, or train a DLM from scratch of the same size; "
        "fine-tune each on the synthetic gsm task with the same data and compute; score exact match on its test "
        "split, for every seed; then the adapted DLM against the DLM from scratch at smaller sizes. About 70 minutes "
        "on 2 CPU cores (--quick: a few minutes, tiny budgets, for checking the pipeline). Rerun the same command "
        "to continue a stopped experiment: finished jobs are kept, a stopped training run resumes from its "
        "checkpoint. Writes results.json, curves.png and every run's config and log under --out.",
    )
    p.add_argument("name", choices=EXPERIMENTS, help="the experiment")
    p.add_argument("--out", default="runs/ablations", help="experiment directory (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="tiny budgets: minutes, not an hour (numbers meaningless)")
    p.add_argument("--seeds", metavar="S,S,...", help="seeds of every arm (default: 0,1,2; --quick: 0,1)")
    p.add_argument("--arms", metavar="A,A,...",
                   help="only these arms (default: all): diffusion, no-anneal, no-shift, ar, scratch")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time, one CPU thread each (default: %(default)s)")
    p.add_argument("--no-progress", action="store_true", help="log lines only, no progress bars")
    p.set_defaults(func=run)


def _seeds(text: str | None) -> tuple[int, ...] | None:
    from ..errors import InputError

    if text is None:
        return None
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise InputError(f"--seeds must be comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise InputError(f"--seeds must name at least one seed, each once, got {text!r}")
    return seeds


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..errors import InputError
    from . import check_output_dir

    seeds = _seeds(args.seeds)
    arms = None
    if args.arms is not None:
        from ..experiments.plan import ARMS

        arms = tuple(a.strip() for a in args.arms.split(",") if a.strip())
        unknown = [a for a in arms if a not in ARMS]
        if unknown or not arms or len(set(arms)) != len(arms):
            raise InputError(f"--arms must name arms from {', '.join(ARMS)}, each once, got {args.arms!r}")
    if args.jobs < 1:
        raise InputError(f"--jobs must be >= 1, got {args.jobs}")
    out = check_output_dir(args.out, "--out")
    from ..experiments.ablations import run_ablations
    from ..experiments.report import print_tables

    results = run_ablations(Path(out), quick=args.quick, seeds=seeds, arms=arms, workers=args.jobs, progress=not args.no_progress)
    print_tables(results)
    return 0
