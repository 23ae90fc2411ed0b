"""`ServerConfig`: what `difflm serve` is told on its command line, validated once.

Torch-free, so the command line can check every value before the model loads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import InputError


@dataclass(frozen=True)
class ServerConfig:
    """Settings of one server.

    model: bundled model name or directory; model_name: the id clients send as ``model`` and
        `GET /v1/models` lists (default: ``model`` as given).
    host, port: where to listen (port 0: any free port, printed at start).
    device: torch device of the model.
    api_key: when set, /v1/* and /metrics need ``Authorization: Bearer <key>``.
    cors_origins: origins allowed to call the API from a browser (none: CORS off).
    max_prompt_tokens: longest prompt (plus suffix) in tokens; None = the model's context.
    max_tokens_limit: largest ``max_tokens`` a request may ask for.
    max_n: largest ``n`` (choices per prompt) and number of prompts of one request.
    max_batch: rows (choices) denoised in one model call at most; 1 = no batching.
    max_queue: requests waiting for a slot before new ones get 429.
    batch_window_ms: how long a new cached cohort (rows decoded with a KV cache, in lock step) of a busy
        server waits for more rows before its first step: a cohort takes no row once it has stepped, so
        without a wait requests arriving a few milliseconds apart each decode alone. 0 = step at once.
    request_timeout: seconds a request may take in all (queue included) before it is cancelled.
    shutdown_timeout: seconds SIGINT/SIGTERM waits for requests in flight before cancelling them.
    threads: torch CPU threads (None: torch's default).
    """

    model: str = "dlm-adapted"
    model_name: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    device: str = "cpu"
    api_key: str | None = None
    cors_origins: tuple[str, ...] = field(default_factory=tuple)
    max_prompt_tokens: int | None = None
    max_tokens_limit: int = 1024
    max_n: int = 8
    max_batch: int = 64
    max_queue: int = 256
    batch_window_ms: float = 20.0
    request_timeout: float = 300.0
    shutdown_timeout: float = 10.0
    threads: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise InputError(f"--port must be in [0, 65535], got {self.port}")
        for name in ("max_tokens_limit", "max_n", "max_batch"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not (math.isfinite(self.batch_window_ms) and 0 <= self.batch_window_ms <= 10_000):
            raise InputError(f"--batch-window-ms must be in [0, 10000], got {self.batch_window_ms}")
        if self.max_queue < 0:
            raise InputError(f"--max-queue must be >= 0, got {self.max_queue}")
        if self.max_prompt_tokens is not None and self.max_prompt_tokens < 1:
            raise InputError(f"--max-prompt-tokens must be >= 1, got {self.max_prompt_tokens}")
        for name in ("request_timeout", "shutdown_timeout"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise InputError(f"--{name.replace('_', '-')} must be a number of seconds > 0, got {value}")
        if self.threads is not None and self.threads < 1:
            raise InputError(f"--threads must be >= 1, got {self.threads}")
        if self.api_key is not None and not self.api_key.strip():
            raise InputError("the API key is empty; give a non-empty --api-key (or unset DIFFLM_API_KEY)")

    @property
    def served_name(self) -> str:
        """The model id of the API."""
        return self.model_name or self.model
