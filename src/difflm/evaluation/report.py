"""Running tasks on a model and reporting the scores: a JSON document, a terminal table, markdown.

The JSON holds everything needed to reproduce and judge a number: per-task metrics with standard errors
(and what the error measures), the protocol notes, the settings and seed, the model's diffusion config,
library versions, and a few predictions.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import torch
import transformers
from rich.console import Console
from rich.table import Table

from .. import __version__
from ..atomic import atomic_write_text

from .lm import EvalLM
from .task_base import Task

REPORT_VERSION = 1


def _versions() -> dict[str, str]:
    return {"difflm": __version__, "torch": torch.__version__, "transformers": transformers.__version__}


def run_evaluation(lm: EvalLM, tasks: Sequence[Task]) -> dict[str, Any]:
    """Run every task on ``lm``; return the report (a JSON-serialisable dict). A DLM's generation cost
    (tokens per model call) is reported per task that generated, and over the run in ``model``."""
    results = {}
    stats = getattr(lm, "generation_stats", None)
    for task in tasks:
        before = dataclasses.replace(stats) if stats is not None else None
        results[task.name] = task.run(lm).to_dict()
        if stats is not None and stats.sequences > before.sequences:
            results[task.name]["generation"] = stats.since(before).to_dict()
    return {
        "report_version": REPORT_VERSION, "model": lm.describe(), "seed": lm.settings.seed,
        "settings": lm.settings.to_dict(), "versions": _versions(), "tasks": results,
    }


def json_safe(obj: Any) -> Any:
    """``obj`` with every NaN or infinity replaced by None (strict JSON has no NaN)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_report(report: dict[str, Any], path: str | os.PathLike) -> Path:
    return atomic_write_text(path, json.dumps(json_safe(report), indent=2, allow_nan=False) + "\n")


def _cell(metric: dict[str, Any]) -> str:
    if metric["stderr"] is None:
        return f"{metric['value']:.4g} ± ?"
    if metric["stderr_source"] == "exact":
        return f"{metric['value']:.4g}"
    return f"{metric['value']:.4g} ± {metric['stderr']:.2g}"


def results_table(report: dict[str, Any]) -> Table:
    """A rich table: one row per task metric, value ± standard error."""
    model = report["model"]
    table = Table(title=f"{model['name']} ({model['kind']}), seed {report['seed']}")
    for column in ("task", "metric", "value ± stderr", "stderr of", "n", "seconds"):
        table.add_column(column, justify="right" if column in ("n", "seconds") else "left")
    for name, result in report["tasks"].items():
        for i, (metric, m) in enumerate(result["metrics"].items()):
            table.add_row(name if i == 0 else "", metric, _cell(m), m["stderr_source"], str(result["n_examples"]),
                          f"{result['seconds']:.1f}" if i == 0 else "")
    return table


def print_report(report: dict[str, Any], console: Console | None = None) -> None:
    (console or Console()).print(results_table(report))


def comparison_markdown(reports: Sequence[dict[str, Any]], metrics: dict[str, Sequence[str]] | None = None) -> str:
    """A markdown table comparing models (columns) on every task metric (rows) they share.

    ``metrics`` maps a task name to the metrics to show (default: all)."""
    names = [r["model"]["name"] for r in reports]
    lines = ["| task | metric | " + " | ".join(names) + " |", "|---|---|" + "---:|" * len(names)]
    tasks = [t for t in reports[0]["tasks"] if all(t in r["tasks"] for r in reports)]
    for task in tasks:
        chosen = metrics.get(task) if metrics else None
        for metric in chosen or reports[0]["tasks"][task]["metrics"]:
            cells = []
            for r in reports:
                m = r["tasks"][task]["metrics"].get(metric)
                cells.append(_cell(m) if m else "-")
            lines.append(f"| {task} | {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
