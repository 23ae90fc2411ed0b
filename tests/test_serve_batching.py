"""Concurrency of `difflm serve`: requests that arrive together share model calls, a request that
arrives later joins a running batch, the same seed gives the same answer alone or batched, the
queue answers 429 when full, requests time out, and a client that goes away stops its rows."""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from serve_fixtures import MODEL, client, dlm, openai, raw, running_server  # noqa: F401 (fixture)

# Different prompts, lengths, step budgets, blocks and seeds (per-row settings), two option sets
# (two batches), one cached cohort.
REQUESTS = [
    dict(prompt="ROMEO:", max_tokens=24, seed=1, temperature=0.9),
    dict(prompt="And God said, Let there be", max_tokens=16, seed=2, temperature=0.9, extra_body={"steps": 8}),
    dict(prompt="KING HENRY:\nWhat", max_tokens=20, seed=3, temperature=0.9, extra_body={"block_length": 5}),
    dict(prompt="JULIET:", max_tokens=24, seed=4, temperature=0.9, extra_body={"steps": 12, "block_length": 12}),
    dict(prompt="MACBETH:", max_tokens=12, seed=9, temperature=0.9, top_p=0.9),
    dict(prompt="The LORD", max_tokens=12, seed=5, extra_body={"strategy": "random", "steps": 6}),
    dict(prompt="HAMLET:", max_tokens=18, seed=6, temperature=0.9, extra_body={"strategy": "threshold", "threshold": 0.4}),
    dict(prompt="In the beginning", max_tokens=16, seed=7, temperature=0.9, extra_body={"cache": "dual", "block_length": 8}),
    dict(prompt="In the end", max_tokens=16, seed=8, temperature=0.9, extra_body={"cache": "dual", "block_length": 8}),
]


@pytest.fixture(scope="module")
def base(dlm):
    with running_server(dlm, max_batch=64) as url:
        yield url


def metric(base: str, name: str) -> float:
    """The value of one unlabelled sample of /metrics."""
    text = raw(base, "GET", "/metrics").text
    return float(re.search(rf"^{re.escape(name)} (\S+)$", text, re.M).group(1))


def run(api, request: dict) -> tuple[str, int]:
    """(text, largest batch it shared) of a streamed request with step events."""
    extra = {**request.get("extra_body", {}), "stream_steps": True}
    kwargs = {k: v for k, v in request.items() if k != "extra_body"}
    text, batch = "", 0
    for chunk in api.completions.create(model=MODEL, stream=True, extra_body=extra, **kwargs):
        for choice in chunk.choices:
            text += choice.text
            if choice.model_extra.get("denoising"):
                batch = max(batch, choice.model_extra["denoising"]["batch_size"])
    return text, batch


def test_same_seed_same_text_alone_or_batched(base):
    api = client(base)
    start = metric(base, "difflm_model_calls_total")
    alone = [run(api, r) for r in REQUESTS]
    assert all(batch == 1 for _, batch in alone)
    calls_alone = metric(base, "difflm_model_calls_total") - start
    start = metric(base, "difflm_model_calls_total")
    with ThreadPoolExecutor(len(REQUESTS)) as pool:
        together = list(pool.map(lambda r: run(api, r), REQUESTS))
    assert [text for text, _ in together] == [text for text, _ in alone]
    assert max(batch for _, batch in together) >= 3  # they really shared model calls
    assert metric(base, "difflm_model_calls_total") - start < calls_alone


def test_a_later_request_joins_the_running_batch(base):
    api = client(base)
    long = dict(prompt="ROMEO:", max_tokens=120, seed=3, temperature=0.9)
    short = dict(prompt="JULIET:", max_tokens=10, seed=4, temperature=0.9)
    expected = run(api, short)[0]
    joined = {}
    stream = api.completions.create(model=MODEL, stream=True, extra_body={"stream_steps": True}, **long)
    for i, chunk in enumerate(stream):
        if i == 5:  # the long request is running: the short one joins between two of its steps
            worker = threading.Thread(target=lambda: joined.update(result=run(api, short)))
            worker.start()
    worker.join()
    text, batch = joined["result"]
    assert text == expected and batch == 2


