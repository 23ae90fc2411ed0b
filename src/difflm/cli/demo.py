"""`difflm demo`: watch an autoregressive LM become a diffusion LM, then generate and infill with it.

1. the bundled AR base writes a few words left to right;
2. a short, visible adaptation (the paper's recipe: masked-diffusion loss, attention annealing,
   shift) with the validation ELBO falling;
3. the bundled, fully adapted DLM generates and infills while the denoising is shown live;
4. a table: AR base vs adapted DLM vs from-scratch DLM on the same validation text;
5. where diffusion wins: the bundled Sudoku DLM solving a puzzle its AR twin gets wrong, drawn live,
   and a GSM answer with its tokens per model call (`difflm.cli.demo_tasks`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..sampling.options import SamplerOptions

PROMPT = "ROMEO:\n"
# 1/5: the AR base's sample (transformers' generate)
AR_SAMPLING = {"max_new_tokens": 40, "do_sample": True, "top_p": 0.9, "temperature": 0.8}
# 3/5: the adapted DLM continues PROMPT, then fills the gap of INFILL (`SamplerOptions` fields)
GENERATE_LENGTH = 48
GENERATE_OPTIONS = {"steps": 24, "block_length": 16, "temperature": 0.8, "top_p": 0.9}
INFILL = "And God said, Let there be [MASK:4] and there was light."
INFILL_OPTIONS = {"steps": 4}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="adapt the bundled AR model into a DLM, then generate and infill",
                                   description=__doc__.split("\n\n")[0])
    parser.add_argument("--adapt-steps", type=int, default=150, help="optimizer steps of the live adaptation (0 skips it)")
    parser.add_argument("--output-dir", default="runs/demo", help="where the live adaptation writes its run")
    parser.add_argument("--eval-blocks", type=int, default=16, help="validation blocks of the final table")
    parser.add_argument("--seed", type=int, default=0, help="seed of the samples and the adaptation (default 0)")
    parser.set_defaults(func=run)


def _check_args(args: argparse.Namespace) -> None:
    from . import check_output_dir
    from ..errors import InputError

    if args.adapt_steps < 0:
        raise InputError(f"--adapt-steps must be >= 0 (0 skips the adaptation), got {args.adapt_steps}")
    if args.eval_blocks < 1:
        raise InputError(f"--eval-blocks must be >= 1, got {args.eval_blocks}")
    if not 0 <= args.seed < 2**32:  # it also seeds the adaptation run (numpy takes 32-bit seeds)
        raise InputError(f"--seed must be an integer in [0, 2**32), got {args.seed}")
    if args.adapt_steps:
        check_output_dir(args.output_dir, "--output-dir")


def _bundled_model_dir(name: str) -> Path:
    from ..bundled import MODELS
    from ..errors import ModelLoadError

    path = MODELS[name]
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"the bundled model {name!r} is missing at {path}; see bench/RESULTS.md for how it is built")
    return path


def _training_summary(path: Path) -> dict[str, Any]:
    summary_file = path / "training_summary.json"
    return json.loads(summary_file.read_text()) if summary_file.is_file() else {}


def run(args: argparse.Namespace) -> int:
    _check_args(args)  # before anything slow
    import torch
    from rich.console import Console
    from rich.rule import Rule

    console = Console()
    torch.manual_seed(args.seed)
    ar_dir, dlm_dir, scratch_dir = (_bundled_model_dir(name) for name in ("ar-base", "dlm-adapted", "dlm-scratch"))
    start = time.perf_counter()

    console.print(Rule("[bold]1/5  The autoregressive base"))
    _show_ar_sample(console, ar_dir, args.seed)

    if args.adapt_steps:
        console.print(Rule(f"[bold]2/5  Adapting it into a diffusion LM ({args.adapt_steps} steps, live)"))
        _show_adaptation(console, ar_dir, args)

    console.print(Rule("[bold]3/5  Generating and infilling with the fully adapted DLM"))
    _show_dlm_sampling(console, dlm_dir, args.seed)

    console.print(Rule("[bold]4/5  AR base vs adapted DLM vs DLM from scratch vs block diffusion"))
    _comparison_table(console, ar_dir, dlm_dir, scratch_dir, args.eval_blocks)

    console.print(Rule("[bold]5/5  Where diffusion wins: planning (Sudoku) and parallel decoding (GSM)"))
    from .demo_tasks import show_task_models

    show_task_models(console, _bundled_model_dir)
    console.print(f"[dim]demo finished in {time.perf_counter() - start:.0f} s[/dim]")
    return 0


def _show_ar_sample(console, ar_dir: Path, seed: int) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(ar_dir)
    model = AutoModelForCausalLM.from_pretrained(ar_dir, dtype=torch.float32).eval()
    ids = tok(PROMPT, return_tensors="pt")["input_ids"]
    torch.manual_seed(seed)
    sequence = model.generate(ids, pad_token_id=tok.pad_token_id, **AR_SAMPLING)[0]
    n_params = sum(p.numel() for p in model.parameters())
    console.print(f"[dim]{ar_dir.name}: LLaMA architecture, {n_params / 1e6:.1f} M parameters, left to right:[/dim]")
    console.print(tok.decode(sequence, skip_special_tokens=True), highlight=False, markup=False)  # "[exit]" is text


def _show_adaptation(console, ar_dir: Path, args: argparse.Namespace) -> None:
    from ..training import Trainer, load_train_config

    steps = args.adapt_steps
    cfg = load_train_config(None, [
        "objective=adapt", f"init={ar_dir}", f"output_dir={args.output_dir}", "seq_length=128", "batch_size=8",
        f"max_steps={steps}", f"diffusion.anneal_steps={max(1, steps // 3)}", f"warmup_steps={max(1, steps // 10)}",
        "lr=5e-4", "min_lr=5e-5", f"eval_every={max(1, steps // 5)}", "eval_batches=4", f"save_every={steps}",
        "log_every=10", "source_weights={wordnet: 0.4}", f"seed={args.seed}",
    ])
    console.print("[dim]masked-diffusion loss (1/t weights), shift kept, attention annealed causal -> "
                  f"bidirectional over {cfg.diffusion['anneal_steps']} steps; validation = ELBO bound in nats/token[/dim]")
    result = Trainer(cfg).train()
    records = [json.loads(line) for line in (Path(args.output_dir) / "metrics.jsonl").read_text().splitlines()]
    falling = "  ->  ".join(f"{r['val_loss']:.2f}" for r in records if "val_loss" in r)
    console.print(f"validation ELBO (nats/token): {falling}")
    console.print(f"[dim]{result['tokens']:,} tokens; a real adaptation runs far longer: the bundled DLM below "
                  "is the same recipe run to the end (configs/adapt.yaml)[/dim]")


def sampling_runs(tokenizer, mask_id: int) -> list[tuple[str, list[int], SamplerOptions]]:
    """Part 3's runs: (title, template ids with ``mask_id`` where the DLM writes, `SamplerOptions`)."""
    from ..sampling.options import SamplerOptions
    from ..sampling.templates import continuation_ids, template_ids

    generate_options = SamplerOptions(**GENERATE_OPTIONS)
    return [
        (f"generate: {GENERATE_LENGTH} tokens after the prompt, blocks of {generate_options.block_length}, "
         f"{generate_options.steps} steps", continuation_ids(PROMPT, tokenizer, mask_id, GENERATE_LENGTH), generate_options),
        (f"infill: {INFILL}", template_ids(INFILL, tokenizer, mask_id), SamplerOptions(**INFILL_OPTIONS)),
    ]


