"""The values the command line offers as choices, in one torch-free module: building the parser
(`difflm --help`) must not import torch, and the library's own lists live in modules that do.
tests/test_cli_startup.py keeps every list here in step with the library's."""

# difflm.sampling: STRATEGIES, CACHE_MODES, ATTENTION_OVERRIDES, SCHEDULES, FILTER_ORDERS
STRATEGY_NAMES = ("random", "low_confidence", "maskgit_plus", "topk_margin", "entropy", "threshold")
CACHE_MODE_NAMES = ("none", "prefix", "dual", "block")
ATTENTION_NAMES = ("causal", "bidirectional", "block_causal")
SCHEDULE_NAMES = ("equal", "dream")
FILTER_ORDER_NAMES = ("top_k_first", "top_p_first")

# difflm.formats.FORMATS: the checkpoint layouts `--format` may name
FORMAT_NAMES = ("difflm", "diffugpt", "llada", "dream", "sdar", "diffullama", "causal-lm")

# difflm.evaluation.registry.TASKS: the tasks `difflm eval --tasks` knows by name
TASK_NAMES = ("perplexity", "last-word", "multiple-choice", "infilling", "lambada", "hellaswag", "piqa", "siqa",
              "winogrande", "rocstories", "gsm8k", "humaneval", "humaneval-infill", "sudoku",
              "countdown")

# difflm.tasks.GENERATORS: the synthetic tasks `difflm data make` writes
DATA_TASK_NAMES = ("gsm", "sudoku", "countdown")

# difflm.tasks.splits.SPLITS and difflm.tasks.gsm.SUMS: `difflm data make --split` / `--sums`
SPLIT_NAMES = ("train", "validation", "test")
GSM_SUMS_NAMES = ("whole", "pairwise")
