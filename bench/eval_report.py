"""The evaluation report: bundled AR base vs adapted DLM vs from-scratch DLM on every bundled task.

Runs `difflm.evaluation` on the four held-out sets built from the corpus's test split (perplexity,
last-word, multiple-choice, infilling) for each model, plus one extra analysis the tasks do not cover:
how much the suffix is worth when infilling - the likelihood of the held-out middle line given the
prefix only (AR: exact; DLM: ELBO) and given prefix and suffix (DLM only).

    python bench/eval_report.py                          # bundled models; writes bench/results/ + plot
    python bench/eval_report.py --limit 10 --no-write    # a quick look
    python bench/eval_report.py --random-models --limit 4 --no-write   # prove the pipeline, no training

Settings (stated in the JSON and in bench/RESULTS.md): ELBO with the "count" estimator, stratified,
``--n-samples`` passes per sequence, DiffuGPT's unweighted score with T = ``--reference-steps``, greedy
decoding with one token per step, seed 0, float32 on the CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

from difflm.evaluation import EvalSettings, ScoreRequest, comparison_markdown, load_eval_lm, parse_tasks, run_evaluation
from difflm.evaluation.data import load_infilling
from difflm.evaluation.registry import TASKS_DIR
from difflm.evaluation.report import json_safe

HERE = Path(__file__).resolve().parent
MODELS = ("ar-base", "dlm-adapted", "dlm-scratch")
TASKS = "perplexity,last-word,multiple-choice,infilling"
HEADLINE = {"perplexity": ("nll_per_token", "bits_per_byte", "perplexity"), "last-word": ("acc",),
            "multiple-choice": ("acc", "acc_norm", "acc_ref"), "infilling": ("rouge1", "rouge2", "rougeL")}


def random_models(root: Path) -> dict[str, Path]:
    """Untrained stand-ins with the bundled tokenizer: an AR LLaMA, a DLM made from it, another DLM."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from difflm import DiffusionLM
    from difflm.bundled import TOKENIZER_DIR

    tok = AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    dirs = {}
    for seed, name in enumerate(MODELS):
        torch.manual_seed(seed)
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        model = LlamaForCausalLM(cfg).eval()
        dirs[name] = root / name
        if name == "ar-base":
            model.save_pretrained(dirs[name])
            tok.save_pretrained(dirs[name])
        else:
            DiffusionLM.from_causal_lm(model, mask_token=tok.mask_token_id, tokenizer=tok,
                                       attention="bidirectional").save_pretrained(dirs[name])
    return dirs


def suffix_value(lm, limit: int | None) -> dict:
    """NLL per token of the infilling middles given the prefix only, and (DLM) given both sides."""
    examples = load_infilling(TASKS_DIR / "infilling.jsonl")[:limit]
    prefix_only, both_sides = [], []
    for ex in examples:
        prefix, middle, suffix = lm.bos + lm.encode(ex.prefix), lm.encode(ex.middle), lm.encode(ex.suffix)
        prefix_only.append(ScoreRequest.continuation(prefix, middle))
        both_sides.append(ScoreRequest(tuple(prefix + middle + suffix), len(prefix), len(prefix) + len(middle)))
    out = {}
    for name, requests in (("prefix_only", prefix_only), ("prefix_and_suffix", both_sides if lm.kind == "dlm" else [])):
        if requests:
            scores = lm.nll(requests)
            tokens = sum(s.num_tokens for s in scores)
            se = math.sqrt(sum(s.stderr**2 for s in scores)) / tokens
            out[name] = {"nll_per_token": sum(s.nll for s in scores) / tokens, "stderr": se, "tokens": tokens}
    return out


def plot(reports: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("perplexity", "bits_per_byte", "bits per byte (lower is better)"), ("last-word", "acc", "last-word accuracy"),
              ("multiple-choice", "acc", "4-way choice accuracy"), ("infilling", "rougeL", "infilling ROUGE-L")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4))
    for ax, (task, metric, title) in zip(axes, panels):
        names = [r["model"]["name"] for r in reports]
        values = [r["tasks"][task]["metrics"][metric]["value"] for r in reports]
        errors = [r["tasks"][task]["metrics"][metric]["stderr"] for r in reports]
        ax.bar(names, values, yerr=errors, capsize=4, color=["#777777", "#1f77b4", "#ff7f0e"][: len(names)])
        if task == "multiple-choice":
            ax.axhline(0.25, color="k", lw=0.8, ls="--", label="chance")
            ax.legend(fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", labelsize=8)
    fig.suptitle("bundled models on the held-out tasks (error bars: one standard error)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated names or directories")
    parser.add_argument("--random-models", action="store_true", help="untrained stand-ins (pipeline check)")
    parser.add_argument("--n-samples", type=int, default=16)
    parser.add_argument("--reference-steps", type=int, default=16, help="T of DiffuGPT's score (paper: 32)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--limit", type=int, help="examples per task")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: fastest on a shared machine)")
    parser.add_argument("--no-write", action="store_true", help="print only; write no files")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = args.models.split(",")
    if args.random_models:
        models = [str(p) for p in random_models(Path(tempfile.mkdtemp(prefix="difflm-eval-report-"))).values()]
    settings = EvalSettings(n_samples=args.n_samples, reference_steps=args.reference_steps, batch_size=args.batch_size,
                            limit=args.limit, seed=0)
    reports, start = [], time.perf_counter()
    for name in models:
        lm = load_eval_lm(name, settings)
        t0 = time.perf_counter()
        report = run_evaluation(lm, parse_tasks(TASKS))
        report["suffix_value"] = suffix_value(lm, args.limit)
        report["model"]["name"] = Path(name).name
        report["seconds"] = time.perf_counter() - t0
        reports.append(report)
        print(f"{report['model']['name']}: {report['seconds']:.0f} s", file=sys.stderr)
    print(comparison_markdown(reports, HEADLINE))
    print()
    for r in reports:
        print(r["model"]["name"], json.dumps(r["suffix_value"]))
    print(f"total {time.perf_counter() - start:.0f} s", file=sys.stderr)
    if not args.no_write:
        out = HERE / "results" / "eval_report.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(json_safe({"threads": args.threads, "reports": reports}), indent=2) + "\n")
        plot(reports, HERE / "eval_report.png")
        print(f"wrote {out} and {HERE / 'eval_report.png'}", file=sys.stderr)


if __name__ == "__main__":
    main()
