"""Peak resident memory of loading a ~1B-parameter bf16 sharded checkpoint with difflm.

Writes a synthetic checkpoint in the LLaDA layout (the 8B models' way: model.transformer.* keys,
safetensors shards + index) to a temporary directory, then loads it in a fresh subprocess that
reports its own peak RSS (``ru_maxrss``):

* baseline: after importing torch, transformers and difflm;
* after ``DiffusionLM.from_pretrained`` (weights memory-mapped, not yet read);
* after touching every parameter (every page of the weights resident, as after a forward pass).

Target: peak RSS below 1.3x the checkpoint's size. ``--naive`` adds, for comparison, the usual
recipe without the meta device: build the model with random init, read all shards into a dict,
``load_state_dict`` (copying).

    nice -n 19 .venv/bin/python bench/load_memory.py            # writes the "## Loading memory" section
    nice -n 19 .venv/bin/python bench/load_memory.py --naive --no-results
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
SECTION = "## Loading memory"
# LLaDA-style shape scaled to ~1.06B parameters (hidden 2048, 18 layers, vocab 32000)
SHAPE = dict(d_model=2048, n_layers=18, n_heads=16, n_kv_heads=16, mlp_hidden_size=5632, vocab=32000)


def peak_rss_bytes() -> int:
    """This process's peak resident set size (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def write_checkpoint(path: Path, shards: int) -> None:
    """A random bf16 checkpoint in the LLaDA layout, ``shards`` files + index (run in a child)."""
    import torch
    from safetensors.torch import save_file

    s = SHAPE
    h, m, v = s["d_model"], s["mlp_hidden_size"], s["vocab"]
    shapes = {"model.transformer.wte.weight": (v, h), "model.transformer.ln_f.weight": (h,),
              "model.transformer.ff_out.weight": (v, h)}
    for i in range(s["n_layers"]):
        for name, shape in (("q_proj", (h, h)), ("k_proj", (h, h)), ("v_proj", (h, h)), ("attn_out", (h, h)),
                            ("ff_proj", (m, h)), ("up_proj", (m, h)), ("ff_out", (h, m)),
                            ("attn_norm", (h,)), ("ff_norm", (h,))):
            shapes[f"model.transformer.blocks.{i}.{name}.weight"] = shape
    names = list(shapes)
    per_shard = -(-len(names) // shards)
    weight_map, total = {}, 0
    torch.manual_seed(0)
    for k in range(shards):
        file = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: (torch.randn(shapes[n]) * 0.02).to(torch.bfloat16) for n in names[k * per_shard:(k + 1) * per_shard]}
        save_file(part, str(path / file))
        weight_map.update({n: file for n in part})
        total += sum(t.numel() * 2 for t in part.values())
        del part
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    config = {"model_type": "llada", "architectures": ["LLaDAModelLM"], "d_model": h, "n_layers": s["n_layers"],
              "n_heads": s["n_heads"], "n_kv_heads": s["n_kv_heads"], "mlp_hidden_size": m, "vocab_size": v,
              "embedding_size": v, "max_sequence_length": 4096, "rope_theta": 500000.0, "rms_norm_eps": 1e-5,
              "weight_tying": False, "mask_token_id": 31999, "eos_token_id": 2, "pad_token_id": 2}
    (path / "config.json").write_text(json.dumps(config))


def measure(path: Path, naive: bool) -> dict:
    """Load ``path`` and report peak RSS at each stage (run in a fresh child)."""
    import torch

    import difflm  # noqa: F401  (its imports belong to the baseline)
    from difflm import DiffusionLM

    result = {"baseline": peak_rss_bytes()}
    start = time.perf_counter()
    if naive:
        from safetensors.torch import load_file
        from transformers import LlamaForCausalLM

        from difflm.formats import inspect_checkpoint
        from difflm.formats.llada import llama_config, map_key

        ckpt = inspect_checkpoint(path)
        config = llama_config(ckpt)
        torch.set_default_dtype(torch.bfloat16)  # build in bf16 directly (this child only)
        model = LlamaForCausalLM(config)  # random init, then overwritten
        state = {}
        for f in ckpt.weight_files:
            state.update({map_key(k): t for k, t in load_file(str(f)).items()})
        model.load_state_dict(state)
        del state
    else:
        model = DiffusionLM.from_pretrained(path, progress=False).model
    result["load_s"] = time.perf_counter() - start
    result["after_load"] = peak_rss_bytes()
    with torch.no_grad():
        # every page read once; max() allocates nothing (a .float() copy would inflate the peak)
        finite = all(bool(p.max().isfinite()) for p in model.parameters())
        result["after_touch"] = peak_rss_bytes()
        model(input_ids=torch.arange(16)[None], use_cache=False)  # one forward of 16 tokens
    result["after_forward"] = peak_rss_bytes()
    result["parameters"] = sum(p.numel() for p in model.parameters())
    result["dtype"] = str(next(model.parameters()).dtype)
    result["finite"] = finite
    return result


