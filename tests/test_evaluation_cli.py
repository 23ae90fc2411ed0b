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


def test_a_plain_llama_is_scored_as_diffullama_only_when_told(model_dirs, tmp_path, capsys):  # noqa: F811
    # A tiny LLaMA written by save_pretrained is exactly DiffuLLaMA's published layout: nothing in the
    # files says "diffusion". Detection must score it as AR, and --format diffullama as a DLM (ELBO).
    reports, lines = {}, {}
    for name, extra in (("detected", ()), ("given", ("--format", "diffullama"))):
        out = tmp_path / f"{name}.json"
        assert run_eval(model_dirs["ar"], "perplexity,multiple-choice", out, *extra) == 0
        reports[name] = json.loads(out.read_text())
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("difflm: model ")]
        assert len(err) == 1, err  # one line says what was chosen
        lines[name] = err[0]
    assert "layout causal-lm (detected:" in lines["detected"] and "scored by the exact AR NLL" in lines["detected"]
    assert "pass --format diffullama" in lines["detected"]
    assert "layout diffullama (given by --format)" in lines["given"]
    assert "scored by the ELBO (Monte Carlo, 2 samples" in lines["given"]

    ar, dlm = reports["detected"], reports["given"]
    assert (ar["model"]["kind"], ar["model"]["layout"]) == ("ar", "causal-lm")
    assert (dlm["model"]["kind"], dlm["model"]["layout"], dlm["model"]["layout_given"]) == ("dlm", "diffullama", True)
    assert dlm["model"]["diffusion_config"]["family"] == "diffullama"
    assert dlm["model"]["diffusion_config"]["shift"] and dlm["model"]["diffusion_config"]["attention"] == "bidirectional"
    for task, metric in (("perplexity", "nll_per_token"), ("multiple-choice", "acc")):
        assert ar["tasks"][task]["metrics"][metric]["stderr_source"] == ("exact" if task == "perplexity" else "examples")
    ppl_ar, ppl_dlm = ar["tasks"]["perplexity"]["metrics"]["nll_per_token"], dlm["tasks"]["perplexity"]["metrics"]["nll_per_token"]
    assert ppl_ar["stderr"] == 0
    assert ppl_dlm["stderr_source"] == "monte-carlo" and ppl_dlm["stderr"] > 0  # an ELBO estimate, with its error
    assert ppl_dlm["value"] != ppl_ar["value"]
    option_errors = [e for s in dlm["tasks"]["multiple-choice"]["samples"] for e in s["stderr"]]
    assert any(e > 0 for e in option_errors) and all(e == 0 for s in ar["tasks"]["multiple-choice"]["samples"]
                                                      for e in s["stderr"])


def test_a_layout_a_stock_class_cannot_load_is_not_forced_to_ar(model_dirs, tmp_path, capsys):  # noqa: F811
    from published_layouts import write_diffugpt

    write_diffugpt(tmp_path / "diffugpt")  # wrapper key names: a stock GPT-2 would silently start from random weights
    assert run_eval(tmp_path / "diffugpt", "perplexity", tmp_path / "r.json", "--format", "causal-lm") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("difflm: error:") and "in the diffugpt layout" in err and "\n" not in err
    # a difflm directory stores stock weights: scoring it as AR is the caller's choice, and works
    assert run_eval(model_dirs["dlm"], "perplexity", tmp_path / "r.json", "--format", "causal-lm") == 0
    assert json.loads((tmp_path / "r.json").read_text())["model"]["kind"] == "ar"
    assert "layout causal-lm (given by --format), scored by the exact AR NLL" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--tasks", "perplexity,nope"], "unknown task 'nope'"),
    (["--tasks", "hellaswag"], "needs a local data file"),
    (["--n-samples", "0"], "argument --n-samples: must be an integer >= 1, got 0"),
    (["--model", "/nonexistent/model"], "no model at /nonexistent/model"),
    (["--threads", "0"], "argument --threads: must be an integer >= 1, got 0"),
    (["--format", "diffulama"], "unknown format 'diffulama'; choose one of difflm, diffugpt, llada, dream, sdar, diffullama, llada2, mdlm, diffusion-gemma, causal-lm"),
    (["--format", "llada"], "is not in the LLaDA layout"),  # a layout the checkpoint is not in
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
