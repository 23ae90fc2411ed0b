"""The denoising loop: canvas -> { denoiser -> step -> callback } -> tokens.

A canvas is [left padding | template] per row, where the mask id marks the positions to generate
(a continuation, one infilling gap or several). The positions to generate are split into blocks
(semi-autoregressive decoding; one block by default) that are finished in order (`BlockSchedule`);
within a block, each step runs the model once (`Denoiser`: candidates only, optional CFG and KV
cache) and then the one decoding step (`DecodingStep`, sampling/step.py, which `RowBatch` runs
too): draw a token for every masked position, let the strategy commit some of them, remask or
edit. Tokens outside the generated positions are never written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from .. import rng
from ..errors import InputError
from .canvas import TokenIds, as_rows, build_canvas, template_canvas
from .denoiser import Denoiser
from .options import SamplerOptions, check_renoising_applies, model_length, model_options, over_model
from .renoise import renoise_denoise, uses_renoising
from .speculative import speculative_denoise
from .step import BlockSchedule, DecodingStep, LogitsProcessor, SamplerStep, commit_step, stop_token_ids, trim_at_stop
from .uniform import is_uniform_state, uniform_denoise

__all__ = ["Callback", "Generation", "LogitsProcessor", "SamplerStep", "commit_step", "denoise", "fill", "generate",
           "infill", "row_generators", "stop_token_ids", "trim_at_stop"]

Callback = Callable[[SamplerStep], None]

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
    row_calls: per row, the model calls it took part in (the renoising sampler: calls after a row's block
        stopped early, or after the row ended at EOS, do not count), else None.
    """

    sequences: torch.Tensor
    generate_mask: torch.Tensor
    new_tokens: list[list[int]]
    steps: int
    history: list[torch.Tensor] | None = field(default=None, repr=False)
    row_calls: list[int] | None = None

    def tokens_per_call(self) -> list[float]:
        """Per row, generated tokens (after ``stop_at_eos`` trimming) per model call it took part in."""
        calls = self.row_calls or [self.steps] * len(self.new_tokens)
        return [len(tokens) / max(n, 1) for tokens, n in zip(self.new_tokens, calls)]


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

    The loop: model call (`Denoiser`) -> `DecodingStep` -> callback, block after block of the
    `BlockSchedule`. Blocks of ``block_length`` generated positions are finished left to right, the
    steps split evenly between them. Under the "equal" schedule a fixed-count strategy commits an
    equal share of a block per step (the remainder over the first steps) and a block with fewer
    tokens than steps takes only as many steps as tokens; under "dream" each step commits
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
    if opts.speculative:  # draft with the diffusion view, verify with the causal view (sampling/speculative.py)
        return Generation(*speculative_denoise(model, canvas, generate_mask, attention_mask, options=opts,
                                               generator=generator, callback=callback, output_history=output_history,
                                               logits_processor=logits_processor))
    if is_uniform_state(model) and uses_renoising(model, opts):  # DiffusionGemma's loop (sampling/renoise.py)
        return Generation(*renoise_denoise(model, canvas, generate_mask, attention_mask, options=opts, generator=generator,
                                           callback=callback, output_history=output_history,
                                           logits_processor=logits_processor))
    check_renoising_applies(opts, uniform_state=is_uniform_state(model))  # never silently ignored
    if is_uniform_state(model):  # UDLM / Duo: no mask token to commit; their reverse process (sampling/uniform.py)
        return Generation(*uniform_denoise(model, canvas, generate_mask, attention_mask, options=opts, generator=generator,
                                           callback=callback, output_history=output_history,
                                           logits_processor=logits_processor))
    mask_id = model.config.mask_token_id
    schedule, groups = BlockSchedule.plan(model, canvas, generate_mask, attention_mask, opts)
    denoiser = Denoiser(
        model, canvas, attention_mask, generate_mask, groups=groups, attention=opts.attention,
        cfg_scale=opts.cfg_scale, cache=opts.cache,
    )
    decode = DecodingStep(opts, mask_id=mask_id, stop_ids=schedule.stop_ids, logits_processor=logits_processor)
    canvas = canvas.masked_fill(generate_mask, mask_id)
    history: list[torch.Tensor] | None = [] if output_history else None
    step = 0
    while not schedule.done:
        if not schedule.started:
            schedule.start(canvas)
            denoiser.start_block(schedule.block, within=schedule.parent)
        inputs = None
        if schedule.running or schedule.post_editing:
            inputs = decode.prepare(canvas, schedule.block, schedule.edits,
                                    remask=schedule.may_remask and schedule.running, generator=generator)
            canvas, schedule.edits = inputs.canvas, inputs.edits
        post = inputs is not None and not inputs.candidates.any()  # nothing masked: an edit-only step at most
        if inputs is None or (post and not (schedule.post_editing and inputs.to_edit.any())):
            canvas = schedule.end_unit(canvas)  # the block's budget is spent, or it is filled (and edited)
            continue
        logits = denoiser(canvas, inputs.positions)
        out = decode(logits, inputs, step=schedule.step, steps=schedule.budget,
                     num_to_commit=schedule.num_to_commit(inputs.candidates), generator=generator)
        canvas = out.canvas
        # `edited` only matters after an edit-only step: no host sync on the ordinary steps
        schedule.advance(out.edits, post=post, edited=post and bool(out.committed.any()))
        if history is not None:
            history.append(canvas.clone())
        if callback is not None:
            callback(SamplerStep(step, schedule.total_steps, schedule.unit, canvas, out.committed, generate_mask,
                                 out.proposals, attention_mask, mask_id))
        step += 1
    new_tokens = [row[m].tolist() for row, m in zip(canvas, generate_mask)]
    if opts.stop_at_eos:
        new_tokens = [trim_at_stop(row, schedule.stop_ids.tolist()) for row in new_tokens]
    return Generation(canvas, generate_mask, new_tokens, step, history)


