"""The production edges of `difflm serve` (issue #33): bodies that broke the parser or the tokenizer
(lone surrogates, deep nesting, huge numbers), non-finite and tiny numbers, the mask token written
as text, oversized chunked bodies, cross-site requests (non-JSON bodies, DNS rebinding), keep-alive
latency (TCP_NODELAY), the shutdown timeout, a client gone during the upload, a model serve cannot
serve, and the unknown route's error code."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import re
import select
import socket
import threading
import time
from urllib.parse import urlsplit

import pytest
import torch

from serve_fixtures import (MODEL, assert_error, client, dlm, openai, raw, running_server, start_server,  # noqa: F401
                            stop_server)

from difflm.cli.serve import listen
from difflm.errors import InputError, ModelLoadError
from difflm.sampling import SamplerOptions, sample_tokens
from difflm.sampling.templates import continuation_ids, template_ids
from difflm.serve import ServerConfig
from difflm.serve.app import load_model

KEY = "edge-key"


@pytest.fixture(scope="module")
def base(dlm):
    with running_server(dlm, max_tokens_limit=64) as url:  # no API key: the Host check is on
        yield url


def post(base: str, body, path: str = "/v1/completions", headers: dict | None = None):
    return raw(base, "POST", path, body, headers)


def completion(**fields) -> dict:
    return {"model": MODEL, "prompt": "ROMEO:", "max_tokens": 4, **fields}


def test_lone_surrogates_deep_nesting_and_huge_numbers_are_400(base):
    for body in (b'{"model": "%s", "prompt": "a\\ud800b", "max_tokens": 4}' % MODEL.encode(),
                 b'{"model": "%s", "prompt": "a", "suffix": "x\\udfffy", "max_tokens": 4}' % MODEL.encode()):
        error = assert_error(post(base, body), 400)
        assert "surrogate" in error["message"] and error["param"] in ("prompt", "suffix")
    chat = b'{"model": "%s", "messages": [{"role": "user", "content": "hi \\ud83d there"}]}' % MODEL.encode()
    assert "surrogate" in assert_error(post(base, chat, "/v1/chat/completions"), 400, param="messages")["message"]
    paired = b'{"model": "%s", "prompt": "smile \\ud83d\\ude00", "max_tokens": 2}' % MODEL.encode()
    assert post(base, paired).status_code == 200  # a proper pair is a character
    deep = b'{"model": "%s", "prompt": "hi", "stop": ' % MODEL.encode() + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert_error(post(base, deep), 400, code="invalid_json")
    digits = b'{"model": "%s", "prompt": "hi", "max_tokens": ' % MODEL.encode() + b"1" * 5001 + b"}"
    assert_error(post(base, digits), 400, code="invalid_json")


def test_non_finite_numbers_are_400(base):
    for name, literal in (("temperature", b"Infinity"), ("temperature", b"1e400"), ("temperature", b"NaN"),
                          ("alg_temp", b"Infinity"), ("top_p", b"NaN")):
        body = b'{"model": "%s", "prompt": "hi", "max_tokens": 4, "%s": %s}' % (MODEL.encode(), name.encode(), literal)
        assert_error(post(base, body), 400, param=name)
    assert_error(post(base, completion(cfg_scale=1e308)), 400, param="cfg_scale", code="invalid_value")


def test_a_tiny_temperature_is_greedy(base):
    api = client(base)
    greedy = api.completions.create(model=MODEL, prompt="ROMEO:", max_tokens=8, seed=3, temperature=0)
    tiny = api.completions.create(model=MODEL, prompt="ROMEO:", max_tokens=8, seed=3, temperature=1e-300)
    assert tiny.choices[0].text == greedy.choices[0].text


def test_the_library_refuses_non_finite_options_and_tiny_temperatures_are_greedy():
    for bad in ({"temperature": float("inf")}, {"temperature": float("nan")}, {"alg_temp": float("inf")},
                {"cfg_scale": 1e308}, {"cfg_scale": float("inf")}):
        with pytest.raises(InputError):
            SamplerOptions(**bad)
    logits = torch.randn(5, 40, generator=torch.Generator().manual_seed(0)) * 8
    greedy, greedy_probs = sample_tokens(logits, temperature=0.0)
    for temperature in (1e-300, 1e-45, 1e-40):
        for extra in ({}, {"top_k": 4}, {"top_p": 0.5}, {"gumbel": True}):
            tokens, probs = sample_tokens(logits, temperature=temperature, generator=torch.Generator().manual_seed(1),
                                          **extra)
            assert torch.equal(tokens, greedy) and torch.equal(probs, greedy_probs), (temperature, extra)
    # rows that do not overflow keep their draw: one huge-logit row next to ordinary ones at t = 1e-37
    mixed = torch.cat([logits[:1] * 1e3, logits[1:] * 1e-38])
    tokens, probs = sample_tokens(mixed, temperature=1e-37, generator=torch.Generator().manual_seed(1))
    assert tokens[0] == mixed[0].argmax() and torch.isfinite(probs).all()


def test_the_mask_token_as_text_is_refused(base, dlm):
    mask = dlm.tokenizer.convert_ids_to_tokens(dlm.config.mask_token_id)
    error = assert_error(post(base, completion(prompt=f"ROMEO: {mask}{mask} hello")), 400, param="prompt")
    assert "mask token" in error["message"] and mask in error["message"]
    assert_error(post(base, completion(prompt="ROMEO:", suffix=f"and {mask}")), 400, param="suffix")
    chat = {"model": MODEL, "messages": [{"role": "user", "content": f"say {mask}"}]}
    assert "mask token" in assert_error(post(base, chat, "/v1/chat/completions"), 400, param="messages")["message"]
    # the library's text -> ids path (what `difflm generate` / `infill` encode with) refuses it too
    with pytest.raises(InputError, match="mask token"):
        continuation_ids(f"ROMEO: {mask} hello", dlm.tokenizer, dlm.config.mask_token_id, 4)
    with pytest.raises(InputError, match="mask token"):
        template_ids(f"a {mask} [MASK:2] b", dlm.tokenizer, dlm.config.mask_token_id)
    with pytest.raises(InputError, match="surrogate"):
        continuation_ids("a\ud800b", dlm.tokenizer, dlm.config.mask_token_id, 4)


def test_a_huge_chunked_body_is_refused_at_the_limit(base):
    url = urlsplit(base)
    sock = socket.create_connection((url.hostname, url.port), timeout=10)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n" % 65536 + b" " * 65536 + b"\r\n"
    sent, answered = 0, False
    try:
        while sent < 64 << 20:  # the whole 200 MB is not needed: a server that reads on never answers
            if select.select([sock], [], [], 0)[0]:
                answered = True
                break
            sock.sendall(chunk)
            sent += 65536
        answer = sock.recv(65536) if answered else b""
    except OSError:  # the server answered and closed while we were still sending
        answered, answer = True, b""
    finally:
        sock.close()
    assert answered and sent < 16 << 20, sent
    assert not answer or answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert 'status="413"' in raw(base, "GET", "/metrics").text


def test_non_json_bodies_are_415(base):
    body = json.dumps(completion()).encode()
    for media in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        assert_error(post(base, body, headers={"Content-Type": media}), 415, code="unsupported_media_type")
    assert post(base, body, headers={"Content-Type": "application/json; charset=utf-8"}).status_code == 200


def test_foreign_host_names_are_refused_without_a_key(base, dlm):
    for host in ("evil.example", "evil.example:8000", "127.0.0.1.nip.io"):
        assert_error(raw(base, "GET", "/v1/models", headers={"Host": host}), 421, code="invalid_host")
        assert_error(post(base, completion(), headers={"Host": host}), 421)
    port = urlsplit(base).port
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "[::1]", "app.localhost"):
        assert raw(base, "GET", "/v1/models", headers={"Host": host}).status_code == 200, host
    assert raw(base, "GET", "/", headers={"Host": f"localhost:{port}"}).status_code == 200
    with running_server(dlm, api_key=KEY) as url:  # a key guards the API: any name may reach it
        assert raw(url, "GET", "/v1/models", headers={"Host": "evil.example",
                                                      "Authorization": f"Bearer {KEY}"}).status_code == 200


def test_the_listening_socket_gives_connections_tcp_nodelay():
    sock = listen("127.0.0.1", 0)
    seen = {}

    async def main():
        async def handle(reader, writer):
            seen["nodelay"] = writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            writer.close()

        server = await asyncio.start_server(handle, sock=sock)
        reader, writer = await asyncio.open_connection(*sock.getsockname()[:2])
        await reader.read()
        writer.close()
        server.close()
        await server.wait_closed()

    asyncio.run(main())
    assert seen["nodelay"], "accepted connections must have TCP_NODELAY (else ~40 ms per keep-alive request)"


def test_shutdown_past_the_timeout_answers_503_and_ends_streams(dlm, caplog):
    url, server, thread = start_server(dlm, shutdown_timeout=0.5)
    slow = completion(max_tokens=240, steps=240, cfg_scale=1.0)
    answers: dict = {}

    def send(name, body):
        try:
            answers[name] = post(url, body)
        except Exception as exc:  # noqa: BLE001 - a cut response is what this test looks for
            answers[name] = exc

    workers = [threading.Thread(target=send, args=("whole", slow)),
               threading.Thread(target=send, args=("stream", {**slow, "stream": True}))]
    for worker in workers:
        worker.start()
    time.sleep(0.5)
    with caplog.at_level(logging.ERROR):
        stop_server(server, thread)
        for worker in workers:
            worker.join(timeout=60)
        gc.collect()
    whole, stream = answers["whole"], answers["stream"]
    assert not isinstance(whole, Exception) and not isinstance(stream, Exception), answers
    assert_error(whole, 503, code="shutting_down")
    events = re.findall(r"^data: (.*)$", stream.text, flags=re.M)
    assert events[-1] == "[DONE]" and json.loads(events[-2])["error"]["code"] == "shutting_down", events[-3:]
    assert "never retrieved" not in caplog.text


def test_a_client_gone_during_the_upload_is_499(base):
    errors: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = errors.append
    logger = logging.getLogger("uvicorn.error")
    logger.addHandler(handler)
    try:
        url = urlsplit(base)
        with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 1000\r\n\r\n{\"model\": ")
            time.sleep(0.2)
        deadline = time.time() + 10
        while 'endpoint="/v1/completions",status="499"' not in (text := raw(base, "GET", "/metrics").text):
            assert time.time() < deadline, text
            time.sleep(0.1)
    finally:
        logger.removeHandler(handler)
    assert 'status="500"' not in text and not errors, [r.getMessage() for r in errors]


def test_a_model_serve_cannot_serve_is_named():
    with pytest.raises(ModelLoadError) as exc:
        load_model(ServerConfig(model="dlm-continuous"))
    message = str(exc.value)
    assert "masked diffusion" in message and "continuous" in message and "causal" not in message
    assert "adapt it" not in message and "difflm generate --model dlm-continuous" in message


def test_an_unknown_route_has_the_documented_code(base):
    assert_error(raw(base, "GET", "/v1/nothing"), 404, code="unknown_route")
    assert_error(raw(base, "GET", "/v1/completions"), 405, code="method_not_allowed")