def machine() -> str:
    mem = next((line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")), "0")
    import torch

    return (f"{platform.machine()}, {os.cpu_count()} cores, {int(mem) / 2**20:.0f} GiB RAM, Linux {platform.release()}, "
            f"python {platform.python_version()}, torch {torch.__version__}")


def child(*args: str) -> str:
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True)
    return out.stdout


def write_results(rows: list[tuple[str, dict]], size: int, shards: int, command: str) -> None:
    lines = [SECTION, "",
             f"Command: `{command}`  ",
             f"Machine: {machine()}  ",
             f"Date: {dt.date.today().isoformat()}", "",
             f"Synthetic LLaDA-layout checkpoint: {rows[0][1]['parameters'] / 1e9:.3f} B parameters, bfloat16, "
             f"{shards} safetensors shards + index, {size / 1e9:.2f} GB on disk. Peak RSS (`ru_maxrss`) of a fresh "
             "process; \"touch\" = after reading every parameter once (all weight pages resident), then one forward of 16 tokens.", "",
             "| loader | load s | baseline (imports) | peak after load | after touch | after a forward | peak / size | (peak - baseline) / size |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in rows:
        peak = max(r["after_load"], r["after_touch"], r["after_forward"])
        lines.append(f"| {name} | {r['load_s']:.1f} | {r['baseline'] / 1e9:.2f} GB | {r['after_load'] / 1e9:.2f} GB | "
                     f"{r['after_touch'] / 1e9:.2f} GB | {r['after_forward'] / 1e9:.2f} GB | {peak / size:.2f}x | {(peak - r['baseline']) / size:.2f}x |")
    lines += ["", "Target: peak below 1.3x the checkpoint size. difflm builds the model on the meta device and assigns "
              "the memory-mapped tensors shard by shard, so weights stored in the wanted dtype are never copied.", ""]
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\n"
    if SECTION in text:  # replace only this section, up to the next "## " heading
        head, rest = text.split(SECTION, 1)
        nxt = rest.find("\n## ")
        text = head + "\n".join(lines) + (rest[nxt + 1:] if nxt >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + "\n".join(lines)
    RESULTS.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--naive", action="store_true", help="also measure the copy-everything recipe")
    parser.add_argument("--no-results", action="store_true", help=f"do not write {RESULTS.name}")
    parser.add_argument("--_write", help=argparse.SUPPRESS)
    parser.add_argument("--_measure", help=argparse.SUPPRESS)
    parser.add_argument("--_naive", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._write:
        write_checkpoint(Path(args._write), args.shards)
        return 0
    if args._measure:
        print(json.dumps(measure(Path(args._measure), args._naive)))
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="difflm-loadmem-"))
    try:
        print(f"writing a ~1B bf16 checkpoint to {tmp} ...", file=sys.stderr)
        child("--_write", str(tmp), "--shards", str(args.shards))
        size = sum(f.stat().st_size for f in tmp.glob("*.safetensors"))
        rows = [("difflm (meta device, mmap, assign)", json.loads(child("--_measure", str(tmp))))]
        if args.naive:
            rows.append(("naive (random init + load_file + load_state_dict)", json.loads(child("--_measure", str(tmp), "--_naive"))))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for name, r in rows:
        peak = max(r["after_load"], r["after_touch"], r["after_forward"])
        print(f"{name}: size {size / 1e9:.2f} GB, baseline {r['baseline'] / 1e9:.2f} GB, peak {peak / 1e9:.2f} GB "
              f"= {peak / size:.2f}x size ({(peak - r['baseline']) / size:.2f}x above baseline), load {r['load_s']:.1f} s")
    if not args.no_results:
        command = "nice -n 19 .venv/bin/python bench/load_memory.py" + (" --naive" if args.naive else "")
        write_results(rows, size, args.shards, command)
        print(f"wrote the '{SECTION}' section of {RESULTS}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
