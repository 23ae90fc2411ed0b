"""The lm-evaluation-harness adapter, run on custom tasks defined by a local YAML and JSONL (no hub)."""

import json
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

from difflm.evaluation.harness import DiffLMHarnessModel, _batch_size, _device  # noqa: E402
from difflm.evaluation.likelihood import ScoreRequest  # noqa: E402
from evaluation_fixtures import model_dirs  # noqa: E402,F401  (fixture)

ROWS = [
    {"context": "And God said, Let there be", "choices": [" light", " darkness", " water"], "label": 0, "target": " light"},
    {"context": "In the beginning God created the", "choices": [" heaven", " sea"], "label": 0, "target": " heaven"},
]
TASKS = {
    "difflm_toy_choice": "output_type: multiple_choice\ndoc_to_text: \"{{context}}\"\ntarget_delimiter: \"\"\n"
                         "doc_to_choice: \"{{choices}}\"\ndoc_to_target: label\nmetric_list:\n  - metric: acc\n",
    "difflm_toy_gen": "output_type: generate_until\ndoc_to_text: \"{{context}}\"\ndoc_to_target: \"{{target}}\"\n"
                      "generation_kwargs:\n  until: [\"\\n\"]\n  max_gen_toks: 3\nmetric_list:\n  - metric: exact_match\n",
    "difflm_toy_rolling": "output_type: loglikelihood_rolling\ndoc_to_text: \"\"\ndoc_to_target: \"{{context}}\"\n"
                          "metric_list:\n  - metric: bits_per_byte\n",
}


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
    return simple_evaluate(model="difflm", model_args=args, tasks=list(TASKS), device="cpu",
                           task_manager=TaskManager(include_path=str(task_dir), include_defaults=False))  # skip 13k builtin YAMLs


@pytest.mark.parametrize("kind", ["ar", "dlm"])
def test_simple_evaluate_runs_every_request_type(model_dirs, task_dir, kind):  # noqa: F811
    results = evaluate(model_dirs[kind], task_dir, n_samples=2)["results"]
    assert 0.0 <= results["difflm_toy_choice"]["acc,none"] <= 1.0
    assert results["difflm_toy_gen"]["exact_match,none"] in (0.0, 0.5, 1.0)
    assert results["difflm_toy_rolling"]["bits_per_byte,none"] > 0


def test_loglikelihood_is_the_difflm_score(model_dirs):  # noqa: F811
    model = DiffLMHarnessModel(str(model_dirs["dlm"]), n_samples=3, seed=5, device="cpu", batch_size="auto")
    pairs = [(r["context"], r["target"]) for r in ROWS]
    instances = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    scores = model.loglikelihood(instances)
    lm = model.lm
    requests = [ScoreRequest.continuation(lm.bos + lm.encode(c), lm.encode(t)) for c, t in pairs]
    expected = lm.nll(requests)
    assert [s for s, _ in scores] == pytest.approx([-e.nll for e in expected])
    assert all(isinstance(g, bool) for _, g in scores)
    generated = model.generate_until([Instance("generate_until", {}, ("And God", {"until": [" "], "max_gen_toks": 4}), 0)])
    assert len(generated) == 1 and " " not in generated[0]


def test_lm_eval_defaults_are_mapped():
    assert _batch_size("auto", 16) == 16 and _batch_size("4", 16) == 4
    if not torch.cuda.is_available():  # lm-eval's command line asks for cuda:0 by default
        with pytest.warns(UserWarning, match="not available"):
            assert _device("cuda:0") == "cpu"


@pytest.mark.slow
def test_the_command_line(model_dirs, task_dir):  # noqa: F811
    proc = subprocess.run(
        [sys.executable, "-m", "difflm.evaluation.harness", "--model", "difflm", "--model_args",
         f"pretrained={model_dirs['dlm']},n_samples=2", "--tasks", "difflm_toy_choice", "--include_path", str(task_dir),
         "--device", "cpu"], capture_output=True, text=True, timeout=600, env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "difflm_toy_choice" in proc.stdout and "acc" in proc.stdout
