"""`difflm serve` through the official `openai` client on loopback: completions, chat, streaming
(text deltas and denoising steps), difflm's extra_body options, infilling, n, stop strings, and
that the answers are the sampler's own (the same seed gives the library's tokens)."""

from __future__ import annotations

import pytest
import torch

from serve_fixtures import MODEL, client, dlm, raw, running_server  # noqa: F401 (fixture)

from difflm.sampling import SamplerOptions, fill, stop_token_ids, trim_at_stop


@pytest.fixture(scope="module")
def api(dlm):
    with running_server(dlm, max_n=4, max_tokens_limit=96, max_prompt_tokens=64) as url:
        yield client(url)


def library_text(model, prompt: str, max_tokens: int, seed: int, suffix: str = "", **options) -> str:
    """What `difflm.sampling.fill` writes for this prompt with a per-row generator of ``seed``,
    up to the first EOS/pad - the text the server must answer."""
    tok = model.tokenizer
    mask = model.config.mask_token_id
    prefix = tok(prompt.rstrip() if suffix else prompt)["input_ids"]
    suffix_ids = tok(" " + suffix if suffix[:1].isalnum() else suffix, add_special_tokens=False)["input_ids"] if suffix else []
    result = fill(model, [prefix + [mask] * max_tokens + suffix_ids], options=SamplerOptions(**options),
                  generator=[torch.Generator().manual_seed(seed)], return_dict=True)
    tokens = trim_at_stop(result.new_tokens[0], stop_token_ids(model))
    return tok.decode(tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def test_completion_is_the_samplers_answer_for_the_seed(api, dlm):
    out = api.completions.create(model=MODEL, prompt="ROMEO:", max_tokens=16, seed=7, temperature=0.8)
    choice = out.choices[0]
    assert out.object == "text_completion" and out.model == MODEL and choice.index == 0
    assert choice.text == library_text(dlm, "ROMEO:", 16, 7, temperature=0.8)
    assert choice.finish_reason in ("length", "stop")
    assert out.usage.prompt_tokens == len(dlm.tokenizer("ROMEO:")["input_ids"])
    tok, mask = dlm.tokenizer, dlm.config.mask_token_id
    reference = fill(dlm, [tok("ROMEO:")["input_ids"] + [mask] * 16], temperature=0.8,
                     generator=[torch.Generator().manual_seed(7)], return_dict=True).new_tokens[0]
    assert out.usage.completion_tokens == len(trim_at_stop(reference, stop_token_ids(dlm)))
    assert 1 <= out.usage.model_extra["model_calls"] <= 16
    again = api.completions.create(model=MODEL, prompt="ROMEO:", max_tokens=16, seed=7, temperature=0.8)
    other = api.completions.create(model=MODEL, prompt="ROMEO:", max_tokens=16, seed=8, temperature=0.8)
    assert again.choices[0].text == choice.text and other.choices[0].text != choice.text


def test_extra_body_decoding_options(api, dlm):
    extra = {"steps": 6, "strategy": "threshold", "threshold": 0.5, "block_length": 6}
    out = api.completions.create(model=MODEL, prompt="And God said", max_tokens=12, seed=3, temperature=0.7,
                                 extra_body=extra)
    assert out.choices[0].text == library_text(dlm, "And God said", 12, 3, temperature=0.7, **extra)
    assert out.usage.model_extra["model_calls"] <= 6  # the step budget was honoured
    cached = api.completions.create(model=MODEL, prompt="And God said", max_tokens=12, seed=3,
                                    extra_body={"block_length": 4, "cache": "dual", "cfg_scale": 0.5, "alg_temp": 0.2,
                                                "strategy": "maskgit_plus"})
    assert cached.choices[0].text == library_text(dlm, "And God said", 12, 3, block_length=4, cache="dual",
                                                  cfg_scale=0.5, alg_temp=0.2, strategy="maskgit_plus")


@pytest.mark.parametrize("extra", [
    {"editing_threshold": 0.0, "max_edits": 2, "block_length": 4},
    {"remask": 0.5, "max_edits": 1, "steps": 18, "block_length": 6},
    {"sub_block_length": 2, "block_length": 6},
    {"remask": 0.3, "editing_threshold": 0.5, "cache": "dual", "block_length": 4, "steps": 10},
], ids=["editing", "remask", "sub-blocks", "revisits-cached"])
def test_editing_remasking_and_sub_blocks_are_the_samplers_answer(api, dlm, extra):
    """The server runs the sampler's own step: token editing, remasking and sub-blocks give the
    library's text for the seed, and the stream (which holds back a block until it can no longer
    change) adds up to it."""
    kwargs = dict(model=MODEL, prompt="And God said", max_tokens=12, seed=5, temperature=0.8, extra_body=extra)
    out = api.completions.create(**kwargs)
    assert out.choices[0].text == library_text(dlm, "And God said", 12, 5, temperature=0.8, **extra)
    streamed = "".join(c.choices[0].text for c in api.completions.create(stream=True, **kwargs) if c.choices)
    assert streamed == out.choices[0].text


def test_infilling_with_suffix(api, dlm):
    out = api.completions.create(model=MODEL, prompt="And God said, Let there be", suffix="and there was light.",
                                 max_tokens=4, seed=1, extra_body={"steps": 4})
    assert out.choices[0].text == library_text(dlm, "And God said, Let there be", 4, 1, suffix="and there was light.",
                                               steps=4)
    assert out.usage.prompt_tokens > len(dlm.tokenizer("And God said, Let there be")["input_ids"])  # suffix counted


def test_chat_completion(api):
    out = api.chat.completions.create(model=MODEL, max_tokens=20, seed=2, temperature=0.8, messages=[
        {"role": "system", "content": "You speak as in a play."}, {"role": "user", "content": "Who art thou?"}])
    message = out.choices[0].message
    assert out.object == "chat.completion" and message.role == "assistant" and isinstance(message.content, str)
    assert "\nUSER:" not in message.content  # the transcript's next turn ends the reply
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens


def test_streamed_deltas_add_up_to_the_whole_answer(api):
    kwargs = dict(model=MODEL, prompt="KING HENRY:", max_tokens=24, seed=11, temperature=0.9)
    whole = api.completions.create(**kwargs)
    chunks = list(api.completions.create(stream=True, **kwargs))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert len([c for c in chunks if c.choices and c.choices[0].text]) >= 2  # it really streamed
    last = chunks[-1]
    assert last.choices[0].finish_reason == whole.choices[0].finish_reason
    assert last.usage.completion_tokens == whole.usage.completion_tokens
    assert last.usage.model_extra["model_calls"] == whole.usage.model_extra["model_calls"]


def test_chat_stream_starts_with_the_role(api):
    kwargs = dict(model=MODEL, max_tokens=16, seed=4, temperature=0.8, messages=[{"role": "user", "content": "Speak."}])
    whole = api.chat.completions.create(**kwargs)
    chunks = list(api.chat.completions.create(stream=True, **kwargs))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].choices[0].finish_reason is not None


