"""The lm-evaluation-harness adapter, run on custom tasks defined by a local YAML and JSONL (no hub):
lm-eval's numbers must be difflm's own numbers for the same data, settings and seed."""

import json
import math
import os
import subprocess
import sys
import tempfile

import pytest
import torch

# datasets reads these when it is imported: no network, and a throwaway cache.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="difflm-test-datasets-"))

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402

from difflm.evaluation import EvalSettings, build_task, load_eval_lm, run_evaluation  # noqa: E402
from difflm.evaluation.harness import (  # noqa: E402
    DiffLMHarnessModel, _batch_size, _device, request_key, stable_key, window_key,
)
from difflm.evaluation.likelihood import ScoreRequest, ar_nll, elbo_nll  # noqa: E402
from difflm.evaluation.task_base import fit_context  # noqa: E402
from difflm.evaluation.text_tasks import window_requests  # noqa: E402
from evaluation_fixtures import model_dirs  # noqa: E402,F401  (fixture)

# Multi-token options: a DLM's estimate of one depends on its random draws (one target would be exact).
ROWS = [
    {"context": "And God said, Let there be",
     "choices": [" light: and there was light.", " darkness upon the face of the deep.", " water under the heaven."],
     "label": 0, "target": " light"},
    {"context": "In the beginning God created the", "choices": [" heaven and the earth.", " sea and all that in them is."],
     "label": 0, "target": " heaven"},
]
TASKS = {
    "difflm_toy_choice": "output_type: multiple_choice\ndoc_to_text: \"{{context}}\"\ntarget_delimiter: \"\"\n"
                         "doc_to_choice: \"{{choices}}\"\ndoc_to_target: label\nmetric_list:\n  - metric: acc\n",
    "difflm_toy_gen": "output_type: generate_until\ndoc_to_text: \"{{context}}\"\ndoc_to_target: \"{{target}}\"\n"
                      "generation_kwargs:\n  until: [\"\\n\"]\n  max_gen_toks: 3\nmetric_list:\n  - metric: exact_match\n",
    "difflm_toy_rolling": "output_type: loglikelihood_rolling\ndoc_to_text: \"\"\ndoc_to_target: \"{{context}}\"\n"
                          "metric_list:\n  - metric: bits_per_byte\n",
}
N_SAMPLES, SEED = 3, 5


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm-eval-tasks")
    data = root / "toy.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    for name, body in TASKS.items():
        header = f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
        (root / f"{name}.yaml").write_text(header + body)
    return root


def evaluate(model_dir, task_dir, **model_args):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    args = ",".join(f"{k}={v}" for k, v in {"pretrained": model_dir, **model_args}.items())
    return simple_evaluate(model="difflm", model_args=args, tasks=list(TASKS), device="cpu", log_samples=True,
                           task_manager=TaskManager(include_path=str(task_dir), include_defaults=False))  # skip 13k builtin YAMLs


def continuation_requests(lm, pairs):
    return [ScoreRequest.continuation(fit_context(lm, lm.bos + lm.encode(c), len(lm.encode(t))), lm.encode(t))
            for c, t in pairs]


# (model directory, model arguments, how difflm must score it)
CASES = {
    "ar": ("ar", {}, "ar"),
    "dlm": ("dlm", {}, "dlm"),
    "diffullama": ("ar", {"format": "diffullama"}, "dlm"),  # a plain LLaMA directory, declared DiffuLLaMA
}


