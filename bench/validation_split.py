"""The bundled text models on the WHOLE validation split (1,105 blocks of 256 tokens), not the
trainer's 8 fixed batches: AR exact NLL, masked DLMs' ELBO bound (Monte Carlo, with its standard
error) -> bench/results/validation_split.json, read by bench/training_report.py.

    .venv/bin/python bench/validation_split.py ar-base dlm-adapted dlm-scratch --samples 2
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
RESULTS_JSON = ROOT / "bench" / "results" / "validation_split.json"


def main(argv: list[str] | None = None) -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from difflm.bundled import MODELS, corpus_file, resolve_model
    from difflm.evaluation.likelihood import ScoreRequest, ar_nll, elbo_nll
    from difflm.model import DiffusionLM
    from difflm.training.data import pack_sequences, tokenize_files

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="bundled names or directories (AR or masked DLM)")
    parser.add_argument("--samples", type=int, default=2, help="Monte Carlo samples per block of the DLM bounds")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    tok = AutoTokenizer.from_pretrained(MODELS["ar-base"])
    blocks = pack_sequences(tokenize_files([corpus_file("validation")], tok), 256, tok.bos_token_id)
    requests = [ScoreRequest(tuple(b.tolist()), 1, len(b)) for b in blocks]  # every token after the first
    n = sum(r.num_targets for r in requests)
    results = json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.is_file() else {}
    for name in args.models:
        path = resolve_model(name)
        if (path / "difflm_config.json").is_file():
            model = DiffusionLM.from_pretrained(path, dtype=torch.float32).eval()
            estimates = elbo_nll(model, requests, n_samples=args.samples, estimator="count", seed=0, progress=True)
            kind = "ELBO bound"
        else:
            ar = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
            estimates, kind = ar_nll(ar, requests, pad_token_id=tok.pad_token_id, progress=True), "exact NLL"
        value = sum(e.nll for e in estimates) / n
        stderr = math.sqrt(sum(e.stderr ** 2 for e in estimates)) / n
        results[name] = {"nats_per_token": value, "stderr": stderr, "kind": kind, "blocks": len(blocks), "tokens": n,
                         "samples": args.samples if stderr else None}
        print(f"{name}: {value:.4f} ± {stderr:.4f} nats/token ({kind}), perplexity {math.exp(value):.1f}")
    RESULTS_JSON.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
