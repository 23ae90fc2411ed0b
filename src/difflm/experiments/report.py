"""What the ablation experiment reports: ``results.json``, the curves plot, and its two tables (as rich
tables on the terminal, as markdown for bench/RESULTS.md) with the paper's numbers beside ours."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_text
from .plan import SIZE_ARMS


def write_results(out: Path, collected: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """``out/results.json`` (atomically) and ``out/curves.png``; returns the results dict."""
    results = {"settings": settings, **collected}
    atomic_write_text(out / "results.json", json.dumps(results, indent=1) + "\n")
    if any(a["seeds"] for a in collected["arms"].values()):
        plot_curves(results, out / "curves.png")
    return results


def _fmt(spread: dict[str, Any], digits: int = 1) -> str:
    """mean ± sd [min-max] (n)."""
    if not spread.get("n"):
        return "-"
    text = f"{spread['mean']:.{digits}f} ± {spread['sd']:.{digits}f}"
    if spread["n"] > 1:
        text += f" [{spread['min']:.{digits}f}-{spread['max']:.{digits}f}]"
    return text


def arm_rows(results: dict[str, Any]) -> list[list[str]]:
    """The main table: arm, paper GPT-2 S / M, our exact match (%), our SFT validation loss, seeds."""
    rows = []
    for name, arm in results["arms"].items():
        paper = arm["paper"]
        rows.append([arm["label"], f"{paper[0]:.1f}" if paper else "-", f"{paper[1]:.1f}" if paper else "-",
                     _fmt(arm["exact_match"]), _fmt(arm["sft_val_loss"], 3), str(arm["exact_match"].get("n", 0))])
    chance = results.get("chance")
    if chance:  # what a model that learnt nothing but the answers' distribution scores
        rows.append([f"no model: always '{chance['most_common_answer']}' / a guess by training frequency", "-", "-",
                     f"{chance['most_common']:.1f} / {chance['frequency_guess']:.1f}", "-", "-"])
    return rows


ARM_HEADER = ["arm", "paper GPT-2 S", "paper GPT-2 M", "EM % (mean ± sd [min-max])", "SFT nats/token", "seeds"]
SIZE_HEADER = ["size", "params", "AR pretraining", "adapted EM %", "scratch EM %", "EM gap", "adapted SFT nats/token",
               "scratch SFT nats/token", "nats/token gap"]


def size_rows(results: dict[str, Any]) -> list[list[str]]:
    rows = []
    for row in results["sizes"]:
        adapted, scratch = (row[a] for a in SIZE_ARMS)
        gap = gap_loss = "-"
        if adapted["exact_match"].get("n") and scratch["exact_match"].get("n"):
            gap = f"{adapted['exact_match']['mean'] - scratch['exact_match']['mean']:+.1f}"
        if adapted["sft_val_loss"].get("n") and scratch["sft_val_loss"].get("n"):
            gap_loss = f"{scratch['sft_val_loss']['mean'] - adapted['sft_val_loss']['mean']:+.3f}"
        params = row.get("parameters")
        tokens = row.get("pretrain_tokens")
        rows.append([row["size"], f"{params / 1e6:.2f} M" if params else "-", f"{tokens / 1e6:.1f} M" if tokens else "-",
                     _fmt(adapted["exact_match"]), _fmt(scratch["exact_match"]), gap,
                     _fmt(adapted["sft_val_loss"], 3), _fmt(scratch["sft_val_loss"], 3), gap_loss])
    return rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def print_tables(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for title, header, rows in (("DiffuLLaMA Table 3 on the bundled AR base (gsm test split)", ARM_HEADER,
                                 arm_rows(results)),
                                ("Adapted DLM vs DLM from scratch, by model size", SIZE_HEADER, size_rows(results))):
        table = Table(title=title)
        for column in header:
            table.add_column(column)
        for row in rows:
            table.add_row(*row)
        console.print(table)


def _band(ax: Any, curves: list[list[list[float]]], label: str, color: Any, style: str = "-") -> None:
    """Mean over seeds of curves sampled at the same tokens, with the min-max band."""
    import numpy as np

    curves = [c for c in curves if c]
    if not curves:
        return
    n = min(len(c) for c in curves)
    x = np.array([p[0] for p in curves[0][:n]]) / 1e6
    y = np.array([[p[1] for p in c[:n]] for c in curves])
    ax.plot(x, y.mean(0), style, label=label, color=color)
    if len(curves) > 1:
        ax.fill_between(x, y.min(0), y.max(0), color=color, alpha=0.15)


def plot_curves(results: dict[str, Any], path: Path) -> None:
    """Three panels: stage A on the corpus and stage B on gsm (the main table's arms, mean and
    min-max over seeds, against tokens), and stage B of the sizes table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    colors = plt.get_cmap("tab10")
    for i, arm in enumerate(results["arms"].values()):
        seeds = list(arm["seeds"].values())
        _band(axes[0], [r["stage_a_curve"] for r in seeds], arm["label"], colors(i))
        _band(axes[1], [r["sft_curve"] for r in seeds], arm["label"], colors(i))
    for j, row in enumerate(results["sizes"]):
        for arm, style in zip(SIZE_ARMS, ("-", "--")):
            label = f"{row['size']}: {'adapted' if arm == SIZE_ARMS[0] else 'from scratch'}"
            _band(axes[2], [r["sft_curve"] for r in row[arm]["seeds"].values()], label, colors(j), style)
    axes[0].set_title("stage A on the corpus (validation)")
    axes[1].set_title("stage B: SFT on gsm (validation)")
    axes[2].set_title("SFT on gsm by size: adapted (solid) vs scratch (dashed)")
    for ax in axes:
        ax.set_xlabel("tokens of the stage (millions)")
        ax.set_ylabel("nats/token (DLM: ELBO bound, AR: NLL)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")
    axes[2].set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
