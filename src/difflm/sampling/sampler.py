"""The denoising loop: canvas -> { denoiser -> strategy commits tokens -> callback } -> tokens.

A canvas is [left padding | prompt | MASK * n | suffix] per row. The positions to generate are
split into blocks (semi-autoregressive decoding; one block by default) that are finished in order;
within a block, each step runs the model once, draws a token for every masked position, and lets
the strategy commit some of them. Prompt and suffix tokens are never written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..errors import InputError
from .strategies import StepContext, Strategy, commit_counts, get_strategy
from .tokens import check_sampling_args, sample_tokens

TokenIds = torch.Tensor | Sequence[int] | Sequence[Sequence[int]]


@dataclass
class SamplerStep:
    """What a callback receives after every step.

    step: global step index (0-based); total_steps: steps of the whole run; block: block index.
    canvas: LongTensor [B, L] after this step's commits (mask id where still masked).
    committed: BoolTensor [B, L], positions written at this step.
    generate_mask: BoolTensor [B, L], all positions being generated.
    """

    step: int
    total_steps: int
    block: int
    canvas: torch.Tensor
    committed: torch.Tensor
    generate_mask: torch.Tensor


Callback = Callable[[SamplerStep], None]


def _rows(ids: TokenIds, attention_mask: torch.Tensor | None = None) -> list[list[int]]:
    """Normalise token ids (1-D/2-D tensor, list, list of lists) into a list of rows; padding
    marked by ``attention_mask`` is dropped."""
    if isinstance(ids, torch.Tensor):
        if ids.dim() == 1:
            ids = ids[None]
        if ids.dim() != 2:
            raise InputError(f"token ids must be 1-D or 2-D, got shape {tuple(ids.shape)}")
        if attention_mask is not None:
            return [row[m.bool()].tolist() for row, m in zip(ids, attention_mask)]
        return ids.tolist()
    ids = list(ids)
    if not ids or isinstance(ids[0], int):
        return [[int(i) for i in ids]]
    return [[int(i) for i in row] for row in ids]


def build_canvas(
    model,
    prefixes: list[list[int]],
    middle_length: int,
    suffixes: list[list[int]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Left-padded canvas [B, L] = [pad | prefix | MASK * middle_length | suffix] per row.

    Returns (canvas, attention_mask [B, L] or None when no row is padded, generate_mask [B, L]).
    """
    cfg = model.config
    suffixes = suffixes or [[] for _ in prefixes]
    if len(suffixes) != len(prefixes):
        raise InputError(f"{len(prefixes)} prefixes but {len(suffixes)} suffixes")
    if cfg.shift and any(len(p) == 0 for p in prefixes):
        raise InputError("a shifted model needs at least one token (e.g. BOS) before the first masked position")
    vocab = model.vocab_size
    for row in prefixes + suffixes:
        if any(not 0 <= tok < vocab for tok in row):
            raise InputError(f"token ids must lie in [0, {vocab}); got {row}")
        if cfg.mask_token_id in row:
            raise InputError("the prompt contains the mask token; use infill() to mark positions to generate")
    rows = [p + [cfg.mask_token_id] * middle_length + s for p, s in zip(prefixes, suffixes)]
    length = max(len(r) for r in rows)
    if model.max_length is not None and length > model.max_length:
        raise InputError(
            f"prompt plus {middle_length} new tokens is {length} tokens, longer than the model's context of "
            f"{model.max_length}; shorten the prompt or ask for fewer tokens"
        )
    pad = next((i for i in (cfg.pad_token_id, cfg.eos_token_id) if i is not None), 0)
    canvas = torch.full((len(rows), length), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    generate_mask = torch.zeros((len(rows), length), dtype=torch.bool)
    for b, (p, row) in enumerate(zip(prefixes, rows)):
        start = length - len(row)
        canvas[b, start:] = torch.tensor(row)
        attention_mask[b, start:] = 1
        generate_mask[b, start + len(p) : start + len(p) + middle_length] = True
    device = model.device
    has_padding = bool((attention_mask == 0).any())
    return canvas.to(device), attention_mask.to(device) if has_padding else None, generate_mask.to(device)


def _block_masks(generate_mask: torch.Tensor, block_length: int) -> list[torch.Tensor]:
    """Split each row's generated positions, in order, into chunks of ``block_length``."""
    rank = generate_mask.long().cumsum(-1) - 1
    block_id = torch.where(generate_mask, rank // block_length, -1)
    n_blocks = int(block_id.max()) + 1
    return [block_id == b for b in range(n_blocks)]


@torch.inference_mode()
def denoise(
    model,
    canvas: torch.Tensor,
    generate_mask: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    steps: int,
    strategy: str | Strategy = "low_confidence",
    block_length: int | None = None,
    temperature: float = 0.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """Fill every masked position of ``generate_mask`` in ``steps`` model calls (at most).

    Blocks of ``block_length`` generated positions are finished left to right, the steps split
    evenly between them (a last shorter block when the length is not a multiple). A fixed-count
    strategy commits an equal share of a block per step; when a block has fewer tokens than its
    steps, it takes only as many steps as tokens. Returns the canvas LongTensor [B, L].
    """
    strategy = get_strategy(strategy)
    check_sampling_args(temperature, top_p)
    n = int(generate_mask.sum(-1).max())
    if steps < 1:
        raise InputError(f"steps must be >= 1, got {steps}")
    block_length = block_length or n
    if block_length < 1:
        raise InputError(f"block_length must be >= 1, got {block_length}")
    blocks = _block_masks(generate_mask, block_length)
    if steps < len(blocks):
        raise InputError(f"steps ({steps}) must be at least the number of blocks ({len(blocks)})")
    mask_id = model.config.mask_token_id
    canvas = canvas.clone()
    canvas[generate_mask] = mask_id
    total, step = steps, 0
    for b, (block, block_steps) in enumerate(zip(blocks, commit_counts(steps, len(blocks)))):
        block_n = int(block.sum(-1).max())
        if strategy.fixed_count:
            block_steps = min(block_steps, block_n)
            counts = commit_counts(block_n, block_steps)
        for i in range(block_steps):
            candidates = block & (canvas == mask_id)
            if not candidates.any():
                break
            logits = model.logits(canvas, attention_mask)
            cand_logits = logits[candidates]  # [N, V]: only positions that need a token
            cand_logits[:, mask_id] = float("-inf")  # the mask token is never a prediction
            drawn, probs = sample_tokens(cand_logits, temperature=temperature, top_p=top_p, generator=generator)
            tokens = canvas.clone()
            tokens[candidates] = drawn
            confidence = torch.full(canvas.shape, float("-inf"), device=canvas.device)
            confidence[candidates] = probs.gather(-1, drawn[:, None]).squeeze(-1)
            k = counts[i] if strategy.fixed_count else 0
            ctx = StepContext(
                step=i,
                steps=block_steps,
                candidates=candidates,
                tokens=tokens,
                confidence=confidence,
                probs=probs,
                num_to_commit=torch.full((canvas.shape[0],), k, device=canvas.device),
                generator=generator,
            )
            committed = strategy.select(ctx) & candidates
            canvas = torch.where(committed, tokens, canvas)
            if callback is not None:
                callback(SamplerStep(step, total, b, canvas, committed, generate_mask))
            step += 1
    return canvas


def generate(
    model,
    prompt_ids: TokenIds,
    *,
    max_new_tokens: int,
    steps: int | None = None,
    strategy: str | Strategy = "low_confidence",
    block_length: int | None = None,
    temperature: float = 0.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Generate ``max_new_tokens`` after each prompt by iterative denoising.

    Args:
        model: a `DiffusionLM`.
        prompt_ids: one prompt (1-D tensor or list of ids) or a batch (2-D tensor, list of lists;
            prompts of different lengths are left-padded). With ``attention_mask`` [B, P] a
            padded 2-D tensor is unpadded first.
        max_new_tokens: tokens to generate per prompt.
        steps: model calls (default: max_new_tokens); may be fewer than the tokens.
        strategy: "low_confidence" (commit the most probable, an equal share per step) or
            "random" (the reference DiffuLLaMA sampler), or a `Strategy` instance.
        block_length: semi-autoregressive block size (default: one block).
        temperature, top_p: token sampling (0 = greedy).
        generator: torch.Generator for reproducible sampling.
        callback: called with a `SamplerStep` after every step.
    Returns:
        LongTensor [B, P_max + max_new_tokens]: left-padded prompts followed by the new tokens.
    """
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    prefixes = _rows(prompt_ids, attention_mask)
    canvas, attn, gen = build_canvas(model, prefixes, max_new_tokens)
    return denoise(
        model, canvas, gen, attn, steps=max_new_tokens if steps is None else steps, strategy=strategy, block_length=block_length,
        temperature=temperature, top_p=top_p, generator=generator, callback=callback,
    )


def infill(
    model,
    prefix_ids: TokenIds,
    suffix_ids: TokenIds,
    *,
    middle_length: int,
    steps: int | None = None,
    **kwargs,
) -> torch.Tensor:
    """Generate ``middle_length`` tokens between a prefix and a suffix (no reordering needed:
    the model attends both ways). Takes the options of `generate`. Returns LongTensor
    [B, L] = left-padded [prefix | middle | suffix]."""
    if middle_length < 1:
        raise InputError(f"middle_length must be >= 1, got {middle_length}")
    prefixes, suffixes = _rows(prefix_ids), _rows(suffix_ids)
    if len(suffixes) == 1 and len(prefixes) > 1:
        suffixes = suffixes * len(prefixes)
    canvas, attn, gen = build_canvas(model, prefixes, middle_length, suffixes)
    return denoise(model, canvas, gen, attn, steps=middle_length if steps is None else steps, **kwargs)
