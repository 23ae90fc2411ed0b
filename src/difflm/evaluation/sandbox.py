"""Running untrusted, model-written Python: a separate process with a timeout and resource limits.

Each program runs as ``python -I`` in a fresh temporary directory (deleted afterwards), with an empty
environment, no stdin, its own process group (killed as a whole on timeout), and limits on address
space, CPU time, file size and open files. This stops runaway or careless code (infinite loops, memory
blow-ups, stray files); it is not a security boundary against hostile code - the process can still
read files and use the network. Run evaluations of untrusted models inside a container.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

STATUSES = ("passed", "failed", "timeout")


@dataclass(frozen=True)
class ExecutionResult:
    """status: "passed" (exit code 0), "failed" (non-zero exit) or "timeout"; detail: the tail of stderr."""

    status: str
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _limits(timeout: float, memory_mb: int):
    def apply() -> None:  # runs in the child between fork and exec
        import resource

        memory = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        cpu = int(timeout) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024 * 1024,) * 2)
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def _kill_group(pgid: int) -> None:
    """Kill the program's process group (its own session: nothing else is in it)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_python(program: str, *, timeout: float = 10.0, memory_mb: int = 1024) -> ExecutionResult:
    """Run ``program`` (Python source) in a sandboxed subprocess; wall-clock limit ``timeout`` seconds."""
    if timeout <= 0:
        raise InputError(f"timeout must be > 0 seconds, got {timeout}")
    with tempfile.TemporaryDirectory(prefix="difflm-exec-") as tmp:
        path = Path(tmp) / "program.py"
        path.write_text(program, encoding="utf-8")
        proc = subprocess.Popen(
            [sys.executable, "-I", "-B", str(path)], cwd=tmp, env={"PATH": os.defpath, "HOME": tmp},
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            preexec_fn=_limits(timeout, memory_mb), start_new_session=True,
        )
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            proc.communicate()
            return ExecutionResult("timeout", f"no result after {timeout:g} s")
        _kill_group(proc.pid)  # children the program left behind
    detail = err.decode("utf-8", "replace").strip().splitlines()[-1:] if err else []
    return ExecutionResult("passed" if proc.returncode == 0 else "failed", detail[0] if detail else "")
