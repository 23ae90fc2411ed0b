"""Which masked positions to commit at a denoising step.

A strategy sees one `StepContext` and returns a BoolTensor [B, L] of positions to commit (a subset
of ``ctx.candidates``). Scoring strategies rank candidates and commit the ``ctx.num_to_commit`` best
of each row (or, with ``alg_temp`` > 0, sample that many positions with probabilities
softmax(score / alg_temp), as Dream does); adding one is a matter of writing its score.

| name             | origin    | score of a candidate position                                   |
|------------------|-----------|-----------------------------------------------------------------|
| `random`         | DiffuLLaMA| none: each position is revealed with probability 1/(steps left)  |
| `low_confidence` | LLaDA     | softmax(raw logits) at the drawn token (temperature-free)        |
| `maskgit_plus`   | Dream     | probability of the drawn token under the sampling distribution  |
| `topk_margin`    | Dream     | top-1 minus top-2 probability of the sampling distribution       |
| `entropy`        | Dream     | negative entropy of the sampling distribution                    |
| `threshold`      | Fast-dLLM | every candidate whose LLaDA confidence exceeds the threshold,    |
|                  |           | and at least the scheduled count (the most confident ones)       |

How many a fixed-count strategy commits per step is the reveal schedule (`REVEAL_SCHEDULES`):
"equal" (LLaDA's equal share of the block, `commit_schedule`) or "dream" (Dream's time grid,
`dream_commit_count`).

The names are `difflm.registry.STRATEGIES` (a torch-free table the command line reads too): a new
strategy is a `Strategy` subclass and one line there (or ``STRATEGIES.register(name, "pkg.mod:Cls")``),
and tests/test_strategy_contracts.py runs it through the sampler's invariants.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from .. import rng
from ..errors import InputError
from ..registry import REVEAL_SCHEDULES, STRATEGIES
from .options import check_strategy

SCHEDULES = REVEAL_SCHEDULES  # the old name ("schedule" also names the noise schedule); prefer REVEAL_SCHEDULES
DREAM_EPS = 1e-3  # the end of Dream's time grid linspace(1, eps, steps + 1)


@dataclass
class StepContext:
    """Everything a strategy may look at, for a canvas of B rows and L positions and the N
    candidate positions in row-major order.

    step / steps: this step's index (0-based) and the number of steps of the current block:
        ints, or LongTensors [B] when the rows of the batch are at different steps (continuous
        batching, `RowBatch`).
    candidates: BoolTensor [B, L], positions still masked that may be committed now.
    tokens: LongTensor [B, L], the token drawn for every candidate (canvas values elsewhere).
    confidence: FloatTensor [B, L], probability of the drawn token under ``probs`` (-inf
        outside candidates).
    probs: FloatTensor [N, V], the distributions the candidates' tokens were drawn from.
    num_to_commit: LongTensor [B], how many tokens a fixed-count strategy commits in each row.
    generator: RNG for strategies that draw positions: one `torch.Generator` for the batch, or a
        `difflm.rng.RowGenerators` (one stream per row; draws are then made per candidate).
    logits: FloatTensor [N, V], the model's raw logits of the candidates (mask token at -inf);
        None means ``probs`` came from untempered, unfiltered logits.
    drawn: LongTensor [N], the drawn tokens of the candidates.
    suppressed: BoolTensor [B, L] or None, candidates that drew a stop token (EOS/pad) while EOS
        suppression is on: committed only when nothing else is left to commit.
    schedule: the reveal schedule of the run ("equal" or "dream", see `REVEAL_SCHEDULES`); `RandomOrder`
        reveals with the matching probability.
    """

    step: int | torch.Tensor
    steps: int | torch.Tensor
    candidates: torch.Tensor
    tokens: torch.Tensor
    confidence: torch.Tensor
    probs: torch.Tensor
    num_to_commit: torch.Tensor
    generator: rng.Generators = None
    logits: torch.Tensor | None = None
    drawn: torch.Tensor | None = None
    suppressed: torch.Tensor | None = None
    schedule: str = "equal"

    def scatter(self, values: torch.Tensor) -> torch.Tensor:
        """Per-candidate values [N] placed on the canvas grid: FloatTensor [B, L], -inf elsewhere."""
        return on_grid(self.candidates, values)

    @cached_property
    def raw_confidence(self) -> torch.Tensor:
        """LLaDA's confidence: softmax of the raw logits at the drawn token, FloatTensor [B, L]
        (equals ``confidence`` for greedy, untruncated sampling)."""
        if self.logits is None or self.drawn is None:
            return self.confidence
        raw = self.logits.float().softmax(-1).gather(-1, self.drawn[:, None]).squeeze(-1)
        return self.scatter(raw)


def candidate_uniform(ctx: StepContext, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """U[0, 1) numbers on the grid, FloatTensor [B, L]; only the candidates' cells are meaningful.

    One generator for the batch draws a number for every cell ([B, L], difflm's stream since the
    start). Per-row generators draw one number per candidate from the candidate's row instead
    (0.5 elsewhere): the grid's width is set by the longest row of the batch, so drawing cells
    would make a row's numbers depend on its neighbours.
    """
    device = ctx.candidates.device
    if not isinstance(ctx.generator, rng.RowGenerators):
        return rng.uniform(ctx.candidates.shape, generator=ctx.generator, device=device, dtype=dtype)
    rows = ctx.candidates.sum(-1)
    values = rng.uniform((int(rows.sum()),), generator=ctx.generator, device=device, dtype=dtype, rows=rows)
    return torch.full(ctx.candidates.shape, 0.5, device=device, dtype=dtype).masked_scatter(ctx.candidates, values)


def on_grid(candidates: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Per-candidate values [N] (row-major order of BoolTensor ``candidates`` [B, L]) on the
    [B, L] grid, -inf elsewhere."""
    grid = torch.full(candidates.shape, float("-inf"), device=values.device, dtype=values.dtype)
    return grid.masked_scatter(candidates, values)


