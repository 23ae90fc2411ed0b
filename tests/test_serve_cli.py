"""`difflm serve` as a process: torch-free help, one-line errors for bad flags, start in seconds
with the URL printed, and a clean stop on SIGTERM/SIGINT that finishes the request in flight."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from serve_fixtures import MODEL, client, openai  # noqa: F401

DIFFLM = [sys.executable, "-m", "difflm"]


def test_help_loads_no_torch():
    out = subprocess.run([sys.executable, "-c", (
        "import contextlib, io, json, sys\nfrom difflm.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    try:\n        main(['serve', '--help'])\n    except SystemExit:\n        pass\n"
        "print(json.dumps([out.getvalue(), [m for m in ('torch', 'transformers', 'fastapi') if m in sys.modules]]))")],
        capture_output=True, text=True, timeout=120)
    text, heavy = json.loads(out.stdout)
    assert heavy == [] and "--api-key" in text and "--max-batch" in text


@pytest.mark.parametrize("flags, message", [
    (["--port", "70000"], "--port"), (["--max-batch", "0"], "--max-batch"), (["--request-timeout", "0"], "--request-timeout"),
    (["--max-n", "0"], "--max-n"), (["--api-key", " "], "API key"), (["--port", "many"], "invalid int"),
])
def test_bad_flags_are_one_line_and_exit_2(flags, message):
    done = subprocess.run([*DIFFLM, "serve", *flags], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_a_port_in_use_is_one_line():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = subprocess.run([*DIFFLM, "serve", "--port", str(port), "--threads", "1"], capture_output=True,
                              text=True, timeout=120)
    assert done.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in done.stderr


def start_server(*flags: str) -> tuple[subprocess.Popen, str, float]:
    start = time.perf_counter()
    proc = subprocess.Popen([*DIFFLM, "serve", "--port", "0", "--threads", "1", *flags], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    match = re.search(r"http://127\.0\.0\.1:\d+", line)
    assert match, (line, proc.stderr.read() if proc.poll() is not None else "")
    return proc, match.group(0), time.perf_counter() - start


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_starts_in_seconds_and_stops_cleanly_finishing_the_request_in_flight(sig):
    proc, url, seconds = start_server()
    try:
        assert seconds < 30  # model load included; about 4 s on the 2-core test machine
        api = client(url)
        result = {}

        def long_request():
            chunks = list(api.completions.create(model=MODEL, prompt="ROMEO:", max_tokens=120, seed=1, stream=True,
                                                 extra_body={"stream_steps": True}))
            result["finish"] = chunks[-1].choices[0].finish_reason

        worker = threading.Thread(target=long_request)
        worker.start()
        time.sleep(0.3)  # the request is being denoised
        proc.send_signal(sig)
        worker.join(timeout=60)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert result.get("finish") in ("length", "stop"), err  # it was finished, not cut
    assert proc.returncode == 0 and f"stopped ({sig.name})" in out and "Traceback" not in err


def test_shutdown_cancels_what_does_not_finish_in_time():
    proc, url, _ = start_server("--shutdown-timeout", "0.5")
    try:
        api = client(url)
        errors = []

        def long_request():
            try:
                list(api.completions.create(model=MODEL, prompt="ROMEO:", max_tokens=240, stream=True,
                                            extra_body={"steps": 240, "stream_steps": True, "cfg_scale": 1.0}))
            except (openai.APIError, openai.APIConnectionError) as exc:
                errors.append(exc)

        worker = threading.Thread(target=long_request)
        worker.start()
        time.sleep(0.3)
        start = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        worker.join(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0 and time.perf_counter() - start < 15 and "stopped (SIGTERM)" in out
    assert errors  # the client learnt that its request was cut
