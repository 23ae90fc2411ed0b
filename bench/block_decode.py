"""Block diffusion decoding, side by side in one run: the bundled `dlm-block` (blocks of 8, exact
"block" KV cache) against the AR base's `generate` with its KV cache and the bidirectional
`dlm-adapted` with its approximate dual cache - tokens/s, tokens per model call, gen-PPL and
distinct-n at 128 and 224 new tokens - plus the three models' likelihood on the validation split.

    .venv/bin/python bench/block_decode.py                 # writes bench/results/block_decode.json,
                                                           # bench/block_decode.png, RESULTS.md section
    .venv/bin/python bench/block_decode.py --quick --no-write

Speed is tokens per CPU-second of this process with one thread (the machine is shared; see
bench/decode.py). Sampling as in bench/decode.py: temperature 0.9, top-p 0.9 for every method.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from datetime import date
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from decode import (  # noqa: E402
    CLOCK, SAMPLING, Method, distinct_n, load_ar, load_documents, make_prompts, nll_under, run_method,
    validation_passages,
)
from training_report import machine, replace_section  # noqa: E402

from difflm import DiffusionLM  # noqa: E402
from difflm.bundled import resolve_model  # noqa: E402
from difflm.evaluation.likelihood import ar_nll, elbo_nll  # noqa: E402

SECTION = "## Block diffusion decoding"


def methods(quick: bool) -> list[tuple[str, Method]]:
    """(model, method): which bundled model runs which decoding setup."""
    out = [("ar-base", Method("AR + KV cache", "ar"))]
    out.append(("dlm-block", Method("block: low_confidence, no cache", "dlm", {"strategy": "low_confidence"})))
    out.append(("dlm-block", Method("block: low_confidence, block cache", "dlm",
                                    {"strategy": "low_confidence", "cache": "block"})))
    for threshold in ((0.9, 0.5) if quick else (0.9, 0.7, 0.5, 0.3)):
        out.append(("dlm-block", Method(f"block: threshold {threshold}, block cache", "dlm",
                                        {"strategy": "threshold", "threshold": threshold, "cache": "block"})))
    for frac in ((0.5, 0.125) if quick else (0.5, 0.25, 0.125)):  # 0.125: one step per block of 8
        out.append(("dlm-block", Method(f"block: low_confidence, block cache, T=n*{frac}", "dlm",
                                        {"strategy": "low_confidence", "cache": "block"}, frac)))
    out.append(("dlm-adapted", Method("adapted: low_confidence b32, dual cache", "dlm",
                                      {"strategy": "low_confidence", "block_length": 32, "cache": "dual"})))
    for threshold in ((0.9,) if quick else (0.9, 0.5)):
        out.append(("dlm-adapted", Method(f"adapted: threshold {threshold} b32, dual cache", "dlm",
                                          {"strategy": "threshold", "threshold": threshold, "block_length": 32,
                                           "cache": "dual"})))
    return out


def generation_rows(models: dict, grid, prompts, length: int, seed: int) -> list[dict]:
    ar = models["ar-base"]
    reference = [nll_under(ar, p, c[:length]) for p, c in prompts]
    rows = [{"model": "human text", "method": "reference continuation", "length": length,
             "gen_ppl": _ppl(reference), "distinct_2": distinct_n([c[:length] for _, c in prompts], 2)}]
    for name, method in grid:
        samples, seconds, calls, nlls = [], 0.0, 0, []
        for i, (prompt, _) in enumerate(prompts):
            tokens, secs, steps = run_method(method, ar, models[name], prompt, length, seed=seed + i)
            samples.append(tokens)
            seconds += secs
            calls += steps
            nlls.append(nll_under(ar, prompt, tokens))
        n_tokens = sum(len(s) for s in samples)
        rows.append({"model": name, "method": method.name, "length": length, "tokens_per_second": n_tokens / seconds,
                     "tokens_per_call": n_tokens / calls, "gen_ppl": _ppl(nlls),
                     "distinct_1": distinct_n(samples, 1), "distinct_2": distinct_n(samples, 2)})
        print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def likelihood_rows(models: dict, tokenizer, docs, n_passages: int) -> list[dict]:
    """Per-token NLL (AR) or ELBO bound (DLMs) on validation passages of 128 tokens after BOS."""
    passages = validation_passages(tokenizer, docs, n_passages)
    tokens = sum(r.num_targets for r in passages)
    rows = [{"model": "ar-base", "bound": "exact NLL",
             "nats_per_token": sum(e.nll for e in ar_nll(models["ar-base"], passages, progress=False)) / tokens,
             "stderr": 0.0}]
    for name in ("dlm-block", "dlm-adapted"):
        est = elbo_nll(models[name], passages, n_samples=16, seed=0, progress=False)
        rows.append({"model": name, "bound": "block ELBO" if models[name].config.block_size else "ELBO",
                     "nats_per_token": sum(e.nll for e in est) / tokens,
                     "stderr": math.sqrt(sum(e.stderr ** 2 for e in est)) / tokens})
    for row in rows:
        row["perplexity"] = math.exp(row["nats_per_token"])
    return rows


def _ppl(nlls) -> float:
    return math.exp(sum(n for n, _ in nlls) / max(sum(c for _, c in nlls), 1))


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = sorted({r["length"] for r in rows})
    fig, axes = plt.subplots(1, len(lengths), figsize=(5.5 * len(lengths), 4), squeeze=False)
    colors = {"ar-base": "black", "dlm-block": "tab:blue", "dlm-adapted": "tab:orange"}
    for ax, length in zip(axes[0], lengths):
        for r in (r for r in rows if r["length"] == length and "tokens_per_second" in r):
            ax.scatter(r["tokens_per_second"], r["gen_ppl"], color=colors[r["model"]], s=20 + 15 * r["tokens_per_call"])
            ax.annotate(r["method"].split(": ")[-1], (r["tokens_per_second"], r["gen_ppl"]), fontsize=6)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("tokens / CPU-second (1 thread)")
        ax.set_ylabel("gen-PPL under ar-base (lower = likelier)")
        ax.set_title(f"{length} new tokens (marker size: tokens per call)", fontsize=9)
    for name, color in colors.items():
        axes[0][0].scatter([], [], color=color, label=name)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def report(args, rows: list[dict], likelihood: list[dict]) -> str:
    lines = [SECTION, "",
             f"Command: `.venv/bin/python bench/block_decode.py{' --quick' if args.quick else ''} --prompts {args.prompts}` "
             f"(one run; raw numbers in bench/results/block_decode.json)  ",
             f"Machine: {machine()}, torch {torch.__version__}, 1 thread, speed in tokens per CPU-second  ",
             f"Date: {date.today().isoformat()}", "",
             f"{args.prompts} prompts of 32 tokens from the validation split, temperature 0.9 and top-p 0.9 for every "
             "method; gen-PPL is the perplexity of the generated tokens under ar-base (repetition lowers it, so "
             "distinct-2 sits beside it).", ""]
    for length in sorted({r["length"] for r in rows}):
        group = [r for r in rows if r["length"] == length]
        ar = next(r for r in group if r["method"] == "AR + KV cache")
        lines += [f"**{length} new tokens**", "",
                  "| model | method | tokens/s | x AR | tokens per call | gen-PPL | distinct-2 |",
                  "|---|---|---:|---:|---:|---:|---:|"]
        for r in group:
            if "tokens_per_second" not in r:
                lines.append(f"| {r['model']} | {r['method']} | | | | {r['gen_ppl']:.0f} | {r['distinct_2']:.2f} |")
                continue
            lines.append(f"| {r['model']} | {r['method']} | {r['tokens_per_second']:.0f} | "
                         f"{r['tokens_per_second'] / ar['tokens_per_second']:.2f} | {r['tokens_per_call']:.2f} | "
                         f"{r['gen_ppl']:.0f} | {r['distinct_2']:.2f} |")
        lines.append("")
    lines += [f"Likelihood on {args.passages} validation passages (128 tokens after BOS; DLMs: 16 Monte Carlo samples):", "",
              "| model | bound | nats/token | perplexity |", "|---|---|---:|---:|"]
    for r in likelihood:
        err = f" ± {r['stderr']:.3f}" if r["stderr"] else ""
        lines.append(f"| {r['model']} | {r['bound']} | {r['nats_per_token']:.3f}{err} | {r['perplexity']:.0f} |")
    lines += ["", "![block diffusion decoding](block_decode.png)", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=3)
    parser.add_argument("--lengths", default="128,224")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--passages", type=int, default=24, help="validation passages for the likelihood table")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    CLOCK.update(name="cpu", now=time.process_time)
    models = {"ar-base": load_ar(resolve_model("ar-base"))}
    for name in ("dlm-block", "dlm-adapted"):
        models[name] = DiffusionLM.from_pretrained(resolve_model(name), dtype=torch.float32).eval()
    tokenizer = models["dlm-block"].tokenizer
    docs = load_documents("validation")
    prompts = make_prompts(tokenizer, docs, args.prompts, 32, seed=args.seed)
    grid = methods(args.quick)
    rows = []
    for length in (int(x) for x in args.lengths.split(",")):
        rows += generation_rows(models, grid, prompts, length, args.seed)
    likelihood = likelihood_rows(models, tokenizer, docs, args.passages)
    body = report(args, rows, likelihood)
    print(body)
    if not args.no_write:
        (HERE / "results").mkdir(exist_ok=True)
        (HERE / "results" / "block_decode.json").write_text(
            json.dumps({"sampling": SAMPLING, "generation": rows, "likelihood": likelihood}, indent=2) + "\n")
        plot(rows, HERE / "block_decode.png")
        results = HERE / "RESULTS.md"
        results.write_text(replace_section(results.read_text(), SECTION, body))


if __name__ == "__main__":
    main()
