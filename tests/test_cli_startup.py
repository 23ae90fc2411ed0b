"""The `difflm` command answers at once: ``import difflm``, building the parser, ``--help``,
``--version`` and argument errors load neither torch nor transformers. (No timings here: that no
heavy module is imported is what keeps them fast; measured by hand in the issue.)"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import difflm
from difflm.cli import build_parser

HEAVY = ("torch", "transformers", "accelerate", "numpy", "rich")
CLI_DIR = Path(difflm.__file__).parent / "cli"


def _python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_import_difflm_loads_no_torch():
    out = _python(
        "import json, sys, difflm\n"
        "from difflm import DiffLMError, InputError, __version__\n"
        f"print(json.dumps([__version__, [m for m in {HEAVY!r} if m in sys.modules]]))"
    )
    assert json.loads(out) == [difflm.__version__, []]


@pytest.mark.parametrize("argv", [
    ["--help"], ["--version"], [], ["generate", "--help"], ["infill", "--help"], ["train", "--help"], ["eval", "--help"],
    ["demo", "--help"], ["inspect", "--help"], ["convert", "--help"],
    ["generate", "hi", "--cache", "bogus"], ["generate", "hi", "--length", "many"], ["nonsense"],
])
def test_help_version_and_argument_errors_load_no_torch(argv):
    out = _python(
        "import contextlib, io, json, sys\n"
        "from difflm.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
        "    try:\n"
        f"        code = main({argv!r})\n"
        "    except SystemExit as exc:\n"
        "        code = exc.code\n"
        f"print(json.dumps([code, [m for m in {HEAVY!r} if m in sys.modules]]))"
    )
    code, heavy = json.loads(out)
    assert heavy == [] and code == (2 if argv[-1:] in (["bogus"], ["many"], ["nonsense"]) else 0)


def test_python_m_difflm_help_imports_no_torch():
    """The real entry point (`python -m difflm`, what the console script runs too), by its import log."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "difflm", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "generate" in done.stdout and "convert" in done.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "difflm.cli" in imported and not imported & {"torch", "transformers"}


def test_lazy_public_names_still_work():
    from difflm import DiffusionConfig, DiffusionLM
    from difflm.config import DiffusionConfig as config_class
    from difflm.model import DiffusionLM as model_class

    assert DiffusionLM is model_class and DiffusionConfig is config_class
    assert difflm.losses.masked_diffusion_loss and difflm.sampling.generate  # README: difflm.losses.<fn>
    assert {"DiffusionLM", "DiffusionConfig", "sampling"} <= set(dir(difflm))
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        difflm.nonexistent  # noqa: B018


def _library_table(module: str, *names: str):
    """The first of ``names`` that ``module`` defines (a table may have been renamed, not removed)."""
    import importlib

    found = importlib.import_module(module)
    return next(getattr(found, name) for name in names if hasattr(found, name))


def test_the_cli_choices_are_the_librarys_tables():
    """The command line offers the names of `difflm.registry` (torch-free); the library resolves the same
    tables, so no hand-typed copy can drift: every name resolves, and the library knows exactly these."""
    from difflm import registry
    from difflm.evaluation.registry import TASK_SPECS
    from difflm.tasks import GENERATORS
    from difflm.tasks.gsm import SUMS
    from difflm.tasks.splits import SPLITS

    tables = {  # registry table -> the library's own table
        registry.STRATEGIES: _library_table("difflm.sampling", "STRATEGIES"),
        registry.FORMATS: _library_table("difflm.formats", "FORMATS"),
        registry.EVAL_TASKS: TASK_SPECS,
        registry.DATA_TASKS: GENERATORS,
    }
    for names, library in tables.items():
        assert names.names() == tuple(library), names
        assert all(plugin is not None for _, plugin in names.items()), names  # every entry resolves
    assert all(registry.EVAL_TASKS.get(name) is TASK_SPECS[name] for name in TASK_SPECS)
    assert all(registry.DATA_TASKS.get(name) is GENERATORS[name] for name in GENERATORS)
    assert registry.CACHE_MODES == tuple(_library_table("difflm.sampling", "CACHE_MODES"))
    assert registry.ATTENTION_OVERRIDES == tuple(_library_table("difflm.sampling.options", "ATTENTION_OVERRIDES"))
    assert registry.FILTER_ORDERS == tuple(_library_table("difflm.sampling.options", "FILTER_ORDERS"))
    assert registry.REVEAL_SCHEDULES == tuple(
        _library_table("difflm.sampling.strategies", "REVEAL_SCHEDULES", "SCHEDULES"))
    assert registry.DATA_SPLITS == tuple(SPLITS) and registry.GSM_SUMS == tuple(SUMS)


def test_the_cli_has_no_hand_typed_choice_list():
    """cli/choices.py is gone: the commands take their choices from `difflm.registry`."""
    assert not (CLI_DIR / "choices.py").exists()
    for path in CLI_DIR.glob("*.py"):
        modules = {node.module for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.ImportFrom)}
        assert "choices" not in modules, path


