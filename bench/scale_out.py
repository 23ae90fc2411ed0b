"""DDP vs FSDP2 on two processes, side by side: training speed of the bundled AR base's
architecture (configs/ar-base.yaml) under `torchrun --nproc_per_node 2`, fp32, gloo.

    .venv/bin/python bench/scale_out.py [--steps 30] [--repeats 3]
    .venv/bin/python bench/scale_out.py --render      # the section again from bench/results/scale_out.json

Writes bench/results/scale_out.json, bench/scale_out.png and the "Scale-out" section of
bench/RESULTS.md. Tokens/s is the trainer's own rate (global tokens over wall time) at the last
step, the first steps (start-up, first checkpoint) included in the wall time of both engines alike.
The engines run in pairs (DDP then FSDP, `--repeats` times), so drift of a shared machine's load
falls on both; the reading compares them only as far as the spread of the pairs' ratios allows.
Every number the section states comes from the JSON it writes (the parameter count is computed from
the config's architecture on the meta device).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
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
CONFIG = ROOT / "configs" / "ar-base.yaml"
ENGINES = ("ddp", "fsdp")
STATE_BYTES_PER_PARAMETER = 16  # fp32 AdamW: weights 4 + gradients 4 + two moments 8


def parameter_count(config: Path) -> int:
    """Distinct parameters of the config's architecture (a tied head counts once), built on the meta device."""
    import torch
    import yaml

    from difflm.formats.loading import parameter_count as count
    from difflm.training.models import build_backbone, load_tokenizer

    cfg = yaml.safe_load(config.read_text())
    with torch.device("meta"):
        model = build_backbone(load_tokenizer(cfg.get("tokenizer", "bundled")), cfg["architecture"])
    return count(model)


def git_commit() -> str:
    """HEAD, with "+dirty" when the working tree has changes (the numbers then rest on uncommitted code)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT).stdout.strip()

    head = git("rev-parse", "HEAD") or "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def run(engine: str, steps: int, out: Path, port: int) -> dict:
    """One torchrun training run; returns its rate, wall time and checkpoint layout."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "difflm", "train", str(CONFIG), f"distributed={engine}",
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


def pairs(result: dict) -> list[tuple[dict, dict]]:
    """(DDP, FSDP) runs of the same repeat."""
    by = {(r["engine"], r["repeat"]): r for r in result["runs"]}
    return [(by["ddp", i], by["fsdp", i]) for i in range(result["repeats"])]


def comparison(result: dict) -> dict:
    """FSDP/DDP tokens/s ratio per pair, their mean and spread, and whether 1 is outside 2 standard errors."""
    ratios = [f["tokens_per_s"] / d["tokens_per_s"] for d, f in pairs(result)]
    n = len(ratios)
    mean = statistics.fmean(ratios)
    sd = statistics.stdev(ratios) if n > 1 else None
    se = sd / math.sqrt(n) if sd is not None else None
    resolved = se is not None and abs(mean - 1) > 2 * se
    return {"ratios": ratios, "mean": mean, "sd": sd, "se": se, "resolved": resolved}


def reading(result: dict) -> str:
    """What the stored runs say, and no more: every number here is computed from ``result``."""
    c = comparison(result)
    ratios, n = c["ratios"], len(c["ratios"])
    listed = ", ".join(f"{r:.2f}x" for r in ratios)
    if n == 1:
        speed = (f"FSDP2 ran at {ratios[0]:.2f}x the tokens/s of DDP in one run each. With a single pair there is no "
                 f"measured spread, so this run does not say whether either engine is faster on this machine "
                 f"(`--repeats 3` or more measures it).")
    elif c["resolved"]:
        faster = "faster" if c["mean"] > 1 else "slower"
        every = (" in every pair" if all((r > 1) == (c["mean"] > 1) for r in ratios) else "")
        speed = (f"FSDP2 ran {faster} than DDP{every}: {listed} over {n} pairs (mean {c['mean']:.2f}x, "
                 f"standard error {c['se']:.2f}; 1.00x is more than two standard errors away).")
    else:
        speed = (f"FSDP2 against DDP over {n} pairs: {listed} (mean {c['mean']:.2f}x, standard error "
                 f"{c['se']:.2f}); 1.00x is within two standard errors, so these runs do not tell the engines "
                 f"apart on this machine.")
    params = result["parameters"]
    state_mb = params * STATE_BYTES_PER_PARAMETER / 1e6
    size = (f"At this size ({params / 1e6:.2f} M parameters, {params:,}: about {state_mb:.0f} MB of fp32 weights, "
            f"gradients and AdamW state at {STATE_BYTES_PER_PARAMETER} bytes per parameter, which DDP held whole in "
            f"each process here) sharding has no memory to save that matters: every layer's parameters are "
            f"all-gathered for the forward and again for the backward, and gradients are reduce-scattered, over gloo "
            f"on one machine, where DDP only all-reduces the gradients once. FSDP pays off when a model with its "
            f"optimizer state no longer fits one device: each process then holds 1/N of it.")
    gap = max(abs(f["final_train_loss"] - d["final_train_loss"]) for d, f in pairs(result))
    if gap < 1e-4:
        loss = (f"Train loss at step {result['steps']}: DDP and FSDP agree to {gap:.1e} nats/token (the largest "
                f"difference over the pairs); tests/test_training_fsdp.py checks the whole curve of each against "
                f"one process to 1e-4.")
    else:
        loss = (f"Train loss at step {result['steps']}: DDP and FSDP differ by up to {gap:.1e} nats/token, more than "
                f"the 1e-4 that tests/test_training_fsdp.py allows each of them against one process.")
    return f"Reading: {speed} {size} {loss}"


