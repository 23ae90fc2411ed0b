"""A fingerprint of difflm's behaviour, to prove that a refactor changed none of it.

Run it on two checkouts and compare the JSON files: every key must be equal.

    git worktree add /tmp/before <commit>
    (cd /tmp/before && PYTHONPATH=src python /path/to/scripts/behaviour_fingerprint.py /tmp/before.json)
    python scripts/behaviour_fingerprint.py /tmp/after.json
    python scripts/behaviour_fingerprint.py --compare /tmp/before.json /tmp/after.json

What it records (one thread, fixed seeds, float32; about three minutes on two cores):
- the logits of every bundled model on a fixed input (a SHA-256 of the float32 bytes: bit-identical or not);
- seeded generations of every bundled masked DLM under five option sets (strategies, KV cache, blocks,
  ReMDM remasking, token editing with sub-blocks);
- four steps of a tiny run of every training recipe (ar, diffusion, diffusion with complementary masks
  and focal reweighting, adapt, block with AR guidance, SFT: block-causal with noised blocks and
  gradient accumulation, full attention, AR loss, LoRA on a bundled DLM; continuous): the train and
  validation loss of every logged step and a hash of the final weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import hashlib
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

import torch

OPTION_SETS = [
    {"strategy": "low_confidence"},
    {"strategy": "threshold", "threshold": 0.5, "cache": "dual", "block_length": 8},
    {"strategy": "random", "temperature": 1.0},
    {"strategy": "entropy", "remask": 0.1, "temperature": 0.7},
    {"strategy": "topk_margin", "editing_threshold": 0.9, "block_length": 8, "sub_block_length": 4},
]
TINY = ["architecture.model_type=llama", "architecture.hidden_size=32", "architecture.intermediate_size=64",
        "architecture.num_hidden_layers=2", "architecture.num_attention_heads=2", "architecture.num_key_value_heads=2",
        "architecture.max_position_embeddings=256", "batch_size=4", "warmup_steps=2", "lr=3e-3", "eval_batches=2",
        "log_every=1", "mixed_precision=no", "threads=1", "max_steps=4", "eval_every=2", "save_every=2"]


def _digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().float().contiguous().numpy().tobytes()).hexdigest()


def model_fingerprints() -> dict[str, object]:
    from transformers import AutoModelForCausalLM

    from difflm import DiffusionLM
    from difflm.bundled import MODELS

    out: dict[str, object] = {}
    ids = torch.tensor([[1] + list(range(50, 200, 10))])
    for name, path in MODELS.items():
        if name == "dlm-continuous" or not path.is_dir():  # not a masked DLM (its own tests cover it)
            continue
        if name.startswith("ar-"):
            model = AutoModelForCausalLM.from_pretrained(path).eval()
            with torch.no_grad():
                out[name] = _digest(model(input_ids=ids % model.config.vocab_size).logits)
            continue
        dlm = DiffusionLM.from_pretrained(path).eval()
        x = ids % dlm.vocab_size
        with torch.no_grad():
            out[name] = _digest(dlm.logits(x))
        for options in OPTION_SETS:
            key = f"{name}/generate/{json.dumps(options, sort_keys=True)}"
            try:
                tokens = dlm.generate(x[:, :8], max_new_tokens=16, steps=8,
                                      generator=torch.Generator().manual_seed(3), **options)
                out[key] = tokens.tolist()
            except Exception as exc:  # an option an old checkout lacks is a difference, not a crash
                out[key] = f"{type(exc).__name__}: {exc}"
    return out


def training_fingerprints(work: Path) -> dict[str, object]:
    from safetensors.torch import load_file

    from difflm.bundled import MODELS, corpus_file
    from difflm.cli import main
    from difflm.tasks import make_examples, write_jsonl
    from difflm.training.config import TrainConfig

    os.environ["DIFFLM_CACHE"] = str(work / "cache")
    with gzip.open(corpus_file("validation"), "rt") as handle:
        docs = [json.loads(line) for line in handle][:60:3]
    (work / "train.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs[:15]))
    (work / "val.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs[15:]))
    write_jsonl(make_examples("gsm", 24, seed=0, split="train"), work / "sft_train.jsonl")
    write_jsonl(make_examples("gsm", 8, seed=0, split="validation"), work / "sft_val.jsonl")
    # the training sequence length's key (block_size before it was renamed seq_length)
    length = "seq_length" if "seq_length" in {f.name for f in dataclasses.fields(TrainConfig)} else "block_size"
    corpus = [f"train_files=[{work / 'train.jsonl'}]", f"validation_files=[{work / 'val.jsonl'}]", f"{length}=32"]
    sft = [f"train_files=[{work / 'sft_train.jsonl'}]", f"validation_files=[{work / 'sft_val.jsonl'}]",
           "objective=sft", f"{length}=256"]
    runs = {
        "ar": corpus + ["objective=ar"],
        "diffusion": corpus + ["objective=diffusion", "diffusion.attention=annealed", "diffusion.anneal_steps=3"],
        "diffusion-complementary-focal": corpus + ["objective=diffusion", "complementary_masks=true",
                                                   "token_reweighting={alpha: 0.25, gamma: 2}"],
        "adapt": corpus + ["objective=adapt", f"init={MODELS['ar-base']}", "diffusion.anneal_steps=3"],
        "block": corpus + ["objective=block", "diffusion.block_size=4", "diffusion.block_context=causal",
                           "ar_loss_weight=0.5"],
        "sft-block": sft + ["noised_blocks=2", "diffusion.block_size=4", "grad_accum=2"],
        "sft-full": sft,
        "sft-ar": sft + ["sft.loss=ar"],
        "sft-lora": sft + [f"init={MODELS['dlm-adapted']}", "lora.r=4"],
        "continuous": corpus + ["objective=continuous", "continuous.embed_dim=8"],
    }
    out: dict[str, object] = {}
    for name, args in runs.items():
        run = work / "runs" / name
        code = main(["train", *TINY, *args, f"output_dir={run}"])
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] if code == 0 else []
        digest = hashlib.sha256()
        for file in sorted((run / "model").glob("*.safetensors")):
            for key, value in sorted(load_file(file).items()):
                digest.update(key.encode())
                digest.update(value.float().numpy().tobytes())
        out[f"train/{name}"] = {"exit": code, "digest": digest.hexdigest(),
                                "losses": [(r["step"], r.get("train_loss"), r.get("val_loss")) for r in records]}
    return out


def compare(before: Path, after: Path) -> int:
    a, b = json.loads(before.read_text()), json.loads(after.read_text())
    differ = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    for key in differ:
        print(f"DIFFERS {key}\n  before: {str(a.get(key))[:200]}\n  after:  {str(b.get(key))[:200]}")
    print(f"{len(a.keys() | b.keys()) - len(differ)} equal, {len(differ)} different")
    return 1 if differ else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, nargs="?", help="where to write the fingerprint (JSON)")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"), help="compare two fingerprints")
    args = parser.parse_args()
    if args.compare:
        return compare(*args.compare)
    if args.out is None:
        parser.error("give OUT, or --compare BEFORE AFTER")
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        result = {**model_fingerprints(), **training_fingerprints(Path(tmp))}
    args.out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(f"{len(result)} fingerprints written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
