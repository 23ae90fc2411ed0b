"""Continuous batching: independent rows that join and leave a batch between denoising steps.

`denoise` runs a fixed batch through one loop. A server has requests that arrive and finish at
any time, so here every `Row` carries its own state - template, `BlockSchedule` (its blocks, step
budget, commit counts, revisits), random stream - and `RowBatch.step` pads the rows present into
one canvas, runs one model call (a `Denoiser`) for all their candidates and then the same
`DecodingStep` that `denoise` runs. Every sampler option therefore works here too: strategies,
schedules, CFG, EOS, caches, sub-blocks, token editing and remasking. A row run alone gives
exactly what `denoise` gives for it; since each row draws from its own generator
(`difflm.rng.RowGenerators`), it gives the same in any batch (up to the float rounding of a
batched forward).

Rows of one batch share one model call and one step, so every option that those apply
batch-wide must agree: `batch_key` (all options but ``steps``, ``block_length`` and
``stop_at_eos``, which are per row). Rows with other options go to another `RowBatch`.

The KV cache holds keys for one canvas layout across the steps of a block, which rows that join
or sit at other blocks would break. A cached batch (``cache`` "prefix", "dual" or "block") is
therefore a *cohort*: built from rows with the same layout (`Row.layout`: the generated positions
counted from the end of the row, the step budget and the block length), closed once it has
stepped, run in lock step block by block as `denoise` runs a batch (one budget per block; a row
whose block is finished waits for the others), and it sheds finished rows only when a block starts
and the cache is rebuilt anyway.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

import torch

from .. import rng
from ..errors import InputError
from .canvas import template_canvas
from .denoiser import Denoiser
from .options import SamplerOptions
from .step import BlockSchedule, DecodingStep, SamplerStep, StepInput, stop_token_ids


def batch_key(options: SamplerOptions) -> SamplerOptions:
    """The options that rows of one `RowBatch` must share: ``options`` without the per-row ones
    (``steps``, ``block_length``, ``stop_at_eos``). Hashable; equal keys may share a batch."""
    return replace(options, steps=None, block_length=None, stop_at_eos=False)


class Row:
    """One sequence being denoised in a `RowBatch`.

    Args:
        model: a `DiffusionLM`.
        template: token ids [L] where the mask id marks the positions to generate (as for `fill`).
        options: its `SamplerOptions` (family defaults are resolved here).
        generator: its own random stream (default: a fresh, non-deterministically seeded one).
        callback: called with a `SamplerStep` of batch size 1 after each of its steps.
        tag: anything the caller wants to find the row by.
    Raises:
        `InputError` for a bad template (as `fill`), or fewer steps than blocks.
    """

    def __init__(self, model: Any, template: list[int], options: SamplerOptions | None = None, *,
                 generator: torch.Generator | None = None, callback: Callable[[SamplerStep], None] | None = None,
                 tag: Any = None) -> None:
        self.options = SamplerOptions.merge(options).for_family(getattr(model.config, "family", None))
        canvas, _, generate_mask = template_canvas(model, [list(template)])
        self.schedule, groups = BlockSchedule.plan(model, canvas, generate_mask, None, self.options)
        self.canvas, self.generate_mask, self.groups = canvas[0], generate_mask[0], groups[0]
        self.mask_id = model.config.mask_token_id
        if generator is None:
            generator = torch.Generator()
            generator.seed()
        self.generator, self.callback, self.tag = generator, callback, tag
        self.key = batch_key(self.options)
        self.calls = 0  # model calls this row took part in
        self.cancelled = False

    @property
    def done(self) -> bool:
        """Every block finished (or the row stopped at EOS)."""
        return self.schedule.done

    @property
    def block(self) -> int:
        """Index of the current block (sub-block)."""
        return self.schedule.unit

    @property
    def total_steps(self) -> int:
        return self.schedule.total_steps

    @property
    def layout(self) -> tuple:
        """What rows of one cached cohort share: generated positions counted from the row's end,
        the step budget and the block length (left padding then aligns their blocks)."""
        length = self.generate_mask.shape[0]
        ends = tuple((length - 1 - self.generate_mask.nonzero().flatten()).tolist())
        return ends, self.total_steps, self.options.block_length

    @property
    def new_tokens(self) -> list[int]:
        """The generated positions' tokens in order (mask id where still masked)."""
        return self.canvas[self.generate_mask].tolist()

    @property
    def settled_tokens(self) -> list[int]:
        """`new_tokens` with the mask id wherever a token may still change: with token editing or
        remasking, the tokens of the current block are final only once the block ends."""
        if self.schedule.edits is None or self.done:
            return self.new_tokens
        return self.canvas.masked_fill(self.schedule.block[0], self.mask_id)[self.generate_mask].tolist()

    def end_block(self) -> None:
        """The current block is finished: stop at EOS (``stop_at_eos``) or move to the next one."""
        self.canvas = self.schedule.end_unit(self.canvas[None])[0]


