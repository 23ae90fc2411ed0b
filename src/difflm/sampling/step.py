"""One denoising step, shared by `denoise` (one batch, one loop) and `RowBatch` (a server's rows that
join and leave between steps), so every sampler option works in both.

A step is the two halves around one model call - the shape of diffusers' schedulers, whose
``step(model_output, timestep, sample)`` returns a small dataclass:

* `DecodingStep.prepare` (before the call): ReMDM remasking inside the current block, and which
  positions the model must predict - the block's masked *candidates* and, with token editing, the
  tokens already committed in it. Returns a `StepInput`.
* `DecodingStep.__call__` (after it, given the aligned logits of those positions): draw a token for
  every candidate, let the strategy choose which to commit (`commit_step`), apply token editing.
  Returns a `StepOutput`.

Where each row stands - its blocks (or sub-blocks), the step budget of each, how many tokens each step
commits, when a block ends, and whether a row stopped at EOS - is `BlockSchedule`: the one place that
bookkeeping lives. `SamplerStep` is what a callback (``--show-steps``, a server's stream) sees.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from .. import rng
from ..errors import InputError
from . import editing
from .canvas import block_masks, decoding_blocks
from .options import SamplerOptions
from .strategies import StepContext, commit_schedule, dream_commit_count, on_grid
from .tokens import sample_tokens

# (logits [N, V] of the positions being decided, those positions BoolTensor [B, L]) -> logits [N, V]
LogitsProcessor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class SamplerStep:
    """What a callback receives after every step.

    step: global step index (0-based); total_steps: the step budget of the whole run; block:
    block index (the sub-block's, with ``sub_block_length``). canvas: LongTensor [B, L] after this
    step's commits (mask id where still masked). committed: BoolTensor [B, L], positions written at
    this step (commits and edits). generate_mask: BoolTensor [B, L], all positions being generated.
    proposals: LongTensor [B, L], the token drawn at every candidate position this step (canvas
    values elsewhere), or None. attention_mask: [B, L] 1 = real token (None: no padding);
    mask_token_id: the mask id.
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


def stop_token_ids(model: Any) -> list[int]:
    """Ids that end a text: EOS and pad (SFT responses are padded with them)."""
    cfg = model.config
    return sorted({i for i in (cfg.eos_token_id, cfg.pad_token_id) if i is not None})


def trim_at_stop(tokens: list[int], stop_ids: list[int]) -> list[int]:
    """The tokens before the first stop token."""
    cut = next((i for i, tok in enumerate(tokens) if tok in stop_ids), len(tokens))
    return tokens[:cut]


class BlockSchedule:
    """Where B rows that decode their blocks together stand (B = 1: one row of a `RowBatch`).

    The generated positions are cut into *units* decoded in order: the blocks of `decoding_blocks`,
    or their sub-blocks of ``sub_block_length`` positions (Fast-dLLM v2). The run's ``total_steps``
    are split evenly between the units (the remainder to the first ones); a unit's budget and commit
    counts are fixed when it starts (`start`). Under the "equal" schedule a fixed-count strategy
    commits an equal share of the unit per step and a unit with fewer tokens than steps takes only
    as many steps as tokens; under "dream" every step of the grid runs; with remasking each step
    commits an equal share of what is masked now.

    Build one with `plan`. The loop asks: `started` / `start`, `running` (steps left), `block` (the
    current unit, BoolTensor [B, L]), `num_to_commit`, `advance` after a step, `end_unit` when the
    unit has nothing left or its budget is spent, and `done`.

    Attributes:
        units: BoolTensor [B, L] per unit; parents: the block a sub-block belongs to (None: whole blocks).
        total_steps: the run's step budget. unit, step: the current unit and the steps run in it.
        budget: the current unit's step count (None until it starts). edits: LongTensor [B, L], how
        often each position was edited or remasked (None when neither is on). stopped: BoolTensor [B],
        rows that ended at EOS (``stop_at_eos``).
    """

    def __init__(self, units: list[torch.Tensor], parents: list[torch.Tensor | None], total_steps: int,
                 options: SamplerOptions, generate_mask: torch.Tensor, *, mask_id: int, stop_ids: torch.Tensor,
                 fill_id: int | None) -> None:
        self.units, self.parents, self.total_steps, self.options = units, parents, total_steps, options
        self.generate_mask, self.mask_id, self.stop_ids, self.fill_id = generate_mask, mask_id, stop_ids, fill_id
        self.unit, self.step = 0, 0
        self.budget: int | None = None
        self._counts: torch.Tensor | None = None  # [budget, B] commits per step ("equal" schedule)
        revisits = options.editing_threshold is not None or options.remask > 0
        self.edits = torch.zeros(generate_mask.shape, dtype=torch.long, device=generate_mask.device) if revisits else None
        self.stopped = torch.zeros(generate_mask.shape[0], dtype=torch.bool, device=generate_mask.device)
        self._all_stopped = False
        self.post_steps, self._post_edited = 0, True  # edit-only steps after the unit's last mask

    @classmethod
    def plan(cls, model: Any, canvas: torch.Tensor, generate_mask: torch.Tensor, attention_mask: torch.Tensor | None,
             options: SamplerOptions) -> tuple[BlockSchedule, torch.Tensor]:
        """The schedule of a canvas [B, L] and the decoding group of every position (LongTensor [B, L],
        for the `Denoiser`). ``options``: family defaults resolved. `InputError` when nothing is masked,
        when ``steps`` is below the number of units, or EOS options meet a model without EOS/pad."""
        n = int(generate_mask.sum(-1).max())
        if n == 0:
            raise InputError("nothing to generate: no masked position in the canvas")
        total = options.steps or n
        blocks, groups = decoding_blocks(model, canvas, generate_mask, attention_mask, options.block_length)
        sub = options.sub_block_length
        pairs = [(unit, block if sub else None) for block in blocks for unit in (block_masks(block, sub) if sub else [block])]
        if total < len(pairs):
            raise InputError(f"steps ({total}) must be at least the number of blocks ({len(pairs)})")
        stop_ids = torch.tensor(stop_token_ids(model), dtype=torch.long, device=canvas.device)
        if (options.stop_at_eos or options.suppress_eos) and stop_ids.numel() == 0:
            raise InputError("stop_at_eos/suppress_eos need an eos_token_id or pad_token_id in the model's config")
        cfg = model.config
        fill_id = next((i for i in (cfg.eos_token_id, cfg.pad_token_id) if i is not None), None)
        units, parents = [u for u, _ in pairs], [p for _, p in pairs]
        return cls(units, parents, total, options, generate_mask, mask_id=cfg.mask_token_id, stop_ids=stop_ids,
                   fill_id=fill_id), groups

    # -- where the rows stand ----------------------------------------------------------------------
    @property
    def done(self) -> bool:
        """Every unit finished, or every row stopped at EOS."""
        return self.unit >= len(self.units) or self._all_stopped

    @property
    def started(self) -> bool:
        return self.budget is not None

    @property
    def running(self) -> bool:
        """The current unit has started and has steps left."""
        return self.budget is not None and self.step < self.budget

    @property
    def block(self) -> torch.Tensor:
        """BoolTensor [B, L]: the current unit's positions."""
        return self.units[self.unit]

    @property
    def parent(self) -> torch.Tensor | None:
        """BoolTensor [B, L]: the block the current sub-block belongs to (None: whole blocks)."""
        return self.parents[self.unit]

    @property
    def may_remask(self) -> bool:
        """Remasking runs at every step of a unit but its last: the unit must end filled."""
        return self.budget is not None and self.step < self.budget - 1

    @property
    def post_editing(self) -> bool:
        """Whether an edit-only step may run once the unit has no mask left (``post_edit_steps``): some
        remain and the previous one edited something (LLaDA 2.1's generate)."""
        return (self.budget is not None and self.options.editing_threshold is not None and self._post_edited
                and self.post_steps < self.options.post_edit_steps)

    # -- moving on ---------------------------------------------------------------------------------
    def start(self, canvas: torch.Tensor) -> None:
        """Start the current unit (canvas: LongTensor [B, L]); see `start_together`."""
        BlockSchedule.start_together([self], [canvas])

    @staticmethod
    def start_together(schedules: Sequence[BlockSchedule], canvases: Sequence[torch.Tensor]) -> None:
        """Start the current unit of schedules that run in lock step (the rows of one batch, or of a
        cached cohort: the same plan at the same unit): one budget for all, from the largest unit,
        as one batch gets it; commit counts per row."""
        first = schedules[0]
        opts, n_units, b, total = first.options, len(first.units), first.unit, first.total_steps
        budget = total // n_units + (1 if b < total % n_units else 0)
        block_n = torch.cat([(s.block & (c == s.mask_id)).sum(-1) for s, c in zip(schedules, canvases)])
        dream = opts.schedule == "dream"
        if opts.commit_strategy.fixed_count and not dream:
            budget = max(1, min(budget, int(block_n.max())))
        counts = None if dream or opts.remask > 0 else commit_schedule(block_n, budget)
        offset = 0
        for s in schedules:
            rows = s.generate_mask.shape[0]
            s.budget, s.step = budget, 0
            s._counts = None if counts is None else counts[:, offset:offset + rows]
            offset += rows

    def num_to_commit(self, candidates: torch.Tensor) -> torch.Tensor:
        """LongTensor [B]: tokens a fixed-count strategy commits in each row at this step, given the
        candidates BoolTensor [B, L]."""
        if self.budget is not None and self.step >= self.budget:  # an edit-only step past the budget: no commit
            return torch.zeros(candidates.shape[0], dtype=torch.long, device=candidates.device)
        if self._counts is not None:
            return self._counts[self.step]
        if self.options.schedule == "dream":
            return dream_commit_count(candidates.sum(-1), self.step, self.budget)
        return -(-candidates.sum(-1) // (self.budget - self.step))  # remasking: a share of what is masked now

    def advance(self, edits: torch.Tensor | None, *, post: bool = False, edited: bool = True) -> None:
        """A step of the current unit ran; ``edits``: its `StepOutput.edits`; ``post``: it was an edit-only
        step after the unit's last mask, which ``edited`` something or not."""
        if post:
            self.post_steps, self._post_edited = self.post_steps + 1, edited
        else:
            self.step += 1
        self.edits = edits

    def end_unit(self, canvas: torch.Tensor) -> torch.Tensor:
        """Finish the current unit and move to the next. With ``stop_at_eos`` a row whose generated
        positions hold EOS/pad stops: its masked positions are filled with EOS. Returns the canvas."""
        if self.options.stop_at_eos:
            self.stopped = (self.generate_mask & torch.isin(canvas, self.stop_ids)).any(-1)
            canvas = canvas.masked_fill(self.stopped[:, None] & (canvas == self.mask_id), self.fill_id)
            self._all_stopped = bool(self.stopped.all())
        self.unit, self.step, self.budget, self._counts = self.unit + 1, 0, None, None
        self.post_steps, self._post_edited = 0, True
        return canvas


@dataclass
class StepInput:
    """What `DecodingStep.prepare` hands to the model call and then to the step.

    canvas: LongTensor [B, L] after remasking. candidates: BoolTensor [B, L], the still-masked
    positions of each row's current unit. to_edit: BoolTensor [B, L], committed tokens of the unit
    the model predicts again (token editing; all False when off). edits: LongTensor [B, L] or None,
    how often each position was edited or remasked.
    """

    canvas: torch.Tensor
    candidates: torch.Tensor
    to_edit: torch.Tensor
    edits: torch.Tensor | None = None

    @property
    def positions(self) -> torch.Tensor:
        """BoolTensor [B, L]: the positions whose aligned logits the step needs."""
        return self.candidates | self.to_edit


@dataclass
class StepOutput:
    """The result of one step.

    canvas: LongTensor [B, L] after the step. committed: BoolTensor [B, L], positions written
    (commits and edits). proposals: LongTensor [B, L], the token drawn at every candidate (the
    canvas elsewhere). edits: LongTensor [B, L] or None (see `StepInput`). filled: BoolTensor [B],
    rows whose current unit has no masked position left.
    """

    canvas: torch.Tensor
    committed: torch.Tensor
    proposals: torch.Tensor
    edits: torch.Tensor | None
    filled: torch.Tensor


class DecodingStep:
    """The step of one model call over a batch of rows (see the module docstring).

    Args:
        options: the options the batch shares, family defaults resolved (`SamplerOptions.for_family`).
        mask_id: the mask token. stop_ids: LongTensor of EOS/pad ids (for ``suppress_eos``).
        logits_processor: called as ``logits_processor(logits [N, V], positions BoolTensor [B, L])``
            before any token is drawn (see `denoise`).
    """

    def __init__(self, options: SamplerOptions, *, mask_id: int, stop_ids: torch.Tensor,
                 logits_processor: LogitsProcessor | None = None) -> None:
        self.options, self.mask_id, self.stop_ids = options, mask_id, stop_ids
        self.logits_processor = logits_processor

    def prepare(self, canvas: torch.Tensor, block: torch.Tensor, edits: torch.Tensor | None, *, remask: bool,
                generator: rng.Generators) -> StepInput:
        """Before the model call: remask (with probability ``options.remask``, when ``remask``) tokens
        committed earlier in ``block`` (BoolTensor [B, L]), and say which positions need logits.
        Revisits stop at ``max_edits`` per position, so decoding settles."""
        opts, editable = self.options, None
        if edits is not None:
            editable = block & (canvas != self.mask_id) & (edits < opts.max_edits)
            if opts.remask > 0 and remask:
                canvas, remasked = editing.remask(canvas, editable, opts.remask, generator, self.mask_id)
                edits = edits + remasked
                editable = editable & ~remasked
        candidates = block & (canvas == self.mask_id)
        to_edit = editable if opts.editing_threshold is not None else torch.zeros_like(candidates)
        return StepInput(canvas, candidates, to_edit, edits)

    def __call__(self, logits: torch.Tensor, inputs: StepInput, *, step: int | torch.Tensor,
                 steps: int | torch.Tensor, num_to_commit: torch.Tensor, generator: rng.Generators) -> StepOutput:
        """After the model call. ``logits``: FloatTensor [N, V], the aligned logits of
        ``inputs.positions`` in row-major order. ``step``/``steps``: the step of the unit and its
        budget (ints, or LongTensors [B] for rows at different steps); ``num_to_commit``: LongTensor
        [B] (`BlockSchedule.num_to_commit`)."""
        opts = self.options
        positions = inputs.positions
        if self.logits_processor is not None:
            logits = self.logits_processor(logits, positions)
        is_candidate = inputs.candidates[positions]  # which logits rows are candidates'
        if not inputs.candidates.any():  # an edit-only step (post_edit_steps): nothing to commit
            committed, proposals = torch.zeros_like(inputs.candidates), inputs.canvas
        else:
            committed, proposals = commit_step(opts, logits[is_candidate], inputs.canvas, inputs.candidates, step=step,
                                               steps=steps, num_to_commit=num_to_commit, generator=generator,
                                               stop_ids=self.stop_ids, mask_id=self.mask_id)
        canvas = torch.where(committed, proposals, inputs.canvas)
        edits = inputs.edits
        if opts.editing_threshold is not None and inputs.to_edit.any():
            canvas, edited = editing.edit(canvas, inputs.to_edit, logits[~is_candidate], opts.editing_threshold,
                                          self.mask_id)
            edits = edits + edited
            committed = committed | edited
        filled = ~(inputs.candidates & (canvas == self.mask_id)).any(-1)
        return StepOutput(canvas, committed, proposals, edits, filled)


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
    """Draw a token for every candidate and let the strategy choose which to commit.

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