def row_generators(generator: rng.Generators | Sequence[torch.Generator], batch: int) -> rng.Generators:
    """``generator`` as the sampler takes it: a sequence of generators becomes a `RowGenerators`
    (one stream per row); `InputError` when their number is not the batch size."""
    if isinstance(generator, (list, tuple)):
        generator = rng.RowGenerators(generator)
    if isinstance(generator, rng.RowGenerators) and len(generator) != batch:
        raise InputError(f"{len(generator)} per-row generators for a batch of {batch} rows; give one per row")
    return generator


def _options(model, options: SamplerOptions | None, overrides: dict[str, Any]) -> SamplerOptions:
    """The options of one call: ``options`` (default: the model's own, `model_options`) under ``overrides``."""
    if options is not None:
        return SamplerOptions.merge(options, **overrides)
    return over_model(model_options(model), **overrides)


def _finish(result: Generation, return_dict: bool) -> Generation | torch.Tensor:
    return result if return_dict else result.sequences


def generate(
    model,
    prompt_ids: TokenIds,
    *,
    max_new_tokens: int | None = None,
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
        max_new_tokens: tokens to generate per prompt (the budget, with ``stop_at_eos``); default:
            the length the model recommends (its generation_config.json), else required.
        options: a `SamplerOptions` (default: the model's own, ``model.generation_defaults`` read
            from its generation_config.json, else all defaults). An explicit ``options`` replaces
            the model's whole; ``overrides`` replace single fields of either.
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
    opts = _options(model, options, overrides)
    if max_new_tokens is None:
        max_new_tokens = model_length(model)
        if max_new_tokens is None:
            raise InputError("max_new_tokens is required: this model recommends no length (generation_config.json)")
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
    the model attends both ways). Takes the options and overrides of `generate` (the model's
    defaults too, but not its recommended length). Returns
    LongTensor [B, L] = left-padded [prefix | middle | suffix] (or a `Generation`)."""
    opts = _options(model, options, overrides)
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
    opts = _options(model, options, overrides)
    canvas, attn, gen = template_canvas(model, as_rows(template_ids))
    result = denoise(model, canvas, gen, attn, options=opts, generator=generator, callback=callback,
                     output_history=output_history, logits_processor=logits_processor)
    return _finish(result, return_dict)
