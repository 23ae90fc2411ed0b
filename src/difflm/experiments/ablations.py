"""`difflm experiment ablations`: DiffuLLaMA's Table 3 and the adapted-vs-scratch gap across model sizes,
on the bundled AR base and the synthetic `gsm` task, as one resumable command.

    run_ablations(Path("runs/ablations"))   # -> the results dict, also written to results.json

Layout of the output directory::

    experiment.json            the budget (a rerun with other settings is refused: use another --out)
    data/{train,validation,test}.jsonl    the gsm splits (seeded, disjoint)
    runs/SIZE/ARM/seedN/{stage_a,sft,eval}[.yaml|.log]   every job: config, log, output
    runs/SIZE/ar-pretrain      the AR base of a size other than the bundled one
    results.json, curves.png   what `difflm.experiments.report` makes of them
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..atomic import atomic_write_text
from ..bundled import TOKENIZER_DIR, resolve_model
from ..errors import InputError
from ..evaluation.data import gsm8k_final_answer
from ..formats import inspect_checkpoint, load_tokenizer
from ..tasks import make_examples, write_jsonl
from ..training.sft_data import encode_sft_file
from .plan import ARMS, BASE_SIZE, FULL, QUICK, SIZE_ARMS, Budget, Job, plan_jobs, write_plan
from .report import write_results
from .runner import run_jobs

BASE_MODEL = "ar-base"
DATA_SEED = 0


def budget_for(quick: bool = False, seeds: tuple[int, ...] | None = None) -> Budget:
    """The full budget (about an hour on 2 cores) or the quick one, with other seeds if given."""
    budget = QUICK if quick else FULL
    return budget if seeds is None else replace(budget, seeds=tuple(seeds))


def prepare_data(b: Budget, data: Path) -> dict[str, int]:
    """Write the gsm splits (if not there yet) and measure them with the bundled tokenizer: the SFT
    block that fits every example and the generation budget that fits every answer."""
    knobs = {"steps": b.gsm_steps, "numbers": b.gsm_numbers}
    for split, n in (("train", b.n_train), ("validation", b.n_validation), ("test", b.n_test)):
        path = data / f"{split}.jsonl"
        if not path.is_file():
            data.mkdir(parents=True, exist_ok=True)
            write_jsonl(make_examples("gsm", n, seed=DATA_SEED, split=split, **knobs), path)
    tokenizer = load_tokenizer(TOKENIZER_DIR)
    examples = [e for split in ("train", "validation", "test") for e in encode_sft_file(data / f"{split}.jsonl", tokenizer)]
    longest = max(len(e.ids) for e in examples)
    answer = max(len(e.ids) - e.prompt_len for e in examples)
    return {"sft_block": longest, "max_new_tokens": answer + 2}


def base_architecture(base: Path) -> dict[str, Any]:
    """The transformers fields of the bundled base, for the DLM from scratch of the same size."""
    cfg = json.loads((base / "config.json").read_text())
    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "max_position_embeddings", "tie_word_embeddings")
    arch = {"model_type": cfg["model_type"], **{k: cfg[k] for k in keys if k in cfg}}
    theta = (cfg.get("rope_parameters") or {}).get("rope_theta", cfg.get("rope_theta"))
    if theta is not None:
        arch["rope_theta"] = theta
    return arch


def _check_settings(out: Path, settings: dict[str, Any]) -> None:
    """One experiment per directory: resuming with other settings would mix two experiments."""
    path = out / "experiment.json"
    settings = json.loads(json.dumps(settings))  # as stored: tuples become lists
    if path.is_file():
        before = json.loads(path.read_text())
        if before != settings:
            changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
            raise InputError(f"{out} holds an experiment with other settings ({', '.join(changed)}); "
                             f"resume it with the same options or choose another --out")
    else:
        atomic_write_text(path, json.dumps(settings, indent=1) + "\n")


def build_plan(out: Path, b: Budget, arms: tuple[str, ...] = tuple(ARMS)) -> tuple[list[Job], dict[str, Any]]:
    """The experiment's jobs and settings (the data written and measured first)."""
    base = resolve_model(BASE_MODEL)
    measured = prepare_data(b, out / "data")
    settings = {"budget": b.to_dict(), "arms": list(arms), "base": BASE_MODEL, **measured}
    jobs = plan_jobs(b, out, base_dir=base, base_architecture=base_architecture(base),
                     sft_block=measured["sft_block"], max_new_tokens=measured["max_new_tokens"], arms=arms)
    return jobs, settings


