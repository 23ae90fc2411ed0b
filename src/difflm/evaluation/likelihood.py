"""Likelihood of text: the ELBO bound of a diffusion LM by Monte Carlo, and the exact NLL of an AR model.

For an absorbing-state (masked) diffusion LM, the negative log-likelihood of N target tokens x_T given
the context x_C (never masked) is bounded by

    B = integral_0^1 w(t) E_{x_t ~ q_t} [ sum_{i in T, masked} -log p(x_i | x_t) ] dt   >=  -log p(x_T | x_C)

where each target is masked with probability 1 - alpha(t) and w(t) = -alpha'(t) / (1 - alpha(t)) (1/t for
the linear schedule). B does not depend on the schedule (substitute alpha for t). Two unbiased Monte
Carlo estimators, both with one forward pass per sample:

* ``"time"``  draw t (stratified across samples optionally), mask each target with probability 1 - alpha(t),
  weight w(t). The weight is unbounded near t = 0, so the variance is large.
* ``"count"`` (LLaDA) draw the number of masked targets l in {1..N} (stratified across samples), mask l
  targets uniformly at random, weight N / l. With one target (N = 1) it is exact in one pass. Given that l targets are masked, t has a Beta(l+1, N-l+1)
  law and E[w(t) | l] = (N + 1) / l, so both estimators have the same mean; this one's weight is at most N.

``reference_score`` is DiffuGPT's unweighted multiple-choice score (not a bound): the mean cross-entropy
per masked token, averaged over masking rates k / T, k = 1..T.

Each request gets its own random generator, seeded from (seed, request index): results do not depend on
the batch size or on which other requests are scored together. Every draw is made on the CPU with a
CPU generator (`difflm.rng`) and only its result - which targets to mask - moves to the model's device,
so a seed gives the same numbers on every device, and a model on a GPU (or a non-CPU default device)
never meets a generator of another device. The standard error is std / sqrt(n) over a
request's samples (NaN when n_samples = 1: one draw says nothing about its spread); with
stratification the samples are negatively correlated, so it errs on the conservative side
(bench/eval_estimators.py checks it against the spread over seeds).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from .. import rng
from ..config import is_uniform_state
from ..errors import InputError
from ..losses.block import two_copy_logits
from ..noise import get_schedule, sample_t
from .progress import progress_bar
from .stats import mean_stderr

ESTIMATORS = ("count", "time")


@dataclass(frozen=True)
class ScoreRequest:
    """Score ``ids[start:end]`` (the targets) given the other tokens of ``ids`` (the context).

    A DLM conditions on the context on both sides of the targets; an AR model only on ``ids[:start]``
    (tokens after the targets are neither scored nor seen).
    """

    ids: tuple[int, ...]
    start: int
    end: int

    @classmethod
    def continuation(cls, context: Sequence[int], continuation: Sequence[int]) -> "ScoreRequest":
        """-log p(continuation | context): the targets are the tokens after the context."""
        ids = tuple(int(i) for i in context) + tuple(int(i) for i in continuation)
        return cls(ids, len(context), len(ids))

    @property
    def num_targets(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class NLLEstimate:
    """nll: nats summed over the targets (a DLM: an estimate of the upper bound B; an AR model: exact).
    stderr: Monte Carlo standard error of ``nll`` (0 when exact, NaN when unknown). greedy: whether greedy decoding
    reproduces the targets (AR models; None when not computed)."""

    nll: float
    stderr: float
    num_tokens: int
    num_samples: int
    greedy: bool | None = None


def item_seed(seed: int, index: int) -> int:
    """A deterministic 63-bit seed for item ``index`` of a run seeded with ``seed`` (two odd
    multipliers spread neighbouring seeds and indices apart)."""
    return (seed * 0x9E3779B97F4A7C15 + (index + 1) * 0xBF58476D1CE4E5B9) % (2**63)


def check_requests(requests: Sequence[ScoreRequest], *, vocab_size: int, max_length: int | None,
                   first_target: int, forbidden_id: int | None = None) -> None:
    """Raise `InputError` for a request a model cannot score (see the messages)."""
    for n, r in enumerate(requests):
        if not first_target <= r.start < r.end <= len(r.ids):
            raise InputError(
                f"request {n}: targets [{r.start}, {r.end}) of a {len(r.ids)}-token sequence are empty or out of range"
                + (" (position 0 has no prediction: prepend a BOS token)" if r.start == 0 and first_target else "")
            )
        if max_length is not None and len(r.ids) > max_length:
            raise InputError(f"request {n}: {len(r.ids)} tokens exceed the model's context of {max_length}; shorten the context")
        if any(not 0 <= i < vocab_size for i in r.ids):
            raise InputError(f"request {n}: token ids must lie in [0, {vocab_size})")
        if forbidden_id is not None and forbidden_id in r.ids:
            raise InputError(f"request {n}: the text contains the mask token (id {forbidden_id}); remove it")


# -- which targets each Monte Carlo sample masks ------------------------------------------------
@dataclass
class _Row:
    """One forward pass: mask ``positions`` (absolute) of request ``request``; the sample's value is
    the cross-entropy there summed with ``weight`` (one number, or one per position: a block
    diffusion model's blocks are estimated side by side, each with its own weight)."""

    request: int
    positions: torch.Tensor
    weight: float | torch.Tensor


def _uniform01(n: int, stratified: bool, gen: torch.Generator) -> torch.Tensor:
    """n numbers in [0, 1): one per stratum (u0 + s) / n with a shared random offset, or independent."""
    if stratified:
        return (rng.uniform((), generator=gen) + torch.arange(n, device=gen.device)) / n
    return rng.uniform((n,), generator=gen)


def _count_plan(num: int, n: int, stratified: bool, gen: torch.Generator) -> list[tuple[torch.Tensor, float]]:
    counts = (_uniform01(n, stratified, gen) * num).long().clamp(max=num - 1) + 1  # l in {1..num}
    return [(rng.permutation(num, generator=gen)[:l], num / int(l)) for l in counts]


def _time_plan(num: int, n: int, stratified: bool, gen: torch.Generator, schedule, eps: float) -> list[tuple[torch.Tensor, float]]:
    t = sample_t(n, antithetic=stratified, eps=eps, generator=gen, device=gen.device)  # uniform on [eps, 1]
    plan = []
    for ts in t:
        masked = rng.uniform((num,), generator=gen) < schedule.mask_prob(ts)
        # (1 - eps) turns the mean over U[eps, 1] into the integral over [eps, 1].
        plan.append((masked.nonzero().flatten(), float((1.0 - eps) * schedule.weight(ts))))
    return plan


def _reference_plan(num: int, steps: int, gen: torch.Generator) -> list[tuple[torch.Tensor, float]]:
    plan = []
    for k in range(steps, 0, -1):
        masked = rng.uniform((num,), generator=gen) < k / steps
        if not masked.any():  # the reference would average over nothing (NaN); mask one token instead
            masked[min(int(rng.uniform((), generator=gen) * num), num - 1)] = True
        plan.append((masked.nonzero().flatten(), 1.0 / int(masked.sum())))
    return plan


def _score_rows(model, requests: Sequence[ScoreRequest], rows: list[_Row], *, batch_size: int,
                progress: bool, description: str) -> list[list[float]]:
    """Run every row through the model; return each request's sample values in row order."""
    values: list[list[float]] = [[] for _ in requests]
    slots: list[tuple[int, int]] = []
    for row in rows:
        slots.append((row.request, len(values[row.request])))
        values[row.request].append(0.0)  # a row that masks nothing is worth 0 and costs no forward
    live = [i for i, row in enumerate(rows) if row.positions.numel()]
    live.sort(key=lambda i: len(requests[rows[i].request].ids))  # similar lengths share a batch
    cfg = model.config
    pad = next((i for i in (cfg.pad_token_id, cfg.eos_token_id) if i is not None), 0)
    with progress_bar(len(live), description, enabled=progress) as advance:
        for lo in range(0, len(live), batch_size):
            chunk = [rows[i] for i in live[lo : lo + batch_size]]
            length = max(len(requests[r.request].ids) for r in chunk)
            # built on the CPU (where the plans' positions are), whatever the default device; moved once
            x0 = torch.full((len(chunk), length), pad, dtype=torch.long, device="cpu")
            attn = torch.zeros_like(x0)
            weights = torch.zeros(x0.shape, dtype=torch.float64, device="cpu")
            for b, r in enumerate(chunk):
                ids = requests[r.request].ids
                x0[b, : len(ids)] = torch.tensor(ids, dtype=torch.long, device="cpu")
                attn[b, : len(ids)] = 1
                weights[b, r.positions.cpu()] = torch.as_tensor(r.weight, dtype=torch.float64, device="cpu")
            masked = weights > 0
            x0, attn, masked = x0.to(model.device), attn.to(model.device), masked.to(model.device)
            xt = x0.masked_fill(masked, cfg.mask_token_id)
            padding = attn if not bool(attn.all()) else None
            # a block diffusion model scores every block next to the clean blocks before it
            logits = two_copy_logits(model, xt, x0, padding) if cfg.block_size else model.logits(xt, padding)
            ce = F.cross_entropy(logits[masked].float(), x0[masked], reduction="none").double().cpu()
            sums = torch.zeros(len(chunk), dtype=torch.float64, device="cpu").index_add_(0, masked.nonzero()[:, 0].cpu(),
                                                                           ce * weights[masked.cpu()])
            for b, r in enumerate(chunk):
                req, slot = slots[live[lo + b]]
                values[req][slot] = float(sums[b])
            advance(len(chunk))
    return values


def _targets(model, requests: Sequence[ScoreRequest]) -> None:
    if is_uniform_state(model):  # no mask token: the masked bound of such a model would be a meaningless number
        raise InputError("this is a uniform-state model (UDLM, Duo): its bound is difflm.evaluation.uniform."
                         "uniform_elbo_nll, not the masked ELBO (difflm eval picks it by itself)")
    check_requests(requests, vocab_size=model.vocab_size, max_length=model.max_length,
                   first_target=model.first_predictable_position, forbidden_id=model.config.mask_token_id)


@torch.inference_mode()
def elbo_nll(
    model,
    requests: Sequence[ScoreRequest],
    *,
    n_samples: int = 32,
    estimator: str = "count",
    stratified: bool = True,
    seed: int = 0,
    keys: Sequence[int] | None = None,
    batch_size: int = 32,
    progress: bool = True,
) -> list[NLLEstimate]:
    """Monte Carlo estimates of the ELBO bound B on -log p(targets | context), one per request.

    Args:
        model: a `DiffusionLM`.
        requests: what to score (targets must avoid position 0 of a shifted model).
        n_samples: forward passes per request (>= 1).
        estimator: "count" (LLaDA, low variance) or "time" (t-sampling with schedule weights).
        stratified: spread the samples of one request over strata of l (or t); else independent.
        seed: base seed; request i draws from `item_seed(seed, keys[i])` (keys default to 0, 1, 2, ...).
            Requests with the same key share their random numbers (the same l's and, for equal
            lengths, the same masked positions): give the options of one question one key, and the
            noise of their comparison shrinks (common random numbers).
        batch_size: forward passes per model call.
    Returns:
        NLLEstimate per request: nll (nats, summed over targets), stderr, num_tokens, num_samples.
    """
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise InputError(f"n_samples must be an integer >= 1, got {n_samples!r}")
    if estimator not in ESTIMATORS:
        raise InputError(f"unknown estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
    _targets(model, requests)
    schedule = get_schedule(model.config.schedule, eps=model.config.eps)
    rows: list[_Row] = []
    exact: list[bool] = []
    for i, r in enumerate(requests):
        gen = rng.seeded_generator(item_seed(seed, i if keys is None else keys[i]))
        # A block diffusion model factorises over blocks: -log p = sum_k -log p(block k | blocks < k),
        # each bounded by the masked-diffusion ELBO of its own targets; the blocks' estimates are
        # drawn independently and computed side by side in one two-copy forward per sample.
        spans = _block_spans(model, r)
        # the count estimator is exact where every block holds one target (l = 1 always): one pass
        # is enough, and block size 1 gives the AR NLL
        exact.append(estimator == "count" and all(stop - start == 1 for start, stop in spans))
        passes = 1 if exact[-1] else n_samples
        plans = [_plan(stop - start, passes, estimator, stratified, gen, schedule, model.config.eps)
                 for start, stop in spans]
        for sample in range(passes):
            parts = [(plan[sample][0] + start, plan[sample][1]) for (start, _), plan in zip(spans, plans)]
            positions = torch.cat([p for p, _ in parts])
            weights = torch.cat([torch.full((len(p),), float(w), dtype=torch.float64, device="cpu") for p, w in parts])
            rows.append(_Row(i, positions, weights))
    values = _score_rows(model, requests, rows, batch_size=batch_size, progress=progress, description="ELBO")
    out = []
    for r, v, is_exact in zip(requests, values, exact):
        est = mean_stderr(v, source="monte-carlo")
        out.append(NLLEstimate(est.value, 0.0 if is_exact else est.stderr, r.num_targets, len(v)))
    return out


def _block_spans(model, request: ScoreRequest) -> list[tuple[int, int]]:
    """The targets [start, end) cut at the model's block boundaries (one span for a model without
    blocks): absolute (start, stop) pairs in order."""
    size = model.config.block_size
    if not size:
        return [(request.start, request.end)]
    cuts = [request.start, *range((request.start // size + 1) * size, request.end, size), request.end]
    return list(zip(cuts[:-1], cuts[1:]))


def _plan(num: int, n: int, estimator: str, stratified: bool, gen: torch.Generator, schedule,
          eps: float) -> list[tuple[torch.Tensor, float]]:
    """Which of ``num`` targets each of the samples masks, and its weight."""
    if estimator == "count" and num == 1:  # one target: l = 1 always, every pass the same exact value
        return [(torch.zeros(1, dtype=torch.long, device="cpu"), 1.0)] * n
    if estimator == "count":
        return _count_plan(num, n, stratified, gen)
    return _time_plan(num, n, stratified, gen, schedule, eps)


@torch.inference_mode()
def reference_score(
    model, requests: Sequence[ScoreRequest], *, steps: int = 32, seed: int = 0, keys: Sequence[int] | None = None,
    batch_size: int = 32, progress: bool = True,
) -> list[float]:
    """DiffuGPT's multiple-choice score (lower is better; not a likelihood bound): mask the targets at
    rates k / steps for k = steps..1, take the unweighted mean cross-entropy over the masked tokens, and
    average over k. ``seed`` and ``keys`` as in `elbo_nll`. Returns one float per request."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps must be an integer >= 1, got {steps!r}")
    _targets(model, requests)
    rows: list[_Row] = []
    for i, r in enumerate(requests):
        gen = rng.seeded_generator(item_seed(seed, i if keys is None else keys[i]))
        rows.extend(_Row(i, p + r.start, w) for p, w in _reference_plan(r.num_targets, steps, gen))
    values = _score_rows(model, requests, rows, batch_size=batch_size, progress=progress, description="reference score")
    return [sum(v) / len(v) for v in values]


@torch.inference_mode()
def ar_nll(
    model, requests: Sequence[ScoreRequest], *, pad_token_id: int = 0, batch_size: int = 32, progress: bool = True,
) -> list[NLLEstimate]:
    """Exact -log p(targets | ids[:start]) under a transformers causal LM, one per request, with
    ``greedy`` = every target token is the argmax of its prediction. Position 0 cannot be a target."""
    vocab = model.get_output_embeddings().weight.shape[0]
    max_len = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    check_requests(requests, vocab_size=vocab, max_length=max_len, first_target=1)
    out: list[NLLEstimate | None] = [None] * len(requests)
    order = sorted(range(len(requests)), key=lambda i: len(requests[i].ids))
    with progress_bar(len(order), "NLL", enabled=progress) as advance:
        for lo in range(0, len(order), batch_size):
            chunk = order[lo : lo + batch_size]
            length = max(len(requests[i].ids) for i in chunk)
            x = torch.full((len(chunk), length), pad_token_id, dtype=torch.long, device="cpu")
            attn = torch.zeros_like(x)
            for b, i in enumerate(chunk):
                x[b, : len(requests[i].ids)] = torch.tensor(requests[i].ids, dtype=torch.long, device="cpu")
                attn[b, : len(requests[i].ids)] = 1
            device = model.get_output_embeddings().weight.device
            x, attn = x.to(device), attn.to(device)
            targets = torch.zeros_like(x, dtype=torch.bool)  # [B, L]: True at the tokens to score
            for b, i in enumerate(chunk):
                targets[b, requests[i].start : requests[i].end] = True
            logits = model(input_ids=x, attention_mask=attn).logits  # position j predicts token j + 1
            predicting = targets[:, 1:]  # [B, L-1]: positions whose next token is a target
            picked = logits[:, :-1][predicting].float()  # [M, V], only where needed
            token_nll = F.cross_entropy(picked, x[:, 1:][predicting], reduction="none")  # [M]
            hits = picked.argmax(-1) == x[:, 1:][predicting]
            rows = predicting.nonzero()[:, 0]
            sums = torch.zeros(len(chunk), device=device).index_add_(0, rows, token_nll)
            misses = torch.zeros(len(chunk), device=device).index_add_(0, rows, (~hits).float())
            for b, i in enumerate(chunk):
                out[i] = NLLEstimate(float(sums[b]), 0.0, requests[i].num_targets, 1, bool(misses[b] == 0))
            advance(len(chunk))
    return out  # type: ignore[return-value]
