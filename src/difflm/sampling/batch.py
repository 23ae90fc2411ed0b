"""Continuous batching: independent rows that join and leave a batch between denoising steps.

`denoise` runs a fixed batch through one loop. A server has requests that arrive and finish at
any time, so here every `Row` carries its own state - template, step budget, blocks, commit
schedule, random stream - and `RowBatch.step` pads the rows present into one canvas, runs one
model call (a `Denoiser`) for all their candidates and commits with `commit_step`, the step body
of `denoise`. A row run alone gives exactly what `denoise` gives for it; since each row draws from
its own generator (`difflm.rng.RowGenerators`), it gives the same in any batch (up to the float
rounding of a batched forward).

Rows of one batch share one model call and one strategy call, so every option that those apply
batch-wide must agree: `batch_key` (all options but ``steps``, ``block_length`` and
``stop_at_eos``, which are per row). Rows with other options go to another `RowBatch`.

The KV cache holds keys for one canvas layout across the steps of a block, which rows that join
or sit at other blocks would break. A cached batch (``cache`` "prefix" or "dual") is therefore a
*cohort*: built from rows with the same layout (`Row.layout`: the generated positions counted from
the end of the row, the step budget and the block length), closed once it has stepped, run in lock
step block by block as `denoise` runs a batch (a row whose block is done waits for the others), and
it sheds finished rows only when a block starts and the cache is rebuilt anyway.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

import torch

from .. import rng
from ..errors import InputError
from .canvas import decoding_blocks, template_canvas
from .denoiser import Denoiser
from .options import SamplerOptions
from .sampler import SamplerStep, commit_step, stop_token_ids
from .strategies import commit_schedule, dream_commit_count


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
        if self.options.editing_threshold is not None or self.options.remask > 0 or self.options.sub_block_length:
            raise InputError("token editing, remasking and sub-blocks run in `denoise` only, not in a continuous batch")
        canvas, _, generate_mask = template_canvas(model, [list(template)])
        self.canvas, self.generate_mask = canvas[0], generate_mask[0]
        n = int(self.generate_mask.sum())
        self.total_steps = self.options.steps or n
        blocks, groups = decoding_blocks(model, canvas, generate_mask, None, self.options.block_length)
        self.blocks = [b[0] for b in blocks]
        if self.total_steps < len(self.blocks):
            raise InputError(f"steps ({self.total_steps}) must be at least the number of blocks ({len(self.blocks)})")
        if (self.options.stop_at_eos or self.options.suppress_eos) and not stop_token_ids(model):
            raise InputError("stop_at_eos/suppress_eos need an eos_token_id or pad_token_id in the model's config")
        self.groups = groups[0]
        if generator is None:
            generator = torch.Generator()
            generator.seed()
        self.generator, self.callback, self.tag = generator, callback, tag
        self.key = batch_key(self.options)
        self.block = 0  # index of the current block
        self.step = 0  # steps run in the current block
        self.block_steps: int | None = None  # None until the block starts
        self.counts: list[int] | None = None  # commits per step of the block ("equal" schedule)
        self.calls = 0  # model calls this row took part in
        self.done = False  # every block finished (or stopped at EOS)
        self.cancelled = False

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

    def candidates(self, mask_id: int) -> torch.Tensor:
        """BoolTensor [L]: still-masked positions of the current block (none once done)."""
        if self.done or self.cancelled:
            return torch.zeros_like(self.generate_mask)
        return self.blocks[self.block] & (self.canvas == mask_id)


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
        key = self.key
        self.lockstep = key.cache != "none"
        self.rows: list[Row] = []
        self.mask_id = model.config.mask_token_id
        self.stop_ids = torch.tensor(stop_token_ids(model), dtype=torch.long, device=model.device)
        cfg = model.config
        self.pad_id = next((i for i in (cfg.pad_token_id, cfg.eos_token_id) if i is not None), 0)
        self.fill_id = next((i for i in (cfg.eos_token_id, cfg.pad_token_id) if i is not None), None)
        self._members: list[Row] | None = None  # lockstep: the rows of the current block's forward
        self._denoiser: Denoiser | None = None
        self._stepped = False

    def __len__(self) -> int:
        return len(self.rows)

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
            members = self._lockstep_members()
        else:
            members = [r for r in self.rows if self._ready(r)]
            self.rows = [r for r in self.rows if not (r.done or r.cancelled)]
        active = [self._candidates(r) for r in members]
        if not any(bool(c.any()) for c in active):
            return []
        canvas, attention_mask, generate_mask, groups, pads = self._pad(members)
        candidates = self._pad_rows(active, False, pads)
        if not self.lockstep:
            self._denoiser = Denoiser(self.model, canvas, attention_mask, generate_mask, groups=groups,
                                      attention=self.key.attention, cfg_scale=self.key.cfg_scale, cache="none")
        logits = self._denoiser(canvas, candidates)
        steps = torch.tensor([r.step for r in members])
        block_steps = torch.tensor([r.block_steps or 1 for r in members])
        num = torch.tensor([self._num_to_commit(r, int(c)) for r, c in zip(members, candidates.sum(-1))],
                           device=canvas.device)
        generators = rng.RowGenerators([r.generator for r in members])
        committed, proposals = commit_step(self.key, logits, canvas, candidates, step=steps, steps=block_steps,
                                           num_to_commit=num, generator=generators, stop_ids=self.stop_ids,
                                           mask_id=self.mask_id)
        canvas = torch.where(committed, proposals, canvas)
        out = []
        for b, (row, pad) in enumerate(zip(members, pads)):
            if not candidates[b].any():
                continue
            row.canvas = canvas[b, pad:].clone()
            row.step += 1
            row.calls += 1
            event = SamplerStep(row.calls - 1, row.total_steps, row.block, row.canvas[None], committed[b, pad:][None],
                                row.generate_mask[None], proposals[b, pad:][None], None, self.mask_id)
            if row.callback is not None:
                row.callback(event)
            out.append((row, event))
        return out

    def run(self) -> None:
        """Step until every row is done or cancelled."""
        while self.rows:
            self.step()

    # -- the per-row schedule (what `denoise` does per batch) ----------------------------------
    def _start_block(self, rows: list[Row]) -> None:
        """Step budget and commit schedule of the rows' current block (together: a cohort's rows
        get one budget from the largest block, as `denoise` gives a batch)."""
        row = rows[0]
        n_blocks, b = len(row.blocks), row.block
        budget = row.total_steps // n_blocks + (1 if b < row.total_steps % n_blocks else 0)
        block_n = torch.stack([(r.blocks[r.block] & (r.canvas == self.mask_id)).sum() for r in rows])
        if self.key.commit_strategy.fixed_count and self.key.schedule != "dream":
            budget = max(1, min(budget, int(block_n.max())))
        counts = None if self.key.schedule == "dream" else commit_schedule(block_n, budget).T.tolist()
        for i, r in enumerate(rows):
            r.block_steps, r.step, r.counts = budget, 0, None if counts is None else counts[i]

    def _end_block(self, row: Row) -> None:
        """Finish the row's block: stop it at EOS (``stop_at_eos``) or move on to the next block."""
        if row.options.stop_at_eos and bool((row.generate_mask & torch.isin(row.canvas, self.stop_ids)).any()):
            row.canvas = row.canvas.masked_fill(row.canvas == self.mask_id, self.fill_id)
            row.done = True
            return
        row.block, row.block_steps = row.block + 1, None
        row.done = row.block == len(row.blocks)

    def _candidates(self, row: Row) -> torch.Tensor:
        """BoolTensor [L]: the row's candidates this step (none once its block's budget is spent)."""
        if row.block_steps is None or row.step >= row.block_steps:
            return torch.zeros_like(row.generate_mask)
        return row.candidates(self.mask_id)

    def _ready(self, row: Row) -> bool:
        """Move an open batch's row to a step with candidates; False once done or cancelled."""
        while not (row.done or row.cancelled):
            if row.block_steps is None:
                self._start_block([row])
            if self._candidates(row).any():
                return True
            self._end_block(row)
        return False

    def _lockstep_members(self) -> list[Row]:
        """A cohort's rows of this step: fixed from a block's start to its end; at a block start
        the finished rows leave and the cache is rebuilt."""
        while True:
            if self._members is not None:
                if any(bool(self._candidates(r).any()) for r in self._members):
                    return self._members
                for r in self._members:
                    if not (r.done or r.cancelled):
                        self._end_block(r)
            self.rows = [r for r in self.rows if not (r.done or r.cancelled)]
            if not self.rows:
                self._members = self._denoiser = None
                return []
            same = self._members is not None and [id(r) for r in self.rows] == [id(r) for r in self._members]
            self._members = list(self.rows)
            self._start_block(self._members)
            canvas, attention_mask, generate_mask, groups, pads = self._pad(self._members)
            if not same or self._denoiser is None:  # the "block" cache lives across blocks: keep it while it can
                self._denoiser = Denoiser(self.model, canvas, attention_mask, generate_mask, groups=groups,
                                          attention=self.key.attention, cfg_scale=self.key.cfg_scale,
                                          cache=self.key.cache)
            self._denoiser.start_block(self._pad_rows([r.blocks[r.block] for r in self._members], False, pads))

    def _num_to_commit(self, row: Row, candidates: int) -> int:
        if candidates == 0:
            return 0
        if row.counts is None:  # Dream's schedule: a share of what is still masked
            return int(dream_commit_count(torch.tensor([candidates]), row.step, row.block_steps)[0])
        return row.counts[row.step]

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
