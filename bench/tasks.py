"""Task models, DLM vs AR at equal size: Sudoku (an easy-first order against left to right) and GSM
(threshold decoding with the KV cache against AR greedy with its KV cache).

1. Sudoku, test split generated in-process (blanks 20-50): the DLM (`dlm-sudoku`) with the adaptive
   orders topk_margin, entropy, low_confidence, one token per step (90 steps: grid and EOS), and the
   AR model (`ar-sudoku`) greedy, rows batched. Scored by `difflm.evaluation.sudoku.SudokuTask`.
2. GSM, test split, batch size 1: AR greedy (transformers `generate`, KV cache), the DLM one token per
   call (low_confidence, the reference EM) and threshold decoding - a block diffusion DLM on its own
   block grid with its exact block cache, a full-attention DLM in blocks of 32 with the dual and
   prefix caches; a block model with a causal view (block_context causal) also self-speculative
   decoding (its AR head's greedy output, a block drafted per call); exact match (GSM8K extraction),
   tokens per model call, tokens/s. Tokens are the response up to and including its EOS, for every method.
3. GSM, longer chains (`gsm-long`): test-split problems with 5 arithmetic steps, one more than any
   problem the models were trained on (their data has 2-4), kept where prompt and answer fit the
   models' context: a held-out variant that is out of distribution in length, not only in numbers.
   AR greedy, the one-token reference and threshold decoding at 0.99 and 0.9.

    python bench/tasks.py                        # bundled models -> results/tasks.json, tasks.png, RESULTS.md
    python bench/tasks.py --only gsm --n-gsm 100 # one part; the other parts' numbers are kept
    python bench/tasks.py --only gsm-long        # the longer-chain GSM variant only
    python bench/tasks.py --random-models --quick --no-write   # prove the pipeline, no training

The full run at one thread is roughly 35 minutes on a busy 2-core machine (the sudoku DLM, 3 orders x
300 puzzles x 90 full-canvas calls, is about a third of it). --random-models never writes the default
outputs; with --out-dir it writes tasks.json and tasks.png there.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
from rich.progress import Progress
from transformers.utils import logging as transformers_logging

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from training_report import machine, replace_section  # noqa: E402

from difflm.bundled import resolve_model  # noqa: E402
from difflm.evaluation import DiffusionEvalLM, EvalSettings, load_eval_lm, mean_stderr  # noqa: E402
from difflm.evaluation.data import gsm8k_final_answer  # noqa: E402
from difflm.tasks.gsm import extract_answer, numbers_match  # noqa: E402
from difflm.evaluation.stats import paired_comparison  # noqa: E402
from difflm.evaluation.sudoku import SudokuExample, SudokuTask  # noqa: E402
from difflm.evaluation.text_tasks import GSM8KTask  # noqa: E402
from difflm.sampling import generate, stop_token_ids  # noqa: E402
from difflm.tasks import make_examples  # noqa: E402
from difflm.tasks.formatting import sft_texts  # noqa: E402

RESULTS_JSON, PLOT, RESULTS_MD = HERE / "results" / "tasks.json", HERE / "tasks.png", HERE / "RESULTS.md"
SECTION = "## Task models: Sudoku and GSM, DLM vs AR"
CONFIGS = {"gsm-dlm": "sft-gsm-dlm", "gsm-ar": "sft-gsm-ar-continued", "sudoku-dlm": "sft-sudoku-dlm",
           "sudoku-ar": "sft-sudoku-ar"}
BUNDLED = {"gsm-dlm": "dlm-gsm", "gsm-ar": "ar-gsm", "sudoku-dlm": "dlm-sudoku", "sudoku-ar": "ar-sudoku"}
TOKENIZER_HINT = {  # the commands of the configs' headers
    "gsm": "difflm data make gsm --n 50000 --split train --sums pairwise --out data/gsm-pairwise/train.jsonl && "
           "difflm data tokenizer data/gsm-pairwise/train.jsonl --vocab-size 1024 --split-digits --out data/gsm-pairwise/tokenizer",
    "sudoku": "difflm data make sudoku --n 60000 --blanks 20-50 --split train --out data/sudoku/train.jsonl && "
              "difflm data tokenizer data/sudoku/train.jsonl --vocab-size 300 --out data/sudoku/tokenizer"}
SUDOKU_STRATEGIES = ("topk_margin", "entropy", "low_confidence")
BINS = ((20, 29), (30, 39), (40, 50))
CANVAS, BLOCK = 128, 32
THRESHOLDS, QUICK_THRESHOLDS = (0.99, 0.98, 0.95, 0.9, 0.8, 0.7, 0.5, 0.3), (0.9, 0.5)
LONG_STEPS, LONG_THRESHOLDS = 5, (0.99, 0.9)  # gsm-long: one step past the training data's 2-4
PARTS = ("sudoku", "gsm", "gsm-long")
# With one thread, speed is CPU time of this process: on a machine shared with other jobs the wall
# clock measures their load as much as ours. With more threads, wall time.
CLOCK: dict[str, Any] = {"name": "wall", "now": time.perf_counter}


# -- models ----------------------------------------------------------------------------------------
def stand_in_config(config: str) -> tuple[Any, dict[str, Any] | None]:
    """The config `difflm train configs/CONFIG.yaml` builds its model from, without an init (a preset
    continuing another run takes that run's architecture and tokenizer), and the `DiffusionConfig` fields
    SFT trains its DLM under (None: an AR model)."""
    from difflm.training.config import load_train_config
    from difflm.training.sft_data import sft_diffusion_settings

    cfg = load_train_config(ROOT / "configs" / f"{config}.yaml")
    if cfg.init:  # a preset continuing another run (sft-gsm-dlm adapts sft-gsm-ar): that run's model
        stage = load_train_config(ROOT / "configs" / f"{Path(cfg.init).parent.name}.yaml")
        cfg = dataclasses.replace(cfg, init=None, architecture=stage.architecture, tokenizer=stage.tokenizer)
    if cfg.sft["loss"] != "diffusion":
        return cfg, None
    return cfg, sft_diffusion_settings(cfg.diffusion, cfg.diffusion.get("block_size"))


def random_models(directory: Path) -> dict[str, Path]:
    """Random-weight stand-ins built as `difflm train` builds the four SFT configs (architecture, task
    tokenizer, DLM conventions) and saved as training saves them: a pipeline check only."""
    from transformers import AutoTokenizer

    from difflm.training.models import build_model

    out = {}
    for role, config in CONFIGS.items():
        stand_in, diffusion = stand_in_config(config)
        dlm = diffusion is not None
        tok_dir = ROOT / stand_in.tokenizer
        if not (tok_dir / "tokenizer.json").is_file():
            sys.exit(f"no task tokenizer at {tok_dir}; make it first:\n  {TOKENIZER_HINT[role.split('-')[0]]}")
        tokenizer = AutoTokenizer.from_pretrained(tok_dir)
        model = build_model(tokenizer, seed=stand_in.seed, architecture=stand_in.architecture, diffusion=diffusion)
        out[role] = directory / role
        if dlm:
            model.tokenizer = tokenizer
            model.save_pretrained(out[role])
        else:
            model.save_pretrained(out[role])
            tokenizer.save_pretrained(out[role])
    return out


def load(path: Path, kind: str, settings: EvalSettings):
    """The model at ``path`` as an `EvalLM` of ``kind`` ("ar" | "dlm"), or exit with what to do."""
    if not path.is_dir():
        sys.exit(f"no model at {path}: train it (configs/sft-*.yaml), pass its directory, or use --random-models")
    lm = load_eval_lm(path, settings)
    if lm.kind != kind:
        sys.exit(f"{path} is a{'n AR model' if lm.kind == 'ar' else ' DLM'}; expected a{'n AR model' if kind == 'ar' else ' DLM'}")
    return lm


class Timed:
    """An `EvalLM` whose ``generate`` runs ``batch`` rows per call, sums CLOCK time and advances a bar
    (the rest is the wrapped model's), so that `SudokuTask` scores it unchanged."""

    def __init__(self, lm, batch: int, advance: Callable[[int], None]) -> None:
        self.lm, self.batch, self.advance, self.seconds = lm, batch, advance, 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.lm, name)

    def generate(self, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
        out: list[list[int]] = []
        for i in range(0, len(prompts), self.batch):
            chunk = prompts[i : i + self.batch]
            start = CLOCK["now"]()
            out += self.lm.generate(chunk, max_new_tokens)
            self.seconds += CLOCK["now"]() - start
            self.advance(len(chunk))
        return out


# -- sudoku ----------------------------------------------------------------------------------------
def bench_sudoku(args, paths: dict[str, Path], progress: Progress) -> dict:
    records = make_examples("sudoku", args.n_sudoku, seed=0, split="test", blanks="20-50")
    examples = [SudokuExample(r["puzzle"], r["solution"]) for r in records]
    settings = EvalSettings(batch_size=args.batch, progress=False)
    ar, dlm = load(paths["sudoku-ar"], "ar", settings), load(paths["sudoku-dlm"], "dlm", settings)
    task = SudokuTask("sudoku", examples)
    setups = [(f"DLM {s}", DiffusionEvalLM(dlm.model, dlm.tokenizer, dataclasses.replace(settings, strategy=s)))
              for s in SUDOKU_STRATEGIES] + [("AR greedy, left to right", ar)]
    task.evaluate(Timed(setups[0][1], args.batch, lambda n: None), examples[:1])  # warm-up, untimed
    task.evaluate(Timed(ar, args.batch, lambda n: None), examples[:1])
    rows = []
    for name, lm in setups:
        bar = progress.add_task(f"sudoku {name}", total=len(examples))
        timed = Timed(lm, args.batch, lambda n, bar=bar: progress.advance(bar, n))
        outcome = task.evaluate(timed, examples)
        m = outcome.metrics
        bins = {f"{lo}-{hi}": [s["solved"] for s in outcome.samples if lo <= s["blanks"] <= hi] for lo, hi in BINS}
        rows.append({"method": name, "kind": lm.kind, "strategy": lm.settings.strategy if lm.kind == "dlm" else "left to right",
                     "acc": 100 * m["acc"].value, "acc_stderr": 100 * m["acc"].stderr,
                     "by_blanks": {k: 100 * sum(v) / len(v) if v else None for k, v in bins.items()},
                     "bin_counts": {k: len(v) for k, v in bins.items()},
                     "valid_grid": 100 * m["valid_grid"].value, "cell_acc": 100 * m["cell_acc"].value,
                     "seconds": timed.seconds, "seconds_per_puzzle": timed.seconds / len(examples),
                     "max_new_tokens": outcome.protocol["max_new_tokens"], "examples": outcome.samples[:3]})
    return {"n": len(examples), "batch": args.batch, "rows": rows, "targets": sudoku_targets(rows)}


def sudoku_targets(rows: list[dict]) -> list[str]:
    """DLM >= 80% solved; DLM >= AR + 30 points (the best adaptive order)."""
    best = max((r for r in rows if r["kind"] == "dlm"), key=lambda r: r["acc"])
    ar = next(r for r in rows if r["kind"] == "ar")
    gap = best["acc"] - ar["acc"]
    return [f"{'PASS' if best['acc'] >= 80 else 'MISS'} sudoku: the DLM solves >= 80%: best order {best['strategy']} "
            f"{best['acc']:.1f}% (by blanks {', '.join(f'{k}: {_pct(v)}' for k, v in best['by_blanks'].items())})",
            f"{'PASS' if gap >= 30 else 'MISS'} sudoku: DLM >= AR + 30 points: {best['acc']:.1f}% vs AR "
            f"{ar['acc']:.1f}% = {gap:+.1f} points"]


# -- gsm -------------------------------------------------------------------------------------------
def gsm_methods(quick: bool, block_model: bool = False, thresholds: tuple[float, ...] | None = None,
                causal_view: bool = False) -> list[dict]:
    """AR, the one-token-per-call reference, then threshold decoding x cache. A block diffusion DLM
    uses its exact block cache throughout (its finished blocks never change); a full-attention DLM
    the dual cache at every threshold and the prefix cache at 0.9 for comparison. A block model with a
    causal view (block_context causal) adds self-speculative decoding (its AR head's greedy output)."""
    out = [{"method": "AR greedy + KV cache", "kind": "ar"},
           {"method": "DLM low_confidence, 1 token/call", "kind": "dlm", "strategy": "low_confidence",
            "cache": "block" if block_model else "none"}]
    every = thresholds or (QUICK_THRESHOLDS if quick else THRESHOLDS)
    for cache, thresholds in ((("block", every),) if block_model else (("dual", every), ("prefix", (0.9,)))):
        out += [{"method": f"DLM threshold {t} {cache}", "kind": "dlm", "strategy": "threshold", "threshold": t, "cache": cache}
                for t in thresholds]
    if causal_view:
        out.append({"method": "DLM self-speculative", "kind": "dlm", "speculative": True})
    return out


def counted(ids: list[int], stops: list[int]) -> int:
    """Response tokens up to and including the first stop token (all of them when there is none)."""
    return next((i + 1 for i, t in enumerate(ids) if t in stops), len(ids))


@torch.inference_mode()
def gsm_one(method: dict, lm, prompt: list[int], budget: int) -> tuple[list[int], int]:
    """(generated ids, model calls) of one prompt: AR greedy with its KV cache, or the DLM sampler
    with blocks of `BLOCK` (a block diffusion model: its own block grid) and stop_at_eos (steps: one
    per canvas position of each block)."""
    if method["kind"] == "ar":
        out = lm.model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                max_new_tokens=budget, do_sample=False, pad_token_id=lm.pad_token_id,
                                eos_token_id=lm.eos_token_id)
        ids = out[0, len(prompt) :].tolist()
        return ids, len(ids)  # one forward per generated token (the prefill makes the first)
    if method.get("speculative"):  # drafts a block per call, verified by the causal view: no step budget
        res = generate(lm.model, prompt, max_new_tokens=budget, stop_at_eos=True, speculative=True, return_dict=True)
        return res.sequences[0][res.generate_mask[0]].tolist(), res.steps
    options = {k: method[k] for k in ("strategy", "cache", "threshold") if k in method}
    # steps = 32 per block: exactly one token per step in every block, the last (shorter) one too
    size = lm.model.config.block_size
    if size is None:
        shape = {"steps": BLOCK * math.ceil(budget / BLOCK), "block_length": BLOCK}
    else:  # the grid tiles the row from BOS: the first block is shared with the end of the prompt
        shape = {"steps": size * (math.ceil((len(prompt) + budget) / size) - len(prompt) // size)}
    res = generate(lm.model, prompt, max_new_tokens=budget, stop_at_eos=True, return_dict=True, **shape, **options)
    return res.sequences[0][res.generate_mask[0]].tolist(), res.steps


def gsm_items(models: dict, n: int, context: int, long: bool) -> tuple[list[tuple], int]:
    """(prompts by kind, token budget, answer) of ``n`` test problems, and how many were drawn. The
    standard set: the first ``n`` of the test split, 128 new tokens or what the context leaves. The long
    set (LONG_STEPS steps): problems whose prompt and whole answer (with EOS) fit the context, budget the
    rest of the context - a problem the models cannot even hold is not a fair question."""
    records = make_examples("gsm", 2 * n + 16 if long else n, seed=0, split="test",
                            **({"steps": (LONG_STEPS, LONG_STEPS)} if long else {}))
    items = []
    for record in records:
        prompt, answer = sft_texts(record)
        prompts = {kind: lm.bos + lm.encode(prompt) for kind, lm in models.items()}
        room = context - max(len(p) for p in prompts.values())
        if long:
            if max(len(lm.encode(answer)) for lm in models.values()) + 1 > room:
                continue
            budget = room
        else:  # 128 new tokens, or what the context leaves after a long prompt (the longest response fits)
            budget = min(CANVAS, room)
        items.append((prompts, budget, gsm8k_final_answer(record["answer"])))
        if len(items) == n:
            break
    return items, len(records)


def bench_gsm(args, paths: dict[str, Path], progress: Progress, long: bool = False) -> dict:
    settings = EvalSettings(batch_size=1, progress=False)
    models = {"ar": load(paths["gsm-ar"], "ar", settings), "dlm": load(paths["gsm-dlm"], "dlm", settings)}
    context = min(lm.max_length or 10**9 for lm in models.values())
    items, drawn = gsm_items(models, args.n_gsm_long if long else args.n_gsm, context, long)
    block_size = models["dlm"].model.config.block_size
    methods = gsm_methods(args.quick, block_model=block_size is not None, thresholds=LONG_THRESHOLDS if long else None,
                          causal_view=models["dlm"].model.config.block_context == "causal")
    for method in methods:  # warm-up, untimed
        gsm_one(method, models[method["kind"]], items[0][0][method["kind"]], 16)
    rows = []
    for method in methods:
        lm = models[method["kind"]]
        stops = stop_token_ids(lm.model)  # EOS and pad, for both kinds
        bar = progress.add_task(f"{'gsm-long' if long else 'gsm'} {method['method']}", total=len(items))
        correct, tokens, calls, seconds, examples = [], 0, 0, 0.0, []
        for prompts, budget, answer in items:
            start = CLOCK["now"]()
            ids, n_calls = gsm_one(method, lm, prompts[method["kind"]], budget)
            seconds += CLOCK["now"]() - start
            n = counted(ids, stops)
            text = lm.tokenizer.decode(ids[:n], skip_special_tokens=True)  # the EOS is special: dropped
            text = min((text.split(s)[0] for s in GSM8KTask.stop), key=len)  # the gsm8k task's cut
            correct.append(numbers_match(extract_answer(text), answer))
            tokens, calls = tokens + n, calls + n_calls
            if len(examples) < 3:
                examples.append({"answer": answer, "generation": text[:300], "correct": correct[-1]})
            progress.advance(bar)
        em = mean_stderr(correct)
        rows.append({**method, "em": 100 * em.value, "em_stderr": 100 * em.stderr,
                     "tokens": tokens, "calls": calls, "seconds": seconds, "tokens_per_call": tokens / calls,
                     "tokens_per_second": tokens / seconds, "examples": examples,
                     "outcomes": "".join("1" if c else "0" for c in correct)})  # per problem, for paired tests
    ar = next(r for r in rows if r["kind"] == "ar")
    for row in rows:  # the same problems: a paired test tells apart what two standard errors cannot
        if row is not ar:
            paired = paired_comparison([c == "1" for c in row["outcomes"]], [c == "1" for c in ar["outcomes"]])
            row["vs_ar"] = {"only_this": paired.only_a, "only_ar": paired.only_b, "p_value": paired.p_value}
    if long:
        return {"n": len(items), "drawn": drawn, "steps": LONG_STEPS, "block_length": block_size or BLOCK,
                "block_model": block_size is not None, "context": context, "rows": rows, "targets": gsm_long_lines(rows)}
    capped = sum(b < CANVAS for _, b, _ in items)
    return {"n": len(items), "canvas": CANVAS, "block_length": block_size or BLOCK, "block_model": block_size is not None,
            "context": context, "capped": capped,
            "rows": rows, "targets": gsm_targets(rows)}


def gsm_long_lines(rows: list[dict]) -> list[str]:
    """What the longer chains show (no target was set for them): each DLM method's EM against AR's."""
    ar = next(r for r in rows if r["kind"] == "ar")
    return [f"gsm-long: {r['method']}: EM {r['em']:.1f}% vs AR {ar['em']:.1f}% "
            f"({r['vs_ar']['only_this']} right only here / {r['vs_ar']['only_ar']} only by AR, p {r['vs_ar']['p_value']:.2f}), "
            f"{r['tokens_per_call']:.2f} tokens/call, {r['tokens_per_second'] / ar['tokens_per_second']:.2f}x AR tokens/s"
            for r in rows if r is not ar]


def gsm_targets(rows: list[dict]) -> list[str]:
    """>= 3 tokens per call with EM within 1 point of the one-token reference; >= 2.5x the AR
    tokens/s at EM >= AR's EM - 1 point."""
    ar = next(r for r in rows if r["kind"] == "ar")
    ref = next(r for r in rows if r["kind"] == "dlm" and r.get("strategy") == "low_confidence")
    fast = [r for r in rows if r["kind"] == "dlm" and r is not ref]
    lines = []
    near_ref = [r for r in fast if r["em"] >= ref["em"] - 1]
    best = max(near_ref or fast, key=lambda r: r["tokens_per_call"])
    ok = bool(near_ref) and best["tokens_per_call"] >= 3
    lines.append(f"{'PASS' if ok else 'MISS'} gsm: >= 3 tokens/call with EM >= reference - 1 ({ref['em']:.1f}% - 1): "
                 f"{'best within EM' if near_ref else 'none within EM; most parallel'}: {best['method']}, "
                 f"{best['tokens_per_call']:.2f} tokens/call, EM {best['em']:.1f}%")
    at_ar = [r for r in rows if r["kind"] == "dlm" and r["em"] >= ar["em"] - 1]
    best = max(at_ar or fast, key=lambda r: r["tokens_per_second"])
    ratio = best["tokens_per_second"] / ar["tokens_per_second"]
    lines.append(f"{'PASS' if at_ar and ratio >= 2.5 else 'MISS'} gsm: >= 2.5x AR tokens/s ({ar['tokens_per_second']:.0f}) "
                 f"at EM >= AR - 1 ({ar['em']:.1f}% - 1): {'fastest at that EM' if at_ar else 'none at that EM; fastest'}: "
                 f"{best['method']}, {best['tokens_per_second']:.0f} tokens/s = {ratio:.2f}x, EM {best['em']:.1f}%")
    return lines


# -- report ----------------------------------------------------------------------------------------
def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _paired(row: dict) -> str:
    v = row.get("vs_ar")
    return "-" if v is None else f"{v['only_this']} / {v['only_ar']}, p {v['p_value']:.2f}"


def markdown(result: dict) -> str:
    out = [SECTION, "", f"Machine: {result['machine']}, torch {result['torch']}; {result['threads']} thread(s), speed in "
           f"{'CPU time of the process' if result['clock'] == 'cpu' else 'wall time'}.", ""]
    if "sudoku" in result:
        s = result["sudoku"]
        out += [f"Sudoku: `{s['command']}` ({s['when']}); {s['n']} test puzzles (blanks 20-50, any valid solution counts), "
                f"rows batched {s['batch']} per call, the DLM one token per step ({s['rows'][0]['max_new_tokens']} steps).", "",
                "| method | solved % | " + " | ".join(f"{lo}-{hi} blanks" for lo, hi in BINS) + " | valid grid % | cell acc % | s/puzzle |",
                "|---|---:|" + "---:|" * len(BINS) + "---:|---:|---:|"]
        out += [f"| {r['method']} | {r['acc']:.1f} ± {r['acc_stderr']:.1f} | " + " | ".join(_pct(v) for v in r["by_blanks"].values())
                + f" | {r['valid_grid']:.1f} | {r['cell_acc']:.1f} | {r['seconds_per_puzzle']:.3f} |" for r in s["rows"]]
        out += ["", *[f"- {line}" for line in s["targets"]], ""]
    for part in ("gsm", "gsm-long"):
        if part not in result:
            continue
        g = result[part]
        ar = next(r for r in g["rows"] if r["kind"] == "ar")
        if part == "gsm":
            head = (f"GSM: `{g['command']}` ({g['when']}); {g['n']} test problems, batch 1, greedy, {g['canvas']} new tokens "
                    f"({g['capped']} prompts get what the {g['context']}-token context leaves)")
        else:
            head = (f"GSM, longer chains: `{g['command']}` ({g['when']}); {g['n']} test problems of {g['steps']} arithmetic "
                    f"steps (the training data has 2-4), those of the first {g['drawn']} drawn whose prompt and answer fit the "
                    f"{g['context']}-token context; batch 1, greedy, the rest of the context as budget")
        out += [head + f", DLM blocks of {g['block_length']} "
                f"{'(a block diffusion model: its training grid, exact block KV cache) ' if g.get('block_model') else ''}"
                "with stop at EOS; tokens = the response up to and including EOS.", "",
                "| method | EM % | tokens/call | tokens/s | x AR | model calls | right where AR is wrong / wrong where AR is right, p |",
                "|---|---:|---:|---:|---:|---:|---|"]
        out += [f"| {r['method']} | {r['em']:.1f} ± {r['em_stderr']:.1f} | {r['tokens_per_call']:.2f} | {r['tokens_per_second']:.0f} | "
                f"{r['tokens_per_second'] / ar['tokens_per_second']:.2f} | {r['calls']} | {_paired(r)} |" for r in g["rows"]]
        out += ["", *[f"- {line}" for line in g["targets"]], ""]
        if any("vs_ar" in r for r in g["rows"]):
            out += ["The last column pairs each method with the AR model on the same problems (exact McNemar test: "
                    "p is the chance of a split at least this uneven if both were equally accurate).", ""]
    out += [f"![sudoku accuracy by blanks, GSM EM vs tokens per call, tokens/s]({PLOT.name})", ""]
    return "\n".join(out)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    if "sudoku" in result:
        rows, width = result["sudoku"]["rows"], 0.8 / len(result["sudoku"]["rows"])
        for i, r in enumerate(rows):
            axes[0].bar([b + i * width for b in range(len(BINS))], [v or 0 for v in r["by_blanks"].values()], width,
                        label=f"{r['method']} ({r['acc']:.0f}%)", color="grey" if r["kind"] == "ar" else f"C{i}")
        axes[0].set_xticks([b + 0.4 - width / 2 for b in range(len(BINS))], [f"{lo}-{hi} blanks" for lo, hi in BINS])
        axes[0].axhline(80, color="k", ls=":", lw=1, label="target 80%")
        axes[0].set(ylabel="solved %", ylim=(0, 100), title=f"Sudoku, {result['sudoku']['n']} test puzzles")
        axes[0].legend(fontsize=7)
    if "gsm" in result:
        rows = result["gsm"]["rows"]
        ar = next(r for r in rows if r["kind"] == "ar")
        ref = next(r for r in rows if r["kind"] == "dlm" and r.get("strategy") == "low_confidence")
        for cache, color in (("dual", "tab:green"), ("prefix", "tab:orange"), ("block", "tab:purple")):
            rs = [r for r in rows if r.get("cache") == cache and r.get("strategy") == "threshold"]
            if not rs:
                continue
            axes[1].plot([r["tokens_per_call"] for r in rs], [r["em"] for r in rs], "o-", color=color, label=f"threshold, {cache} cache")
            for r in rs:
                axes[1].annotate(str(r["threshold"]), (r["tokens_per_call"], r["em"]), fontsize=7)
        axes[1].scatter([ref["tokens_per_call"]], [ref["em"]], marker="s", color="tab:blue", s=60, label="DLM 1 token/call", zorder=3)
        axes[1].scatter([1.0], [ar["em"]], marker="*", color="k", s=160, label="AR greedy", zorder=3)
        axes[1].axhspan(ref["em"] - 1, max(r["em"] for r in rows) + 1, color="grey", alpha=0.12, label="EM >= reference - 1")
        axes[1].axvline(3, color="k", ls=":", lw=1)
        ems = [r["em"] for r in rows]
        axes[1].set_ylim(max(0, min(ems) - 5), min(100, max(ems) + 5))
        axes[1].set(xlabel="tokens per model call", ylabel="exact match %", title=f"GSM, {result['gsm']['n']} test problems")
        axes[1].legend(fontsize=7)
        names = [r["method"].replace("DLM ", "") for r in rows]
        axes[2].barh(names, [r["tokens_per_second"] for r in rows], color=["grey" if r["kind"] == "ar" else "C0" for r in rows])
        axes[2].axvline(2.5 * ar["tokens_per_second"], color="k", ls=":", lw=1, label="2.5x AR")
        axes[2].invert_yaxis()
        axes[2].tick_params(axis="y", labelsize=7)
        axes[2].set(xlabel=f"tokens/s (batch 1, {result['threads']} thread(s), {result['clock']} time)", title="GSM speed")
        axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    for role, name in BUNDLED.items():
        parser.add_argument(f"--{role}", default=name, help="model directory or bundled name (default %(default)s)")
    parser.add_argument("--random-models", action="store_true", help="random-weight stand-ins of the four configs (pipeline check)")
    parser.add_argument("--n-gsm", type=int, help="GSM test problems (default 1000, the whole test split; quick 8)")
    parser.add_argument("--n-gsm-long", type=int, help="longer-chain GSM test problems (default 500; quick 8)")
    parser.add_argument("--n-sudoku", type=int, help="sudoku test puzzles (default 300; quick 20)")
    parser.add_argument("--batch", type=int, default=50, help="sudoku rows per model call (default %(default)s)")
    parser.add_argument("--only", choices=PARTS, help="run one part (a written result keeps the others')")
    parser.add_argument("--quick", action="store_true", help="few examples, thresholds 0.9 and 0.5 only")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out-dir", type=Path, help="write tasks.json and tasks.png here instead (RESULTS.md untouched)")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    args.n_gsm = args.n_gsm or (8 if args.quick else 1000)
    args.n_sudoku = args.n_sudoku or (20 if args.quick else 300)
    args.n_gsm_long = args.n_gsm_long or (8 if args.quick else 500)
    torch.set_num_threads(args.threads)
    transformers_logging.disable_progress_bar()  # per-load bars would bury rich's
    if args.threads == 1:
        CLOCK.update(name="cpu", now=time.process_time)
    command = "python bench/tasks.py " + " ".join(argv if argv is not None else sys.argv[1:])
    tmp = tempfile.TemporaryDirectory()
    if args.random_models:
        paths = random_models(Path(tmp.name))
    else:
        paths = {role: resolve_model(getattr(args, role.replace("-", "_"))) for role in BUNDLED}
    result: dict[str, Any] = {"machine": machine(), "torch": torch.__version__, "threads": args.threads, "clock": CLOCK["name"],
                              "models": {r: "random" if args.random_models else str(getattr(args, r.replace("-", "_"))) for r in BUNDLED}}
    with Progress() as progress:
        benches = {"sudoku": bench_sudoku, "gsm": bench_gsm,
                   "gsm-long": lambda *a: bench_gsm(*a, long=True)}
        for part, bench in benches.items():
            if args.only in (None, part):
                result[part] = {"command": command, "when": time.strftime("%Y-%m-%d"), **bench(args, paths, progress)}
    tmp.cleanup()
    for part in PARTS:
        for line in result.get(part, {}).get("targets", []):
            print(line)
    write_default = not args.no_write and not args.random_models and args.out_dir is None
    json_path, plot_path = (args.out_dir / "tasks.json", args.out_dir / "tasks.png") if args.out_dir else (RESULTS_JSON, PLOT)
    if args.only and write_default and RESULTS_JSON.is_file():  # keep the part not rerun
        previous = json.loads(RESULTS_JSON.read_text())
        result.update({part: previous[part] for part in PARTS if part != args.only and part in previous})
    body = markdown(result)
    print(body)
    if not args.no_write and (write_default or args.out_dir):
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(result, indent=2) + "\n")
        plot(result, plot_path)
    if write_default:
        RESULTS_MD.write_text(replace_section(RESULTS_MD.read_text(), SECTION, body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
