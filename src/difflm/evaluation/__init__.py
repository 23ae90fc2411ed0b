"""Evaluation: likelihood (exact for AR models, the Monte Carlo ELBO bound for DLMs), benchmark
protocols on local data, reports. See docs/evaluation.md."""

from .data import ChoiceExample, InfillExample, LastWordExample, QAExample
from .likelihood import ESTIMATORS, NLLEstimate, ScoreRequest, ar_nll, elbo_nll, reference_score
from .lm import AREvalLM, DiffusionEvalLM, EvalLM, EvalSettings
from .loading import load_eval_lm
from .registry import TASK_SPECS, build_task, parse_tasks
from .report import comparison_markdown, print_report, results_table, run_evaluation, write_report
from .stats import Estimate, mean_stderr
from .task_base import Task, TaskResult

__all__ = [
    "AREvalLM", "ChoiceExample", "DiffusionEvalLM", "ESTIMATORS", "Estimate", "EvalLM", "EvalSettings", "InfillExample",
    "LastWordExample", "NLLEstimate", "QAExample", "ScoreRequest", "TASK_SPECS", "Task", "TaskResult", "ar_nll", "build_task",
    "comparison_markdown", "elbo_nll", "load_eval_lm", "mean_stderr", "parse_tasks", "print_report", "reference_score",
    "results_table", "run_evaluation", "write_report",
]
