"""Runs the jobs of an experiment plan: at most ``workers`` at once, each a `difflm train` or `difflm eval`
process with one CPU thread (two one-thread runs side by side beat one two-thread run on a 2-core
machine), its log next to its output directory.

Resumable at every level: a finished job leaves ``done.json`` and is skipped next time; a training
job that was stopped part-way continues from its newest checkpoint (`difflm train --resume`, which
retraces the uninterrupted run exactly). Ctrl-C (or SIGTERM) stops the running jobs the way Ctrl-C
stops `difflm train`: each saves what it has trained first.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from ..atomic import atomic_write_text
from ..errors import DiffLMError
from .plan import Job

POLL_S = 0.5


class JobFailed(DiffLMError):
    """A job of the experiment exited with an error; the message names it and its log."""


@dataclass
class _Running:
    job: Job
    process: subprocess.Popen
    started: float
    log: Path


def job_log(job: Job) -> Path:
    return job.directory.parent / f"{job.directory.name}.log"


def _command(job: Job) -> list[str]:
    """The `difflm` command line of ``job`` (its train config written next to its output first)."""
    if job.config is None:
        job.directory.mkdir(parents=True, exist_ok=True)
        return [sys.executable, "-m", "difflm", "eval", *(job.eval_args or [])]
    path = job.directory.parent / f"{job.directory.name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(job.config, sort_keys=False))
    command = [sys.executable, "-m", "difflm", "train", str(path), "--no-progress"]
    checkpoints = job.directory / "checkpoints"
    if checkpoints.is_dir() and any((p / "trainer_state.json").is_file() for p in checkpoints.iterdir()):
        command.append("--resume")  # stopped part-way: continue where it stopped
    return command


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def steps_done(job: Job) -> int:
    """Optimizer steps a training job has logged so far (its ``metrics.jsonl``); 0 for an evaluation."""
    if job.config is None:
        return 0
    line = _last_line(job.directory / "metrics.jsonl")
    try:
        return int(json.loads(line).get("step", 0)) if line else 0
    except (ValueError, AttributeError):
        return 0


def _start(job: Job) -> _Running:
    command = _command(job)
    log = job_log(job)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    with log.open("a") as handle:
        handle.write(f"$ {' '.join(command[1:])}\n")
        handle.flush()
        # its own session: a Ctrl-C at the terminal reaches only this runner, which passes one SIGINT on;
        # SIGINT back to its default, so that a runner started in the background (`cmd &` ignores it,
        # and children inherit that) can still make a trainer save and stop
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                   preexec_fn=_default_sigint)
    return _Running(job, process, time.perf_counter(), log)


def _stop(running: dict[str, _Running], timeout: float = 60.0) -> None:
    """Interrupt the running jobs (a trainer saves a checkpoint on SIGINT) and wait for them."""
    for r in running.values():
        if r.process.poll() is None:
            r.process.send_signal(signal.SIGINT)
    deadline = time.monotonic() + timeout
    for r in running.values():
        try:
            r.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            r.process.kill()


def run_jobs(jobs: list[Job], *, workers: int = 2, on_update: Callable[[dict[str, Any]], None] | None = None,
             on_finish: Callable[[Job, float], None] | None = None) -> None:
    """Run every job of ``jobs`` not yet done, ``workers`` at a time, each once the jobs it comes
    ``after`` are done. ``on_update`` gets {"steps": done steps, "running": {name: (step, max)}}
    about twice a second; ``on_finish`` gets each finished job and its seconds. A failed job stops
    the others (they keep their checkpoints) and raises `JobFailed`."""
    by_name = {j.name: j for j in jobs}
    for job in jobs:
        missing = [a for a in job.after if a not in by_name]
        if missing:
            raise ValueError(f"job {job.name} comes after unknown job(s) {missing}")
    done = {j.name for j in jobs if j.is_done()}
    pending = [j for j in jobs if j.name not in done]
    running: dict[str, _Running] = {}
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        while pending or running:
            for job in list(pending):
                if len(running) >= workers:
                    break
                if all(a in done for a in job.after):
                    pending.remove(job)
                    running[job.name] = _start(job)
            if not running and pending:
                raise RuntimeError(f"no job can start: {pending[0].name} waits for {pending[0].after}")
            for name, r in list(running.items()):
                rc = r.process.poll()
                if rc is None:
                    continue
                del running[name]
                if rc != 0:
                    _stop(running)
                    raise JobFailed(f"experiment job {name} failed (exit {rc}): {_last_line(r.log)[:300]} "
                                    f"- full log: {r.log}")
                seconds = time.perf_counter() - r.started
                atomic_write_text(r.job.directory / "done.json", json.dumps(  # the mark that the job is finished
                    {"job": name, "seconds": round(seconds, 1), "finished": time.strftime("%Y-%m-%d %H:%M:%S")}))
                done.add(name)
                if on_finish:
                    on_finish(r.job, seconds)
            if on_update:  # each running job's metrics read once per poll
                now = {n: steps_done(r.job) for n, r in running.items()}
                on_update({"steps": sum(by_name[n].steps for n in done) + sum(now.values()),
                           "running": {n: (now[n], r.job.steps) for n, r in running.items()}})
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        _stop(running)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
