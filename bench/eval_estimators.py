"""Variance of the two ELBO estimators at equal numbers of forward passes.

For each held-out passage (the bundled perplexity set) and each estimator - "count" (LLaDA's
l-sampling, weight N / l) and "time" (t-sampling, weight 1/t), each stratified across the samples or
drawn independently - the ELBO is estimated R times with different seeds at K forward passes. Reported:

* the spread over seeds of one passage's estimate (nats/token, root mean square over passages);
* the spread of the corpus-level figure (total NLL / total tokens), what a perplexity table shows;
* the standard error the estimator reports, divided by the spread it should predict (1 = honest,
  > 1 = conservative).

    python bench/eval_estimators.py                     # bundled dlm-adapted; writes results + plot
    python bench/eval_estimators.py --random-model --passages 4 --repeats 3 --budgets 1,4 --no-write
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

from difflm.evaluation import EvalSettings, load_eval_lm
from difflm.evaluation.data import load_texts
from difflm.evaluation.likelihood import elbo_nll
from difflm.evaluation.registry import TASKS_DIR
from difflm.evaluation.report import json_safe
from difflm.evaluation.text_tasks import window_requests

HERE = Path(__file__).resolve().parent
CONFIGS = (("count", True), ("count", False), ("time", True), ("time", False))


def measure(model, requests, estimator: str, stratified: bool, k: int, repeats: int, batch_size: int) -> dict:
    """R independent estimates of every passage at K passes (copies of a request get their own seeds)."""
    copies = [r for r in requests for _ in range(repeats)]
    start = time.perf_counter()
    est = elbo_nll(model, copies, n_samples=k, estimator=estimator, stratified=stratified, seed=0,
                   batch_size=batch_size, progress=False)
    seconds = time.perf_counter() - start
    per_passage_var, reported, corpus = [], [], [0.0] * repeats
    tokens = sum(r.num_targets for r in requests)
    for p, r in enumerate(requests):
        values = torch.tensor([e.nll for e in est[p * repeats : (p + 1) * repeats]], dtype=torch.float64)
        per_passage_var.append(float(values.var()) / r.num_targets**2)
        reported.append(sum(e.stderr for e in est[p * repeats : (p + 1) * repeats]) / repeats / r.num_targets)
        for i in range(repeats):
            corpus[i] += float(values[i]) / tokens
    spread = math.sqrt(sum(per_passage_var) / len(per_passage_var))
    return {
        "estimator": estimator, "stratified": stratified, "passes": k, "repeats": repeats,
        "passage_std": spread, "reported_stderr": sum(reported) / len(reported),
        "stderr_ratio": (sum(reported) / len(reported)) / spread if spread > 0 else float("nan"),
        "corpus_std": float(torch.tensor(corpus, dtype=torch.float64).std()),
        "corpus_mean": sum(corpus) / repeats, "seconds": seconds,
    }


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for estimator, stratified in CONFIGS:
        sel = [r for r in rows if r["estimator"] == estimator and r["stratified"] == stratified]
        ax.loglog([r["passes"] for r in sel], [r["passage_std"] for r in sel], "o-" if stratified else "s--",
                  label=f"{estimator}, {'stratified' if stratified else 'independent'}")
    ax.set_xlabel("forward passes per passage")
    ax.set_ylabel("std of the ELBO estimate (nats/token)")
    ax.set_title("ELBO estimators at equal cost", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="dlm-adapted")
    parser.add_argument("--random-model", action="store_true", help="an untrained stand-in (pipeline check)")
    parser.add_argument("--passages", type=int, default=9)
    parser.add_argument("--max-tokens", type=int, default=96, help="truncate passages to this many tokens")
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--budgets", default="1,4,16,32")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: fastest on a shared machine)")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model_path = args.model
    if args.random_model:
        from eval_report import random_models

        model_path = str(random_models(Path(tempfile.mkdtemp(prefix="difflm-est-")))["dlm-adapted"])
    lm = load_eval_lm(model_path, EvalSettings(progress=False))
    texts = load_texts(TASKS_DIR / "perplexity.jsonl")
    # the same number of passages from each source (the file lists them source by source)
    per_source = max(1, args.passages // 3)
    chosen = [t for s in range(3) for t in texts[s * len(texts) // 3 :][:per_source]]
    requests = [window_requests(lm, lm.encode(t)[: args.max_tokens])[0] for t in chosen]
    rows = []
    for k in [int(b) for b in args.budgets.split(",")]:
        for estimator, stratified in CONFIGS:
            if k == 1 and not stratified:
                continue  # one sample: stratified and independent are the same draw (and no stderr)
            row = measure(lm.model, requests, estimator, stratified, k, args.repeats, args.batch_size)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    print("| estimator | sampling | passes | std per passage (nats/token) | std of corpus mean | reported stderr / std |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        sampling = "stratified" if r["stratified"] else "independent"
        print(f"| {r['estimator']} | {sampling} | {r['passes']} | {r['passage_std']:.4f} | {r['corpus_std']:.4f} | "
              f"{r['stderr_ratio']:.2f} |")
    if not args.no_write:
        out = HERE / "results" / "eval_estimators.json"
        out.parent.mkdir(exist_ok=True)
        meta = {"model": model_path, "passages": len(requests), "tokens": sum(r.num_targets for r in requests),
                "repeats": args.repeats, "threads": args.threads}
        out.write_text(json.dumps(json_safe({**meta, "rows": rows}), indent=2) + "\n")
        plot(rows, HERE / "eval_estimators.png")
        print(f"wrote {out} and {HERE / 'eval_estimators.png'}", file=sys.stderr)


if __name__ == "__main__":
    main()
