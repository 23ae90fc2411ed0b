"""The metrics sinks of a training run (difflm.training.metrics.MetricsLogger), read back: what a run
writes to metrics.csv / TensorBoard must be the records it logged, and a resumed run must drop what came
after its checkpoint."""

from __future__ import annotations

import csv
import json
import sys

import pytest

from difflm.errors import ConfigError
from difflm.training.metrics import CSV_FIELDS, MetricsLogger

RECORDS = [
    {"step": 1, "epoch": 0, "tokens": 512, "train_loss": 3.25, "lr": 1e-4, "tokens_per_s": 100.5, "elapsed_s": 0.5},
    {"step": 2, "epoch": 0, "tokens": 1024, "train_loss": 3.0, "val_loss": 2.75, "val_ppl": 15.64, "lr": 2e-4,
     "tokens_per_s": 101.0, "elapsed_s": 1.0},
    {"step": 3, "epoch": 1, "tokens": 1536, "train_loss": 2.5, "lr": 3e-4, "tokens_per_s": 99.0, "elapsed_s": 1.5},
]


def _write(directory, sinks, records, **kw):
    logger = MetricsLogger(directory, sinks, **kw)
    for record in records:
        logger.log(record)
    logger.close()


def _csv_rows(directory):
    with (directory / "metrics.csv").open(newline="") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == CSV_FIELDS
        return [{k: v for k, v in row.items() if v != ""} for row in reader]


def _as_csv(record):
    return {k: str(v) for k, v in record.items() if k in CSV_FIELDS}


def test_the_csv_sink_holds_every_record(tmp_path):
    _write(tmp_path, ["csv", "jsonl"], RECORDS)
    assert _csv_rows(tmp_path) == [_as_csv(r) for r in RECORDS]
    assert [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == RECORDS


def test_a_resumed_run_drops_the_records_after_its_checkpoint_and_appends(tmp_path):
    _write(tmp_path, ["csv", "jsonl"], RECORDS)
    again = {**RECORDS[2], "train_loss": 2.0}
    _write(tmp_path, ["csv", "jsonl"], [again], append=True, resume_step=2)
    assert _csv_rows(tmp_path) == [_as_csv(r) for r in (*RECORDS[:2], again)]  # one header, step 3 once
    assert [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [*RECORDS[:2], again]


def test_a_logger_of_another_process_writes_nothing(tmp_path):
    _write(tmp_path / "run", ["csv", "jsonl"], RECORDS, enabled=False)
    assert not (tmp_path / "run").exists()


def test_tensorboard_holds_every_scalar(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _write(tmp_path, ["tensorboard"], RECORDS)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    for key in ("train_loss", "val_loss", "lr", "tokens"):
        logged = [(r["step"], r[key]) for r in RECORDS if key in r]
        assert [(e.step, pytest.approx(e.value)) for e in events.Scalars(key)] == logged, key


def test_tensorboard_without_the_package_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    with pytest.raises(ConfigError, match=r"pip install 'difflm\[tensorboard\]'"):
        MetricsLogger(tmp_path, ["tensorboard"])
