"""`difflm serve` with a uniform-state model (no mask token: every generated position holds a token from the
first step, and a step changes tokens): requests run whole through the sampler's own `denoise`
(`difflm.serve.whole`), talked to with the official `openai` client on loopback. The model is a tiny random
uniform-state `DiffusionLM` on the bundled tokenizer, so what the server answers is checked against what the
sampler gives for the same seeds, token for token."""

from __future__ import annotations

import re
import threading
import time

import pytest
import torch

from serve_fixtures import assert_error, client, openai, raw, running_server, start_server, stop_server

from difflm import DiffusionLM, sampling  # noqa: E402
from difflm.config import DiffusionConfig  # noqa: E402
from difflm.errors import ModelLoadError  # noqa: E402
from difflm.serve import ServerConfig  # noqa: E402
from difflm.serve.app import load_model  # noqa: E402
from difflm.serve.prompts import choice_seed  # noqa: E402

MODEL = "dlm-adapted"  # the name the fixtures' server answers to
STOP_IDS = [1, 2]  # the bundled tokenizer's EOS and pad


def tiny_uniform(seed: int = 0) -> DiffusionLM:
    """A 2-layer random LLaMA on the bundled tokenizer (8192 tokens), as a uniform-state DLM."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from difflm.io import tokenizer_dir

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir("bundled"))
    torch.manual_seed(seed)
    backbone = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                            max_position_embeddings=128)).eval()
    config = DiffusionConfig(mask_token_id=3, bos_token_id=0, eos_token_id=1, pad_token_id=2, shift=True,
                             attention="bidirectional", extra={"process": "uniform"})
    return DiffusionLM(backbone, config, tokenizer).eval()


@pytest.fixture(scope="module")
def udlm():
    torch.set_num_threads(1)
    return tiny_uniform()


@pytest.fixture(scope="module")
def base(udlm):
    with running_server(udlm) as url:
        yield url


def expected(udlm, prompt: str, *, seed: int, n: int = 1, max_tokens: int, **options) -> list[list[int]]:
    """The generated tokens of choices 0..n-1 by the sampler itself (one generator per choice, seeded as the
    server seeds it), untrimmed."""
    ids = udlm.tokenizer(prompt)["input_ids"]
    out = sampling.generate(udlm, [ids] * n, max_new_tokens=max_tokens, return_dict=True,
                            generator=[torch.Generator().manual_seed(choice_seed(seed, i)) for i in range(n)],
                            **options)
    return [row[m].tolist() for row, m in zip(out.sequences, out.generate_mask)]


def text_of(udlm, tokens: list[int]) -> str:
    cut = next((i for i, t in enumerate(tokens) if t in STOP_IDS), len(tokens))
    return udlm.tokenizer.decode(tokens[:cut], skip_special_tokens=True, clean_up_tokenization_spaces=False)


def test_a_completion_is_the_samplers_own_output(udlm, base):
    answer = client(base).completions.create(model=MODEL, prompt="ROMEO:", max_tokens=8, seed=3, n=2,
                                             temperature=1.0, extra_body={"steps": 4})
    tokens = expected(udlm, "ROMEO:", seed=3, n=2, max_tokens=8, steps=4, temperature=1.0)
    assert [c.text for c in answer.choices] == [text_of(udlm, t) for t in tokens]
    assert answer.choices[0].text != answer.choices[1].text  # each choice its own stream
    assert answer.usage.model_extra["model_calls"] == 4  # one call per step
    assert answer.usage.prompt_tokens == 2 * len(udlm.tokenizer("ROMEO:")["input_ids"])
    # the same seed alone gives the same text (a row does not depend on its batch)
    alone = client(base).completions.create(model=MODEL, prompt="ROMEO:", max_tokens=8, seed=3, temperature=1.0,
                                            extra_body={"steps": 4})
    assert alone.choices[0].text == answer.choices[0].text


def test_the_stream_sends_every_step_and_ends_on_the_same_text(udlm, base):
    stream = client(base).completions.create(model=MODEL, prompt="ROMEO:", max_tokens=8, seed=7, temperature=1.0,
                                             stream=True, extra_body={"steps": 5, "stream_steps": True})
    frames, text, usage, finish = [], "", None, None
    for chunk in stream:
        if chunk.choices:
            choice = chunk.choices[0]
            text += choice.text
            finish = choice.finish_reason or finish
            if choice.model_extra.get("denoising"):
                frames.append(choice.model_extra["denoising"])
        usage = chunk.usage or usage
    assert [f["step"] for f in frames] == list(range(5)) and {f["total_steps"] for f in frames} == {5}
    assert all(f["process"] == "uniform" and len(f["canvas"]) == 8 and None not in f["canvas"] for f in frames)
    # committed = the positions this step changed (token pieces of one random model: no two alike here)
    for before, after in zip(frames, frames[1:]):
        changed = [i for i, (a, b) in enumerate(zip(before["canvas"], after["canvas"])) if a != b]
        assert after["committed"] == changed
    assert any(f["committed"] for f in frames[1:]) and [f["model_calls"] for f in frames] == [1, 2, 3, 4, 5]
    tokens = expected(udlm, "ROMEO:", seed=7, max_tokens=8, steps=5, temperature=1.0)[0]
    assert text == text_of(udlm, tokens) and finish in ("stop", "length")
    assert usage.model_extra["model_calls"] == 5
    assert frames[-1]["canvas"] == [udlm.tokenizer.decode([t], skip_special_tokens=False,
                                                          clean_up_tokenization_spaces=False) for t in tokens]


def test_a_stop_string_cuts_the_text(udlm, base):
    tokens = expected(udlm, "And God said", seed=11, max_tokens=12, steps=3, temperature=1.0)[0]
    full = text_of(udlm, tokens)
    stop = full[len(full) // 2: len(full) // 2 + 3]
    assert stop and stop in full
    for stream in (False, True):
        out = client(base).completions.create(model=MODEL, prompt="And God said", max_tokens=12, seed=11,
                                              temperature=1.0, stop=stop, stream=stream, extra_body={"steps": 3})
        chunks = list(out) if stream else [out]
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        assert text == full[:full.index(stop)] and reasons == ["stop"], (stream, text, full, stop)


def test_the_renoising_sampler_is_served_with_its_options(udlm, base):
    """entropy_bound switches to the renoising sampler (difflm.sampling.renoise): blocks, a temperature schedule
    and adaptive stopping are request fields like any sampler option, and the answer is the sampler's own."""
    options = {"entropy_bound": 2.0, "block_length": 4, "steps": 6, "t_min": 0.5, "t_max": 1.0,
               "stability_threshold": 1, "confidence_threshold": 50.0}
    answer = client(base).completions.create(model=MODEL, prompt="ROMEO:", max_tokens=8, seed=5, n=2,
                                             extra_body=options)
    ids = udlm.tokenizer("ROMEO:")["input_ids"]
    out = sampling.generate(udlm, [ids] * 2, max_new_tokens=8, return_dict=True,
                            generator=[torch.Generator().manual_seed(choice_seed(5, i)) for i in range(2)], **options)
    tokens = [row[m].tolist() for row, m in zip(out.sequences, out.generate_mask)]
    assert [c.text for c in answer.choices] == [text_of(udlm, t) for t in tokens]
    assert answer.usage.model_extra["model_calls"] == max(out.row_calls)  # calls of the rows, stopped ones less
    frames = [c.choices[0].model_extra["denoising"] for c in client(base).completions.create(
        model=MODEL, prompt="ROMEO:", max_tokens=8, seed=5, stream=True, extra_body={**options, "stream_steps": True})
        if c.choices and c.choices[0].model_extra.get("denoising")]
    assert {f["block"] for f in frames} == {0, 1} and all(None not in f["canvas"] for f in frames)
    # a renoising option without entropy_bound: the ancestral sampler refuses it, as a 400 naming it
    error = assert_error(raw(base, "POST", "/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 4,
                                                               "t_min": 0.5, "t_max": 1.0}), 400, param="t_min")
    assert "entropy_bound" in error["message"]


