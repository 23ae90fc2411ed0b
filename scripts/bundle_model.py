"""Copy a finished training run's model into src/difflm/bundled/models/NAME with a
training_summary.json (steps, tokens, wall time, validation loss, the config that made it).

    python scripts/bundle_model.py runs/ar-base ar-base --command "difflm train configs/ar-base.yaml"
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _wall_time(records: list[dict]) -> float:
    """Seconds of training over every segment of a run: a resumed run's clock starts again at 0."""
    total = previous = 0.0
    for r in records:
        if "elapsed_s" not in r:
            continue
        if r["elapsed_s"] < previous:  # --resume: a new segment
            total += previous
        previous = r["elapsed_s"]
    return total + previous


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("name")
    parser.add_argument("--command", required=True, help="the command that produced the run")
    parser.add_argument("--base-tokens", type=int, default=0, help="tokens the init checkpoint was trained on")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="store the weights in this precision (bfloat16 halves the bundle)")
    args = parser.parse_args()
    model_dir = args.run_dir / "model"
    if not (model_dir / "config.json").is_file():
        print(f"bundle_model: {model_dir} holds no finished model", file=sys.stderr)
        return 2
    records = [json.loads(line) for line in (args.run_dir / "metrics.jsonl").read_text().splitlines()]
    last = records[-1]
    vals = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    elapsed = _wall_time(records) or last["tokens"] / last["tokens_per_s"]
    target = ROOT / "src" / "difflm" / "bundled" / "models" / args.name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(model_dir, target, ignore=shutil.ignore_patterns("generation_config.json"))
    _keep_decoding_defaults(model_dir, target)
    if args.dtype != "float32":
        _store_as(target, args.dtype)
    summary = {
        "command": args.command,
        "objective": yaml.safe_load((args.run_dir / "train_config.yaml").read_text())["objective"],
        "steps": last["step"],
        "tokens": last["tokens"],
        "tokens_including_init": last["tokens"] + args.base_tokens,
        "wall_time_s": round(elapsed, 1),
        "tokens_per_s": round(last["tokens"] / elapsed, 1),
        "validation_nats_per_token": vals,
        "config": yaml.safe_load((args.run_dir / "train_config.yaml").read_text()),
    }
    (target / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    size = sum(f.stat().st_size for f in target.iterdir())
    print(f"bundled {args.name}: {size / 1e6:.1f} MB, {summary['tokens']:,} tokens, final validation {vals[-1][1]:.3f}")
    return 0


def _keep_decoding_defaults(model_dir: Path, target: Path) -> None:
    """Bundle the model's recommended decoding (the "difflm" section of its generation_config.json,
    difflm.formats.generation) without transformers' own fields of that file."""
    source = model_dir / "generation_config.json"
    if not source.is_file():
        return
    section = json.loads(source.read_text()).get("difflm")
    if section:
        (target / "generation_config.json").write_text(json.dumps({"difflm": section}, indent=2) + "\n")


def _store_as(directory: Path, dtype: str) -> None:
    """Rewrite the floating-point weights of model.safetensors in ``dtype``. config.json keeps declaring
    float32, the dtype the model loads and computes in by default (bf16 is a storage format here:
    on CPUs without native bf16 it would run ~10x slower, and batched rows would round differently)."""
    import torch
    from safetensors.torch import load_file, save_file

    path = directory / "model.safetensors"
    tensors = {k: v.to(getattr(torch, dtype)) if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
    save_file(tensors, str(path), metadata={"format": "pt"})
    config = json.loads((directory / "config.json").read_text())
    config["dtype"] = "float32"
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
