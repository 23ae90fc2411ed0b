"""`difflm demo` end to end on the bundled models, shortened: AR sample, live adaptation, denoising
views, comparison table."""

import json
import subprocess
import sys

import pytest

from difflm.bundled import MODELS


@pytest.mark.skipif(not all((p / "model.safetensors").is_file() for p in MODELS.values()),
                    reason="bundled models not built")
def test_demo_runs_end_to_end(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "difflm", "demo", "--adapt-steps", "4", "--eval-blocks", "2",
         "--output-dir", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    for heading in ("1/4", "2/4", "3/4", "4/4"):
        assert heading in out
    assert "validation ELBO (nats/token)" in out
    for name in ("ar-base", "dlm-adapted", "dlm-scratch"):
        assert name in out
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 4 and (tmp_path / "run" / "model" / "difflm_config.json").is_file()


def test_demo_bad_arguments_are_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "difflm", "demo", "--adapt-steps", "-1"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