def test_chat_runs_whole_too(udlm, base):
    answer = client(base).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hello"}],
                                                  max_tokens=6, seed=1, temperature=1.0, extra_body={"steps": 2})
    assert answer.usage.model_extra["model_calls"] == 2 and answer.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize("field,value", [("strategy", "threshold"), ("cfg_scale", 1.5), ("block_length", 4),
                                         ("cache", "prefix"), ("remask", 0.2), ("editing_threshold", 0.5)])
def test_an_option_of_masked_decoding_is_a_400_naming_it(base, field, value):
    body = {"model": MODEL, "prompt": "ROMEO:", "max_tokens": 4, field: value}
    for stream in (False, True):  # refused before a stream starts, never an error event or a 500
        error = assert_error(raw(base, "POST", "/v1/completions", {**body, "stream": stream}), 400, param=field,
                             code="unsupported_parameter")
        assert "uniform-state" in error["message"] and "\n" not in error["message"]


def test_neutral_values_and_bad_values(base):
    # a masked-decoding option at its default changes nothing: accepted (what a generic client may send)
    answer = client(base).completions.create(model=MODEL, prompt="ROMEO:", max_tokens=4, seed=0,
                                             extra_body={"cache": "none", "cfg_scale": 0, "steps": 2})
    assert answer.usage.model_extra["model_calls"] == 2
    assert_error(raw(base, "POST", "/v1/completions", {"model": MODEL, "prompt": "x", "steps": 0}), 400,
                 param="steps")
    assert_error(raw(base, "POST", "/v1/completions", {"model": MODEL, "prompt": "x", "top_k": "3"}), 400,
                 param="top_k")


