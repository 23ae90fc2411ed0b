"""`difflm train CONFIG [key=value ...] [--resume]`."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train an AR model or a DLM (from scratch, adapted, block diffusion) or fine-tune one (SFT, LoRA)",
        description="Train with a YAML preset (configs/*.yaml) and key=value overrides, e.g. "
        "`difflm train configs/adapt.yaml max_steps=500 lr=3e-4`. Runs on several processes under "
        "`torchrun --nproc_per_node N $(which difflm) train ...` (DDP through accelerate).",
    )
    parser.add_argument("config", nargs="?", help="YAML preset")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (dotted keys reach into mappings)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in output_dir")
    parser.add_argument("--output-dir", help="shortcut for output_dir=...")
    parser.add_argument("--no-progress", action="store_true", help="plain log lines instead of a progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..training.config import load_train_config  # torch-free: a missing file, bad YAML or key answers at once
    from . import check_output_dir

    overrides = list(args.overrides)
    if args.config and "=" in args.config:  # only overrides, no preset
        overrides.insert(0, args.config)
        args.config = None
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    cfg = load_train_config(args.config, overrides)
    check_output_dir(str(cfg.output_dir), "--output-dir" if args.output_dir else "output_dir")
    from ..training import Trainer

    result = Trainer(cfg, resume=args.resume, show_progress=not args.no_progress).train()
    run_on = result["distributed"]
    if not run_on["main_process"]:
        return 0  # one summary per run, not one per process
    print(f"trained {result['step']} steps, {result['tokens']:,} tokens; validation {result['val_loss']:.4f} nats/token; "
          f"{run_on['engine']} on {run_on['processes']} process(es); model saved to {result['model_dir']}")
    return 0
