"""Which masked positions to commit at a denoising step.

A strategy sees one `StepContext` and returns a BoolTensor [B, L] of positions to commit (a subset
of ``ctx.candidates``). Scoring strategies rank candidates and commit the ``ctx.num_to_commit`` best
of each row; adding one is a matter of writing its score.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InputError


@dataclass
class StepContext:
    """Everything a strategy may look at, for a canvas of B rows and L positions.

    step / steps: this step's index (0-based) and the number of steps of the current region.
    candidates: BoolTensor [B, L], positions still masked that may be committed now.
    tokens: LongTensor [B, L], the token drawn for every candidate (canvas values elsewhere).
    confidence: FloatTensor [B, L], probability of the drawn token (-inf outside candidates).
    probs: FloatTensor [N, V], the distributions of the N candidate positions (row-major order).
    num_to_commit: LongTensor [B], how many tokens a fixed-count strategy commits in each row.
    """

    step: int
    steps: int
    candidates: torch.Tensor
    tokens: torch.Tensor
    confidence: torch.Tensor
    probs: torch.Tensor
    num_to_commit: torch.Tensor
    generator: torch.Generator | None = None


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
    """Base class. ``fixed_count``: commits exactly ctx.num_to_commit per row and step."""

    name = "base"
    fixed_count = True

    def score(self, ctx: StepContext) -> torch.Tensor:
        raise NotImplementedError

    def select(self, ctx: StepContext) -> torch.Tensor:
        return topk_mask(self.score(ctx), ctx.candidates, ctx.num_to_commit)


class LowConfidence(Strategy):
    """LLaDA's 'low_confidence' remasking: commit the most probable candidates."""

    name = "low_confidence"

    def score(self, ctx: StepContext) -> torch.Tensor:
        return ctx.confidence


class RandomOrder(Strategy):
    """The reference DiffuLLaMA sampler: each still-masked position is revealed independently with
    probability 1 / (remaining steps), taking this step's sample; the last step reveals the rest."""

    name = "random"
    fixed_count = False

    def select(self, ctx: StepContext) -> torch.Tensor:
        remaining = ctx.steps - ctx.step
        draw = torch.rand(ctx.candidates.shape, generator=ctx.generator, device=ctx.candidates.device)
        return ctx.candidates & (draw < 1.0 / remaining)


STRATEGIES: dict[str, type[Strategy]] = {cls.name: cls for cls in (LowConfidence, RandomOrder)}


def get_strategy(strategy: str | Strategy) -> Strategy:
    """A strategy instance from a name (see `STRATEGIES`) or an instance."""
    if isinstance(strategy, Strategy):
        return strategy
    if strategy not in STRATEGIES:
        raise InputError(f"unknown strategy {strategy!r}; choose one of {', '.join(sorted(STRATEGIES))}")
    return STRATEGIES[strategy]()


def commit_counts(num_masked: int, steps: int) -> list[int]:
    """Tokens to commit at each step: an equal share, the remainder spread over the first steps
    (LLaDA's schedule). Sums to ``num_masked``."""
    base, extra = divmod(num_masked, steps)
    return [base + (1 if i < extra else 0) for i in range(steps)]
