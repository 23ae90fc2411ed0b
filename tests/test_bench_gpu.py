"""bench/gpu.py, the first command on a GPU machine, runs shrunk on the CPU: every number it reports is
there, finite and positive, and its RESULTS.md section lands at the end of the file (or replaces itself)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import gpu  # noqa: E402


def _numbers(rows: list[dict]) -> list[tuple[str, float]]:
    return [(k, v) for row in rows for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]


def test_the_gpu_bench_runs_tiny_on_the_cpu(tmp_path):
    results_md = tmp_path / "RESULTS.md"
    results_md.write_text("# Results\n\n## GPU\n\nan older run\n")
    out = tmp_path / "gpu.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--size", "tiny", "--skip-tests", "--out",
                           str(out), "--results-md", str(results_md)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["tests"] is None and result["model"]["size"] == "tiny" and result["device"].startswith("CPU")
    methods = [r["method"] for r in result["decoding"]]
    assert methods[0] == "AR + KV cache" and len(methods) == 5
    assert [m.rsplit("cache ", 1)[-1] for m in methods[1:4]] == ["none", "prefix", "dual"] and "block cache" in methods[4]
    assert [r["objective"] for r in result["training"]] == ["ar", "adapt", "block"]
    for row in result["decoding"]:
        assert row["new_tokens"] == result["workload"]["new_tokens"] and row["model_calls"] >= 1
    numbers = _numbers(result["decoding"]) + _numbers(result["training"]) + [("parameters", result["model"]["parameters"])]
    assert len(numbers) >= 5 * 6 + 3 * 7
    for key, value in numbers:
        assert math.isfinite(value) and value > 0, (key, value)
    # no known peak on a CPU: MFU is "unknown", never a made-up number
    assert result["peak_bf16_tflops"] is None and all(r["mfu"] is None for r in result["training"])
    text = results_md.read_text()
    assert text.startswith("# Results\n\n## GPU\n") and "an older run" not in text and text.count("## GPU") == 1
    assert "| AR + KV cache |" in text and "| block |" in text and "unknown" in text and result["command"] in text


def test_peak_flops_by_device_name():
    assert gpu.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert gpu.peak_tflops("NVIDIA H200") == 989.0
    assert gpu.peak_tflops("NVIDIA H100 PCIe") == 756.0  # not the SXM part's peak
    assert gpu.peak_tflops("Tesla T4") is None
