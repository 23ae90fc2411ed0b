"""A real `difflm serve` application on loopback, in a thread of the test process (the bundled
model loads once per module), for the tests that talk to it with the official `openai` client."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Iterator

import pytest

pytest.importorskip("fastapi", reason="the server needs the 'serve' extra (make install)")
openai = pytest.importorskip("openai", reason="the server tests use the official openai client (test extra)")

import torch  # noqa: E402

from difflm.cli.serve import listen  # noqa: E402
from difflm.serve import ServerConfig, create_app  # noqa: E402
from difflm.serve.app import load_model  # noqa: E402
from difflm.serve.process import GracefulServer  # noqa: E402

MODEL = "dlm-adapted"


def start_server(model, **settings) -> tuple[str, GracefulServer, threading.Thread]:
    """Start serving ``model`` with ``ServerConfig(**settings)`` on a free loopback port, as `difflm serve`
    does (its socket, its uvicorn server; ``shutdown_timeout`` defaults to 2 s here): (base URL
    ``http://127.0.0.1:PORT``, the server, its thread). Stop it with `stop_server`."""
    settings.setdefault("shutdown_timeout", 2.0)
    config = ServerConfig(model=MODEL, port=0, **settings)
    sock = listen("127.0.0.1", 0)
    server = GracefulServer(create_app(config, model), config, log_level="warning")
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    return f"http://127.0.0.1:{sock.getsockname()[1]}", server, thread


def stop_server(server: GracefulServer, thread: threading.Thread) -> None:
    """What SIGTERM does to `difflm serve`: a graceful shutdown (`GracefulServer.shutdown`)."""
    server.should_exit = True
    thread.join(timeout=30)


@contextmanager
def running_server(model, **settings) -> Iterator[str]:
    """`start_server` for the ``with`` block; yields the base URL and stops the server afterwards."""
    url, server, thread = start_server(model, **settings)
    try:
        yield url
    finally:
        stop_server(server, thread)


@pytest.fixture(scope="module")
def dlm():
    torch.set_num_threads(1)  # the test machine's two cores are shared
    return load_model(ServerConfig(model=MODEL))  # the server's own loader (`difflm.formats.load`)


def client(base_url: str, api_key: str = "none", **kwargs) -> "openai.OpenAI":
    """The official client, without retries: a 429 or 408 must reach the test."""
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key=api_key, max_retries=0, timeout=120, **kwargs)


class Raw:
    """A plain HTTP answer (status, headers with lower-case names, body text), for requests the
    openai client cannot make (bad JSON, no key, preflights)."""

    def __init__(self, status: int, headers: dict[str, str], text: str) -> None:
        self.status_code, self.headers, self.text = status, headers, text

    def json(self):
        import json

        return json.loads(self.text)


def raw(base_url: str, method: str, path: str, body: bytes | dict | None = None,
        headers: dict[str, str] | None = None) -> Raw:
    """One request with the standard library's http.client."""
    import http.client
    import json
    from urllib.parse import urlsplit

    url = urlsplit(base_url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    headers = dict(headers or {})
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    if body is not None:
        headers.setdefault("Content-Type", "application/json")
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return Raw(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read().decode())
    finally:
        connection.close()


def assert_error(response: Raw, status: int, *, param=None, code=None) -> dict:
    """The OpenAI error of ``response``, checked: ``status``, the four fields, no traceback, ``param`` and ``code``."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert "Traceback" not in response.text and 'File "' not in response.text
    if param is not None:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return error
