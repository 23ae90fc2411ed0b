"""`difflm eval` with the sampler's parallel decoding: --threshold, --cache and --stop-at-eos reach the
sampler, are recorded in the report, and bad values fail before the model loads."""

import json

import pytest
import torch

from difflm import rng, sampling
from difflm.cli import main
from difflm.evaluation import DiffusionEvalLM, EvalSettings, load_eval_lm
from difflm.sampling import SamplerOptions
from evaluation_fixtures import model_dirs  # noqa: F401  (fixture)

QUESTIONS = ["What is 2 plus 3?", "Tom has 4 apples and eats 1. How many are left?"]
NEW = 8


def gsm_file(tmp_path):
    path = tmp_path / "gsm.jsonl"
    path.write_text("".join(json.dumps({"question": q, "answer": f"... #### {i}"}) + "\n" for i, q in enumerate(QUESTIONS)))
    return path


def spy_on_generate(monkeypatch):
    """The options of every `difflm.sampling.generate` call (what the eval LM hands the sampler)."""
    seen, real = [], sampling.generate

    def call(*args, **kwargs):
        seen.append(kwargs["options"])
        return real(*args, **kwargs)

    monkeypatch.setattr(sampling, "generate", call)
    return seen


def test_threshold_and_dual_cache_reach_the_sampler(model_dirs, tmp_path, monkeypatch):  # noqa: F811
    seen = spy_on_generate(monkeypatch)
    out = tmp_path / "r.json"
    argv = ["eval", "--model", str(model_dirs["dlm"]), "--tasks", f"gsm8k={gsm_file(tmp_path)}", "--output", str(out),
            "--no-progress", "--batch-size", "1", "--max-new-tokens", str(NEW), "--seed", "3",
            "--strategy", "threshold", "--threshold", "0.5", "--block-length", "4", "--cache", "dual"]
    assert main(argv) == 0
    options = SamplerOptions(strategy="threshold", threshold=0.5, block_length=4, cache="dual")
    assert seen == [options] * len(QUESTIONS)
    report = json.loads(out.read_text())
    settings = report["settings"]
    assert (settings["strategy"], settings["threshold"], settings["block_length"], settings["cache"],
            settings["stop_at_eos"]) == ("threshold", 0.5, 4, "dual", None)  # None: the model's (it has none: off)
    # the same text as difflm.sampling.generate called directly with those options on the same prompt
    monkeypatch.undo()  # the spy off: the real sampler
    lm = load_eval_lm(model_dirs["dlm"], EvalSettings(progress=False))  # default settings: no options carried
    expected, plain = [], []
    for q in QUESTIONS:
        prompt = lm.bos + lm.encode(f"Question: {q}\nAnswer:")
        ids = [sampling.generate(lm.model, prompt, max_new_tokens=NEW, options=opts, generator=rng.seeded_generator(3),
                                 return_dict=True).new_tokens[0] for opts in (options, SamplerOptions())]
        expected.append(lm.decode(ids[0]))
        plain.append(lm.decode(ids[1]))
    generations = [s["generation"] for s in report["tasks"]["gsm8k"]["samples"]]
    assert generations == [g.split("\nQuestion:")[0][:200] for g in expected]
    assert expected != plain  # the options change the text: the check above is not vacuous
    # the cost of generation: every answer token over the model calls of its row (8 tokens, 8 calls each)
    assert report["model"]["generation"] == {"sequences": 2, "tokens": 2 * NEW, "model_calls": 2 * NEW,
                                             "tokens_per_call": 1.0}
    assert report["tasks"]["gsm8k"]["generation"] == report["model"]["generation"]  # the one task that generated


def test_parallel_decoding_shows_in_tokens_per_call(model_dirs):  # noqa: F811
    # a threshold below every confidence commits a whole block per call: 2 blocks of 4 -> 2 calls
    lm = load_eval_lm(model_dirs["dlm"], EvalSettings(strategy="threshold", threshold=1e-6, block_length=4,
                                                      batch_size=2, progress=False))
    prompts = [lm.bos + lm.encode("And God said"), lm.bos + lm.encode("To be")]
    answers = lm.generate(prompts, NEW)
    assert [len(a) for a in answers] == [NEW, NEW]
    assert lm.generation_stats.to_dict() == {"sequences": 2, "tokens": 2 * NEW, "model_calls": 2, "tokens_per_call": 4.0}
    assert lm.describe()["generation"]["tokens_per_call"] == 4.0