def test_every_sampler_option_is_a_flag():
    from difflm.sampling import SamplerOptions

    subcommands = next(a for a in build_parser()._actions if a.dest == "command").choices
    for command in ("generate", "infill"):
        flags = {action.dest for action in subcommands[command]._actions}
        assert set(SamplerOptions.names()) <= flags, command


def test_demo_takes_its_template_code_from_sampling_not_from_another_command():
    tree = ast.parse((CLI_DIR / "demo.py").read_text())
    modules = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "sampling.templates" in modules
    assert not {m for m in modules if m and m.split(".")[-1] in ("generate", "cli.generate")}


def test_the_cli_imports_no_private_name_of_another_module():
    for path in CLI_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                assert not private, f"{path.name}:{node.lineno} imports {private} from {node.module}"


def _usage_errors(tmp: Path) -> list[list[str]]:
    """A battery of bad command lines, every subcommand, each wrong in a way that needs no model."""
    (tmp / "bad.yaml").write_text("lr: [1e-4\n")
    (tmp / "unknown.yaml").write_text("objective: ar\nlearning_rate: 1e-4\n")
    (tmp / "a-file").write_text("x\n")
    out, f = str(tmp / "out.jsonl"), str(tmp / "a-file")
    gen = ["generate", "hi"]
    return [
        [*gen, "--length", "0"], [*gen, "--steps", "0"], [*gen, "--block-length", "0"], [*gen, "--top-p", "2"],
        [*gen, "--top-p", "nan"], [*gen, "--top-k", "-1"], [*gen, "--temperature", "-1"], [*gen, "--threshold", "1.5"],
        [*gen, "--remask", "1"], [*gen, "--editing-threshold", "1"], [*gen, "--max-edits", "0"],
        [*gen, "--sub-block-length", "0"], [*gen, "--cfg-scale", "inf"], [*gen, "--alg-temp", "-1"],
        [*gen, "--strategy", "nope"], [*gen, "--model", "/nonexistent/model"], [*gen, "--seed", "-1"],
        [*gen, "--show-steps", "--delay", "-1"],
        ["infill"], ["infill", "--prefix", "a"], ["infill", "--prefix", "a", "--length", "0"],
        ["infill", "[MASK:2]", "--model", "/nonexistent/model"],
        ["train", str(tmp / "missing.yaml")], ["train", str(tmp / "bad.yaml")], ["train", str(tmp / "unknown.yaml")],
        ["train", str(tmp / "unknown.yaml"), "lr"], ["train", "objective=bogus"], ["train", "max_steps=0", "init=x"],
        ["train", "architecture.x=1", "lr=-1"],
        ["eval", "--model", "/nonexistent/model"], ["eval", "--model", "ar-base", "--tasks", "bogus"],
        ["eval", "--model", "ar-base", "--tasks", ","], ["eval", "--model", "ar-base", "--n-samples", "0"],
        ["eval", "--model", "ar-base", "--format", "nope"], ["eval", "--model", "ar-base", "--threads", "0"],
        ["eval", "--model", "ar-base", "--strategy", "nope"], ["eval", "--model", "ar-base", "--limit", "0"],
        ["data", "make", "gsm", "--n", "0", "--out", out], ["data", "make", "sudoku", "--n", "1", "--steps", "2", "--out", out],
        ["data", "check", str(tmp / "missing.jsonl")], ["data", "check", f, "--seq-length", "0"],
        ["data", "check", f, "--tokenizer", str(tmp / "no-tokenizer")],
        ["data", "tokenizer", str(tmp / "missing.jsonl"), "--vocab-size", "300", "--out", str(tmp / "tok")],
        ["data", "images", "--out", str(tmp / "img"), "--images", str(tmp / "missing")],
        ["data", "images", "--out", str(tmp / "img"), "--codebook", "1"],
        ["inspect", "/nonexistent/model"], ["inspect", str(tmp), "--mask-token-id", "-1"],
        ["convert", "/nonexistent/model", str(tmp / "out")], ["convert", str(tmp), str(tmp)],
        ["convert", str(tmp), str(tmp / "out"), "--dtype", "half"], ["convert", str(tmp), f + "/out"],
        ["experiment", "ablations", "--jobs", "0"], ["experiment", "ablations", "--seeds", "x"],
        ["experiment", "ablations", "--arms", "bogus"],
        ["demo", "--eval-blocks", "0"], ["demo", "--adapt-steps", "-1"], ["demo", "--seed", "-1"],
        ["generate", "hi", "--device", "quantum"], ["eval", "--model", "ar-base", "--device", "cuda:x"],
        ["serve", "--model", "/nonexistent/model"], ["serve", "--device", "gpu"],
    ]


