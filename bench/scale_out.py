"""DDP vs FSDP2 on two processes, side by side: training speed of the bundled AR base's
architecture (configs/ar-base.yaml) under `torchrun --nproc_per_node 2`, fp32, gloo.

    .venv/bin/python bench/scale_out.py [--steps 30]

Writes bench/results/scale_out.json, bench/scale_out.png and the "Scale-out" section of
bench/RESULTS.md. Tokens/s is the trainer's own rate (global tokens over wall time) at the last
step, the first steps (start-up, first checkpoint) included in the wall time of both engines alike.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from training_report import machine, replace_section  # noqa: E402

SECTION = "## Scale-out"


def run(engine: str, steps: int, out: Path, port: int) -> dict:
    """One torchrun training run; returns its rate, wall time and checkpoint layout."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "difflm", "train", str(ROOT / "configs" / "ar-base.yaml"), f"distributed={engine}",
           f"max_steps={steps}", "warmup_steps=5", f"eval_every={steps}", "eval_batches=2", f"save_every={steps}",
           "log_every=1", "mixed_precision=no", f"output_dir={out}", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{engine} run failed:\n{done.stderr[-3000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "train_loss" in r]
    checkpoint = out / "checkpoints" / f"step-{steps:07d}"
    files = sorted(str(p.relative_to(checkpoint)) for p in checkpoint.rglob("*") if p.is_file())
    return {"engine": engine, "steps": steps, "tokens_per_s": train[-1]["tokens_per_s"],
            "train_seconds": train[-1]["elapsed_s"], "wall_seconds": wall,
            "final_train_loss": train[-1]["train_loss"], "val_loss": records[-1].get("val_loss"),
            "checkpoint_files": files,
            "checkpoint_bytes": sum(p.stat().st_size for p in checkpoint.rglob("*") if p.is_file())}


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3))
    names = [r["engine"].upper() for r in results]
    ax.bar(names, [r["tokens_per_s"] for r in results], color=["#4c72b0", "#dd8452"])
    for i, r in enumerate(results):
        ax.text(i, r["tokens_per_s"], f"{r['tokens_per_s']:.0f}", ha="center", va="bottom", fontsize=9)
    ax.set_ylabel("training tokens / s (2 processes)")
    ax.set_title("ar-base architecture, fp32, gloo", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="difflm-scale-out-") as tmp:
        for i, engine in enumerate(("ddp", "fsdp")):
            results.append(run(engine, args.steps, Path(tmp) / engine, 29650 + i))
            print(json.dumps(results[-1]), file=sys.stderr)
    ddp, fsdp = results
    rows = "\n".join(
        f"| {r['engine'].upper()} | {r['tokens_per_s']:.0f} | {r['train_seconds']:.1f} | {r['wall_seconds']:.1f} | "
        f"{r['final_train_loss']:.4f} | {r['checkpoint_bytes'] / 1e6:.1f} MB in {len(r['checkpoint_files'])} files |"
        for r in results)
    body = f"""{SECTION}

Command: `.venv/bin/python bench/scale_out.py --steps {args.steps}` (`torchrun --nproc_per_node 2 -m difflm train configs/ar-base.yaml distributed=ddp|fsdp mixed_precision=no`, one run each, back to back); raw numbers in bench/results/scale_out.json  
Machine: {machine()}, gloo, one thread per process  
Date: {date.today().isoformat()}

| engine | tokens/s | training s | wall s (with start-up) | train loss at step {args.steps} | checkpoint |
|---|---:|---:|---:|---:|---|
{rows}

![DDP vs FSDP](scale_out.png)

Reading: FSDP2 ran at {fsdp['tokens_per_s'] / ddp['tokens_per_s']:.2f}x the speed of DDP in this run; on this shared
2-core machine that is within run-to-run noise. At this size (2.3M parameters) sharding saves nothing worth having:
every layer's parameters are all-gathered for the forward and again for the backward, and gradients are
reduce-scattered, over gloo on one machine, where DDP only all-reduces the gradients once. FSDP pays off when a model with its optimizer
state (about 16 bytes per parameter in fp32 AdamW) no longer fits one device: each process then holds 1/N of it. Both
engines follow the same loss curve (tests/test_training_fsdp.py checks it to 1e-4 against one process).

"""
    print(body)
    if not args.no_write:
        (HERE / "results").mkdir(exist_ok=True)
        (HERE / "results" / "scale_out.json").write_text(json.dumps(results, indent=2) + "\n")
        plot(results, HERE / "scale_out.png")
        results_md = HERE / "RESULTS.md"
        results_md.write_text(replace_section(results_md.read_text(), SECTION, body))


if __name__ == "__main__":
    main()
