"""Training logs (JSONL, CSV, optional TensorBoard) and the rich progress bar."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ..errors import ConfigError

CSV_FIELDS = ["step", "epoch", "tokens", "train_loss", "val_loss", "val_ppl", "lr", "tokens_per_s", "elapsed_s"]


class MetricsLogger:
    """Appends one record per call to metrics.jsonl / metrics.csv (and TensorBoard) in ``directory``."""

    def __init__(self, directory: Path, sinks: list[str], *, enabled: bool = True, append: bool = False,
                 resume_step: int | None = None) -> None:
        self.enabled = enabled
        self._files: list[Any] = []
        self._jsonl = self._csv = self._csv_handle = self._tb = None
        if not enabled:
            return
        directory.mkdir(parents=True, exist_ok=True)
        mode = "a" if append else "w"
        if append and resume_step is not None:
            _truncate_after(directory, resume_step)
        if "jsonl" in sinks:
            self._jsonl = open(directory / "metrics.jsonl", mode)
            self._files.append(self._jsonl)
        if "csv" in sinks:
            path = directory / "metrics.csv"
            new = not (append and path.exists())
            self._csv_handle = handle = open(path, mode, newline="")
            self._files.append(handle)
            self._csv = csv.DictWriter(handle, fieldnames=CSV_FIELDS, extrasaction="ignore")
            if new:
                self._csv.writeheader()
        if "tensorboard" in sinks:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError("log_with tensorboard needs the tensorboard package: pip install 'difflm[tensorboard]'") from None
            self._tb = SummaryWriter(str(directory / "tensorboard"))

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        if self._jsonl:
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()
        if self._csv:
            self._csv.writerow(record)
            self._csv_handle.flush()
        if self._tb:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, record["step"])

    def close(self) -> None:
        for handle in self._files:
            handle.close()
        if self._tb:
            self._tb.close()


def _truncate_after(directory: Path, step: int) -> None:
    """Drop records past ``step`` (written after the checkpoint a run resumes from)."""
    jsonl = directory / "metrics.jsonl"
    if jsonl.exists():
        keep = [line for line in jsonl.read_text().splitlines() if json.loads(line)["step"] <= step]
        jsonl.write_text("".join(line + "\n" for line in keep))
    table = directory / "metrics.csv"
    if table.exists():
        rows = list(csv.DictReader(table.open()))
        with table.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
            writer.writeheader()
            writer.writerows(r for r in rows if int(r["step"]) <= step)


class TrainProgress:
    """A rich progress bar (loss, validation, tokens/s, ETA); plain log lines when not a terminal."""

    def __init__(self, total: int, start: int, *, enabled: bool, bound: bool) -> None:
        self.enabled, self.total = enabled, total
        self.console = Console(stderr=True)
        self.val_name = "val ELBO" if bound else "val NLL"  # a likelihood bound, or an exact NLL
        self._progress = None
        if enabled and self.console.is_terminal:
            self._progress = Progress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TimeRemainingColumn(), console=self.console,
            )
            self._task = self._progress.add_task("train", total=total, completed=start, stats="")

    def __enter__(self) -> "TrainProgress":
        if self._progress:
            self._progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress:
            self._progress.stop()

    def update(self, step: int, loss: float, val: float | None, rate: float) -> None:
        if not self.enabled:
            return
        stats = f"loss {loss:.3f}" + (f"  {self.val_name} {val:.3f}" if val is not None else "") + f"  {rate:,.0f} tok/s"
        if self._progress:
            self._progress.update(self._task, completed=step, stats=stats)
        elif step % max(1, self.total // 50) == 0 or step == self.total:
            self.console.print(f"step {step}/{self.total}  {stats}", highlight=False)