class RowBatch:
    """Rows that share one model call per denoising step.

    Args:
        model: a `DiffusionLM`.
        options: the rows' options (their `batch_key` is what rows must share; ``Row.key``).
    ``lockstep`` follows ``options.cache``: cached batches are cohorts (see the module docstring).
    """

    def __init__(self, model: Any, options: SamplerOptions) -> None:
        self.model = model
        self.key = batch_key(SamplerOptions.merge(options).for_family(getattr(model.config, "family", None)))
        self.lockstep = self.key.cache != "none"
        self.rows: list[Row] = []
        self.mask_id = model.config.mask_token_id
        stop_ids = torch.tensor(stop_token_ids(model), dtype=torch.long, device=model.device)
        self.decode = DecodingStep(self.key, mask_id=self.mask_id, stop_ids=stop_ids)
        cfg = model.config
        self.pad_id = next((i for i in (cfg.pad_token_id, cfg.eos_token_id) if i is not None), 0)
        self._members: list[Row] | None = None  # lockstep: the rows of the current block's forward
        self._waiting: set[int] = set()  # lockstep: ids of members whose block has nothing left
        self._denoiser: Denoiser | None = None
        self._stepped = False

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def started(self) -> bool:
        """Whether the batch has stepped (a cohort then takes no new row)."""
        return self._stepped

    def accepts(self, row: Row) -> bool:
        """Whether ``row`` may join now: same key; a cohort also needs the same layout and not to
        have stepped yet."""
        if row.key != self.key:
            return False
        return not self.lockstep or (not self._stepped and (not self.rows or row.layout == self.rows[0].layout))

    def add(self, row: Row) -> None:
        """Add ``row``; it takes part from the next step on. `InputError` if it may not join."""
        if not self.accepts(row):
            raise InputError("this row cannot join the batch (other options, or a cached cohort already running)")
        self.rows.append(row)

    def cancel(self, row: Row) -> None:
        """Stop denoising ``row`` (a client went away); it leaves at the next step (a cohort:
        it computes nothing more and leaves when the next block starts)."""
        row.cancelled = True

    @torch.inference_mode()
    def step(self) -> list[tuple[Row, SamplerStep]]:
        """One model call for every row that has a candidate; rows finished or cancelled leave.

        Returns the rows that took part, each with its `SamplerStep` (batch size 1: the row's own
        canvas [1, L_row], committed positions, block, its step count and budget).
        """
        self._stepped = True
        if self.lockstep:
            members, inputs = self._lockstep_members()
        else:
            ready = [(r, self._ready(r)) for r in self.rows]
            self.rows = [r for r in self.rows if not (r.done or r.cancelled)]
            members, inputs = [r for r, i in ready if i is not None], [i for _, i in ready if i is not None]
        if not members:
            return []
        canvas, attention_mask, generate_mask, groups, pads = self._pad(members)
        batch = StepInput(
            self._pad_rows([i.canvas[0] for i in inputs], self.pad_id, pads),
            self._pad_rows([i.candidates[0] for i in inputs], False, pads),
            self._pad_rows([i.to_edit[0] for i in inputs], False, pads),
            None if inputs[0].edits is None else self._pad_rows([i.edits[0] for i in inputs], 0, pads),
        )
        if not self.lockstep:  # rows at any block: a fresh forward over this step's rows
            self._denoiser = Denoiser(self.model, canvas, attention_mask, generate_mask, groups=groups,
                                      attention=self.key.attention, cfg_scale=self.key.cfg_scale, cache="none")
            self._start_block(members, pads)
        logits = self._denoiser(batch.canvas, batch.positions)
        schedules = [r.schedule for r in members]
        out = self.decode(
            logits, batch, step=torch.tensor([s.step for s in schedules]),
            steps=torch.tensor([s.budget for s in schedules]),
            num_to_commit=torch.cat([s.num_to_commit(i.candidates) for s, i in zip(schedules, inputs)]),
            generator=rng.RowGenerators([r.generator for r in members]),
        )
        events = []
        for b, (row, pad) in enumerate(zip(members, pads)):
            if row.cancelled:  # a cohort's cancelled row: computes nothing more
                continue
            row.canvas = out.canvas[b, pad:].clone()
            # an edit-only step after the block's last mask (checked only when the option is on: no host
            # sync per row otherwise; a cohort's row that merely waits counts as an ordinary step, as before)
            post = row.schedule.post_editing and not inputs[b].candidates.any()
            row.schedule.advance(None if out.edits is None else out.edits[b:b + 1, pad:].clone(), post=post,
                                 edited=post and bool(out.committed[b].any()))
            if not batch.positions[b].any():  # a cohort's row with nothing left in this block
                continue
            row.calls += 1
            event = SamplerStep(row.calls - 1, row.total_steps, row.block, row.canvas[None], out.committed[b, pad:][None],
                                row.generate_mask[None], out.proposals[b, pad:][None], None, self.mask_id)
            if row.callback is not None:
                row.callback(event)
            events.append((row, event))
        return events

    def run(self) -> None:
        """Step until every row is done or cancelled."""
        while self.rows:
            self.step()

    # -- which rows step, at which block (the bookkeeping itself is each row's `BlockSchedule`) -----
    def _prepare(self, row: Row) -> StepInput:
        """The row's `DecodingStep.prepare` (remasking, candidates); nothing for a row that is
        cancelled, done, or past its block's budget."""
        s = row.schedule
        if row.cancelled or s.done or not (s.running or s.post_editing) or id(row) in self._waiting:
            none = torch.zeros_like(row.generate_mask)[None]
            return StepInput(row.canvas[None], none, none, s.edits)
        return self.decode.prepare(row.canvas[None], s.block, s.edits, remask=s.may_remask and s.running,
                                   generator=rng.RowGenerators([row.generator]))

    @staticmethod
    def _has_work(row: Row, inputs: StepInput) -> bool:
        """Whether the row steps: a masked candidate, or (its block filled) an edit-only step
        (``post_edit_steps``) with something it may edit."""
        return bool(inputs.candidates.any()) or (row.schedule.post_editing and bool(inputs.to_edit.any()))

    def _ready(self, row: Row) -> StepInput | None:
        """An open batch's row, moved on to a step with candidates (what `denoise` does for a batch
        of one); None once done or cancelled."""
        while not (row.done or row.cancelled):
            if not row.schedule.started:
                row.schedule.start(row.canvas[None])
            inputs = self._prepare(row)
            if self._has_work(row, inputs):
                return inputs
            row.end_block()
        return None

    def _lockstep_members(self) -> tuple[list[Row], list[StepInput]]:
        """A cohort's rows of this step: fixed from a block's start to its end; at a block start
        the finished rows leave and the cache is rebuilt."""
        while True:
            if self._members is not None:
                inputs = [self._prepare(r) for r in self._members]
                # a row whose block has nothing left waits for the others (alone, its block would end
                # here): it is not prepared again - no remasking draws - until the next block
                self._waiting |= {id(r) for r, i in zip(self._members, inputs) if not self._has_work(r, i)}
                if len(self._waiting) < len(self._members):
                    return self._members, inputs
                for r in self._members:
                    if not (r.done or r.cancelled):
                        r.end_block()
            self.rows = [r for r in self.rows if not (r.done or r.cancelled)]
            if not self.rows:
                self._members = self._denoiser = None
                return [], []
            same = self._members is not None and [id(r) for r in self.rows] == [id(r) for r in self._members]
            self._members, self._waiting = list(self.rows), set()
            BlockSchedule.start_together([r.schedule for r in self._members], [r.canvas[None] for r in self._members])
            canvas, attention_mask, generate_mask, groups, pads = self._pad(self._members)
            if not same or self._denoiser is None:  # the "block" cache lives across blocks: keep it while it can
                self._denoiser = Denoiser(self.model, canvas, attention_mask, generate_mask, groups=groups,
                                          attention=self.key.attention, cfg_scale=self.key.cfg_scale,
                                          cache=self.key.cache)
            self._start_block(self._members, pads)

    def _start_block(self, rows: list[Row], pads: list[int]) -> None:
        """Tell the denoiser the rows' current blocks (windows, block-dependent attention)."""
        block = self._pad_rows([r.schedule.block[0] for r in rows], False, pads)
        parent = None
        if self.key.sub_block_length:
            parent = self._pad_rows([r.schedule.parent[0] for r in rows], False, pads)
        self._denoiser.start_block(block, within=parent)

    # -- padding -------------------------------------------------------------------------------
    def _pad_rows(self, values: list[torch.Tensor], fill: Any, pads: list[int]) -> torch.Tensor:
        width = max(v.shape[0] for v in values)
        out = torch.full((len(values), width), fill, dtype=values[0].dtype, device=values[0].device)
        for b, (v, pad) in enumerate(zip(values, pads)):
            out[b, pad:] = v
        return out

    def _pad(self, rows: list[Row]):
        """Left-padded canvas [B, L], attention mask (None without padding), generate mask and
        decoding groups of ``rows``, and each row's padding width."""
        width = max(r.canvas.shape[0] for r in rows)
        pads = [width - r.canvas.shape[0] for r in rows]
        canvas = self._pad_rows([r.canvas for r in rows], self.pad_id, pads)
        generate_mask = self._pad_rows([r.generate_mask for r in rows], False, pads)
        groups = self._pad_rows([r.groups for r in rows], 0, pads)
        attention_mask = None
        if any(pads):
            attention_mask = self._pad_rows([torch.ones_like(r.canvas) for r in rows], 0, pads)
        return canvas, attention_mask, generate_mask, groups, pads