def test_each_generating_task_reports_its_own_tokens_per_call(model_dirs, tmp_path):  # noqa: F811
    """Two generating tasks and a likelihood task in one run: each generating task reports its own cost,
    the model's is their sum, and the likelihood task reports none."""
    from difflm.evaluation import parse_tasks, run_evaluation
    from difflm.tasks import make_examples, write_jsonl

    lm = load_eval_lm(model_dirs["dlm"], EvalSettings(strategy="threshold", threshold=1e-6, block_length=4,
                                                      max_new_tokens=NEW, batch_size=1, progress=False))
    countdown = write_jsonl(make_examples("countdown", 3, seed=0, split="test"), tmp_path / "countdown.jsonl")
    report = run_evaluation(lm, parse_tasks(f"gsm8k={gsm_file(tmp_path)},countdown={countdown},perplexity"))
    gsm, cd, total = (report["tasks"]["gsm8k"]["generation"], report["tasks"]["countdown"]["generation"],
                      report["model"]["generation"])
    assert (gsm["sequences"], cd["sequences"]) == (len(QUESTIONS), 3)
    assert {k: gsm[k] + cd[k] for k in ("sequences", "tokens", "model_calls")} == {
        k: total[k] for k in ("sequences", "tokens", "model_calls")}
    assert gsm["tokens_per_call"] == 4.0  # a whole block of 4 per call (threshold below every confidence)
    assert "generation" not in report["tasks"]["perplexity"]


def pad_first_model(model):
    """``model`` with an output layer that predicts pad (a stop token, as SFT answers end) everywhere."""
    head = model.model.lm_head
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():
        biased.weight.zero_()
        biased.bias.zero_()
        biased.bias[model.config.pad_token_id] = 10.0
    model.model.lm_head = biased
    return model


def test_stop_at_eos_stops_rows_and_cuts_their_answers(model_dirs):  # noqa: F811
    base = load_eval_lm(model_dirs["dlm"], EvalSettings(progress=False))
    model, tokenizer = pad_first_model(base.model), base.tokenizer
    prompt = base.bos + base.encode("Question: what?\nAnswer:")
    runs = {}
    for stop in (False, True):
        lm = DiffusionEvalLM(model, tokenizer, EvalSettings(block_length=4, stop_at_eos=stop, progress=False))
        assert lm.sampler_options.stop_at_eos is stop and lm.infill_options.stop_at_eos is False
        runs[stop] = (lm.generate([prompt], NEW), lm.generation_stats.to_dict())
    pad = model.config.pad_token_id
    # without: every position decoded (pad is not the tokenizer's EOS, so nothing cuts the answer);
    # with: the row stops after its first block and the answer ends before the first stop token
    assert runs[False] == ([[pad] * NEW], {"sequences": 1, "tokens": NEW, "model_calls": NEW, "tokens_per_call": 1.0})
    assert runs[True] == ([[]], {"sequences": 1, "tokens": 0, "model_calls": 4, "tokens_per_call": 0.0})
    direct = sampling.generate(model, prompt, max_new_tokens=NEW, block_length=4, stop_at_eos=True,
                               generator=rng.seeded_generator(0), return_dict=True)
    assert direct.new_tokens == runs[True][0] and direct.steps == 4


def test_stop_at_eos_flag_is_passed_and_recorded(model_dirs, tmp_path, monkeypatch):  # noqa: F811
    seen = spy_on_generate(monkeypatch)
    out = tmp_path / "r.json"
    argv = ["eval", "--model", str(model_dirs["dlm"]), "--tasks", f"gsm8k={gsm_file(tmp_path)}", "--output", str(out),
            "--no-progress", "--limit", "1", "--max-new-tokens", str(NEW), "--block-length", "4", "--stop-at-eos"]
    assert main(argv) == 0
    assert seen == [SamplerOptions(block_length=4, stop_at_eos=True)]
    assert json.loads(out.read_text())["settings"]["stop_at_eos"] is True


@pytest.mark.parametrize("args, message", [
    (["--strategy", "threshold", "--threshold", "1.5"], "argument --threshold: must be a number in (0, 1], got 1.5"),
    (["--strategy", "threshold", "--threshold", "0"], "argument --threshold: must be a number in (0, 1], got 0.0"),
    (["--threshold", "0.5"], "threshold applies to strategy 'threshold' only, not 'low_confidence'"),
    (["--cache", "bogus"], "argument --cache: invalid choice: 'bogus'"),
    (["--strategy", "nope"], "unknown strategy 'nope'; choose one of"),
    (["--threshold", "high"], "argument --threshold: invalid float value: 'high'"),
])
def test_bad_decoding_values_fail_before_the_model_loads(tmp_path, capsys, args, message):
    # a directory that holds no model (loading it would fail): the decoding error must come first
    argv = ["eval", "--model", str(tmp_path), "--output", str(tmp_path / "r.json"), "--no-progress", *args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("difflm: error:") and message in err and "\n" not in err, err
    assert not (tmp_path / "r.json").exists()