# -- reading the results back ----------------------------------------------------------------------
def _curve(directory: Path) -> list[tuple[int, float]]:
    """(tokens, validation loss) of a training run, from its metrics.jsonl."""
    points = []
    path = directory / "metrics.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            record = json.loads(line) if line.strip() else {}
            if "val_loss" in record:
                points.append((int(record["tokens"]), float(record["val_loss"])))
    return sorted(dict(points).items())


def _spread(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    return {"n": len(values), "mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}


def _parameters(model: Path) -> int | None:
    """Parameters of a saved model (tied weights stored once), from its safetensors headers."""
    if not (model / "config.json").is_file():
        return None
    return sum(math.prod(t.shape) for t in inspect_checkpoint(model).tensors.values())


def chain_result(out: Path, size: str, arm: str, seed: int) -> dict[str, Any] | None:
    """One (size, arm, seed): exact match, SFT validation loss, curves; None until its eval is done."""
    root = out / "runs" / size / arm / f"seed{seed}"
    report = root / "eval" / "eval.json"
    if not (root / "eval" / "done.json").is_file() or not report.is_file():
        return None
    data = json.loads(report.read_text())
    task, generation = data["tasks"]["gsm8k"], data["model"].get("generation") or {}
    sft_curve, a_curve = _curve(root / "sft"), _curve(root / "stage_a")
    seconds = sum(json.loads((root / j / "done.json").read_text())["seconds"] for j in ("stage_a", "sft", "eval"))
    return {"exact_match": task["metrics"]["exact_match"]["value"], "em_stderr": task["metrics"]["exact_match"]["stderr"],
            "n_test": task["n_examples"], "sft_val_loss": sft_curve[-1][1] if sft_curve else None,
            "stage_a_val_loss": a_curve[-1][1] if a_curve else None, "stage_a_curve": a_curve, "sft_curve": sft_curve,
            "tokens_per_call": generation.get("tokens_per_call"), "seconds": seconds,
            "parameters": _parameters(root / "sft" / "model")}


def chance_exact_match(data: Path) -> dict[str, Any]:
    """What guessing scores on the test split, with no model: the expected exact match (%) of drawing
    an answer from the training answers' frequencies, and of always giving the commonest one."""
    def answers(split: str) -> list[str]:
        lines = (data / f"{split}.jsonl").read_text().splitlines()
        return [gsm8k_final_answer(json.loads(line)["answer"]) for line in lines if line.strip()]

    train, test = Counter(answers("train")), answers("test")
    common, _ = train.most_common(1)[0]
    n_test, n_train = max(1, len(test)), sum(train.values())
    return {"frequency_guess": 100 * sum(train[a] / n_train for a in test) / n_test,
            "most_common_answer": common, "most_common": 100 * sum(a == common for a in test) / n_test}


def _aggregate(out: Path, size: str, arm: str, seeds: tuple[int, ...]) -> dict[str, Any]:
    """The finished seeds of one (size, arm) and their spreads: exact match (%) and SFT validation."""
    found = {s: r for s in seeds if (r := chain_result(out, size, arm, s)) is not None}
    return {"seeds": found, "exact_match": _spread([100 * r["exact_match"] for r in found.values()]),
            "sft_val_loss": _spread([r["sft_val_loss"] for r in found.values() if r["sft_val_loss"] is not None])}


def collect(out: Path, b: Budget) -> dict[str, Any]:
    """Everything finished so far, aggregated: per arm (main table) and per size (sizes table)."""
    arms = {name: {"label": arm.label, "paper": arm.paper, **_aggregate(out, BASE_SIZE.name, name, b.seeds)}
            for name, arm in ARMS.items()}
    sizes = []
    for size in b.sizes:
        row: dict[str, Any] = {"size": size.name, "pretrain_tokens": _bundled_pretrain_tokens()
                               if size.architecture is None else b.pretrain_steps * b.batch_size * b.block_size}
        size_seeds = b.seeds if size.architecture is None else b.seeds[: b.size_seeds]
        for arm in SIZE_ARMS:
            row[arm] = _aggregate(out, size.name, arm, size_seeds)
            params = [r["parameters"] for r in row[arm]["seeds"].values() if r["parameters"]]
            if params:
                row["parameters"] = params[0]
        sizes.append(row)
    return {"arms": arms, "sizes": sizes, "chance": chance_exact_match(out / "data"), "sessions": sessions(out)}


def _bundled_pretrain_tokens() -> int | None:
    path = resolve_model(BASE_MODEL) / "training_summary.json"
    return json.loads(path.read_text()).get("tokens") if path.is_file() else None


def run_ablations(out: Path, *, quick: bool = False, seeds: tuple[int, ...] | None = None,
                  arms: tuple[str, ...] | None = None, workers: int = 2, progress: bool = True) -> dict[str, Any]:
    """Run (or continue) the experiment in ``out`` - every arm, or only ``arms`` - and return the
    results, also written to ``out/results.json`` with the curves plot ``out/curves.png``."""
    b = budget_for(quick, seeds)
    jobs, settings = build_plan(out, b, tuple(ARMS) if arms is None else tuple(arms))
    _check_settings(out, settings)
    write_plan(jobs, out / "plan.json")
    console = Console(stderr=True)
    total = sum(j.steps for j in jobs)
    left = [j for j in jobs if not j.is_done()]
    console.print(f"ablations: {len(jobs)} jobs ({len(jobs) - len(left)} done before), {len(b.seeds)} seed(s), "
                  f"{workers} at a time, in {out}")
    started = time.perf_counter()
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   console=console, disable=not progress)
    with bar:
        overall = bar.add_task("steps of all jobs", total=total)
        shown: dict[str, Any] = {}

        def update(state: dict[str, Any]) -> None:
            bar.update(overall, completed=state["steps"])
            for name in list(shown):
                if name not in state["running"]:
                    bar.remove_task(shown.pop(name))
            for name, (step, steps) in state["running"].items():
                if name not in shown:
                    shown[name] = bar.add_task(f"  {name}", total=steps)
                bar.update(shown[name], completed=step)

        def finished(job: Job, seconds: float) -> None:
            console.print(f"done {job.name} ({seconds:.0f} s)")
            write_results(out, collect(out, b), settings)  # partial results are readable at once

        try:
            run_jobs(jobs, workers=workers, on_update=update, on_finish=finished)
        finally:  # the wall time of every invocation that had work, finished or stopped: the real cost
            if left:
                _log_session(out, started, len(left) - sum(not j.is_done() for j in jobs), workers)
    results = write_results(out, collect(out, b), settings)
    console.print(f"ablations finished in {time.perf_counter() - started:.0f} s; results in {out / 'results.json'}")
    return results


def _log_session(out: Path, started: float, jobs_run: int, workers: int) -> None:
    path = out / "sessions.json"
    sessions = json.loads(path.read_text()) if path.is_file() else []
    sessions.append({"ended": time.strftime("%Y-%m-%d %H:%M:%S"), "seconds": round(time.perf_counter() - started, 1),
                     "jobs_run": jobs_run, "workers": workers})
    atomic_write_text(path, json.dumps(sessions, indent=1) + "\n")


def sessions(out: Path) -> list[dict[str, Any]]:
    """Every invocation of the experiment in ``out``: when it ended, its seconds, the jobs it ran."""
    path = out / "sessions.json"
    return json.loads(path.read_text()) if path.is_file() else []
