"""Every bad request to `difflm serve` is a 4xx with OpenAI's error body - never a 500 or a
traceback: bad JSON, unknown model, max_tokens too large, wrong API key, prompt too long, n too
large, unknown or bad decoding options, unsupported OpenAI features."""

from __future__ import annotations

import pytest

from serve_fixtures import MODEL, Raw, assert_error, client, dlm, openai, raw, running_server  # noqa: F401 (fixture)

KEY = "s3cret-key"


@pytest.fixture(scope="module")
def base(dlm):
    with running_server(dlm, api_key=KEY, max_n=4, max_tokens_limit=64, max_prompt_tokens=32) as url:
        yield url


def post(base: str, body, *, key: str | None = KEY, path: str = "/v1/completions") -> Raw:
    return raw(base, "POST", path, body, {"Authorization": f"Bearer {key}"} if key else {})


def test_bad_json_and_wrong_shapes(base):
    assert_error(post(base, b"{not json"), 400, code="invalid_json")
    assert_error(post(base, b"[1, 2]"), 400, code="invalid_json")
    assert_error(post(base, {"prompt": "hi"}), 400, param="model", code="missing_field")
    assert_error(post(base, {"model": MODEL}), 400, param="prompt", code="missing_field")
    assert_error(post(base, {"model": MODEL, "prompt": "hi", "max_tokens": "8"}), 400, param="max_tokens")
    assert_error(post(base, {"model": MODEL, "prompt": "hi", "max_tokens": 0}), 400, param="max_tokens")
    assert_error(post(base, {"model": MODEL, "prompt": "hi", "temperature": -1}), 400, param="temperature")
    assert_error(post(base, {"model": MODEL, "prompt": 3}), 400, param="prompt")
    assert_error(post(base, {"model": MODEL, "prompt": [5, 99999]}), 400, param="prompt")
    assert_error(post(base, {"model": MODEL, "messages": []}, path="/v1/chat/completions"), 400, param="messages")
    assert_error(post(base, {"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]},
                      path="/v1/chat/completions"), 400)
    assert_error(raw(base, "GET", "/v1/nothing"), 404)
    assert_error(raw(base, "GET", "/v1/completions", headers={"Authorization": f"Bearer {KEY}"}), 405)


def test_limits(base):
    api = client(base, KEY)
    with pytest.raises(openai.NotFoundError) as exc:
        api.completions.create(model="gpt-4", prompt="hi")
    assert exc.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as exc:
        api.completions.create(model=MODEL, prompt="hi", max_tokens=65)
    assert exc.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError) as exc:
        api.completions.create(model=MODEL, prompt="And God said " * 20, max_tokens=8)
    assert exc.value.body["code"] == "context_length_exceeded" and exc.value.body["param"] == "prompt"
    with pytest.raises(openai.BadRequestError) as exc:
        api.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "word " * 40}])
    assert exc.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as exc:
        api.completions.create(model=MODEL, prompt="hi", n=5)
    assert exc.value.body["param"] == "n"
    with pytest.raises(openai.BadRequestError) as exc:
        api.completions.create(model=MODEL, prompt=["a", "b", "c", "d", "e"])
    assert exc.value.body["param"] == "prompt"


def test_decoding_options_are_validated(base):
    api = client(base, KEY)
    cases = [({"stepz": 3}, "stepz", "unknown_field"), ({"strategy": "bogus"}, "strategy", "invalid_value"),
             ({"steps": 2, "block_length": 2}, "steps", "invalid_value"), ({"cache": "huge"}, "cache", "invalid_value"),
             ({"threshold": 1.5, "strategy": "threshold"}, "threshold", "invalid_value"),
             ({"threshold": 0.5}, "threshold", "invalid_value"), ({"top_k": -1}, "top_k", "invalid_value"),
             ({"remask": 1.5}, "remask", "invalid_value"), ({"max_edits": 0}, "max_edits", "invalid_value"),
             ({"editing_threshold": 1.0}, "editing_threshold", "invalid_value"),
             ({"sub_block_length": 0}, "sub_block_length", "invalid_value"),
             ({"logprobs": 3}, "logprobs", "unsupported_parameter"), ({"echo": True}, "echo", "unsupported_parameter")]
    for extra, param, code in cases:
        with pytest.raises(openai.BadRequestError) as exc:
            api.completions.create(model=MODEL, prompt="hi", max_tokens=8, extra_body=extra)
        assert (exc.value.body["param"], exc.value.body["code"]) == (param, code), extra
    with pytest.raises(openai.BadRequestError):
        api.completions.create(model=MODEL, prompt="hi", stop=["a", "b", "c", "d", "e"])


def test_api_key(base):
    with pytest.raises(openai.AuthenticationError) as exc:
        client(base, "wrong").completions.create(model=MODEL, prompt="hi", max_tokens=4)
    assert exc.value.status_code == 401 and exc.value.body["code"] == "invalid_api_key"
    assert_error(post(base, {"model": MODEL, "prompt": "hi"}, key=None), 401)
    assert_error(raw(base, "GET", "/v1/models"), 401)
    assert_error(raw(base, "GET", "/metrics"), 401)
    assert raw(base, "GET", "/health").status_code == 200 and raw(base, "GET", "/").status_code == 200
    out = client(base, KEY).completions.create(model=MODEL, prompt="hi", max_tokens=4)
    assert out.choices[0].finish_reason in ("length", "stop")


def test_cors_is_off_by_default(base):
    preflight = raw(base, "OPTIONS", "/v1/completions", headers={
        "Origin": "http://example.test", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers


def test_cors_origin_when_asked(dlm):
    with running_server(dlm, cors_origins=("http://app.test",)) as url:
        preflight = raw(url, "OPTIONS", "/v1/completions", headers={
            "Origin": "http://app.test", "Access-Control-Request-Method": "POST"})
        assert preflight.headers.get("access-control-allow-origin") == "http://app.test"