def test_usage_errors_answer_before_torch_loads(tmp_path):
    """Every check that needs no model runs before the heavy imports: each of these bad command lines
    exits 2 with one line on stderr, and torch / transformers are still not imported afterwards (one
    process runs them in turn, so the first command that imports torch is the one named)."""
    battery = _usage_errors(tmp_path)
    out = _python(
        "import contextlib, io, json, sys\n"
        "from difflm.cli import main\n"
        "results = []\n"
        f"for argv in {battery!r}:\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):\n"
        "        code = main(argv)\n"
        f"    results.append([argv, code, err.getvalue(), [m for m in {HEAVY!r} if m in sys.modules]])\n"
        "print(json.dumps(results))"
    )
    results = json.loads(out)
    assert len(results) == len(battery)
    for argv, code, err, heavy in results:
        assert heavy == [], f"{argv} imported {heavy}"
        assert code == 2 and err.startswith("difflm: error:") and err.count("\n") == 1, (argv, code, err)


def test_the_console_entry_point_answers_a_bad_config_without_torch(tmp_path):
    """The same through `python -m difflm` (the console script's path), by its import log."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "difflm", "train", str(tmp_path / "missing.yaml")],
                          capture_output=True, text=True, timeout=120)
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    errors = [line for line in done.stderr.splitlines() if not line.startswith("import time:")]
    assert done.returncode == 2 and errors == [f"difflm: error: config file {tmp_path / 'missing.yaml'} not found"]
    assert "difflm.training.config" in imported and not imported & {"torch", "transformers"}


# (flag, SamplerOptions field, a value the flag refuses, the nearest value it takes, other fields that value needs)
SAMPLER_FLAG_RANGES = [
    ("--steps", "steps", "0", "1", {}), ("--block-length", "block_length", "0", "1", {}),
    ("--top-p", "top_p", "0", "1", {}), ("--top-p", "top_p", "1.01", "0.01", {}), ("--top-k", "top_k", "-1", "0", {}),
    ("--temperature", "temperature", "-0.1", "0", {}), ("--temperature", "temperature", "inf", "1e9", {}),
    ("--cfg-scale", "cfg_scale", "-0.1", "0", {}), ("--threshold", "threshold", "0", "0.01", {"strategy": "threshold"}),
    ("--threshold", "threshold", "1.01", "1", {"strategy": "threshold"}), ("--alg-temp", "alg_temp", "-0.1", "0", {}),
    ("--sub-block-length", "sub_block_length", "0", "1", {}), ("--editing-threshold", "editing_threshold", "1", "0.99", {}),
    ("--editing-threshold", "editing_threshold", "-0.1", "0", {}), ("--remask", "remask", "1", "0.99", {}),
    ("--max-edits", "max_edits", "0", "1", {}), ("--strategy", "strategy", "nope", "entropy", {}),
]


@pytest.mark.parametrize("flag, field, bad, good, needs", SAMPLER_FLAG_RANGES)
def test_the_flags_refuse_exactly_what_sampler_options_refuses(flag, field, bad, good, needs):
    """The sampler flags check their ranges before torch loads; `SamplerOptions` checks the same values
    where they are used. The two must agree at each boundary, so neither can drift."""
    from difflm import InputError
    from difflm.cli import UsageError, _parse
    from difflm.sampling import SamplerOptions

    def parsed(value: str):
        extra = ["--strategy", needs["strategy"]] if "strategy" in needs and flag != "--strategy" else []
        return getattr(_parse(build_parser(), ["generate", "hi", flag, value, *extra]), field)

    with pytest.raises(UsageError):
        parsed(bad)
    with pytest.raises(InputError):
        SamplerOptions(**{**needs, field: type(parsed(good))(bad) if field != "strategy" else bad})
    assert SamplerOptions(**{**needs, field: parsed(good)})


@pytest.mark.parametrize("flag, field", [("--n-samples", "n_samples"), ("--batch-size", "batch_size"),
                                         ("--reference-steps", "reference_steps"), ("--steps", "steps"),
                                         ("--max-new-tokens", "max_new_tokens"), ("--limit", "limit")])
def test_the_eval_flags_refuse_exactly_what_eval_settings_refuses(flag, field):
    from difflm import InputError
    from difflm.cli import UsageError, _parse
    from difflm.evaluation import EvalSettings

    lowest = next(n for n in range(-1, 3) if _accepts(["eval", "--model", "m", flag, str(n)]))
    with pytest.raises(InputError):
        EvalSettings(**{field: lowest - 1})
    assert EvalSettings(**{field: lowest})
    with pytest.raises(UsageError):
        _parse(build_parser(), ["eval", "--model", "m", flag, str(lowest - 1)])


def _accepts(argv: list[str]) -> bool:
    from difflm.cli import UsageError, _parse

    try:
        _parse(build_parser(), argv)
    except UsageError:
        return False
    return True
