"""Sampler flag errors answer before torch loads (issue #33): the cross-field checks of `SamplerOptions`, the
renoising options a model does not decode with, infill templates and ``--preset`` are checked from the model's
files alone (`difflm.cli.precheck`), and the run checks them again after loading, with the same words.

No timings here (a loaded machine makes them meaningless): that torch is never imported is what makes the
answer fast; the before/after timings are in the issue."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from difflm import InputError
from difflm.cli.precheck import check_sampler_flags
from difflm.sampling import SamplerOptions, denoise
from difflm.sampling.options import model_options, over_model

HEAVY = ("torch", "transformers")
UNIFORM = {"process": "uniform"}


def _config_only_dir(root: Path, name: str, *, extra: dict | None = None, section: dict | None = None,
                     marker: str | None = None) -> Path:
    """A model directory of difflm's layout holding only its configs (written as JSON: no torch needed)."""
    path = root / name
    path.mkdir()
    (path / "difflm_config.json").write_text(json.dumps({"mask_token_id": 3, "extra": extra or {}}))
    (path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    if section is not None:
        (path / "generation_config.json").write_text(json.dumps({"bos_token_id": 0, "difflm": section}))
    if marker is not None:
        (path / marker).write_text("{}")
    return path


def _fast_errors(tmp: Path) -> list[tuple[list[str], str]]:
    """(command line, the start of its one-line error): each needs the model's configs, none its weights."""
    uniform = str(_config_only_dir(tmp, "uniform", extra=UNIFORM))
    by_threshold = str(_config_only_dir(tmp, "by-threshold", section={"strategy": "threshold", "threshold": 0.9}))
    return [
        (["generate", "x", "--threshold", "0.5", "--strategy", "low_confidence"],
         "threshold applies to strategy 'threshold' only, not 'low_confidence'"),
        (["generate", "x", "--entropy-bound", "1"], "option(s) entropy_bound belong to the renoising sampler"),
        (["generate", "x", "--t-min", "0.5"], "t_min and t_max form one temperature schedule"),
        (["infill", "nogap"], "the template has no [MASK:n] placeholder"),
        (["infill", "a [MASK:2] b", "--random-stream", "transformers"], "option(s) random_stream belong to the renoising"),
        (["generate", "x", "--preset", "speed"], "--preset 'speed': dlm-adapted has no such decoding preset"),
        (["generate", "x", "--model", uniform, "--t-min", "0", "--t-max", "1"],
         "option(s) t_min, t_max belong to the renoising sampler of uniform-state models (set entropy_bound); "
         "they do not apply to a uniform-state model without entropy_bound"),
        (["generate", "x", "--model", by_threshold, "--alg-temp", "1", "--strategy", "random"],
         "alg_temp applies to the scoring strategies, not 'random'"),
        (["generate", "x", "--model", by_threshold, "--strategy", "entropy", "--threshold", "0.5"],
         "threshold applies to strategy 'threshold' only, not 'entropy'"),
        (["eval", "--model", "dlm-adapted", "--threshold", "0.5", "--strategy", "low_confidence"],
         "threshold applies to strategy 'threshold' only"),
    ]


def test_sampler_flag_errors_answer_in_one_line_without_torch(tmp_path):
    """Each bad command line exits 2 with one line on stderr (the expected one), and torch and transformers
    are still not imported after all of them (one process runs them in turn)."""
    battery = _fast_errors(tmp_path)
    done = subprocess.run([sys.executable, "-c", (
        "import contextlib, io, json, sys\n"
        "from difflm.cli import main\n"
        "results = []\n"
        f"for argv in {[argv for argv, _ in battery]!r}:\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):\n"
        "        code = main(argv)\n"
        f"    results.append([code, err.getvalue(), [m for m in {HEAVY!r} if m in sys.modules]])\n"
        "print(json.dumps(results))"
    )], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    for (argv, expected), (code, err, heavy) in zip(battery, results, strict=True):
        assert heavy == [], f"{argv} imported {heavy}"
        assert code == 2 and err.count("\n") == 1, (argv, code, err)
        assert err.startswith(f"difflm: error: {expected}"), (argv, err)


def test_the_console_entry_point_refuses_a_schedule_half_without_torch():
    """The real entry point (`python -m difflm`), by its import log: the error, and no torch imported."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "difflm", "generate", "x", "--t-min", "0.5"],
                          capture_output=True, text=True, timeout=120)
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    errors = [line for line in done.stderr.splitlines() if not line.startswith("import time:")]
    assert done.returncode == 2
    assert errors == ["difflm: error: t_min and t_max form one temperature schedule: give both or neither"]
    assert "difflm.cli.precheck" in imported and not imported & {"torch", "transformers"}


def test_sampler_options_and_templates_import_no_torch():
    """`difflm.sampling` names its contents lazily: options and templates are used without torch, and the
    commit strategy (a torch object) is made on first use."""
    done = subprocess.run([sys.executable, "-c", (
        "import json, sys\n"
        "import difflm.sampling\n"
        "from difflm.sampling import SamplerOptions\n"
        "from difflm.sampling.templates import parse_template\n"
        "options = SamplerOptions.merge(SamplerOptions(strategy='threshold'), threshold=0.5, steps=4)\n"
        "parts = parse_template('a [MASK:2] b')\n"
        f"before = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "strategy = options.commit_strategy\n"
        "print(json.dumps([before, parts, repr(strategy), 'torch' in sys.modules]))"
    )], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    before, parts, strategy, torch_after = json.loads(done.stdout)
    assert before == [] and parts == ["a", 2, " b"]
    assert strategy == "Threshold(threshold=0.5, alg_temp=0.0)" and torch_after


def test_a_strategy_instance_is_kept_and_a_wrong_type_refused():
    from difflm.sampling import Threshold, get_strategy

    mine = Threshold(0.7)
    assert SamplerOptions(strategy=mine).commit_strategy is mine
    assert get_strategy("threshold").threshold == 0.9 and get_strategy("entropy", alg_temp=0.5).alg_temp == 0.5
    with pytest.raises(InputError, match="strategy must be a string or a Strategy, got 3"):
        SamplerOptions(strategy=3)
    with pytest.raises(InputError, match="threshold must be in \\(0, 1\\], got 2"):
        SamplerOptions(strategy="threshold", threshold=2.0)


def _run_refusal(path: Path, given: dict) -> str | None:
    """What the run says after loading the model from ``path`` (difflm's loader) and decoding: None if it decodes."""
    from difflm.formats import load_diffusion_lm

    model = load_diffusion_lm(path)
    try:
        options = over_model(model_options(model), **given)
        canvas = torch.tensor([[1, 5, 6, 7]])
        denoise(model, canvas, canvas > 5, options=options, generator=torch.Generator().manual_seed(0))
    except InputError as exc:
        return str(exc)
    return None


def _early_refusal(path: Path, given: dict) -> str | None:
    try:
        check_sampler_flags(str(path), given)
    except InputError as exc:
        return str(exc)
    return None


@pytest.mark.parametrize("extra, section, given", [
    ({}, None, {"entropy_bound": 1.0}),  # masked model: renoising options refused
    ({}, None, {"random_stream": "transformers"}),
    (UNIFORM, None, {"t_min": 0.0, "t_max": 1.0}),  # uniform-state model without entropy_bound: refused
    (UNIFORM, None, {"entropy_bound": 1.0, "t_min": 0.0, "t_max": 1.0}),  # ... with it: decodes
    (UNIFORM, None, {}),
    ({}, None, {"strategy": "low_confidence", "threshold": 0.5}),
    ({}, None, {"threshold": 0.5}),  # no saved strategy: low_confidence's, refused
    ({}, {"strategy": "threshold", "threshold": 0.9}, {"threshold": 0.5}),  # the saved strategy takes it
    ({}, {"strategy": "threshold", "threshold": 0.9}, {"strategy": "entropy"}),  # the saved threshold goes with it
    (UNIFORM, {"entropy_bound": 0.5}, {"t_min": 0.0, "t_max": 1.0}),  # a saved entropy bound makes them apply
])
def test_the_early_check_answers_as_the_run_does(tmp_path, extra, section, given):
    """A real (tiny) model of difflm's layout, saved with its configs: whatever the flags, the check made from the
    files before torch loads refuses exactly what the loaded run refuses, with the same words."""
    from conftest import tiny_dlm, tiny_tokenizer
    from difflm.formats import GenerationDefaults, write_generation_defaults

    model = tiny_dlm(extra=dict(extra))
    model.save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    if section is not None:
        write_generation_defaults(tmp_path, GenerationDefaults(dict(section)))
    assert _early_refusal(tmp_path, given) == _run_refusal(tmp_path, given)


def test_what_the_files_do_not_tell_is_left_to_the_run(tmp_path):
    """No false refusal: where only the loader knows the defaults or the process, the early check says nothing."""
    refused = {"threshold": 0.5}  # refused over no defaults; a published layout's or a base's may take it
    adapter = _config_only_dir(tmp_path, "adapter", marker="difflm_adapter.json")
    published = tmp_path / "published"
    published.mkdir()
    (published / "config.json").write_text(json.dumps({"model_type": "llama"}))
    broken = _config_only_dir(tmp_path, "broken")
    (broken / "generation_config.json").write_text("{not json")
    bad_value = _config_only_dir(tmp_path, "bad-value", section={"temperature": "hot"})
    for path in (adapter, published, broken, bad_value):
        assert _early_refusal(path, refused) is None, path
    encoder_decoder = _config_only_dir(tmp_path, "encdec", extra={**UNIFORM, "denoiser": "encoder-decoder"})
    assert _early_refusal(encoder_decoder, {"t_min": 0.0, "t_max": 1.0}) is None  # it always renoises
    with pytest.raises(InputError, match="no such decoding preset"):  # difflm's own layout offers none
        check_sampler_flags(str(_config_only_dir(tmp_path, "native")), {}, preset="speed")
    check_sampler_flags(str(published), {}, preset="speed")  # a published layout's presets: the run looks
    # a family of its own decodes with the flags over the sampler's defaults, not the model's
    check_sampler_flags(str(_config_only_dir(tmp_path, "fam", section={"strategy": "threshold"})), {"strategy": "entropy"},
                        model_defaults=False, renoising=False)
    with pytest.raises(InputError, match="t_min and t_max"):
        check_sampler_flags("anything", {"t_min": 0.5}, model_defaults=False, renoising=False)