@pytest.mark.parametrize("case", list(CASES))
def test_lm_eval_reports_difflm_numbers(model_dirs, task_dir, tmp_path, capsys, case):  # noqa: F811
    directory, model_args, kind = CASES[case]
    out = evaluate(model_dirs[directory], task_dir, n_samples=N_SAMPLES, seed=SEED, **model_args)
    results, samples = out["results"], out["samples"]
    err = capsys.readouterr().err
    layout = "layout diffullama (given by format)" if case == "diffullama" else "layout "
    scoring = "scored by the exact AR NLL" if kind == "ar" else f"scored by the ELBO (Monte Carlo, {N_SAMPLES} samples"
    assert any(layout in line and scoring in line for line in err.splitlines()), err[-2000:]

    # difflm's own scorer, loaded the way the command line would load it
    lm = load_eval_lm(model_dirs[directory], EvalSettings(n_samples=N_SAMPLES, seed=SEED, progress=False),
                      format=model_args.get("format"))
    assert lm.kind == kind

    def nll(requests, keys):
        if kind == "ar":
            return [e.nll for e in ar_nll(lm.model, requests, pad_token_id=lm.pad_token_id, progress=False)]
        return [e.nll for e in elbo_nll(lm.model, requests, n_samples=N_SAMPLES, seed=SEED, keys=keys, progress=False)]

    # multiple choice: every option's log-likelihood, and the accuracy they imply
    correct = []
    for sample in samples["difflm_toy_choice"]:
        requests = continuation_requests(lm, sample["arguments"])
        key = stable_key("doc", "difflm_toy_choice", sample["doc_id"])  # the options of a document share draws
        expected = [-v for v in nll(requests, [key] * len(requests))]
        got = [ll for ll, _ in sample["filtered_resps"]]
        assert got == pytest.approx(expected, rel=1e-5, abs=1e-5)
        correct.append(max(range(len(got)), key=expected.__getitem__) == sample["target"])
    assert results["difflm_toy_choice"]["acc,none"] == pytest.approx(sum(correct) / len(correct))

    # rolling log-likelihood: the perplexity protocol's windows
    lls, nbytes = [], 0
    for sample in samples["difflm_toy_rolling"]:
        (text,) = sample["arguments"][0]
        windows = window_requests(lm, lm.encode(text))
        expected = -sum(nll(windows, [window_key(w) for w in windows]))
        assert sample["filtered_resps"][0] == pytest.approx(expected, rel=1e-5)
        lls.append(expected)
        nbytes += len(text.encode("utf-8"))
    bpb = -sum(lls) / nbytes / math.log(2)
    assert results["difflm_toy_rolling"]["bits_per_byte,none"] == pytest.approx(bpb, rel=1e-5)

    # generation: difflm's greedy decoding of the same prompt, cut at the stop string
    matches = []
    for sample in samples["difflm_toy_gen"]:
        context, kwargs = sample["arguments"][0]
        prompt = fit_context(lm, lm.bos + lm.encode(context), kwargs["max_gen_toks"])
        (ids,) = lm.generate([prompt], kwargs["max_gen_toks"])
        text = lm.decode(ids).split("\n")[0]
        assert sample["filtered_resps"][0] == text
        matches.append(text == sample["target"])
    assert results["difflm_toy_gen"]["exact_match,none"] == pytest.approx(sum(matches) / len(matches))

    if kind == "ar":  # exact scores: `difflm eval`'s own tasks on the same data give the same numbers
        choice = tmp_path / "choice.jsonl"
        choice.write_text("".join(json.dumps({k: r[k] for k in ("context", "choices", "label")}) + "\n" for r in ROWS))
        texts = tmp_path / "texts.jsonl"
        texts.write_text("".join(json.dumps({"text": r["context"]}) + "\n" for r in ROWS))
        report = run_evaluation(lm, [build_task("multiple-choice", choice), build_task("perplexity", texts)])
        ours = {name: task["metrics"] for name, task in report["tasks"].items()}
        assert ours["multiple-choice=choice.jsonl"]["acc"]["value"] == results["difflm_toy_choice"]["acc,none"]
        assert ours["perplexity=texts.jsonl"]["bits_per_byte"]["value"] == pytest.approx(
            results["difflm_toy_rolling"]["bits_per_byte,none"], rel=1e-5)


def test_a_dlm_score_does_not_depend_on_the_other_requests(model_dirs):  # noqa: F811
    # lm-eval orders and batches requests as it likes; a request's estimate must not change with that.
    model = DiffLMHarnessModel(str(model_dirs["dlm"]), n_samples=2, seed=SEED, device="cpu", batch_size="auto")
    pairs = [(r["context"], c) for r in ROWS for c in r["choices"]]
    first = model.loglikelihood([Instance("loglikelihood", {}, p, n, ("t", n, 1)) for n, p in enumerate(pairs)])
    order = list(reversed(range(len(pairs))))
    second = model.loglikelihood([Instance("loglikelihood", {}, pairs[n], i, ("t", n, 1)) for i, n in enumerate(order)])
    assert [second[order.index(n)][0] for n in range(len(pairs))] == pytest.approx([ll for ll, _ in first], rel=1e-6)
    alone = model.loglikelihood([Instance("loglikelihood", {}, pairs[2], 0, ("t", 2, 1))])
    assert alone[0][0] == pytest.approx(first[2][0], rel=1e-6)
    # rolling windows likewise
    texts = [r["context"] for r in ROWS]
    rolled = model.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate(texts)])
    back = model.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate(texts[::-1])])
    assert back[::-1] == pytest.approx(rolled, rel=1e-6)