def demote(scores: torch.Tensor, demoted: torch.Tensor) -> torch.Tensor:
    """A lexicographic ranking key: FloatTensor [B, L], higher = better, that orders the
    positions of ``demoted`` (BoolTensor [B, L]) after all the others of their row and keeps the
    order of ``scores`` within each group. The key is an exact integer rank, so no scale of the
    scores (a tiny alg_temp makes them huge) can lift a demoted position above another."""
    length = scores.shape[-1]
    order = scores.argsort(dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(length, device=scores.device).expand_as(order))
    return -(rank + demoted.long() * length).double()


def topk_mask(scores: torch.Tensor, candidates: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """BoolTensor [B, L]: in each row, the k[b] candidates with the highest scores."""
    scores = scores.masked_fill(~candidates, float("-inf"))
    kmax = int(k.max()) if k.numel() else 0
    if kmax == 0:
        return torch.zeros_like(candidates)
    top = scores.topk(min(kmax, scores.shape[1]), dim=-1).indices  # [B, kmax]
    keep = torch.arange(top.shape[1], device=k.device)[None, :] < k[:, None]
    chosen = torch.zeros_like(candidates)
    chosen.scatter_(1, top, keep)
    return chosen & candidates


class Strategy:
    """Base class of the scoring strategies.

    ``fixed_count``: commits exactly ctx.num_to_commit per row and step (at least that many for
    `Threshold`). ``alg_temp`` > 0 samples the positions instead of taking the top scores: a
    Gumbel-top-k draw, i.e. sampling without replacement from softmax(score / alg_temp).
    """

    name = "base"
    fixed_count = True

    def __init__(self, alg_temp: float = 0.0) -> None:
        if not alg_temp >= 0:
            raise InputError(f"alg_temp must be >= 0, got {alg_temp}")
        self.alg_temp = float(alg_temp)

    @classmethod
    def from_options(cls, *, threshold: float | None = None, alg_temp: float = 0.0) -> Strategy:
        """The instance that `SamplerOptions` fields ask for (checked already: `check_strategy`); a
        strategy with a parameter of its own (`Threshold`) takes it here."""
        return cls(alg_temp)

    def score(self, ctx: StepContext) -> torch.Tensor:
        """FloatTensor [B, L]: higher = commit sooner (values outside candidates are ignored)."""
        raise NotImplementedError

    def ranking(self, ctx: StepContext) -> torch.Tensor:
        """The score, perturbed for sampling (alg_temp) and, under EOS suppression, replaced by a
        rank key that puts every suppressed position after every other candidate (strict at any
        scale of the perturbed scores)."""
        scores = self.score(ctx).double()
        if self.alg_temp > 0:
            uniform = candidate_uniform(ctx, torch.float64)
            scores = scores / self.alg_temp - torch.log(-torch.log(uniform.clamp_min(1e-300)))
        if ctx.suppressed is not None:
            scores = demote(scores, ctx.suppressed)
        return scores

    def select(self, ctx: StepContext) -> torch.Tensor:
        return topk_mask(self.ranking(ctx), ctx.candidates, ctx.num_to_commit)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(alg_temp={self.alg_temp})"


class LowConfidence(Strategy):
    """LLaDA's 'low_confidence' remasking: commit the candidates whose drawn token has the highest
    probability under the raw (untempered) model distribution."""

    name = "low_confidence"

    def score(self, ctx: StepContext) -> torch.Tensor:
        return ctx.raw_confidence


class MaskGITPlus(Strategy):
    """Dream's 'maskgit_plus': the probability of the drawn token under the sampling distribution."""

    name = "maskgit_plus"

    def score(self, ctx: StepContext) -> torch.Tensor:
        return ctx.confidence


class TopKMargin(Strategy):
    """Dream's 'topk_margin': top-1 minus top-2 probability (a confident, unambiguous position)."""

    name = "topk_margin"

    def score(self, ctx: StepContext) -> torch.Tensor:
        top2 = ctx.probs.topk(2, dim=-1).values
        return ctx.scatter(top2[:, 0] - top2[:, 1])


class Entropy(Strategy):
    """Dream's 'entropy': negative entropy of the sampling distribution (peaked = commit first)."""

    name = "entropy"

    def score(self, ctx: StepContext) -> torch.Tensor:
        p = ctx.probs
        return ctx.scatter((p * torch.log(p + 1e-10)).sum(-1))


class Threshold(Strategy):
    """Fast-dLLM's parallel decoding: commit every candidate whose LLaDA confidence exceeds
    ``threshold``, and at least the ``num_to_commit`` most confident ones (with steps = tokens,
    the default, that is Fast-dLLM's "at least one per step"; fewer steps guarantee the budget)."""

    name = "threshold"

    def __init__(self, threshold: float = 0.9, alg_temp: float = 0.0) -> None:
        super().__init__(alg_temp)
        if not 0.0 < threshold <= 1.0:
            raise InputError(f"threshold must be in (0, 1], got {threshold}")
        self.threshold = float(threshold)

    @classmethod
    def from_options(cls, *, threshold: float | None = None, alg_temp: float = 0.0) -> Strategy:
        return cls(0.9 if threshold is None else threshold, alg_temp)  # Fast-dLLM's recommended threshold

    def score(self, ctx: StepContext) -> torch.Tensor:
        return ctx.raw_confidence

    def select(self, ctx: StepContext) -> torch.Tensor:
        confident = ctx.candidates & (ctx.raw_confidence > self.threshold)
        if ctx.suppressed is not None:
            confident &= ~ctx.suppressed
        return confident | super().select(ctx)

    def __repr__(self) -> str:
        return f"Threshold(threshold={self.threshold}, alg_temp={self.alg_temp})"


class RandomOrder(Strategy):
    """The reference DiffuLLaMA sampler: each still-masked position is revealed independently with
    probability 1 / (remaining steps), taking this step's sample; the last step reveals the rest.
    Under Dream's schedule the probability is Dream's 'origin' one, 1 - s / t on its time grid.
    EOS suppression and alg_temp do not apply (there is no score)."""

    name = "random"
    fixed_count = False

    def select(self, ctx: StepContext) -> torch.Tensor:
        draw = candidate_uniform(ctx)
        if isinstance(ctx.step, torch.Tensor):  # rows at different steps: one probability per row
            pairs = zip(ctx.step.tolist(), torch.as_tensor(ctx.steps).expand_as(ctx.step).tolist())
            probability = torch.tensor([self.reveal_probability(ctx.schedule, s, n) for s, n in pairs],
                                       dtype=draw.dtype, device=draw.device)[:, None]
        else:
            probability = self.reveal_probability(ctx.schedule, ctx.step, ctx.steps)
        return ctx.candidates & (draw < probability)

    @staticmethod
    def reveal_probability(schedule: str, step: int, steps: int) -> float:
        """Probability that a still-masked position is revealed at ``step`` of ``steps``."""
        if schedule == "dream":
            return float(dream_fraction(step, steps))
        return 1.0 / (steps - step)


def get_strategy(strategy: str | Strategy, *, threshold: float | None = None, alg_temp: float = 0.0) -> Strategy:
    """A strategy instance from a name of `difflm.registry.STRATEGIES` or an instance.

    ``threshold`` belongs to "threshold" only (default 0.9, Fast-dLLM's recommendation);
    ``alg_temp`` to the scoring strategies (not "random").
    """
    if isinstance(strategy, Strategy):
        return strategy
    check_strategy(strategy, threshold, alg_temp)
    return STRATEGIES.get(strategy, InputError).from_options(threshold=threshold, alg_temp=alg_temp)


def commit_counts(num_masked: int, steps: int) -> list[int]:
    """Tokens to commit at each step: an equal share, the remainder spread over the first steps
    (LLaDA's schedule). Sums to ``num_masked``."""
    base, extra = divmod(num_masked, steps)
    return [base + (1 if i < extra else 0) for i in range(steps)]


def commit_schedule(num_masked: torch.Tensor, steps: int) -> torch.Tensor:
    """`commit_counts` for every row at once: LongTensor [B] -> LongTensor [steps, B]."""
    base, extra = num_masked // steps, num_masked % steps
    step = torch.arange(steps, device=num_masked.device)[:, None]
    return base[None, :] + (step < extra[None, :]).long()


def dream_fraction(step: int, steps: int, eps: float = DREAM_EPS) -> torch.Tensor:
    """Dream's share of the still-masked tokens committed at ``step`` of ``steps``: 1 - s / t with
    t, s = timesteps[step], timesteps[step + 1] of timesteps = linspace(1, eps, steps + 1), in
    float32 as Dream computes it; 1 at the last step. A 0-dim FloatTensor."""
    if step >= steps - 1:
        return torch.tensor(1.0)
    timesteps = torch.linspace(1, eps, steps + 1)
    return 1 - timesteps[step + 1] / timesteps[step]


def dream_commit_count(num_masked: torch.Tensor, step: int, steps: int, eps: float = DREAM_EPS) -> torch.Tensor:
    """Dream's commit count (generation_utils.py of Dream-v0): ``int(n * (1 - s / t))`` tokens of
    the ``n`` still masked at ``step`` (see `dream_fraction`), all that remain at the last step.

    Computed per row from LongTensor [B] (the still-masked count of each row now) -> LongTensor
    [B]. Dream itself uses one batch-averaged count, ``mask_index.sum() / batch``, for every row;
    that is the same number whenever the rows have the same number of masked positions, which
    is always so in Dream's generation (every row gets max_new_tokens masks and commits the same
    count per step). Early steps can commit nothing (n * (1 - s / t) < 1), as in Dream.
    """
    if step >= steps - 1:
        return num_masked.clone()
    fraction = dream_fraction(step, steps, eps).to(num_masked.device)
    return (num_masked.float() * fraction).long()
