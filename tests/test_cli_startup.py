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
