"""Continuous vs masked diffusion vs AR at equal parameters (issue #14), on the bundled corpus:

1. likelihood: nats/token on the bundled ``perplexity`` task (validation-style held-out passages) -
   the AR model's exact NLL, the masked DLMs' ELBO bound, the continuous DLM's variational bound;
2. unconditional-ish generation at equal steps: 64 tokens after 32-token validation prompts, gen-PPL
   under the AR model, distinct-1/2, tokens/s (AR: one step per token, KV cache);
3. sequence to sequence (DiffuSeq protocol): verse -> next verse on the test split's KJV chapters,
   every model given the source and the reference target length; BLEU-4 / ROUGE-L of one sample and of
   the MBR choice over ``--mbr`` samples, self-BLEU (lower = more diverse), distinct-2.

    python bench/continuous.py                                    # bundled models -> bench/results/continuous.{json,md,png}
    python bench/continuous.py --continuous runs/dlm-continuous/model --quick --no-write
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from decode import SAMPLING, distinct_n, load_ar, load_documents, make_prompts, nll_under  # noqa: E402

from difflm import DiffusionLM  # noqa: E402
from difflm.bundled import resolve_model  # noqa: E402
from difflm.continuous import ContinuousDLM, is_continuous_model  # noqa: E402
from difflm.continuous.sampler import ContinuousSamplerOptions, generate as continuous_generate  # noqa: E402
from difflm.continuous.seq2seq import bleu, distinct_words, mbr_select, self_bleu, verse_pairs  # noqa: E402
from difflm.evaluation import EvalSettings, build_task, load_eval_lm  # noqa: E402
from difflm.evaluation.metrics import rouge_l  # noqa: E402
from difflm.sampling import generate as masked_generate  # noqa: E402

RESULTS = HERE / "results"


def load_model(name: str):
    """("ar" | "masked" | "continuous", model) of a bundled name or directory."""
    path = resolve_model(name)
    if is_continuous_model(path):
        return "continuous", ContinuousDLM.from_pretrained(path)
    if (path / "difflm_config.json").is_file():
        return "masked", DiffusionLM.from_pretrained(path, dtype=torch.float32).eval()
    return "ar", load_ar(path)


def sample(kind: str, model, prompt: list[int], length: int, steps: int, seed: int) -> list[int]:
    """``length`` new tokens after ``prompt``: AR and masked DLM with the reference sampling settings
    (temperature 0.9, top-p 0.9), the continuous DLM with DDIM (the seed draws its starting noise)."""
    gen = torch.Generator().manual_seed(seed)
    if kind == "ar":
        torch.manual_seed(seed)
        out = model.generate(torch.tensor([prompt]), max_new_tokens=length, min_new_tokens=length, do_sample=True,
                             top_k=0, pad_token_id=model.config.pad_token_id, **SAMPLING)
        return out[0, len(prompt):].tolist()
    if kind == "masked":
        res = masked_generate(model, prompt, max_new_tokens=length, steps=steps, generator=gen, return_dict=True,
                              **SAMPLING)
        return res.new_tokens[0]
    row = continuous_generate(model, [prompt], length, options=ContinuousSamplerOptions(steps=steps), generator=gen)
    return row[0, len(prompt):].tolist()


def likelihood(name: str, n_samples: int, limit: int) -> dict:
    lm = load_eval_lm(name, EvalSettings(n_samples=n_samples, limit=limit, progress=False))
    result = build_task("perplexity").run(lm)
    value = result.metrics["nll_per_token"]
    return {"model": name, "kind": lm.kind, "scoring": lm.scoring, "nats_per_token": value.value,
            "stderr": value.stderr, "windows": result.protocol["windows"], "tokens": result.protocol["tokens"]}


def generation(models: dict, judge, prompts, length: int, steps_grid: list[int]) -> list[dict]:
    rows = []
    for name, (kind, model) in models.items():
        for steps in ([length] if kind == "ar" else steps_grid):
            samples, nll, count, start = [], 0.0, 0, time.process_time()
            for i, (prompt, _) in enumerate(prompts):
                samples.append(sample(kind, model, prompt, length, steps, seed=i))
            seconds = time.process_time() - start
            for (prompt, _), new in zip(prompts, samples):
                n, c = nll_under(judge, prompt, new)
                nll, count = nll + n, count + c
            rows.append({"model": name, "kind": kind, "steps": steps, "length": length,
                         "gen_ppl": float(torch.tensor(nll / count).exp()), "distinct_1": distinct_n(samples, 1),
                         "distinct_2": distinct_n(samples, 2), "tokens_per_second": len(prompts) * length / seconds})
            print(f"  generation {name} steps={steps}: gen-PPL {rows[-1]['gen_ppl']:.1f}", file=sys.stderr)
    return rows


def seq2seq(models: dict, tokenizer, pairs: list[dict], k: int, steps: int | None) -> list[dict]:
    rows = []
    for name, (kind, model) in models.items():
        single, chosen, diversity, refs = [], [], [], []
        for pair in pairs:
            prompt = tokenizer(pair["prompt"] + "\n")["input_ids"]
            target = tokenizer(pair["response"], add_special_tokens=False)["input_ids"]
            outs = [tokenizer.decode(sample(kind, model, prompt, len(target), steps or len(target), seed=s),
                                     skip_special_tokens=True).strip() for s in range(k)]
            single.append(outs[0])
            chosen.append(outs[mbr_select(outs)])
            diversity.append(self_bleu(outs))
            refs.append(pair["response"])
        mean = lambda xs: sum(xs) / len(xs)
        rows.append({"model": name, "kind": kind, "examples": len(pairs), "samples": k,
                     "bleu": mean([bleu(h, [r]) for h, r in zip(single, refs)]),
                     "bleu_mbr": mean([bleu(h, [r]) for h, r in zip(chosen, refs)]),
                     "rougeL": mean([rouge_l(h, r) for h, r in zip(single, refs)]),
                     "rougeL_mbr": mean([rouge_l(h, r) for h, r in zip(chosen, refs)]),
                     "self_bleu": mean(diversity), "distinct_2": distinct_words(single, 2), "example": chosen[0]})
        print(f"  seq2seq {name}: BLEU {rows[-1]['bleu']:.3f} MBR {rows[-1]['bleu_mbr']:.3f}", file=sys.stderr)
    return rows


def markdown(result: dict) -> str:
    out = [f"Command: `{result['command']}` ({result['when']}, {result['threads']} thread(s), CPU time).", "",
           "| model | kind | parameters | likelihood (nats/token) | scored as |", "|---|---|---|---|---|"]
    for r in result["likelihood"]:
        out.append(f"| {r['model']} | {r['kind_name']} | {r['parameters'] / 1e6:.2f} M | {r['nats_per_token']:.3f} ± "
                   f"{r['stderr']:.3f} | {r['scoring']} |")
    out += ["", f"Generation, {result['prompts']} prompts of {result['prompt_tokens']} tokens, gen-PPL under "
            f"{result['judge']}:", "", "| model | steps | gen-PPL | distinct-1 | distinct-2 | tokens/s |", "|---|---|---|---|---|---|"]
    for r in result["generation"]:
        out.append(f"| {r['model']} | {r['steps']} | {r['gen_ppl']:.1f} | {r['distinct_1']:.2f} | {r['distinct_2']:.2f} | "
                   f"{r['tokens_per_second']:.1f} |")
    out += ["", "Verse -> next verse (test split, reference length given):", "",
            "| model | BLEU-4 | BLEU-4 MBR | ROUGE-L | ROUGE-L MBR | self-BLEU | distinct-2 |", "|---|---|---|---|---|---|---|"]
    for r in result["seq2seq"]:
        out.append(f"| {r['model']} | {100 * r['bleu']:.2f} | {100 * r['bleu_mbr']:.2f} | {100 * r['rougeL']:.2f} | "
                   f"{100 * r['rougeL_mbr']:.2f} | {100 * r['self_bleu']:.1f} | {r['distinct_2']:.2f} |")
    return "\n".join(out)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    lik = result["likelihood"]
    left.bar([r["model"] for r in lik], [r["nats_per_token"] for r in lik], yerr=[r["stderr"] for r in lik],
             color=["grey" if r["kind"] == "ar" else "C0" for r in lik])
    left.set_ylabel("nats/token (AR exact, DLMs upper bounds)")
    left.tick_params(axis="x", rotation=20)
    for name in dict.fromkeys(r["model"] for r in result["generation"]):
        rs = [r for r in result["generation"] if r["model"] == name]
        if len(rs) == 1:
            right.axhline(rs[0]["gen_ppl"], color="grey", ls="--", label=f"{name} (AR)")
        else:
            right.plot([r["steps"] for r in rs], [r["gen_ppl"] for r in rs], "o-", label=name)
    right.set_xscale("log", base=2)
    right.set_yscale("log")
    right.set_xlabel("denoising steps for 64 tokens")
    right.set_ylabel(f"gen-PPL under {result['judge']}")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


SECTION = "## Continuous vs masked diffusion vs AR"


def reading(result: dict) -> list[str]:
    """An honest reading computed from the numbers: where the continuous model stands against the
    masked DLMs and the AR base (likelihood, gen-PPL at equal steps, seq2seq)."""
    by_kind = lambda kind: [r for r in result["likelihood"] if r["kind_name"] == kind]  # noqa: E731
    out = ["Reading:"]
    for c in by_kind("continuous"):
        best = min(by_kind("masked"), key=lambda r: r["nats_per_token"], default=None)
        ar = next(iter(by_kind("ar")), None)
        parts = [f"- likelihood: `{c['model']}`'s variational bound {c['nats_per_token']:.2f} nats/token"]
        if best:
            parts.append(f"vs the best masked DLM (`{best['model']}`) {best['nats_per_token']:.2f} "
                         f"({c['nats_per_token'] - best['nats_per_token']:+.2f})")
        if ar:
            parts.append(f"and the AR base's exact NLL {ar['nats_per_token']:.2f}")
        out.append(" ".join(parts) + "; the literature finds continuous DLMs behind masked ones on likelihood "
                   "(Plaid needed 64x an AR model's compute to match GPT-2 small).")
    gen = result["generation"]
    for steps in sorted({r["steps"] for r in gen if r["kind"] != "ar"}):
        cells = [f"{r['model']} {r['gen_ppl']:.1f}" for r in gen if r["steps"] == steps and r["kind"] != "ar"]
        out.append(f"- gen-PPL at {steps} steps for 64 tokens: " + ", ".join(cells) + ".")
    for r in gen:
        if r["kind"] == "ar":
            out.append(f"- AR `{r['model']}` (one step per token): gen-PPL {r['gen_ppl']:.1f}.")
    s2s = sorted(result["seq2seq"], key=lambda r: -r["bleu_mbr"])
    out.append("- verse -> next verse, BLEU-4 with MBR (higher is better): "
               + ", ".join(f"{r['model']} {100 * r['bleu_mbr']:.2f}" for r in s2s) + ".")
    return out


def write_section(result: dict, body: str) -> None:
    """Replace the RESULTS.md section with this run's tables, plot and reading."""
    from training_report import machine, replace_section

    md = HERE / "RESULTS.md"
    text = "\n".join([SECTION, "", f"Machine: {machine()}, torch 2.13.0+cpu  ", "", body, "",
                      "![likelihood and gen-PPL](results/continuous.png)", "", *reading(result), ""])
    md.write_text(replace_section(md.read_text(), SECTION, text))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ar", default="ar-base", help="AR model: baseline and gen-PPL judge (default %(default)s)")
    parser.add_argument("--masked", nargs="*", default=["dlm-scratch", "dlm-adapted"], help="masked DLMs")
    parser.add_argument("--continuous", nargs="+", default=["dlm-continuous"], help="continuous DLMs (names or dirs)")
    parser.add_argument("--quick", action="store_true", help="a few minutes: fewer windows, prompts, pairs")
    parser.add_argument("--n-samples", type=int, default=16, help="Monte Carlo samples per window of the bounds")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--render", action="store_true", help="only rewrite the RESULTS.md section from results/continuous.json")
    args = parser.parse_args(argv)
    if args.render:
        result = json.loads((RESULTS / "continuous.json").read_text())
        write_section(result, markdown(result))
        return 0
    torch.set_num_threads(args.threads)
    names = [args.ar, *args.masked, *args.continuous]
    for name in names:
        if not resolve_model(name).is_dir():
            parser.error(f"no model {name!r} (train it first; docs/continuous.md)")
    models = {name: load_model(name) for name in names}
    tokenizer = next(m.tokenizer for k, m in models.values() if k != "ar")
    quick = args.quick
    limit, n_prompts, n_pairs, k = (2, 4, 6, 3) if quick else (None, 16, 40, 5)
    lik = []
    for name in names:
        row = likelihood(name, args.n_samples if not quick else 4, limit)
        kind, model = models[name]
        row["kind_name"] = kind
        row["parameters"] = model.num_parameters if kind == "continuous" else sum(p.numel() for p in model.parameters())
        lik.append(row)
        print(f"  likelihood {name}: {row['nats_per_token']:.3f}", file=sys.stderr)
    prompts = make_prompts(tokenizer, load_documents("validation"), n_prompts, 32)
    steps_grid = [16, 64] if quick else [8, 16, 32, 64]
    gen = generation(models, models[args.ar][1], prompts, 64, steps_grid)
    pairs = random.Random(0).sample(verse_pairs("test", max_chars=160), n_pairs)
    s2s = seq2seq(models, tokenizer, pairs, k, None)
    result = {"command": "python bench/continuous.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "when": time.strftime("%Y-%m-%d"), "threads": args.threads, "judge": args.ar, "prompts": len(prompts),
              "prompt_tokens": 32, "likelihood": lik, "generation": gen, "seq2seq": s2s}
    body = markdown(result)
    print(body)
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "continuous.json").write_text(json.dumps(result, indent=2) + "\n")
        plot(result, RESULTS / "continuous.png")
        (RESULTS / "continuous.md").write_text(body + "\n\n![likelihood and gen-PPL](continuous.png)\n")
        write_section(result, body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