def _show_dlm_sampling(console, dlm_dir: Path, seed: int) -> None:
    import torch

    from ..model import DiffusionLM
    from ..sampling import fill
    from ..visualize import DenoisingView

    model = DiffusionLM.from_pretrained(dlm_dir).eval()
    for title, template, options in sampling_runs(model.tokenizer, model.mask_token_id):
        generator = torch.Generator().manual_seed(seed)
        with DenoisingView(model.tokenizer, console=console, title=title, delay=0.05) as view:
            fill(model, [template], options=options, generator=generator, callback=view)


# the bundled models part 4 compares: the AR base and the three DLMs trained from it or beside it
TABLE_MODELS = ("ar-base", "dlm-adapted", "dlm-scratch", "dlm-block")


def _comparison_table(console, ar_dir: Path, dlm_dir: Path, scratch_dir: Path, n_blocks: int) -> None:
    import math

    import torch
    from rich.table import Table
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..bundled import corpus_file
    from ..evaluation.likelihood import ScoreRequest, ar_nll, elbo_nll
    from ..model import DiffusionLM
    from ..training.data import pack_sequences, tokenize_files

    tok = AutoTokenizer.from_pretrained(ar_dir)
    blocks = pack_sequences(tokenize_files([corpus_file("validation")], tok), 256, tok.bos_token_id)
    chosen = blocks[torch.linspace(0, len(blocks) - 1, n_blocks).long()]
    requests = [ScoreRequest(tuple(b.tolist()), 1, len(b)) for b in chosen]
    n_tokens = sum(r.num_targets for r in requests)
    table = Table(title=f"validation split, {n_blocks} blocks of 256 tokens (nats/token; lower is better)")
    for col in ("model", "objective", "NLL or bound", "perplexity (bound)", "tokens trained"):
        table.add_column(col, justify="left" if col in ("model", "objective") else "right")
    ar = AutoModelForCausalLM.from_pretrained(ar_dir, dtype=torch.float32).eval()
    ar_nll_per_token = sum(e.nll for e in ar_nll(ar, requests, progress=False)) / n_tokens
    rows = [("ar-base", "exact NLL", ar_nll_per_token, 0.0, _training_summary(ar_dir))]
    from ..bundled import MODELS

    paths = {"dlm-adapted": dlm_dir, "dlm-scratch": scratch_dir}
    for name in TABLE_MODELS[1:]:
        path = paths.get(name, MODELS[name])
        model = DiffusionLM.from_pretrained(path).eval()
        estimates = elbo_nll(model, requests, n_samples=4, estimator="count", seed=0, progress=False)
        bound = sum(e.nll for e in estimates) / n_tokens
        stderr = math.sqrt(sum(e.stderr ** 2 for e in estimates)) / n_tokens
        kind = "block ELBO bound" if model.config.block_size else "ELBO bound"
        rows.append((name, kind, bound, stderr, _training_summary(path)))
    for name, kind, value, stderr, summary in rows:
        tokens, total = summary.get("tokens"), summary.get("tokens_including_init", 0)
        trained = f"{tokens:,}" if tokens else "?"
        if tokens and total > tokens:
            trained += f" (+{total - tokens:,} as AR)"
        table.add_row(name, kind, f"{value:.3f}" + (f" ± {stderr:.3f}" if stderr else ""), f"{math.exp(value):,.0f}", trained)
    console.print(table)
    console.print("[dim]the adapted DLM, the DLM from scratch and the block diffusion model saw the same number of "
                  "diffusion tokens; the adapted ones started from the AR base's weights (the paper's comparison); "
                  "the block model (blocks of 8) decodes block by block with an exact KV cache[/dim]")
