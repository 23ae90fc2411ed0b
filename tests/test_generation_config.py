"""Models carry their decoding settings (issue #33): the "difflm" section of generation_config.json is
saved and loaded with a model, and it is the default of `generate`/`infill` (library and CLI), `difflm eval`
and `difflm serve`; anything the caller gives wins. A bad file is one line."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from difflm import DiffusionLM, ModelLoadError
from difflm.bundled import MODELS
from difflm.cli import main
from difflm.formats import GENERATION_CONFIG, GenerationDefaults, load, read_generation_defaults
from difflm.sampling.options import SamplerOptions, model_options, over_model
from difflm.tasks.formatting import GSM_PROMPT

GSM_QUESTION = "Sara has 9 eggs. She buys 2 baskets with 6 eggs in each. How many eggs does Sara have now?"
DEFAULTS = GenerationDefaults({"strategy": "threshold", "threshold": 0.5, "cache": "block"}, max_new_tokens=12)


@pytest.fixture(scope="module")
def gsm() -> DiffusionLM:
    torch.set_num_threads(1)
    return DiffusionLM.from_pretrained(MODELS["dlm-gsm"]).eval()


@pytest.fixture()
def saved(gsm, tmp_path):
    """dlm-gsm saved with ``DEFAULTS`` (restored afterwards on the shared model)."""
    before = gsm.generation_defaults
    gsm.generation_defaults = DEFAULTS
    try:
        gsm.save_pretrained(tmp_path / "model")
    finally:
        gsm.generation_defaults = before
    return tmp_path / "model"


def test_the_bundled_task_models_carry_their_decoding_settings():
    gsm = read_generation_defaults(MODELS["dlm-gsm"])
    assert gsm.max_new_tokens == 118 and gsm.options == {"strategy": "threshold", "threshold": 0.99, "cache": "block",
                                                          "stop_at_eos": True}
    sudoku = read_generation_defaults(MODELS["dlm-sudoku"])
    assert sudoku.max_new_tokens == 90 and sudoku.options == {"strategy": "topk_margin"}
    for name in ("dlm-scratch", "dlm-adapted", "dlm-block"):  # bench/RESULTS.md recommends nothing for open text
        assert read_generation_defaults(MODELS[name]) is None


def test_save_and_load_round_trip(saved):
    data = json.loads((saved / GENERATION_CONFIG).read_text())
    assert data["difflm"] == {"max_new_tokens": 12, "strategy": "threshold", "threshold": 0.5, "cache": "block"}
    for model in (DiffusionLM.from_pretrained(saved), load(saved).model):
        assert model.generation_defaults.options == DEFAULTS.options
        assert model.generation_defaults.max_new_tokens == 12
        assert model_options(model) == SamplerOptions(strategy="threshold", threshold=0.5, cache="block")
    again = DiffusionLM.from_pretrained(saved)
    again.save_pretrained(saved.parent / "again")  # what was read is written again
    assert json.loads((saved.parent / "again" / GENERATION_CONFIG).read_text())["difflm"] == data["difflm"]


def test_a_model_without_settings_has_none(tmp_path):
    shutil.copytree(MODELS["dlm-gsm"], tmp_path / "m")
    (tmp_path / "m" / GENERATION_CONFIG).write_text(json.dumps({"bos_token_id": 0}))  # transformers' own file
    model = DiffusionLM.from_pretrained(tmp_path / "m")
    assert model.generation_defaults is None and model_options(model) is None


def test_generate_uses_the_model_defaults_and_an_argument_overrides_them(gsm):
    ids = gsm.tokenizer("Q: 2 + 3?\nA:")["input_ids"]
    before = gsm.generation_defaults
    try:
        gsm.generation_defaults = DEFAULTS
        out = gsm.generate(ids, return_dict=True)  # the model's length and threshold decoding
        assert out.sequences.shape[1] == len(ids) + 12 and out.steps < 12
        plain = gsm.generate(ids, max_new_tokens=8, strategy="low_confidence", cache="none", return_dict=True)
        assert plain.sequences.shape[1] == len(ids) + 8 and plain.steps == 8  # one token per call
        explicit = gsm.generate(ids, max_new_tokens=8, options=SamplerOptions(), return_dict=True)
        assert explicit.steps == 8  # an explicit options object replaces the model's whole
        gsm.generation_defaults = None
        with pytest.raises(Exception, match="max_new_tokens is required"):
            gsm.generate(ids)
    finally:
        gsm.generation_defaults = before


def test_a_strategy_given_drops_the_defaults_threshold():
    base = SamplerOptions(strategy="threshold", threshold=0.99, cache="block")
    assert over_model(base, strategy="entropy") == SamplerOptions(strategy="entropy", cache="block")
    assert over_model(base, threshold=0.5).threshold == 0.5


@pytest.mark.parametrize("text, says", [
    ("{not json", "is not valid JSON"),
    ('["a list"]', "must hold a JSON object"),
    ('{"difflm": 3}', '"difflm" must be an object'),
    ('{"difflm": {"max_new_tokens": 0}}', "max_new_tokens must be an integer >= 1"),
])
def test_a_malformed_file_is_refused_in_one_line(tmp_path, text, says):
    shutil.copytree(MODELS["dlm-gsm"], tmp_path / "m")
    (tmp_path / "m" / GENERATION_CONFIG).write_text(text)
    with pytest.raises(ModelLoadError, match=says) as info:
        load(tmp_path / "m")
    assert "\n" not in str(info.value) and GENERATION_CONFIG in str(info.value)


@pytest.mark.parametrize("section, says", [
    ('{"strategy": "threshold", "chache": "block"}', "chache"),
    ('{"temperature": "hot"}', "temperature must be a number, got 'hot'"),  # a value of the wrong type
    ('{"steps": true}', "steps must be an integer or null, got True"),
])
def test_a_bad_option_is_one_line_from_the_cli(tmp_path, capsys, section, says):
    shutil.copytree(MODELS["dlm-gsm"], tmp_path / "m")
    (tmp_path / "m" / GENERATION_CONFIG).write_text('{"difflm": %s}' % section)
    assert main(["generate", "--model", str(tmp_path / "m"), "hi", "--length", "4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and GENERATION_CONFIG in err and says in err, err


def _gsm_json(capsys, *flags: str) -> dict:
    assert main(["generate", "--model", "dlm-gsm", GSM_QUESTION, "--json", *flags]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""  # --json: no line on stderr
    return json.loads(captured.out)


def test_bundled_dlm_gsm_decodes_several_tokens_per_call_by_default(capsys):
    out = _gsm_json(capsys)
    assert out["tokens_per_call"] > 3 and out["text"].strip().endswith("#### 21")
    assert out["options"]["strategy"] == "threshold" and out["options"]["cache"] == "block"
    flags = _gsm_json(capsys, "--strategy", "low_confidence", "--cache", "none", "--no-stop-at-eos", "--length", "40")
    assert flags["tokens_per_call"] <= 1.1 and len(flags["new_tokens"]) == 40
    assert (flags["options"]["strategy"], flags["options"]["threshold"], flags["options"]["cache"]) == \
        ("low_confidence", None, "none")


def test_generate_says_which_model_defaults_it_used(capsys):
    assert main(["generate", "--model", "dlm-gsm", GSM_QUESTION, "--threshold", "0.9"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("difflm: decoding defaults of dlm-gsm")
    assert "length=118" in err[0] and "cache=block" in err[0] and "0.99" not in err[0]


def test_eval_uses_the_model_defaults_and_a_setting_overrides_them(saved):
    from difflm.evaluation import EvalSettings, load_eval_lm

    lm = load_eval_lm(saved, EvalSettings(progress=False))
    assert lm.sampler_options == SamplerOptions(strategy="threshold", threshold=0.5, cache="block")
    assert lm.max_new_tokens == 12 and lm.describe()["generation_defaults"]["max_new_tokens"] == 12
    # the report records every effective decoding option, whichever layer set it
    decoding = json.loads(json.dumps(lm.describe()["decoding"]))
    assert decoding["strategy"] == "threshold" and decoding["threshold"] == 0.5 and decoding["cache"] == "block"
    assert decoding["max_new_tokens"] == 12 and decoding["temperature"] == SamplerOptions().temperature
    lm = load_eval_lm(saved, EvalSettings(strategy="low_confidence", cache="none", max_new_tokens=5, progress=False))
    assert lm.sampler_options == SamplerOptions() and lm.max_new_tokens == 5
    assert lm.describe()["decoding"]["strategy"] == "low_confidence" and lm.describe()["decoding"]["max_new_tokens"] == 5
    plain = load_eval_lm(MODELS["dlm-scratch"], EvalSettings(progress=False))
    assert plain.sampler_options == SamplerOptions() and plain.max_new_tokens == 256


def test_the_eval_command_line_leaves_the_decoding_flags_to_the_model():
    from difflm.cli import _parse, build_parser

    args = _parse(build_parser(), ["eval", "--model", "dlm-gsm"])
    assert (args.strategy, args.cache, args.stop_at_eos, args.max_new_tokens) == (None, None, None, None)


def test_serve_requests_override_the_model_defaults():
    pytest.importorskip("fastapi")
    from difflm.serve.prompts import sampler_options
    from difflm.serve.protocol import CompletionRequest

    base = SamplerOptions(strategy="threshold", threshold=0.99, cache="block", stop_at_eos=True)
    plain = CompletionRequest(model="m", prompt="hi")
    assert sampler_options(plain, base) == base
    given = CompletionRequest(model="m", prompt="hi", strategy="entropy", cache="none")
    assert sampler_options(given, base) == SamplerOptions(strategy="entropy", cache="none", stop_at_eos=True)


def test_serve_uses_the_model_length_unless_a_request_gives_one(gsm):
    pytest.importorskip("fastapi")
    from serve_fixtures import client, running_server

    before = gsm.generation_defaults
    gsm.generation_defaults = GenerationDefaults({"strategy": "threshold", "threshold": 0.5}, max_new_tokens=6)
    try:
        prompt = GSM_PROMPT.format(question=GSM_QUESTION)  # the worked answer is 43 tokens: no early EOS
        with running_server(gsm) as url:
            api = client(url)
            assert api.completions.create(model="dlm-adapted", prompt=prompt).usage.completion_tokens == 6
            given = api.completions.create(model="dlm-adapted", prompt=prompt, max_tokens=3)
            assert given.usage.completion_tokens == 3
    finally:
        gsm.generation_defaults = before
