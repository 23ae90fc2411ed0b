"""Ten fixed prompts and ten infilling templates through a bundled AR base and its adapted DLM ->
bench/results/samples.json and the bench/RESULTS.md section "Bundled text samples".

Each run is recorded under a label ("before" = the 2.3 M models of 2026-11-23, "after" = the 6.8 M
models), so the section shows both generations side by side, every sample judged by the same AR
model (gen-PPL: perplexity of the sample under the judge, lower reads more like the corpus but
rewards repetition, hence distinct-n beside it).

    .venv/bin/python bench/samples.py --label after --ar ar-base --dlm dlm-adapted --judge ar-base
    .venv/bin/python bench/samples.py --render        # only rewrite the RESULTS.md section
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402

from decode import distinct_n, nll_under  # noqa: E402
from training_report import machine, replace_section  # noqa: E402

RESULTS_JSON = ROOT / "bench" / "results" / "samples.json"
SECTION = "## Bundled text samples"

# Prompts in the corpus's own forms: play scripts, the KJV, WordNet glosses, prose.
PROMPTS = [
    "ROMEO:\n",
    "And God said,",
    "KING HENRY:\nOnce more",
    "In the beginning",
    "HAMLET:\nTo be, or not to be,",
    "The LORD is my shepherd;",
    "house: ",
    "JULIET:\nO",
    "Then Jesus answered and said unto them,",
    "FIRST CITIZEN:\nWe are",
]
# [MASK:n] gaps the DLM fills with the text on both sides in view.
INFILLS = [
    "And God said, Let there be [MASK:4] and there was light.",
    "The LORD is my [MASK:2]; I shall not want.",
    "To be, or not to be, that is the [MASK:2]",
    "Now is the winter of our [MASK:3] made glorious summer by this sun of York.",
    "For God so loved the [MASK:2], that he gave his only begotten Son.",
    "A horse! a horse! my [MASK:3] for a horse!",
    "In the beginning was the [MASK:2], and the Word was with God.",
    "dog: a domesticated [MASK:4] of the genus Canis",
    "All the world's a [MASK:2], and all the men and women merely players.",
    "Blessed are the [MASK:3] for they shall inherit the earth.",
]
NEW_TOKENS = 48
AR_SAMPLING = {"do_sample": True, "top_p": 0.9, "temperature": 0.8, "top_k": 0}
DLM_OPTIONS = {"steps": 24, "block_length": 16, "temperature": 0.8, "top_p": 0.9}


def _resolve(name: str) -> Path:
    from difflm.bundled import resolve_model

    path = resolve_model(name)
    if not (path / "config.json").is_file():
        raise SystemExit(f"samples: no model at {path}")
    return path


@torch.inference_mode()
def run(args: argparse.Namespace) -> dict:
    from transformers import AutoModelForCausalLM

    from difflm.model import DiffusionLM
    from difflm.sampling import fill
    from difflm.sampling.options import SamplerOptions
    from difflm.sampling.templates import continuation_ids, template_ids

    ar = AutoModelForCausalLM.from_pretrained(_resolve(args.ar), dtype=torch.float32).eval()
    judge = AutoModelForCausalLM.from_pretrained(_resolve(args.judge), dtype=torch.float32).eval()
    dlm = DiffusionLM.from_pretrained(_resolve(args.dlm)).eval()
    tok, mask = dlm.tokenizer, dlm.mask_token_id
    rows: dict[str, list] = {"ar": [], "dlm": [], "infill": []}
    for i, prompt in enumerate(PROMPTS):
        ids = tok(prompt)["input_ids"]
        torch.manual_seed(args.seed + i)
        out = ar.generate(torch.tensor([ids]), max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                          pad_token_id=tok.pad_token_id, **AR_SAMPLING)[0, len(ids):].tolist()
        rows["ar"].append((prompt, out))
        canvas = continuation_ids(prompt, tok, mask, NEW_TOKENS)
        gen = torch.Generator().manual_seed(args.seed + i)
        filled = fill(dlm, [canvas], options=SamplerOptions(**DLM_OPTIONS), generator=gen)[0].tolist()
        rows["dlm"].append((prompt, filled[len(canvas) - NEW_TOKENS:]))
    for i, template in enumerate(INFILLS):
        canvas = template_ids(template, tok, mask)
        n_gap = sum(1 for t in canvas if t == mask)
        gen = torch.Generator().manual_seed(args.seed + i)
        filled = fill(dlm, [canvas], options=SamplerOptions(steps=n_gap), generator=gen)[0].tolist()
        rows["infill"].append((template, filled))

    def judged(kind: str) -> dict:
        samples, nll, count, texts = [], 0.0, 0, []
        for prompt, out in rows[kind]:
            if kind == "infill":  # the whole filled sentence, judged from its first token
                n, c = nll_under(judge, out[:1], out[1:])
                texts.append(tok.decode(out, skip_special_tokens=True))
            else:
                n, c = nll_under(judge, tok(prompt)["input_ids"], out)
                texts.append(prompt + tok.decode(out, skip_special_tokens=True))
            samples.append(out)
            nll, count = nll + n, count + c
        return {"gen_ppl": math.exp(nll / count), **{f"distinct_{n}": distinct_n(samples, n) for n in (1, 2, 3)},
                "texts": texts}

    return {"ar_model": args.ar, "dlm_model": args.dlm, "judge": args.judge, "seed": args.seed,
            "date": date.today().isoformat(), "machine": machine(),
            "ar": judged("ar"), "dlm": judged("dlm"), "infill": judged("infill")}


def _one_line(text: str, limit: int = 220) -> str:
    flat = " / ".join(line.strip() for line in text.splitlines() if line.strip()).replace("|", "\\|")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def render(results: dict) -> str:
    labels = list(results)
    out = [SECTION, "",
           "Command: `.venv/bin/python bench/samples.py --label LABEL --ar AR --dlm DLM --judge ar-base` per label, "
           "then `--render`  ",
           f"Machine: {machine()}, torch 2.13.0+cpu  ", f"Date: {date.today().isoformat()}", "",
           f"{len(PROMPTS)} fixed prompts, {NEW_TOKENS} new tokens each: AR = transformers `generate` (top-p 0.9, "
           f"temperature 0.8); DLM = `fill` with {DLM_OPTIONS['steps']} steps, blocks of {DLM_OPTIONS['block_length']} "
           "(same top-p and temperature); infill = one token per step, low-confidence order. gen-PPL: perplexity "
           "of the new tokens (infill: of the whole sentence) under the judge; distinct-n: unique n-grams / "
           "n-grams per sample, averaged. before = the 2.3 M `ar-base` and its `dlm-adapted` (trained 2026-11-23, in "
           "git history); after = the 6.8 M ones bundled now; both judged by the 6.8 M `ar-base`.", "",
           "| label | models (judge) | kind | gen-PPL | distinct-1 | distinct-2 | distinct-3 |", "|---|---|---|---|---|---|---|"]
    for label in labels:
        r = results[label]
        for kind in ("ar", "dlm", "infill"):
            model = r["ar_model"] if kind == "ar" else r["dlm_model"]
            out.append(f"| {label} | `{model}` ({r['judge']}) | {kind} | {r[kind]['gen_ppl']:.1f} | "
                       f"{r[kind]['distinct_1']:.2f} | {r[kind]['distinct_2']:.2f} | {r[kind]['distinct_3']:.2f} |")
    for kind, title in (("ar", "AR base continuations"), ("dlm", "Adapted DLM continuations"), ("infill", "Infilling")):
        out += ["", f"{title} (" + " vs ".join(labels) + "):", "",
                "| # | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
        for i in range(len(results[labels[0]][kind]["texts"])):
            out.append(f"| {i + 1} | " + " | ".join(_one_line(results[lb][kind]["texts"][i]) for lb in labels) + " |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", help="name of this run in the JSON (e.g. before / after)")
    parser.add_argument("--ar", default="ar-base")
    parser.add_argument("--dlm", default="dlm-adapted")
    parser.add_argument("--judge", default="ar-base")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--render", action="store_true", help="only rewrite the RESULTS.md section from the JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.is_file() else {}
    if not args.render:
        if not args.label:
            parser.error("--label is required unless --render")
        results[args.label] = run(args)
        RESULTS_JSON.parent.mkdir(parents=True, exist_ok=True)
        RESULTS_JSON.write_text(json.dumps(results, indent=1) + "\n")
    if not results:
        raise SystemExit(f"samples: nothing recorded in {RESULTS_JSON}")
    md = ROOT / "bench" / "RESULTS.md"
    md.write_text(replace_section(md.read_text(), SECTION, render(results)))
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