def markdown(result: dict) -> str:
    rows = "\n".join(
        f"| {r['engine'].upper()} | {r['repeat'] + 1} | {r['tokens_per_s']:.0f} | {r['train_seconds']:.1f} | "
        f"{r['wall_seconds']:.1f} | {r['final_train_loss']:.4f} | "
        f"{r['checkpoint_bytes'] / 1e6:.1f} MB in {len(r['checkpoint_files'])} files |"
        for r in result["runs"])
    steps, repeats = result["steps"], result["repeats"]
    return f"""{SECTION}

Command: `{result['command']}` (`torchrun --nproc_per_node 2 -m difflm train configs/ar-base.yaml distributed=ddp|fsdp mixed_precision=no`, {repeats} pair(s), DDP then FSDP, back to back); raw numbers in bench/results/scale_out.json  
Machine: {result['machine']}, gloo, one thread per process  
Date: {result['date']}, commit {result['commit']}; model: configs/ar-base.yaml's architecture, {result['parameters']:,} parameters

| engine | pair | tokens/s | training s | wall s (with start-up) | train loss at step {steps} | checkpoint |
|---|---:|---:|---:|---:|---:|---|
{rows}

![DDP vs FSDP](scale_out.png)

{reading(result)}

"""


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3))
    for i, engine in enumerate(ENGINES):
        rates = [r["tokens_per_s"] for r in result["runs"] if r["engine"] == engine]
        mean = statistics.fmean(rates)
        ax.bar(i, mean, color=("#4c72b0", "#dd8452")[i],
               yerr=[[mean - min(rates)], [max(rates) - mean]] if len(rates) > 1 else None, capsize=4)
        ax.scatter([i] * len(rates), rates, color="black", s=10, zorder=3)
        ax.text(i, max(rates), f"{mean:.0f}", ha="center", va="bottom", fontsize=9)
    ax.set_xticks(range(len(ENGINES)), [e.upper() for e in ENGINES])
    ax.set_ylabel("training tokens / s (2 processes)")
    ax.set_title(f"ar-base architecture ({result['parameters'] / 1e6:.2f} M), fp32, gloo; "
                 f"{result['repeats']} pair(s)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def write(result: dict) -> None:
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "scale_out.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, HERE / "scale_out.png")
    results_md = HERE / "RESULTS.md"
    results_md.write_text(replace_section(results_md.read_text(), SECTION, markdown(result)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3, help="DDP/FSDP pairs (>= 2 to measure a spread)")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--render", action="store_true",
                        help="no runs: print (and write) the section from bench/results/scale_out.json")
    args = parser.parse_args()
    if args.render:
        result = json.loads((HERE / "results" / "scale_out.json").read_text())
        if not isinstance(result, dict) or "parameters" not in result:
            raise SystemExit("bench/results/scale_out.json predates --render (no parameters, date or commit "
                             "stored): run the benchmark")
    else:
        command = f".venv/bin/python bench/scale_out.py --steps {args.steps} --repeats {args.repeats}"
        result = {"command": command, "date": date.today().isoformat(), "commit": git_commit(),
                  "machine": machine(), "config": str(CONFIG.relative_to(ROOT)),
                  "parameters": parameter_count(CONFIG), "steps": args.steps, "repeats": args.repeats, "runs": []}
        with tempfile.TemporaryDirectory(prefix="difflm-scale-out-") as tmp:
            for repeat in range(args.repeats):
                for i, engine in enumerate(ENGINES):
                    r = run(engine, args.steps, Path(tmp) / f"{engine}-{repeat}", 29650 + 2 * repeat + i)
                    result["runs"].append({**r, "repeat": repeat})
                    print(json.dumps(result["runs"][-1]), file=sys.stderr)
    print(markdown(result))
    if not args.no_write:
        write(result)


if __name__ == "__main__":
    main()
