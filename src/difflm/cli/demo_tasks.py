"""The demo's last part: where a diffusion LM wins, on the bundled task models.

1. Sudoku: held-out puzzles are tried in a fixed order until one is found that `dlm-sudoku`
   (easy-first decoding) solves and `ar-sudoku` - same size, data and compute, left to right - gets
   wrong; the DLM's solve is drawn live, then the AR model's grid is shown with its verdict. Nothing
   is precomputed: if no such puzzle is among the first `MAX_TRIES`, the demo says so.
2. GSM: `dlm-gsm` (a block diffusion model) answers a held-out word problem with confidence-threshold
   parallel decoding and its exact block KV cache, and reports the tokens committed per model call;
   then decodes it again by self-speculation - its diffusion view drafts each block, its causal (AR)
   view verifies the drafts in the same model call, so the answer is exactly its own AR answer - and
   `ar-gsm` answers it left to right. (The DLM writes about six tokens per call either way; on the 1000
   test problems threshold 0.99 scores 98.7% and self-speculation 99.1%, the AR model 99.0%, at 3.8x and
   4.2x its tokens/s: bench/RESULTS.md.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SUDOKU_BLANKS = "40-50"  # the hard end of the bundled models' training range: where the orders differ
MAX_TRIES = 24
SUDOKU_OPTIONS = {"strategy": "topk_margin"}  # one cell per step, the most certain first
GSM_THRESHOLD = {"strategy": "threshold", "threshold": 0.9, "stop_at_eos": True}
GSM_SPECULATIVE = {"speculative": True, "stop_at_eos": True}  # lossless: the model's own AR greedy answer
GSM_LENGTH = 118  # the longest answer (115 tokens with EOS) fits; prompt + canvas within the 208-token context


def ar_answer(model: Any, tokenizer: Any, prompt: str, length: int) -> str:
    """Greedy left-to-right answer of an AR model (transformers' generate with its KV cache)."""
    import torch

    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=length, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def gsm_options(model: Any) -> dict[str, Any]:
    """Confidence-threshold decoding of a GSM DLM with its fastest exact-enough KV cache: a block
    diffusion model on its own block grid with the block cache (exact: finished blocks never change);
    a full-attention DLM in blocks of 32 with the dual cache (Fast-dLLM's approximation)."""
    if model.config.block_size is not None:
        return {**GSM_THRESHOLD, "cache": "block"}
    return {**GSM_THRESHOLD, "block_length": 32, "cache": "dual"}


def describe_options(model: Any, options: dict[str, Any]) -> str:
    """A panel title short enough for 80 columns: "threshold 0.9, blocks of 8 (block diffusion), block cache"."""
    size = model.config.block_size
    blocks = f"blocks of {size} (block diffusion)" if size is not None else f"blocks of {options.get('block_length')}"
    return f"threshold {options['threshold']}, {blocks}, {options['cache']} cache"


def dlm_answer(model: Any, prompt: str, length: int, options: dict, callback: Any = None) -> tuple[str, int, int]:
    """(answer text, tokens generated up to EOS, model calls) of a DLM run after ``prompt``."""
    import torch

    from ..sampling import fill
    from ..sampling.templates import continuation_ids

    template = continuation_ids(prompt, model.tokenizer, model.mask_token_id, length)
    result = fill(model, [template], generator=torch.Generator().manual_seed(0), callback=callback,
                  return_dict=True, **options)
    tokens = result.new_tokens[0]
    return model.tokenizer.decode(tokens, skip_special_tokens=True), len(tokens), result.steps


def show_task_models(console: Any, model_dir: Any) -> None:
    """Part 5 of `difflm demo`; ``model_dir(name)`` is the bundled model's directory (or raises)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    from ..model import DiffusionLM
    from ..tasks import make_examples
    from ..evaluation.data import gsm8k_final_answer
    from ..tasks.gsm import extract_answer, numbers_match
    from ..tasks.model_task import sudoku_verdict
    from ..tasks.sudoku import sudoku_prompt
    from ..visualize import DenoisingView

    transformers_logging.disable_progress_bar()  # per-load bars would interleave with the live views
    dlm_dir, ar_dir = Path(model_dir("dlm-sudoku")), Path(model_dir("ar-sudoku"))
    dlm = DiffusionLM.from_pretrained(dlm_dir).eval()
    ar = AutoModelForCausalLM.from_pretrained(ar_dir, dtype=torch.float32).eval()
    ar_tok = AutoTokenizer.from_pretrained(ar_dir)
    n_params = sum(p.numel() for p in ar.parameters())
    console.print(f"[dim]dlm-sudoku and ar-sudoku: the same LLaMA architecture ({n_params / 1e6:.1f} M parameters), "
                  "data and training compute; the DLM decodes the most certain cell first, the AR model left to "
                  f"right. Held-out puzzles with {SUDOKU_BLANKS} blanks, tried in order:[/dim]")
    found = None
    for n, record in enumerate(make_examples("sudoku", MAX_TRIES, seed=0, split="test", blanks=SUDOKU_BLANKS), 1):
        prompt = sudoku_prompt(record["puzzle"])
        dlm_text = dlm_answer(dlm, prompt, 90, SUDOKU_OPTIONS)[0]
        ar_text = ar_answer(ar, ar_tok, prompt, 90)
        dlm_ok = sudoku_verdict(record["puzzle"], dlm_text).startswith("solved")
        ar_ok = sudoku_verdict(record["puzzle"], ar_text).startswith("solved")
        if dlm_ok and not ar_ok:
            found = (n, record, prompt, ar_text)
            break
    if found is None:
        console.print(f"[yellow]none of the first {MAX_TRIES} puzzles is solved by the DLM and missed by the AR "
                      "model (bench/RESULTS.md has the accuracies)[/yellow]")
    else:
        n, record, prompt, ar_text = found
        blanks = record["puzzle"].count("0")
        title = f"dlm-sudoku on held-out puzzle {n} ({blanks} blanks), one cell per step, most certain first"
        with DenoisingView(dlm.tokenizer, console=console, title=title, delay=0.03) as view:
            text = dlm_answer(dlm, prompt, 90, SUDOKU_OPTIONS, callback=view)[0]
        console.print(f"dlm-sudoku: {sudoku_verdict(record['puzzle'], text)}")
        console.print("ar-sudoku, left to right, on the same puzzle:")
        console.print(ar_text, highlight=False, markup=False)
        console.print(f"ar-sudoku: {sudoku_verdict(record['puzzle'], ar_text)}")

    gsm = DiffusionLM.from_pretrained(model_dir("dlm-gsm")).eval()
    record = make_examples("gsm", 1, seed=0, split="test")[0]
    from ..tasks.formatting import GSM_PROMPT

    options = gsm_options(gsm)
    title = f"dlm-gsm: {describe_options(gsm, options)}"
    console.print(f"Question: {record['question']}", highlight=False, markup=False)
    with DenoisingView(gsm.tokenizer, console=console, title=title, delay=0.05) as view:
        text, tokens, calls = dlm_answer(gsm, GSM_PROMPT.format(question=record["question"]), GSM_LENGTH,
                                          options, callback=view)
    got, want = extract_answer(text), gsm8k_final_answer(record["answer"])
    console.print(f"answer {got} ({'correct' if numbers_match(got, want) else f'wrong: {want}'}); {tokens} tokens in {calls} "
                  f"model calls = {tokens / max(calls, 1):.1f} tokens per call")
    title = "dlm-gsm, self-speculative: its diffusion view drafts a block, its AR view verifies it in the same call"
    with DenoisingView(gsm.tokenizer, console=console, title=title, delay=0.05) as view:
        text, tokens, calls = dlm_answer(gsm, GSM_PROMPT.format(question=record["question"]), GSM_LENGTH,
                                          GSM_SPECULATIVE, callback=view)
    got = extract_answer(text)
    console.print(f"answer {got} ({'correct' if numbers_match(got, want) else f'wrong: {want}'}), exactly its own AR "
                  f"greedy answer; {tokens} tokens in {calls} model calls = {tokens / max(calls, 1):.1f} tokens per call")
    # its AR twin (same size, data and compute) for contrast: one token per call, more accurate on average
    ar_dir = Path(model_dir("ar-gsm"))
    ar = AutoModelForCausalLM.from_pretrained(ar_dir, dtype=torch.float32).eval()
    ar_got = extract_answer(ar_answer(ar, AutoTokenizer.from_pretrained(ar_dir), GSM_PROMPT.format(
        question=record["question"]), GSM_LENGTH))
    console.print(f"ar-gsm, left to right, one token per call: answer {ar_got} "
                  f"({'correct' if numbers_match(ar_got, want) else 'wrong'}); bench/RESULTS.md has both on 1000 problems")
