"""The first command on a GPU machine: `make test-gpu`, then decoding and training speed of a 1B-class
LLaMA-shaped model with random weights, written to bench/results/gpu.json and the "## GPU" section of
bench/RESULTS.md (command, GPU, date).

    python bench/gpu.py                   # on CUDA: --size 1b, under ten minutes on one H100
    python bench/gpu.py --size tiny --skip-tests --out /tmp/gpu.json --no-write   # the CPU smoke run

Decoding (batch 1, bf16 weights, greedy): AR with transformers' KV cache; a bidirectional DLM
(DiffuLLaMA-style adaptation) with threshold decoding under each cache ("none", "prefix", "dual");
a block diffusion DLM (block-causal) with its block cache. Random weights are never confident, so
threshold decoding commits about one token per model call here: the per-call cost (ms/call) is the
number that carries over to trained models, which commit several tokens per call.

Training (one optimizer step: forward, backward, AdamW; fp32 weights under bf16 autocast, as the
trainer's mixed_precision=bf16): tokens/s and MFU for the ar, adapt (annealed attention) and block
(two-copy forward) objectives' losses. MFU = 6 x parameters x tokens/s / the GPU's dense bf16 peak;
the block objective's forward runs 2L positions per L-token row, so its MFU (on training tokens)
understates the hardware's work by up to 2x. Peak memory: torch.cuda.max_memory_allocated per
measurement (on a CPU: the process's peak RSS, monotone).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import LlamaConfig, LlamaForCausalLM

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from training_report import machine, replace_section  # noqa: E402

from difflm import DiffusionLM  # noqa: E402
from difflm.losses import ar_loss, masked_diffusion_loss  # noqa: E402
from difflm.sampling import generate  # noqa: E402

SECTION = "## GPU"
# LLaMA shapes: "1b" is TinyLlama-1.1B's (22 layers, GQA 32/4 heads, vocab 32000); "tiny" runs on a CPU in seconds
SIZES = {
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
               num_key_value_heads=4, vocab_size=32000, max_position_embeddings=4096),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=128, max_position_embeddings=256),
}
# prompt / new tokens / block of decoding; batch x seq, timed and warm-up steps of training
WORKLOADS = {
    "1b": dict(prompt=64, new_tokens=256, block=32, threshold=0.9, batch=4, seq=2048, steps=10, warmup=3),
    "tiny": dict(prompt=8, new_tokens=16, block=8, threshold=0.9, batch=2, seq=32, steps=2, warmup=1),
}
# dense bf16 tensor-core peaks (TFLOP/s), matched in order against torch.cuda.get_device_name
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0))


# -- the machine -----------------------------------------------------------------------------------
def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({machine()})"


def peak_tflops(name: str) -> float | None:
    """The device's dense bf16 peak, or None where it is not in the table (MFU then says "unknown")."""
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def run_gpu_tests(root: Path) -> dict[str, Any]:
    """`make test-gpu`: its exit status, last summary line and duration."""
    start = time.perf_counter()
    done = subprocess.run(["make", "test-gpu"], cwd=root, capture_output=True, text=True)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    summary = next((line for line in reversed(lines) if " passed" in line or " failed" in line or " error" in line),
                   lines[-1] if lines else "")
    if done.returncode:
        print("\n".join(lines[-60:]), file=sys.stderr)
    return {"command": "make test-gpu", "returncode": done.returncode, "summary": summary.strip("= "),
            "seconds": time.perf_counter() - start}