def test_a_refusal_of_the_sampler_at_run_time_is_a_400_not_a_500():
    """What only the sampler can refuse (here a model whose noise_removal is unknown) reaches the client as the
    sampler's one line: a 400, or an error event in a stream."""
    broken = tiny_uniform()
    broken.config = broken.config.replace(extra={"process": "uniform", "noise_removal": "sideways"})
    with running_server(broken) as url:
        error = assert_error(raw(url, "POST", "/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 2}),
                             400)
        assert "noise_removal" in error["message"]
        with pytest.raises(openai.APIError, match="noise_removal"):
            list(client(url).completions.create(model=MODEL, prompt="x", max_tokens=2, stream=True))
        assert "status=\"500\"" not in raw(url, "GET", "/metrics").text


def _model_calls(base: str) -> float:
    metrics = raw(base, "GET", "/metrics").text
    return float(re.search(r"^difflm_model_calls_total (\S+)$", metrics, re.M).group(1))


def test_a_client_that_goes_away_stops_the_run(udlm):
    with running_server(udlm) as url:
        stream = client(url).completions.create(model=MODEL, prompt="ROMEO:", max_tokens=8, seed=0, stream=True,
                                                extra_body={"steps": 400, "stream_steps": True})
        for chunk in stream:
            if chunk.choices and chunk.choices[0].model_extra.get("denoising"):
                break
        stream.close()
        deadline = time.time() + 30
        calls = _model_calls(url)
        while time.time() < deadline:  # the run stops within a step or so of the disconnect
            time.sleep(0.3)
            now = _model_calls(url)
            if now == calls:
                break
            calls = now
        assert 1 <= calls < 400
        # and the server serves the next request
        assert client(url).completions.create(model=MODEL, prompt="x", max_tokens=2, extra_body={"steps": 1}).choices


def test_a_run_past_its_timeout_is_a_408(udlm):
    with running_server(udlm, request_timeout=0.3) as url:
        response = raw(url, "POST", "/v1/completions", {"model": MODEL, "prompt": "ROMEO:", "max_tokens": 8,
                                                         "steps": 2000})
        assert_error(response, 408, code="timeout")
        assert _model_calls(url) < 2000


def test_requests_at_once_each_get_their_own_answer(udlm):
    """Requests that arrive together run one after the other (each whole), every one its seed's answer."""
    from concurrent.futures import ThreadPoolExecutor

    with running_server(udlm) as url:
        def ask(seed: int) -> str:
            return client(url).completions.create(model=MODEL, prompt="ROMEO:", max_tokens=6, seed=seed,
                                                  temperature=1.0, extra_body={"steps": 3}).choices[0].text

        with ThreadPoolExecutor(4) as pool:
            texts = list(pool.map(ask, range(4)))
    assert texts == [text_of(udlm, expected(udlm, "ROMEO:", seed=s, max_tokens=6, steps=3, temperature=1.0)[0])
                     for s in range(4)]


def test_max_batch_splits_a_request_into_runs(udlm):
    """--max-batch 1: a request's choices run one at a time, each still its own seed's answer."""
    with running_server(udlm, max_batch=1) as url:
        answer = client(url).completions.create(model=MODEL, prompt="ROMEO:", max_tokens=6, seed=9, n=3,
                                                temperature=1.0, extra_body={"steps": 2})
        metrics = raw(url, "GET", "/metrics").text
    tokens = expected(udlm, "ROMEO:", seed=9, n=3, max_tokens=6, steps=2, temperature=1.0)
    assert [c.text for c in answer.choices] == [text_of(udlm, t) for t in tokens]
    assert answer.usage.model_extra["model_calls"] == 2 and "difflm_model_calls_total 6.0" in metrics
    assert "difflm_batch_rows_bucket{le=\"1.0\"} 6.0" in metrics  # every model call ran one row


def test_shutdown_ends_a_running_stream_with_an_error_event(udlm):
    url, server, thread = start_server(udlm, shutdown_timeout=0.3)
    stream = client(url).completions.create(model=MODEL, prompt="ROMEO:", max_tokens=8, seed=0, stream=True,
                                            extra_body={"steps": 5000, "stream_steps": True})
    chunks = iter(stream)
    next(chunks)  # the run has started
    stopper = threading.Thread(target=stop_server, args=(server, thread))
    stopper.start()
    with pytest.raises(openai.APIError) as exc:
        for _ in chunks:
            pass
    stopper.join(timeout=30)
    assert "shutting down" in str(exc.value) and not thread.is_alive()


@pytest.mark.parametrize("family", ["udlm", "duo"])
def test_a_published_uniform_layout_is_served(tmp_path, family):
    """kuleshov-group's UDLM / Duo hub layouts (time-conditioned DiTs; Duo ends with one more ancestral step)
    load through the server's own loader and answer what the sampler gives."""
    from transformers import AutoTokenizer

    from difflm.io import tokenizer_dir
    from mdlm_layouts import WRITERS

    path = WRITERS[family](tmp_path / family, vocab_size=8192)
    AutoTokenizer.from_pretrained(tokenizer_dir("bundled")).save_pretrained(path)
    model = load_model(ServerConfig(model=str(path)))
    with running_server(model) as url:
        answer = client(url).completions.create(model=MODEL, prompt="ROMEO:", max_tokens=6, seed=2, temperature=1.0,
                                                extra_body={"steps": 3})
    tokens = expected(model, "ROMEO:", seed=2, max_tokens=6, steps=3, temperature=1.0)[0]
    assert answer.choices[0].text == text_of(model, tokens)
    assert answer.usage.model_extra["model_calls"] == 3 + (family == "duo")


def test_diffusion_gemma_is_served_with_its_saved_generation_config(tmp_path):
    """A tiny DiffusionGemma (transformers' own classes, its generation_config.json): loaded by the server's
    loader, decoded by the renoising sampler under its saved defaults, canvas after canvas."""
    from conftest import tiny_tokenizer
    from diffusion_gemma_layouts import write_diffusion_gemma

    write_diffusion_gemma(tmp_path / "dg")
    tiny_tokenizer().save_pretrained(tmp_path / "dg")
    model = load_model(ServerConfig(model=str(tmp_path / "dg")))
    with running_server(model) as url:
        answer = client(url).completions.create(model=MODEL, prompt="w1 w2 w3", max_tokens=8, seed=4, n=2)
        frames = [c.choices[0].model_extra["denoising"] for c in client(url).completions.create(
            model=MODEL, prompt="w1 w2 w3", max_tokens=8, seed=4, stream=True, extra_body={"stream_steps": True})
            if c.choices and c.choices[0].model_extra.get("denoising")]
        assert raw(url, "GET", "/v1/models").json()["data"][0]["process"] == "uniform"
    ids = model.tokenizer("w1 w2 w3")["input_ids"]
    out = sampling.generate(model, [ids] * 2, max_new_tokens=8, return_dict=True,
                            generator=[torch.Generator().manual_seed(choice_seed(4, i)) for i in range(2)])
    tokens = [row[m].tolist() for row, m in zip(out.sequences, out.generate_mask)]
    assert [c.text for c in answer.choices] == [model.tokenizer.decode(
        t[:next((i for i, x in enumerate(t) if x in (0, 1)), len(t))], skip_special_tokens=True,
        clean_up_tokenization_spaces=False) for t in tokens]
    assert answer.usage.model_extra["model_calls"] == max(out.row_calls)
    assert frames and {f["block"] for f in frames} <= {0, 1} and all(None not in f["canvas"] for f in frames)


def test_models_says_uniform_and_a_saved_uniform_model_loads(udlm, base, tmp_path):
    assert raw(base, "GET", "/v1/models").json()["data"][0]["process"] == "uniform"
    udlm.save_pretrained(tmp_path / "udlm")
    loaded = load_model(ServerConfig(model=str(tmp_path / "udlm")))
    assert loaded.config.extra["process"] == "uniform"
    with pytest.raises(ModelLoadError, match="serves discrete diffusion LMs, masked diffusion or uniform-state"):
        load_model(ServerConfig(model="ar-base"))


# -- the page, in headless Chromium (as tests/test_serve_page.py; skipped where it is missing) ------------------
def _browser():
    import os
    import shutil
    import tempfile

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if not (os.path.exists(chromium) and os.path.exists(driver_path)):
        pytest.skip("needs Debian's chromium and chromium-driver (.ci/run installs them)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (the test extra)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 f"--user-data-dir={tempfile.mkdtemp(prefix='difflm-chromium-')}", "--window-size=1200,1000"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(driver_path))


def test_the_page_draws_the_changes_of_a_uniform_canvas(udlm, base):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = _browser()
    try:
        driver.get(base + "/")
        WebDriverWait(driver, 30).until(lambda d: "uniform-state" in d.find_element(By.ID, "model").text)
        assert not driver.find_element(By.ID, "strategy").is_displayed()  # masked decoding's options are hidden
        for element_id, value in {"prompt": "ROMEO:", "max-tokens": "8", "steps": "6", "seed": "4",
                                  "temperature": "1", "top-p": "1", "delay": "80"}.items():
            element = driver.find_element(By.ID, element_id)
            element.clear()
            element.send_keys(value)
        driver.find_element(By.ID, "generate").click()
        seen = {"changed": 0, "kept": 0, "masked": 0}
        deadline = time.time() + 120
        while driver.find_element(By.ID, "status").get_attribute("data-state") not in ("done", "error"):
            assert time.time() < deadline, "the page did not finish"
            for kind in seen:
                seen[kind] = max(seen[kind], len(driver.find_elements(By.CSS_SELECTOR, f"#cells .cell.{kind}")))
            time.sleep(0.02)
        canvas = driver.find_element(By.ID, "canvas")
        page = {"status": driver.find_element(By.ID, "status").text,
                "error": driver.find_element(By.ID, "error").get_attribute("textContent"),
                "frames": int(canvas.get_attribute("data-frames")), "changed": int(canvas.get_attribute("data-changed")),
                "cells": len(driver.find_elements(By.CSS_SELECTOR, "#cells .cell")),
                "text": driver.find_element(By.ID, "final-text").get_attribute("textContent")}
    finally:
        driver.quit()
    assert page["status"].startswith("done") and not page["error"], page
    assert page["frames"] == 6 and page["cells"] == 8 and page["changed"] >= 1
    # every cell held a token all along; some steps changed some of them and kept others
    assert seen["masked"] == 0 and seen["changed"] >= 1 and seen["kept"] >= 1, seen
    answer = client(base).completions.create(model=MODEL, prompt="ROMEO:", max_tokens=8, seed=4, temperature=1,
                                             top_p=1, extra_body={"steps": 6})
    assert page["text"] == answer.choices[0].text
