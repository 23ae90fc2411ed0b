"""`difflm experiment ablations`: the arms differ exactly where the paper's ablation says and share
everything else; every job is a valid `difflm train` config; a finished job is never rerun and a
stopped experiment continues where it stopped; bad options fail in one line."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from difflm.cli import main
from difflm.errors import InputError
from difflm.experiments.ablations import _check_settings, run_ablations
from difflm.experiments.plan import ARMS, FULL, QUICK, Job, plan_jobs
from difflm.experiments.runner import JobFailed, run_jobs
from difflm.experiments.report import ARM_HEADER, arm_rows, markdown_table, size_rows
from difflm.training.config import TrainConfig

ARCH = {"model_type": "llama", "hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 6,
        "num_attention_heads": 4, "num_key_value_heads": 4, "max_position_embeddings": 256}


def _plan(tmp_path: Path, budget=FULL, **kw):
    return {j.name: j for j in plan_jobs(budget, tmp_path, base_dir=tmp_path / "base", base_architecture=ARCH,
                                         sft_block=136, max_new_tokens=70, **kw)}


def test_arms_differ_only_where_the_ablation_says(tmp_path):
    jobs = _plan(tmp_path)
    a = {arm: jobs[f"base/{arm}/seed0/stage_a"].config for arm in ARMS}
    s = {arm: jobs[f"base/{arm}/seed0/sft"].config for arm in ARMS}
    # stage A: the same corpus, steps, batch and block for every arm
    for key in ("train_files", "max_steps", "batch_size", "seq_length", "seed", "source_weights"):
        assert len({json.dumps(c[key]) for c in a.values()}) == 1, key
    assert a["diffusion"]["objective"] == "adapt" and a["diffusion"]["diffusion"]["shift"] is True
    assert a["diffusion"]["diffusion"]["anneal_steps"] == FULL.stage_a_steps // 3
    assert a["no-anneal"]["diffusion"] == {"attention": "bidirectional", "shift": True, "loss_normalization": "tokens"}
    assert a["no-shift"]["diffusion"]["shift"] is False and "anneal_steps" in a["no-shift"]["diffusion"]
    assert a["ar"]["objective"] == "ar" and "diffusion" not in a["ar"]
    assert a["scratch"]["objective"] == "diffusion" and "init" not in a["scratch"] and a["scratch"]["architecture"] == ARCH
    assert all(a[arm]["init"] == str(tmp_path / "base") for arm in ("diffusion", "no-anneal", "no-shift", "ar"))
    # stage B: the same data and compute; the loss and the shift follow the arm
    for key in ("train_files", "validation_files", "max_steps", "batch_size", "seq_length", "lr"):
        assert len({json.dumps(c[key]) for c in s.values()}) == 1, key
    assert s["ar"]["sft"]["loss"] == "ar" and "diffusion" not in s["ar"]
    assert all(s[arm]["sft"]["loss"] == "diffusion" for arm in ARMS if arm != "ar")
    assert s["no-shift"]["diffusion"]["shift"] is False and s["diffusion"]["diffusion"]["shift"] is True
    assert all(s[arm]["init"] == str(Path(a[arm]["output_dir"]) / "model") for arm in ARMS)
    # the evaluation: one decoding for every DLM, greedy AR with its cache for the AR arm
    dlm_eval = jobs["base/diffusion/seed0/eval"].eval_args
    assert dlm_eval == [x.replace("/no-shift/", "/diffusion/") for x in jobs["base/no-shift/seed0/eval"].eval_args]
    assert "--block-length" in dlm_eval and "--block-length" not in jobs["base/ar/seed0/eval"].eval_args
    # every training job is a config `difflm train` accepts
    for job in jobs.values():
        if job.config is not None:
            TrainConfig(**job.config)


def test_seeds_change_only_the_seed(tmp_path):
    jobs = _plan(tmp_path)
    for arm in ARMS:
        c0, c1 = (jobs[f"base/{arm}/seed{s}/sft"].config for s in (0, 1))
        differ = {k for k in c0 if c0[k] != c1[k]}
        assert differ == {"seed", "output_dir", "init"}, differ


def test_jobs_come_after_what_they_read(tmp_path):
    jobs = list(_plan(tmp_path).values())
    seen = set()
    for job in jobs:  # listed in an order that can run: every dependency earlier
        assert set(job.after) <= seen, job.name
        seen.add(job.name)
    by_name = {j.name: j for j in jobs}
    n_seeds, n_arms = len(FULL.seeds), len(ARMS)
    assert sum(j.kind == "eval" for j in jobs) == n_seeds * n_arms + FULL.size_seeds * 2 * 2  # two more sizes, 2 arms
    assert by_name["S/diffusion/seed0/stage_a"].after == ["S/ar-pretrain"]
    assert by_name["S/diffusion/seed0/stage_a"].config["init"] == str(tmp_path / "runs/S/ar-pretrain/model")
    assert by_name["S/scratch/seed0/stage_a"].after == []
    assert by_name["S/scratch/seed0/stage_a"].config["architecture"]["hidden_size"] == 64
    only_ar = _plan(tmp_path, arms=("ar",))
    assert sorted(only_ar) == sorted(f"base/ar/seed{s}/{k}" for s in FULL.seeds for k in ("stage_a", "sft", "eval"))
    with pytest.raises(InputError, match="unknown arm"):
        _plan(tmp_path, arms=("bogus",))


def test_an_experiment_directory_keeps_its_settings(tmp_path):
    _check_settings(tmp_path, {"budget": {"seeds": [0, 1]}, "arms": ["ar"]})
    _check_settings(tmp_path, {"budget": {"seeds": [0, 1]}, "arms": ["ar"]})  # the same: resumes
    with pytest.raises(InputError, match=r"other settings \(budget\).*another --out"):
        _check_settings(tmp_path, {"budget": {"seeds": [0]}, "arms": ["ar"]})


def test_tables_print_the_paper_beside_ours():
    spread = {"n": 3, "mean": 12.5, "sd": 1.5, "min": 11.0, "max": 14.0}
    loss = {"n": 3, "mean": 0.25, "sd": 0.01, "min": 0.24, "max": 0.26}
    results = {"arms": {name: {"label": arm.label, "paper": arm.paper, "exact_match": spread, "sft_val_loss": loss}
                        for name, arm in ARMS.items()},
               "sizes": [{"size": "S", "parameters": 270_000, "pretrain_tokens": 1_638_400,
                          "diffusion": {"exact_match": spread, "sft_val_loss": loss},
                          "scratch": {"exact_match": {**spread, "mean": 2.5}, "sft_val_loss": {**loss, "mean": 0.5}}}]}
    rows = arm_rows(results)
    assert rows[0][:4] == ["diffusion loss (full recipe)", "45.4", "49.7", "12.5 ± 1.5 [11.0-14.0]"]
    assert rows[2][1:3] == ["33.5", "34.5"] and rows[4][1:3] == ["-", "-"]
    assert size_rows(results)[0][:6] == ["S", "0.27 M", "1.6 M", "12.5 ± 1.5 [11.0-14.0]", "2.5 ± 1.5 [11.0-14.0]", "+10.0"]
    assert markdown_table(ARM_HEADER, rows).count("\n") == len(rows) + 1


@pytest.mark.parametrize("argv, match", [
    (["experiment", "ablations", "--seeds", "1,1"], r"--seeds must name at least one seed, each once"),
    (["experiment", "ablations", "--seeds", "x"], r"--seeds must be comma-separated integers"),
    (["experiment", "ablations", "--arms", "diffusion,bogus"], r"--arms must name arms from diffusion"),
    (["experiment", "ablations", "--jobs", "0"], r"--jobs must be >= 1"),
    (["experiment", "paper"], r"invalid choice: 'paper'"),
])
def test_bad_options_fail_in_one_line(capsys, argv, match):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("difflm: error:") and re.search(match, err), err


def test_a_failed_job_stops_the_experiment_naming_its_log(tmp_path):
    bad = Job("base/ar/seed0/eval", "eval", tmp_path / "eval", eval_args=["--model", str(tmp_path / "missing"),
                                                                        "--tasks", "perplexity"])
    after = Job("base/ar/seed0/next", "eval", tmp_path / "next", after=[bad.name], eval_args=["--model", "x"])
    with pytest.raises(JobFailed, match=r"base/ar/seed0/eval failed \(exit 2\).*full log: .*eval\.log"):
        run_jobs([bad, after], workers=2)
    assert not (tmp_path / "eval" / "done.json").exists() and not (tmp_path / "next").exists()


def test_a_finished_job_is_kept_and_a_missing_one_rerun(tmp_path):
    """One arm, one seed, tiny budgets: the real pipeline (train, SFT, eval as `difflm` processes)."""
    out = tmp_path / "exp"
    results = run_ablations(out, quick=True, seeds=(0,), arms=("ar",), progress=False)
    ar = results["arms"]["ar"]
    seed = ar["seeds"][0]
    # one seed: the arm's mean is that seed's exact match (a fraction in the seed's record, % in the table)
    assert ar["exact_match"]["n"] == 1 and ar["exact_match"]["mean"] == pytest.approx(100 * seed["exact_match"])
    assert seed["n_test"] == QUICK.n_test
    chance = results["chance"]  # guessing without a model, from the data files alone: recomputed here
    answers = {split: [json.loads(line)["answer"].rsplit("####", 1)[1].strip().replace(",", "")
                       for line in (out / "data" / f"{split}.jsonl").read_text().splitlines() if line.strip()]
               for split in ("train", "test")}
    counts = Counter(answers["train"])
    common = counts.most_common(1)[0][0]
    n_train, n_test = len(answers["train"]), len(answers["test"])
    assert chance["most_common_answer"] == common
    assert chance["most_common"] == pytest.approx(100 * sum(a == common for a in answers["test"]) / n_test)
    assert chance["frequency_guess"] == pytest.approx(100 * sum(counts[a] / n_train for a in answers["test"]) / n_test)
    assert seed["sft_curve"][-1][0] == QUICK.sft_steps * QUICK.batch_size * results["settings"]["sft_block"]
    root = out / "runs/base/ar/seed0"
    sft_done = (root / "sft/done.json").read_text()
    (root / "eval/done.json").unlink()
    again = run_ablations(out, quick=True, seeds=(0,), arms=("ar",), progress=False)
    assert (root / "sft/done.json").read_text() == sft_done  # not retrained
    assert (root / "eval/done.json").is_file() and (root / "eval.log").read_text().count("$ -m difflm eval") == 2
    assert again["arms"]["ar"]["exact_match"] == ar["exact_match"]  # the same model, the same seed: the same score
    assert json.loads((out / "results.json").read_text())["arms"]["ar"]["exact_match"] == ar["exact_match"]
    with pytest.raises(InputError, match="other settings"):
        run_ablations(out, quick=True, seeds=(0, 1), arms=("ar",), progress=False)


@pytest.mark.slow
def test_quick_experiment_stopped_and_continued(tmp_path):
    """`difflm experiment ablations --quick`, stopped by SIGTERM part-way and run again: the finished
    jobs are kept, a stopped training run resumes from its checkpoint, the tables come out whole."""
    out = tmp_path / "exp"
    command = [sys.executable, "-m", "difflm", "experiment", "ablations", "--quick", "--out", str(out), "--no-progress"]
    # started the way `cmd &` starts it: SIGINT ignored, which its jobs would inherit
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # stop it once some jobs are done and a training job has a checkpoint
        done = list(out.glob("runs/**/done.json"))
        saved = [p for p in out.glob("runs/**/checkpoints/step-*") if not (p.parents[1] / "done.json").exists()]
        if len(done) >= 3 and saved:
            break
        time.sleep(0.2)
    first.send_signal(signal.SIGTERM)
    first.wait(timeout=120)
    assert first.returncode != 0
    finished_before = {p: p.read_text() for p in out.glob("runs/**/done.json")}
    assert finished_before
    second = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-2000:]
    assert f"({len(finished_before)} done before)" in second.stderr
    assert all(p.read_text() == text for p, text in finished_before.items())
    logs = [p.read_text() for p in out.glob("runs/**/*.log")]
    assert any("difflm: interrupted" in log for log in logs)  # a running trainer was stopped, not killed
    assert any("--resume" in log for log in logs)  # and continued from its checkpoint
    results = json.loads((out / "results.json").read_text())
    assert all(arm["exact_match"]["n"] == len(QUICK.seeds) for arm in results["arms"].values())
    assert [row["size"] for row in results["sizes"]] == ["S", "base"]
    assert (out / "curves.png").stat().st_size > 10_000
    assert "DiffuLLaMA Table 3" in second.stdout and "45.4" in second.stdout