def test_stream_steps_carries_the_canvas(api, dlm):
    chunks = list(api.completions.create(model=MODEL, prompt="ROMEO:", max_tokens=10, seed=5, temperature=0.8,
                                         stream=True, extra_body={"stream_steps": True, "block_length": 5}))
    steps = [c.choices[0].model_extra["denoising"] for c in chunks if c.choices and "denoising" in c.choices[0].model_extra]
    assert steps[0]["step"] == 0 and steps[0]["total_steps"] == 10
    assert len(steps[0]["canvas"]) == 10 and steps[0]["canvas"].count(None) == 10 - len(steps[0]["committed"])
    assert [s["step"] for s in steps] == list(range(len(steps)))
    assert {s["block"] for s in steps} <= {0, 1}
    for before, after in zip(steps, steps[1:]):  # each step fills exactly the cells it says it committed
        filled = {i for i, (a, b) in enumerate(zip(before["canvas"], after["canvas"])) if a is None and b is not None}
        assert filled == set(after["committed"])
        assert all(a == b for a, b in zip(before["canvas"], after["canvas"]) if a is not None)
    assert steps[-1]["model_calls"] == len(steps) and all(s["step_ms"] > 0 and s["batch_size"] >= 1 for s in steps)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == library_text(dlm, "ROMEO:", 10, 5, temperature=0.8, block_length=5)


def test_n_choices_and_several_prompts(api):
    out = api.completions.create(model=MODEL, prompt="ROMEO:", max_tokens=12, n=3, seed=9, temperature=1.0)
    assert [c.index for c in out.choices] == [0, 1, 2] and len({c.text for c in out.choices}) > 1
    alone = api.completions.create(model=MODEL, prompt="ROMEO:", max_tokens=12, seed=9, temperature=1.0)
    assert alone.choices[0].text == out.choices[0].text  # choice 0 of a seeded request uses the seed itself
    two = api.completions.create(model=MODEL, prompt=["ROMEO:", "JULIET:"], max_tokens=8, n=2, seed=1)
    assert [c.index for c in two.choices] == [0, 1, 2, 3]


def test_stop_strings_end_the_text(api):
    free = api.completions.create(model=MODEL, prompt="ROMEO:", max_tokens=32, seed=7, temperature=0.8)
    assert "\n" in free.choices[0].text.strip("\n")  # the unstopped text has a line break after some words
    head = free.choices[0].text.lstrip("\n")
    stop = "\n" if head.find("\n") > 0 else head[1:3]
    out = api.completions.create(model=MODEL, prompt="ROMEO:", max_tokens=32, seed=7, temperature=0.8, stop=[stop])
    assert out.choices[0].finish_reason == "stop" and stop not in out.choices[0].text
    assert free.choices[0].text.startswith(out.choices[0].text)
    streamed = "".join(c.choices[0].text for c in api.completions.create(
        model=MODEL, prompt="ROMEO:", max_tokens=32, seed=7, temperature=0.8, stop=[stop], stream=True) if c.choices)
    assert streamed == out.choices[0].text


def test_models_health_and_metrics(api):
    assert [m.id for m in api.models.list().data] == [MODEL]
    base = str(api.base_url).removesuffix("/v1/")
    assert raw(base, "GET", "/health").json() == {"status": "ok", "model": MODEL}
    metrics = raw(base, "GET", "/metrics").text
    for name in ("difflm_requests_total", "difflm_prompt_tokens_total", "difflm_completion_tokens_total",
                 "difflm_model_calls_total", "difflm_queue_depth", "difflm_active_rows",
                 "difflm_request_latency_seconds_bucket", "difflm_step_latency_seconds_bucket", "difflm_batch_rows_bucket"):
        assert name in metrics, name
    assert 'difflm_requests_total{endpoint="/v1/completions",status="200"}' in metrics
    page = raw(base, "GET", "/")
    assert page.status_code == 200 and "difflm" in page.text and "http" not in page.text.replace("http-equiv", "")
