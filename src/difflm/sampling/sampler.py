"""The denoising loop: canvas -> { denoiser -> strategy commits tokens -> callback } -> tokens.

A canvas is [left padding | template] per row, where the mask id marks the positions to generate
(a continuation, one infilling gap or several). The positions to generate are split into blocks
(semi-autoregressive decoding; one block by default) that are finished in order; within a block,
each step runs the model once (`Denoiser`: candidates only, optional CFG and KV cache), draws a
token for every masked position, and lets the strategy commit some of them. Tokens outside the
generated positions are never written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from .. import rng
from . import editing
from ..errors import InputError
from .canvas import TokenIds, as_rows, block_masks, build_canvas, decoding_blocks, template_canvas
from .denoiser import Denoiser
from .options import SamplerOptions
from .strategies import StepContext, commit_schedule, dream_commit_count, on_grid
from .tokens import sample_tokens


@dataclass
class SamplerStep:
    """What a callback receives after every step.

    step: global step index (0-based); total_steps: the step budget of the whole run; block:
    block index. canvas: LongTensor [B, L] after this step's commits (mask id where still
    masked). committed: BoolTensor [B, L], positions written at this step. generate_mask:
    BoolTensor [B, L], all positions being generated. proposals: LongTensor [B, L], the token
    drawn at every candidate position this step (canvas values elsewhere), or None.
    attention_mask: [B, L] 1 = real token (None: no padding); mask_token_id: the mask id.
    """

    step: int
    total_steps: int
    block: int
    canvas: torch.Tensor
    committed: torch.Tensor
    generate_mask: torch.Tensor
    proposals: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None
    mask_token_id: int | None = None


Callback = Callable[[SamplerStep], None]
# (logits [N, V] of the positions being decided, those positions BoolTensor [B, L]) -> logits [N, V]
LogitsProcessor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# One generator for the batch, one per row (a `RowGenerators` or a sequence of generators), or None.
Generators = rng.Generators | Sequence[torch.Generator]


@dataclass
class Generation:
    """The result of `denoise` with ``return_dict=True``.

    sequences: LongTensor [B, L], the final canvas (left-padded prompt, generated tokens, suffix).
    generate_mask: BoolTensor [B, L], the generated positions.
    new_tokens: per row, the generated tokens in order; with ``stop_at_eos`` cut before the
        first EOS/pad (variable length).
    steps: denoising steps run (= model calls; with CFG each call runs a doubled batch).
    history: the canvas after every step (``output_history=True``), else None.
    """

    sequences: torch.Tensor
    generate_mask: torch.Tensor
    new_tokens: list[list[int]]
    steps: int
    history: list[torch.Tensor] | None = field(default=None, repr=False)


def stop_token_ids(model) -> list[int]:
    """Ids that end a text: EOS and pad (SFT responses are padded with them)."""
    cfg = model.config
    return sorted({i for i in (cfg.eos_token_id, cfg.pad_token_id) if i is not None})


def trim_at_stop(tokens: list[int], stop_ids: list[int]) -> list[int]:
    """The tokens before the first stop token."""
    cut = next((i for i, tok in enumerate(tokens) if tok in stop_ids), len(tokens))
    return tokens[:cut]


@torch.inference_mode()
def denoise(
    model,
    canvas: torch.Tensor,
    generate_mask: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    options: SamplerOptions | None = None,
    generator: Generators = None,
    callback: Callback | None = None,
    output_history: bool = False,
    logits_processor: LogitsProcessor | None = None,
    **overrides: Any,
) -> Generation:
    """Fill every position of ``generate_mask`` in at most ``steps`` model calls.

    Blocks of ``block_length`` generated positions are finished left to right, the steps split
    evenly between them. Under the "equal" schedule a fixed-count strategy commits an equal share
    of a block per step (the remainder over the first steps) and a block with fewer tokens than
    steps takes only as many steps as tokens; under "dream" each step commits
    ``int(n_mask * (1 - s / t))`` on Dream's time grid (`dream_commit_count`), every step of the
    grid runs (Dream's early steps may commit nothing), and the last one commits the rest.

    Args:
        canvas: LongTensor [B, L]; generate_mask: BoolTensor [B, L]; attention_mask: [B, L] or None.
        options: a `SamplerOptions` (default: all defaults); ``overrides`` are `SamplerOptions`
            fields applied on top (`SamplerOptions.merge`). Options left at None that depend on
            the model family (schedule, filter_order) take ``model.config.family``'s convention.
        generator: one `torch.Generator` for the batch (numbers handed out in batch order), one per
            row (a list of B generators or a `difflm.rng.RowGenerators`: each row draws from its
            own, so a row's output does not depend on the rest of the batch), or None.
        logits_processor: called as ``logits_processor(logits [N, V], positions BoolTensor [B, L])``
            on the aligned logits of the N positions being decided this step (``positions``, in
            row-major order) before any token is drawn; returns the logits to use (e.g. -inf
            outside the tokens allowed there: a multimodal model's image spans).
    Returns:
        a `Generation`.
    """
    opts = SamplerOptions.merge(options, **overrides).for_family(getattr(model.config, "family", None))
    generator = row_generators(generator, canvas.shape[0])
    strategy = opts.commit_strategy
    dream_schedule = opts.schedule == "dream"
    mask_id = model.config.mask_token_id
    n = int(generate_mask.sum(-1).max())
    if n == 0:
        raise InputError("nothing to generate: no masked position in the canvas")
    steps = opts.steps or n
    blocks, groups = decoding_blocks(model, canvas, generate_mask, attention_mask, opts.block_length)
    # (what a stretch of steps decodes, the block it belongs to): blocks, or their sub-blocks
    units = [(sub, block if opts.sub_block_length else None) for block in blocks
             for sub in (block_masks(block, opts.sub_block_length) if opts.sub_block_length else [block])]
    blocks = [sub for sub, _ in units]
    if steps < len(blocks):
        raise InputError(f"steps ({steps}) must be at least the number of blocks ({len(blocks)})")
    denoiser = Denoiser(
        model, canvas, attention_mask, generate_mask, groups=groups, attention=opts.attention,
        cfg_scale=opts.cfg_scale, cache=opts.cache,
    )
    stop_ids = torch.tensor(stop_token_ids(model), dtype=torch.long, device=canvas.device)
    if (opts.stop_at_eos or opts.suppress_eos) and stop_ids.numel() == 0:
        raise InputError("stop_at_eos/suppress_eos need an eos_token_id or pad_token_id in the model's config")
    fill_id = next((i for i in (model.config.eos_token_id, model.config.pad_token_id) if i is not None), None)
    canvas = canvas.masked_fill(generate_mask, mask_id)
    history: list[torch.Tensor] | None = [] if output_history else None
    step = 0
    revisits = opts.editing_threshold is not None or opts.remask > 0
    edits = torch.zeros_like(canvas) if revisits else None  # per position: times edited or remasked
    for b, block in enumerate(blocks):
        block_steps = steps // len(blocks) + (1 if b < steps % len(blocks) else 0)
        block_n = (block & (canvas == mask_id)).sum(-1)
        if strategy.fixed_count and not dream_schedule:
            block_steps = max(1, min(block_steps, int(block_n.max())))
        counts = None if dream_schedule or opts.remask > 0 else commit_schedule(block_n, block_steps)
        denoiser.start_block(block, within=units[b][1])
        for i in range(block_steps):
            editable = block & (canvas != mask_id) & (edits < opts.max_edits) if revisits else None
            if opts.remask > 0 and i < block_steps - 1:  # never on the last step: the block must end filled
                canvas, remasked = editing.remask(canvas, editable, opts.remask, generator, mask_id)
                edits += remasked
                editable &= ~remasked
            candidates = block & (canvas == mask_id)
            if not candidates.any():
                break
            to_edit = editable if opts.editing_threshold is not None else torch.zeros_like(candidates)
            logits = denoiser(canvas, candidates | to_edit)
            if logits_processor is not None:
                logits = logits_processor(logits, candidates | to_edit)
            is_candidate = candidates[candidates | to_edit]  # which logits rows are candidates'
            if counts is not None:
                num = counts[i]
            elif dream_schedule:
                num = dream_commit_count(candidates.sum(-1), i, block_steps)
            else:  # remasking: an equal share of what is masked now, all of it at the last step
                num = -(-candidates.sum(-1) // (block_steps - i))
            committed, proposals = commit_step(opts, logits[is_candidate], canvas, candidates, step=i,
                                               steps=block_steps, num_to_commit=num, generator=generator,
                                               stop_ids=stop_ids, mask_id=mask_id)
            canvas = torch.where(committed, proposals, canvas)
            if opts.editing_threshold is not None and to_edit.any():
                canvas, edited = editing.edit(canvas, to_edit, logits[~is_candidate], opts.editing_threshold, mask_id)
                edits += edited
                committed = committed | edited
            if history is not None:
                history.append(canvas.clone())
            if callback is not None:
                callback(SamplerStep(step, steps, b, canvas, committed, generate_mask, proposals, attention_mask, mask_id))
            step += 1
        if opts.stop_at_eos:
            stopped = (generate_mask & torch.isin(canvas, stop_ids)).any(-1)
            canvas = canvas.masked_fill(stopped[:, None] & (canvas == mask_id), fill_id)
            if bool(stopped.all()):
                break
    new_tokens = [row[m].tolist() for row, m in zip(canvas, generate_mask)]
    if opts.stop_at_eos:
        new_tokens = [trim_at_stop(row, stop_ids.tolist()) for row in new_tokens]
    return Generation(canvas, generate_mask, new_tokens, step, history)


def commit_step(
    opts: SamplerOptions,
    logits: torch.Tensor,
    canvas: torch.Tensor,
    candidates: torch.Tensor,
    *,
    step: int | torch.Tensor,
    steps: int | torch.Tensor,
    num_to_commit: torch.Tensor,
    generator: rng.Generators,
    stop_ids: torch.Tensor,
    mask_id: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The part of a denoising step after the model call, shared by `denoise` and `RowBatch`:
    draw a token for every candidate and let the strategy choose which to commit.

    Args:
        opts: the run's options, family defaults resolved (`SamplerOptions.for_family`).
        logits: FloatTensor [N, V], the candidates' aligned logits in row-major order (the mask
            token's logit is set to -inf here: it is never a prediction).
        canvas: LongTensor [B, L]; candidates: BoolTensor [B, L], the still-masked positions of
            each row's current block.
        step, steps: the step of the block and the block's step count (ints, or LongTensors [B]
            when rows are at different steps).
        num_to_commit: LongTensor [B], tokens a fixed-count strategy commits per row.
        generator: one generator for the batch, a `RowGenerators`, or None.
        stop_ids: LongTensor of EOS/pad ids (for ``suppress_eos``); mask_id: the mask token.
    Returns:
        (committed BoolTensor [B, L], proposals LongTensor [B, L]: the drawn token at every
        candidate, the canvas elsewhere).
    """
    logits[:, mask_id] = float("-inf")
    rows = candidates.sum(-1)
    drawn, probs = sample_tokens(
        logits, temperature=opts.temperature, top_p=opts.top_p, top_k=opts.top_k, gumbel=opts.gumbel,
        generator=generator, top_p_first=opts.filter_order == "top_p_first", rows=rows,
    )
    proposals = canvas.masked_scatter(candidates, drawn)
    ctx = StepContext(
        step=step, steps=steps, candidates=candidates, tokens=proposals,
        confidence=on_grid(candidates, probs.gather(-1, drawn[:, None]).squeeze(-1)),
        probs=probs, generator=generator, num_to_commit=num_to_commit,
        logits=logits if opts.temperature > 0 else None, drawn=drawn,
        suppressed=candidates & torch.isin(proposals, stop_ids) if opts.suppress_eos else None,
        schedule=opts.schedule,
    )
    return opts.commit_strategy.select(ctx) & candidates, proposals


def row_generators(generator: rng.Generators | Sequence[torch.Generator], batch: int) -> rng.Generators:
    """``generator`` as the sampler takes it: a sequence of generators becomes a `RowGenerators`
    (one stream per row); `InputError` when their number is not the batch size."""
    if isinstance(generator, (list, tuple)):
        generator = rng.RowGenerators(generator)
    if isinstance(generator, rng.RowGenerators) and len(generator) != batch:
        raise InputError(f"{len(generator)} per-row generators for a batch of {batch} rows; give one per row")
    return generator


def _finish(result: Generation, return_dict: bool) -> Generation | torch.Tensor:
    return result if return_dict else result.sequences


def generate(
    model,
    prompt_ids: TokenIds,
    *,
    max_new_tokens: int,
    options: SamplerOptions | None = None,
    attention_mask: torch.Tensor | None = None,
    generator: Generators = None,
    callback: Callback | None = None,
    return_dict: bool = False,
    output_history: bool = False,
    **overrides: Any,
) -> torch.Tensor | Generation:
    """Generate ``max_new_tokens`` after each prompt by iterative denoising.

    Args:
        model: a `DiffusionLM`.
        prompt_ids: one prompt (1-D tensor or list of ids) or a batch (2-D tensor, list of lists;
            prompts of different lengths are left-padded). With ``attention_mask`` [B, P] a
            padded 2-D tensor is unpadded first.
        max_new_tokens: tokens to generate per prompt (the budget, with ``stop_at_eos``).
        options: a `SamplerOptions` (default: all defaults).
        generator: torch.Generator for reproducible sampling, on any device (draws are made on
            the generator's device, see `difflm.rng`); or one generator per prompt (a list, or a
            `difflm.rng.RowGenerators`): row b then draws from its own stream only and gives the
            output it would give alone with that generator.
        callback: called with a `SamplerStep` after every step (streaming, visualisation).
        return_dict: return a `Generation` (trimmed new tokens, step count, history).
        output_history: keep the canvas after every step in ``Generation.history``.
        overrides: `SamplerOptions` fields applied on top of ``options`` (steps, strategy,
            block_length, temperature, top_p, top_k, gumbel, threshold, alg_temp, cfg_scale,
            cache, attention, stop_at_eos, suppress_eos, schedule, filter_order); an unknown
            name raises `InputError`.
    Returns:
        LongTensor [B, P_max + max_new_tokens] (left-padded prompts followed by the new tokens),
        or a `Generation` with ``return_dict``.
    """
    opts = SamplerOptions.merge(options, **overrides)
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    canvas, attn, gen = build_canvas(model, as_rows(prompt_ids, attention_mask), max_new_tokens)
    result = denoise(model, canvas, gen, attn, options=opts, generator=generator, callback=callback,
                     output_history=output_history)
    return _finish(result, return_dict)


def infill(
    model,
    prefix_ids: TokenIds,
    suffix_ids: TokenIds,
    *,
    middle_length: int,
    options: SamplerOptions | None = None,
    generator: Generators = None,
    callback: Callback | None = None,
    return_dict: bool = False,
    output_history: bool = False,
    **overrides: Any,
) -> torch.Tensor | Generation:
    """Generate ``middle_length`` tokens between a prefix and a suffix (no reordering needed:
    the model attends both ways). Takes the options and overrides of `generate`. Returns
    LongTensor [B, L] = left-padded [prefix | middle | suffix] (or a `Generation`)."""
    opts = SamplerOptions.merge(options, **overrides)
    if middle_length < 1:
        raise InputError(f"middle_length must be >= 1, got {middle_length}")
    prefixes, suffixes = as_rows(prefix_ids), as_rows(suffix_ids)
    if len(suffixes) == 1 and len(prefixes) > 1:
        suffixes = suffixes * len(prefixes)
    canvas, attn, gen = build_canvas(model, prefixes, middle_length, suffixes)
    result = denoise(model, canvas, gen, attn, options=opts, generator=generator, callback=callback,
                     output_history=output_history)
    return _finish(result, return_dict)


def fill(
    model,
    template_ids: TokenIds,
    *,
    options: SamplerOptions | None = None,
    generator: Generators = None,
    callback: Callback | None = None,
    return_dict: bool = False,
    output_history: bool = False,
    logits_processor: LogitsProcessor | None = None,
    **overrides: Any,
) -> torch.Tensor | Generation:
    """Generate every position of each template that holds the mask id: several gaps at once.

    ``template_ids`` is one row or a batch of rows (left-padded when lengths differ). Blocks run
    over the masked positions in reading order, across gaps. Takes the options and overrides of
    `generate` (and ``logits_processor``, see `denoise`). Returns LongTensor [B, L], the filled
    templates (or a `Generation`).
    """
    opts = SamplerOptions.merge(options, **overrides)
    canvas, attn, gen = template_canvas(model, as_rows(template_ids))
    result = denoise(model, canvas, gen, attn, options=opts, generator=generator, callback=callback,
                     output_history=output_history, logits_processor=logits_processor)
    return _finish(result, return_dict)
