"""Width/depth against training speed on this machine: the measurement behind the bundled AR
base's architecture. Each candidate (LLaMA, context 256, tied embeddings, 8192-token vocabulary)
trains a few steps under `torchrun --nproc_per_node 2` (DDP, both cores) with the preset's
precision; the trainer's own tokens/s at the last step is recorded.

    .venv/bin/python bench/arch_sweep.py [--steps 12] [--precision bf16]

Writes bench/results/arch_sweep.json and prints a table (no RESULTS.md section: the chosen run's
report goes into "Bundled models").
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

CANDIDATES = [  # (hidden, layers, heads, intermediate)
    (128, 6, 4, 384),
    (256, 6, 4, 688),
    (256, 8, 4, 688),
    (320, 8, 5, 864),
    (384, 6, 6, 1024),
]


def params(hidden: int, layers: int, intermediate: int, vocab: int = 8192) -> int:
    return vocab * hidden + layers * (4 * hidden * hidden + 3 * hidden * intermediate + 2 * hidden) + hidden


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--precision", default="bf16")
    args = parser.parse_args()
    rows = []
    for hidden, layers, heads, inter in CANDIDATES:
        with tempfile.TemporaryDirectory() as out:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29701",
                   "-m", "difflm", "train", str(ROOT / "configs" / "ar-base.yaml"), f"output_dir={out}",
                   f"architecture.hidden_size={hidden}", f"architecture.num_hidden_layers={layers}",
                   f"architecture.num_attention_heads={heads}", f"architecture.num_key_value_heads={heads}",
                   f"architecture.intermediate_size={inter}", f"max_steps={args.steps}", "warmup_steps=2",
                   f"eval_every={args.steps}", "eval_batches=1", f"save_every={args.steps}", "log_every=1",
                   f"mixed_precision={args.precision}", "--no-progress"]
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
            if done.returncode:
                raise SystemExit(done.stderr[-2000:])
            last = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()][-1]
        row = {"hidden": hidden, "layers": layers, "heads": heads, "intermediate": inter,
               "parameters": params(hidden, layers, inter), "tokens_per_s": last["tokens_per_s"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "arch_sweep.json").write_text(json.dumps({"precision": args.precision, "steps": args.steps,
                                                                  "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