def test_full_queue_answers_429(dlm, monkeypatch):
    with running_server(dlm, max_batch=1, max_queue=1) as url:
        # The first request's second model call waits until the test has its 429, so the request holds
        # the only slot however fast or loaded the machine is (timing alone raced on a busy CI machine).
        forward, calls, release = dlm.model.forward, [], threading.Event()

        def held_forward(*args, **kwargs):
            calls.append(1)
            if len(calls) > 1:
                release.wait(timeout=60)
            return forward(*args, **kwargs)

        monkeypatch.setattr(dlm.model, "forward", held_forward)
        api, pool = client(url), ThreadPoolExecutor(2)
        try:
            first = pool.submit(api.completions.create, model=MODEL, prompt="ROMEO:", max_tokens=16, seed=1)
            deadline = time.time() + 30
            while len(calls) < 2:  # the first request is inside the model, holding the slot
                assert time.time() < deadline and not first.done()
                time.sleep(0.01)
            waiting = pool.submit(api.completions.create, model=MODEL, prompt="JULIET:", max_tokens=4)
            while metric(url, "difflm_queue_depth") < 1:
                assert time.time() < deadline
                time.sleep(0.01)
            with pytest.raises(openai.RateLimitError) as exc:
                api.with_options(timeout=10).completions.create(model=MODEL, prompt="HAMLET:", max_tokens=4)
            assert exc.value.status_code == 429 and exc.value.body["code"] == "queue_full"
        finally:
            release.set()
        assert first.result(timeout=60).choices[0].finish_reason in ("length", "stop")
        assert waiting.result(timeout=60).choices[0].finish_reason in ("length", "stop")


def test_requests_time_out(dlm):
    with running_server(dlm, request_timeout=0.3) as url:
        api = client(url)
        with pytest.raises(openai.APIStatusError) as exc:
            api.completions.create(model=MODEL, prompt="ROMEO:", max_tokens=200, extra_body={"steps": 200})
        assert exc.value.status_code == 408 and exc.value.body["code"] == "timeout"
        with pytest.raises(openai.APIError, match="timed out"):
            list(api.completions.create(model=MODEL, prompt="ROMEO:", max_tokens=200, stream=True))
        assert api.completions.create(model=MODEL, prompt="ROMEO:", max_tokens=4).choices[0].text is not None


def _wait_idle(base: str, seconds: float = 10) -> float:
    deadline = time.time() + seconds
    while metric(base, "difflm_active_rows") > 0:
        assert time.time() < deadline, "the rows of a closed request kept running"
        time.sleep(0.02)
    return metric(base, "difflm_model_calls_total")


def test_a_client_that_goes_away_stops_its_rows(base):
    api = client(base)
    # step events: a chunk after every step (text deltas alone may come late: the first
    # positions of a canvas are not always the first to be committed)
    stream = api.completions.create(model=MODEL, prompt="ROMEO:", max_tokens=220, stream=True,
                                    extra_body={"steps": 220, "stream_steps": True})
    before = metric(base, "difflm_model_calls_total")
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    after = _wait_idle(base)
    assert after - before < 150  # far from its 220 steps
    time.sleep(0.3)
    assert metric(base, "difflm_model_calls_total") == after
    # a non-streamed request whose client hangs up
    import http.client
    from urllib.parse import urlsplit

    url = urlsplit(base)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=0.3)
    connection.request("POST", "/v1/completions", body=b'{"model": "%s", "prompt": "ROMEO:", "max_tokens": 220}'
                       % MODEL.encode(), headers={"Content-Type": "application/json"})
    with pytest.raises(TimeoutError):
        connection.getresponse()
    connection.close()
    before = metric(base, "difflm_model_calls_total")
    assert _wait_idle(base) - before < 150


def test_cached_requests_a_moment_apart_share_one_cohort(dlm):
    """A cached cohort takes no row once it has stepped; on a busy server `batch_window_ms` holds a new
    cohort's first step so that a request arriving a moment later joins it (the answers stay those of
    each alone); on an idle server a lone request starts at once."""
    cached = [dict(prompt=p, max_tokens=16, seed=s, temperature=0.9, extra_body={"cache": "dual", "block_length": 8})
              for p, s in (("In the beginning", 7), ("ROMEO:", 8))]
    busy = dict(prompt="JULIET:", max_tokens=200, seed=1, temperature=0.9, extra_body={"steps": 200})  # uncached
    with running_server(dlm, batch_window_ms=3000) as url:
        api = client(url)
        start = time.perf_counter()
        alone = [run(api, r)[0] for r in cached]  # idle server: no wait
        assert time.perf_counter() - start < 3.0  # neither waited out the 3 s window
        with ThreadPoolExecutor(3) as pool:
            background = pool.submit(run, api, busy)
            while metric(url, "difflm_active_rows") < 1:  # the server is busy
                time.sleep(0.01)
            first = pool.submit(run, api, cached[0])
            time.sleep(0.3)  # well inside the window: the first cohort has not stepped yet
            second = pool.submit(run, api, cached[1])
            together = [first.result(timeout=120), second.result(timeout=120)]
            background.result(timeout=120)
    assert [text for text, _ in together] == alone
    assert [batch for _, batch in together] == [2, 2]
