"""`difflm eval`: the table, the JSON report, reproducibility and clear errors."""

import json

import pytest

from difflm.cli import main
from evaluation_fixtures import model_dirs  # noqa: F401  (fixture)

FAST = ["--limit", "3", "--n-samples", "2", "--batch-size", "8", "--no-progress"]


def run_eval(model, tasks, out, *extra):
    return main(["eval", "--model", str(model), "--tasks", tasks, "--output", str(out), *FAST, *extra])


def test_ar_and_dlm_reports(model_dirs, tmp_path, capsys):  # noqa: F811
    for kind in ("ar", "dlm"):
        out = tmp_path / f"{kind}.json"
        assert run_eval(model_dirs[kind], "perplexity,multiple-choice", out, "--seed", "7") == 0
        report = json.loads(out.read_text())
        assert report["model"]["kind"] == kind and report["seed"] == 7
        assert report["settings"]["n_samples"] == 2 and report["settings"]["estimator"] == "count"
        assert set(report["tasks"]) == {"perplexity", "multiple-choice"}
        ppl = report["tasks"]["perplexity"]["metrics"]["nll_per_token"]
        assert ppl["stderr_source"] == ("exact" if kind == "ar" else "monte-carlo")
        assert report["tasks"]["multiple-choice"]["n_examples"] == 3
        assert "versions" in report and report["tasks"]["perplexity"]["protocol"]["primary"] == "nll_per_token"
    table = capsys.readouterr().out
    assert "nll_per_token" in table and "monte-carlo" in table and "report written to" in table


def test_seeded_runs_are_reproducible(model_dirs, tmp_path):  # noqa: F811
    def metrics(name, seed):
        out = tmp_path / name
        assert run_eval(model_dirs["dlm"], "perplexity", out, "--seed", str(seed)) == 0
        return json.loads(out.read_text())["tasks"]["perplexity"]["metrics"]

    assert metrics("a.json", 0) == metrics("b.json", 0)
    assert metrics("c.json", 1) != metrics("a.json", 0)


@pytest.mark.parametrize("args, message", [
    (["--tasks", "perplexity,nope"], "unknown task 'nope'"),
    (["--tasks", "hellaswag"], "needs a local data file"),
    (["--n-samples", "0"], "n_samples must be an integer >= 1"),
    (["--model", "/nonexistent/model"], "no model at /nonexistent/model"),
    (["--threads", "0"], "--threads must be >= 1"),
])
def test_bad_input_is_one_line_and_exit_code_2(model_dirs, tmp_path, capsys, args, message):  # noqa: F811
    argv = ["eval", "--model", str(model_dirs["dlm"]), "--output", str(tmp_path / "r.json"), "--no-progress", *args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("difflm: error:") and message in err and "\n" not in err


def test_malformed_task_file_and_model_without_tokenizer(model_dirs, tmp_path, capsys):  # noqa: F811
    bad = tmp_path / "mc.jsonl"
    bad.write_text('{"context": "a", "choices": ["b", "c"], "label": 0}\n{"context": "a", "choices": ["b"]}\n')
    assert run_eval(model_dirs["ar"], f"multiple-choice={bad}", tmp_path / "r.json") == 2
    assert "mc.jsonl:2: missing field(s) label" in capsys.readouterr().err
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((model_dirs["ar"] / name).read_bytes())
    assert run_eval(bare, "perplexity", tmp_path / "r.json") == 2
    assert "has no tokenizer" in capsys.readouterr().err
