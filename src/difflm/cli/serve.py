"""`difflm serve`: an OpenAI-compatible server with continuous batching and a live web page.

    difflm serve                                   # the bundled dlm-adapted on http://127.0.0.1:8000/
    difflm serve --model path/to/LLaDA --device cuda --port 9000 --api-key s3cret

Every value is checked before the model loads; the URL is printed once the socket listens.
SIGINT/SIGTERM stop accepting connections, let requests in flight finish for up to
--shutdown-timeout seconds, cancel what is left, and exit 0.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
from typing import Any

from ..errors import InputError
from ..io import require_model
from . import device_name


def register(subparsers: Any) -> None:
    from ..bundled import DEFAULT_DLM

    parser = subparsers.add_parser(
        "serve", help="serve a model over an OpenAI-compatible HTTP API with a live web page",
        description="Serve a diffusion LM: POST /v1/completions and /v1/chat/completions (streamed or whole, "
        "difflm's decoding options as extra fields), GET /v1/models, /health, /metrics, and the web page at /.",
    )
    parser.add_argument("--model", default=DEFAULT_DLM, help=f"model directory or bundled model name (default {DEFAULT_DLM})")
    parser.add_argument("--model-name", help="the model id clients send (default: --model as given)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any free port)")
    parser.add_argument("--device", default="cpu", type=device_name, help="torch device of the model (default cpu)")
    parser.add_argument("--api-key", default=os.environ.get("DIFFLM_API_KEY"),
                        help="require 'Authorization: Bearer KEY' on /v1 and /metrics (default: $DIFFLM_API_KEY, else none)")
    parser.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                        help="allow browser calls from ORIGIN (repeatable; default: CORS off)")
    parser.add_argument("--max-prompt-tokens", type=int, help="longest prompt in tokens (default: the model's context)")
    parser.add_argument("--max-tokens-limit", type=int, default=1024, help="largest max_tokens (default 1024)")
    parser.add_argument("--max-n", type=int, default=8, help="largest n and number of prompts per request (default 8)")
    parser.add_argument("--max-batch", type=int, default=64, help="rows per model call at most; 1 = no batching (default 64)")
    parser.add_argument("--batch-window-ms", type=float, default=20.0,
                        help="ms a new cached cohort of a busy server waits for more requests before its first step (default 20; 0 = never)")
    parser.add_argument("--max-queue", type=int, default=256, help="requests waiting before 429 (default 256)")
    parser.add_argument("--request-timeout", type=float, default=300.0, help="seconds per request, queue included (default 300)")
    parser.add_argument("--shutdown-timeout", type=float, default=10.0,
                        help="seconds SIGINT/SIGTERM waits for requests in flight (default 10)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.set_defaults(func=run_serve)


def server_config(args: argparse.Namespace) -> Any:
    """The validated `ServerConfig` of the flags (`InputError` on a bad value)."""
    require_model(args.model)  # a missing model is a one-line error before torch loads
    from ..serve.config import ServerConfig

    return ServerConfig(
        model=args.model, model_name=args.model_name, host=args.host, port=args.port, device=args.device,
        api_key=args.api_key, cors_origins=tuple(args.cors_origin), max_prompt_tokens=args.max_prompt_tokens,
        max_tokens_limit=args.max_tokens_limit, max_n=args.max_n, max_batch=args.max_batch, max_queue=args.max_queue,
        batch_window_ms=args.batch_window_ms,
        request_timeout=args.request_timeout, shutdown_timeout=args.shutdown_timeout, threads=args.threads,
    )


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port; `InputError` when it cannot be had (in use, no such address).

    Made with protocol IPPROTO_TCP and TCP_NODELAY: asyncio sets TCP_NODELAY on an accepted connection
    only when the listening socket's protocol says TCP, and without it every response of a reused
    (keep-alive) connection waits ~40 ms on the client's delayed ACK (Nagle)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port or --host") from None
    return sock


def run_serve(args: argparse.Namespace) -> int:
    config = server_config(args)
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise InputError("difflm serve needs the 'serve' extra: pip install 'difflm[serve]'") from None
    import torch

    from ..serve.app import create_app, load_model
    from ..serve.process import GracefulServer
    from .generate import check_device

    if config.threads is not None:
        torch.set_num_threads(config.threads)
    check_device(config.device)
    model = load_model(config)
    sock = listen(config.host, config.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    server = GracefulServer(create_app(config, model), config, log_level="warning")
    print(f"difflm serve: http://{shown}:{port}/ (model {config.served_name}; OpenAI API at http://{shown}:{port}/v1)",
          flush=True)
    # uvicorn handles SIGINT/SIGTERM (graceful shutdown) and then raises the signal again for the
    # handler that was there before it: this one records it, so a requested stop exits 0.
    stopped_by: list[int] = []
    previous = {sig: signal.signal(sig, lambda s, _frame: stopped_by.append(s)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not server.started:
        print("difflm serve: the server did not start (see the messages above)", file=sys.stderr)
        return 1
    print(f"difflm serve: stopped ({signal.Signals(stopped_by[0]).name if stopped_by else 'shut down'})", flush=True)
    return 0
