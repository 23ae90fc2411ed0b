"""The contract every model family of `difflm.registry.FAMILIES` keeps on the command line (in the spirit
of diffusers' SchedulerCommonTest): its plug-in module loads without torch, adds its flags in an argument
group of its own without clashing with the core's, does not claim a plain DLM invocation, and
``difflm generate --help`` lists its flags. Plus the dispatch itself, with a family registered by a test."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
import sys

import pytest

from difflm.cli import ArgumentParser, build_parser, main
from difflm.cli import family as family_module
from difflm.cli.generate import add_core_arguments
from difflm.registry import FAMILIES, Registry

HEAVY = ("torch", "transformers", "accelerate", "numpy", "rich")
COMMANDS = ("generate", "infill")
PLAIN = {"generate": ["generate", "And God said"], "infill": ["infill", "Let there be [MASK:2] and light"]}


def _family_flags(plugin, command: str) -> tuple[list[argparse.Action], list[argparse._ArgumentGroup]]:
    """The actions and groups ``plugin`` adds to a parser that holds the core's flags of ``command``
    (argparse refuses a flag defined twice: a clash fails here)."""
    parser = ArgumentParser(prog=f"difflm {command}")
    add_core_arguments(parser, command)
    actions, groups = list(parser._actions), list(parser._action_groups)
    plugin.add_arguments(parser, command)
    return ([a for a in parser._actions if a not in actions], [g for g in parser._action_groups if g not in groups])


def _subcommand(command: str) -> argparse.ArgumentParser:
    return next(a for a in build_parser()._actions if a.dest == "command").choices[command]


def test_there_are_families():
    assert len(FAMILIES) >= 2 and {"continuous", "multimodal"} <= set(FAMILIES)


@pytest.mark.parametrize("name", FAMILIES.names())
def test_the_plugin_loads_and_claims_without_torch(name):
    """Importing the plug-in and asking it to claim a plain invocation load no heavy module."""
    code = (
        "import json, sys\n"
        "from difflm.cli import build_parser\n"
        "from difflm.registry import FAMILIES\n"
        f"plugin = FAMILIES.get({name!r})\n"
        "sub = next(a for a in build_parser()._actions if a.dest == 'command').choices\n"
        f"claims = [plugin.claims(sub[c].parse_args(argv[1:])) for c, argv in {PLAIN!r}.items()]\n"
        f"print(json.dumps([claims, [m for m in {HEAVY!r} if m in sys.modules]]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    claims, heavy = json.loads(done.stdout)
    assert heavy == [] and claims == [False, False]


@pytest.mark.parametrize("name", FAMILIES.names())
def test_the_plugin_keeps_the_protocol(name):
    plugin = FAMILIES.get(name)
    assert isinstance(plugin, family_module.FamilyPlugin) and plugin.name == name


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("name", FAMILIES.names())
def test_the_plugins_flags_are_in_its_own_group_and_clash_with_no_core_flag(name, command):
    actions, groups = _family_flags(FAMILIES.get(name), command)
    if not actions:  # a family may serve one command only (multimodal: generate)
        assert not groups
        return
    assert len(groups) == 1, "one argument group per family"
    assert set(groups[0]._group_actions) == set(actions)
    assert all(a.option_strings for a in actions), "a family adds flags, never positionals"


@pytest.mark.parametrize("name", FAMILIES.names())
def test_generate_help_lists_the_plugins_flags(name):
    actions, _ = _family_flags(FAMILIES.get(name), "generate")
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main(["generate", "--help"])
    for action in actions:
        assert all(flag in out.getvalue() for flag in action.option_strings), action


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("name", FAMILIES.names())
def test_a_plain_dlm_invocation_is_no_familys(name, command):
    args = _subcommand(command).parse_args(PLAIN[command][1:] + ["--model", "dlm-adapted"])
    assert FAMILIES.get(name).claims(args) is False


def test_the_masked_flags_are_the_masked_groups():
    """What a family is told it may refuse is exactly the discrete samplers' groups (masked, and the renoising
    sampler of uniform-state models), as given on the command line (a flag left out is None: the model's saved
    setting or the sampler's default)."""
    parser = _subcommand("generate")
    groups = [g for g in parser._action_groups if g.title in ("masked diffusion sampler", "renoising sampler")]
    recorded = {flag for flag, _, _ in parser.get_default(family_module.MASKED_FLAGS_KEY)}
    assert len(groups) == 2 and recorded == {a.option_strings[0] for g in groups for a in g._group_actions}
    assert {"--strategy", "--cache", "--chat"} <= recorded and not recorded & {"--steps", "--cfg-scale", "--seed"}
    args = parser.parse_args(["hi", "--strategy", "threshold", "--top-p", "1.0", "--cache", "dual", "--steps", "3"])
    assert family_module.masked_flags_given(args) == ("--strategy", "--top-p", "--cache")


class EchoFamily:
    """A family registered by this test: ``--echo`` claims the run; the runner prints what it was handed."""

    name = "echo"

    def add_arguments(self, parser: argparse.ArgumentParser, command: str) -> None:
        group = parser.add_argument_group("echo family", "a test family")
        group.add_argument("--echo", action="store_true", help="hand the run to the echo family")

    def claims(self, args: argparse.Namespace) -> bool:
        return args.echo

    def run(self, args: argparse.Namespace, job: family_module.GenerationJob) -> int:
        print(json.dumps({"labels": job.labels, "masked": list(job.masked_flags), "steps": job.options.steps}))
        return 0


ECHO = EchoFamily()


def test_a_registered_family_gets_its_flags_and_the_run(monkeypatch, capsys):
    families = Registry("family", {name: FAMILIES.entry(name).target for name in FAMILIES})
    families.register("echo", f"{__name__}:ECHO")
    monkeypatch.setattr(family_module, "FAMILIES", families)
    assert main(["generate", "a", "b", "--echo", "--steps", "2", "--strategy", "entropy", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out) == {"labels": ["a", "b"], "masked": ["--strategy"], "steps": 2}
    assert main(["infill", "x [MASK:2] y", "--echo"]) == 0
    assert json.loads(capsys.readouterr().out)["labels"] == ["x [MASK:2] y"]