def test_loglikelihood_is_the_difflm_score(model_dirs):  # noqa: F811
    model = DiffLMHarnessModel(str(model_dirs["dlm"]), n_samples=3, seed=5, device="cpu", batch_size="auto")
    pairs = [(r["context"], r["choices"][1]) for r in ROWS]
    instances = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]  # no doc id: keyed by context
    scores = model.loglikelihood(instances)
    lm = model.lm
    requests = [ScoreRequest.continuation(lm.bos + lm.encode(c), lm.encode(t)) for c, t in pairs]
    expected = lm.nll(requests, [request_key(i, r) for i, r in zip(instances, requests)])
    assert [s for s, _ in scores] == pytest.approx([-e.nll for e in expected])
    assert [g for _, g in scores] == lm.greedy_matches(requests)
    generated = model.generate_until([Instance("generate_until", {}, ("And God", {"until": [" "], "max_gen_toks": 4}), 0)])
    assert len(generated) == 1 and " " not in generated[0]


def test_parallel_decoding_options_reach_generation(model_dirs):  # noqa: F811
    """threshold / cache / stop_at_eos in --model_args decode exactly as `difflm eval` with those flags."""
    options = dict(strategy="threshold", threshold=0.5, cache="dual", block_length=4, stop_at_eos=True)
    model = DiffLMHarnessModel(str(model_dirs["dlm"]), seed=SEED, device="cpu", **options)
    settings = model.lm.settings
    assert (settings.strategy, settings.threshold, settings.cache, settings.stop_at_eos) == ("threshold", 0.5, "dual", True)
    request = Instance("generate_until", {}, ("And God said", {"until": [], "max_gen_toks": 8}), 0)
    (text,) = model.generate_until([request])
    lm = load_eval_lm(model_dirs["dlm"], EvalSettings(seed=SEED, progress=False, **options))
    (ids,) = lm.generate([fit_context(lm, lm.bos + lm.encode("And God said"), 8)], 8)
    assert text == lm.decode(ids)
    assert model.lm.generation_stats.to_dict() == lm.generation_stats.to_dict()  # the same model calls too
    plain = DiffLMHarnessModel(str(model_dirs["dlm"]), seed=SEED, device="cpu", block_length=4)
    plain.generate_until([request])
    assert plain.lm.generation_stats.model_calls == 8  # one token per call without the options
    assert model.lm.generation_stats.model_calls <= 8


def test_lm_eval_defaults_are_mapped():
    assert _batch_size("auto", 16) == 16 and _batch_size("4", 16) == 4
    if not torch.cuda.is_available():  # lm-eval's command line asks for cuda:0 by default
        with pytest.warns(UserWarning, match="not available"):
            assert _device("cuda:0") == "cpu"


def test_a_bad_format_argument_is_a_clear_error(model_dirs):  # noqa: F811
    from difflm.errors import DiffLMError

    with pytest.raises(DiffLMError, match="unknown format 'diffulama'; choose one of .*diffullama"):
        DiffLMHarnessModel(str(model_dirs["ar"]), format="diffulama", device="cpu")


@pytest.mark.slow
def test_the_command_line(model_dirs, task_dir):  # noqa: F811
    proc = subprocess.run(
        [sys.executable, "-m", "difflm.evaluation.harness", "--model", "difflm", "--model_args",
         f"pretrained={model_dirs['dlm']},n_samples=2", "--tasks", "difflm_toy_choice", "--include_path", str(task_dir),
         "--device", "cpu"], capture_output=True, text=True, timeout=600, env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "difflm_toy_choice" in proc.stdout and "acc" in proc.stdout


def test_speculative_reaches_generation_through_model_args(tmp_path):
    """speculative=true in --model_args: a block model with a causal view answers with its AR head's own
    greedy decoding (difflm.sampling.speculative), as `difflm eval --speculative` does."""
    from conftest import tiny_dlm, tiny_tokenizer

    from difflm.sampling.speculative import ar_greedy

    dlm = tiny_dlm("llama", attention="block_causal", block_size=4, block_context="causal")
    dlm.tokenizer = tiny_tokenizer()
    dlm.save_pretrained(tmp_path / "m")
    model = DiffLMHarnessModel(str(tmp_path / "m"), device="cpu", speculative=True)
    assert model.lm.sampler_options.speculative
    prompt = model.lm.bos + model.lm.encode("w5 w9 w17")
    (ids,) = model.lm.generate([prompt], 6)
    expected = ar_greedy(model.lm.model, prompt, 6).tokens
    assert ids == expected[:len(ids)] and len(ids) >= 1