# -- the model -------------------------------------------------------------------------------------
def backbone(size: str, device: torch.device, dtype: torch.dtype, seed: int) -> LlamaForCausalLM:
    """A LLaMA-shaped causal LM with random weights, built on ``device``."""
    torch.manual_seed(seed)
    config = LlamaConfig(**SIZES[size], bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    config._attn_implementation = "sdpa"
    with device:
        model = LlamaForCausalLM(config)
    return model.to(dtype)


def dlm(model: LlamaForCausalLM, **config: Any) -> DiffusionLM:
    """The backbone (shared, not copied) as a DLM; the last vocabulary id is the mask."""
    return DiffusionLM.from_causal_lm(model, mask_token=model.config.vocab_size - 1, **config)


def parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# -- decoding --------------------------------------------------------------------------------------
def decoding_rows(model: LlamaForCausalLM, work: dict, device: torch.device, seed: int) -> list[dict]:
    """Tokens/s of one prompt's ``new_tokens``: AR + KV cache, threshold decoding under each cache,
    block decoding with the block cache."""
    n, block = work["new_tokens"], work["block"]
    prompt = torch.randint(3, model.config.vocab_size - 1, (work["prompt"],),
                           generator=torch.Generator().manual_seed(seed)).tolist()
    adapted = dlm(model, attention="bidirectional").eval()
    blocky = dlm(model, attention="block_causal", block_size=block).eval()
    threshold = dict(strategy="threshold", threshold=work["threshold"], steps=n, stop_at_eos=False)

    def ar(length: int) -> tuple[int, int]:
        ids = torch.tensor([prompt], device=device)
        out = model.generate(ids, max_new_tokens=length, min_new_tokens=length, do_sample=False,
                             pad_token_id=model.config.pad_token_id)
        return out.shape[1] - ids.shape[1], length

    def diffusion(model_: DiffusionLM, length: int, **options: Any) -> tuple[int, int]:
        res = generate(model_, prompt, max_new_tokens=length, block_length=block, return_dict=True,
                       **{**threshold, "steps": length}, **options)
        return len(res.new_tokens[0]), res.steps

    setups = [("AR + KV cache", ar)]
    for cache in ("none", "prefix", "dual"):
        setups.append((f"threshold {work['threshold']}, b{block}, cache {cache}",
                       lambda length, c=cache: diffusion(adapted, length, cache=c)))
    setups.append((f"block diffusion b{block}: threshold {work['threshold']}, block cache",
                   lambda length: diffusion(blocky, length, cache="block")))
    rows = []
    with torch.inference_mode():
        for name, run in setups:
            run(block)  # warm-up: kernels, allocator, one block
            reset_peak_memory(device)
            (tokens, calls), seconds = timed(lambda: run(n), device)
            rows.append({"method": name, "new_tokens": tokens, "model_calls": calls, "seconds": seconds,
                         "tokens_per_s": tokens / seconds, "ms_per_call": 1000 * seconds / calls,
                         "peak_memory_gib": peak_memory_gib(device)})
            print(f"decode  {name:50s} {tokens / seconds:9.1f} tok/s  {1000 * seconds / calls:7.2f} ms/call", flush=True)
    return rows


# -- training --------------------------------------------------------------------------------------
def objective_losses(model: LlamaForCausalLM, block: int) -> dict[str, Callable[[torch.Tensor, int], torch.Tensor]]:
    """The loss of one batch x [B, L] at step s for each objective, through difflm's losses."""
    adapt = dlm(model, attention="annealed", anneal_steps=10_000)
    blocky = dlm(model, attention="block_causal", block_size=block)

    def diffusion(m: DiffusionLM) -> Callable[[torch.Tensor, int], torch.Tensor]:
        return lambda x, s: masked_diffusion_loss(m, x, step=s, generator=torch.Generator(x.device).manual_seed(s)).loss

    return {"ar": lambda x, s: ar_loss(model, x), "adapt": diffusion(adapt), "block": diffusion(blocky)}


def training_rows(model: LlamaForCausalLM, work: dict, device: torch.device, peak: float | None) -> list[dict]:
    """Tokens/s, MFU and peak memory of an optimizer step of each objective (fresh AdamW each)."""
    model.train()
    n_params = parameters(model)
    batch, seq = work["batch"], work["seq"]
    data = torch.Generator().manual_seed(0)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    rows = []
    for name, loss_fn in objective_losses(model, work["block"]).items():
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")

        def step(s: int) -> float:
            x = torch.randint(3, model.config.vocab_size - 1, (batch, seq), generator=data).to(device)
            with autocast:
                loss = loss_fn(x, s)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss.item()

        for s in range(work["warmup"]):
            step(s)
        reset_peak_memory(device)
        losses, seconds = timed(lambda: [step(work["warmup"] + s) for s in range(work["steps"])], device)
        tokens_per_s = batch * seq * work["steps"] / seconds
        mfu = 6 * n_params * tokens_per_s / (peak * 1e12) if peak else None
        rows.append({"objective": name, "batch": batch, "seq_length": seq, "steps": work["steps"], "seconds": seconds,
                     "tokens_per_s": tokens_per_s, "mfu": mfu, "loss": losses[-1],
                     "peak_memory_gib": peak_memory_gib(device)})
        print(f"train   {name:6s} {tokens_per_s:10.0f} tok/s  MFU {'unknown' if mfu is None else f'{mfu:.1%}'}  "
              f"peak {rows[-1]['peak_memory_gib']:.1f} GiB", flush=True)
        model.zero_grad(set_to_none=True)  # the optimizer's state goes when the next one is bound
    model.eval()
    return rows


# -- the report ------------------------------------------------------------------------------------
def markdown(result: dict) -> str:
    m, w = result["model"], result["workload"]
    size = f"{m['parameters'] / 1e9:.2f} B" if m["parameters"] >= 1e8 else f"{m['parameters'] / 1e6:.2f} M"
    lines = [SECTION, "",
             f"`{result['command']}` on **{result['device']}** ({result['date']}, torch {result['torch']}). "
             f"Model: LLaMA-shaped, random weights, {size} parameters "
             f"({m['num_hidden_layers']} layers, hidden {m['hidden_size']}, vocab {m['vocab_size']}), size `{m['size']}`."]
    tests = result.get("tests")
    lines += ["", f"`make test-gpu`: {tests['summary']} (exit {tests['returncode']}, {tests['seconds']:.0f} s)." if tests
              else "`make test-gpu`: skipped (--skip-tests)."]
    lines += ["", f"Decoding: batch 1, prompt {w['prompt']} tokens, {w['new_tokens']} new tokens, "
              f"{result['decode_dtype']} weights, greedy. "
              "Random weights are never confident: threshold decoding commits about one token per call here, "
              "so ms/call is what carries over to trained models.", "",
              "| method | tokens/s | model calls | ms/call | peak memory (GiB) |", "|---|---:|---:|---:|---:|"]
    for r in result["decoding"]:
        lines.append(f"| {r['method']} | {r['tokens_per_s']:.1f} | {r['model_calls']} | {r['ms_per_call']:.2f} | "
                     f"{r['peak_memory_gib']:.2f} |")
    peak = result["peak_bf16_tflops"]
    lines += ["", f"Training: one optimizer step (AdamW) of batch {w['batch']} x {w['seq']} tokens, "
              f"{result['train_precision']}, {w['steps']} steps timed after {w['warmup']} warm-up. MFU = 6 x parameters x "
              f"tokens/s / {f'{peak:.0f} TFLOP/s (dense bf16 peak)' if peak else 'an unknown peak'}; the block "
              "objective's two-copy forward runs 2L positions, so its MFU understates the work by up to 2x.", "",
              "| objective | tokens/s | MFU | peak memory (GiB) |", "|---|---:|---:|---:|"]
    for r in result["training"]:
        mfu = "unknown" if r["mfu"] is None else f"{r['mfu']:.1%}"
        lines.append(f"| {r['objective']} | {r['tokens_per_s']:.0f} | {mfu} | {r['peak_memory_gib']:.2f} |")
    memory = ("torch.cuda.max_memory_allocated during each measurement" if result["device_type"] == "cuda"
              else "the process's peak RSS so far (monotone)")
    lines += ["", f"Peak memory: {memory}. Numbers: `{result['json']}`; "
              f"{result['bench_seconds']:.0f} s after the tests.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="1b" if cuda else "tiny")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "gpu.json")
    parser.add_argument("--results-md", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--no-write", action="store_true", help="leave RESULTS.md alone (the JSON is still written)")
    parser.add_argument("--skip-tests", action="store_true", help="do not run `make test-gpu` first")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    device = torch.device("cuda" if cuda else "cpu")
    name = device_name(device)
    print(f"device: {name}; size {args.size}", flush=True)
    tests = None if args.skip_tests else run_gpu_tests(HERE.parent)
    work = WORKLOADS[args.size]
    peak = peak_tflops(name) if cuda else None
    started = time.perf_counter()
    model = backbone(args.size, device, torch.bfloat16 if cuda else torch.float32, args.seed).eval()
    decoding = decoding_rows(model, work, device, args.seed)
    training = training_rows(model.float(), work, device, peak)
    command = " ".join(["python bench/gpu.py", *(sys.argv[1:] if argv is None else argv)])
    try:
        shown = args.out.resolve().relative_to(HERE.parent)
    except ValueError:
        shown = args.out
    result = {"command": command, "device": name, "device_type": device.type, "date": date.today().isoformat(),
              "torch": torch.__version__, "peak_bf16_tflops": peak, "tests": tests,
              "decode_dtype": "bf16" if cuda else "fp32",
              "train_precision": "fp32 weights under bf16 autocast" if cuda else "fp32",
              "model": {"size": args.size, "parameters": parameters(model), **SIZES[args.size]},
              "workload": work, "decoding": decoding, "training": training,
              "bench_seconds": time.perf_counter() - started, "json": str(shown)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    body = markdown(result)
    print(body)
    if not args.no_write:
        args.results_md.write_text(replace_section(args.results_md.read_text(), SECTION, body))
    finite = all(math.isfinite(r["loss"]) for r in training)
    return 0 if finite and (tests is None or tests["returncode"] == 0) else 1


if __name__ == "__main__":
    sys.exit(main())
