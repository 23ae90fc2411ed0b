"""Likelihood of text under a uniform-state diffusion LM (UDLM, Duo): the Monte Carlo uniform-state ELBO.

The targets of a request are noised by the uniform-state forward process (each kept with probability
alpha_t, else replaced by a uniformly drawn token; the context stays clean) and scored with the closed-form
continuous-time bound of `difflm.losses.uniform`:

    B = integral_eps^1 E_{x_t} [ sum_{i in targets} nelbo_i(t, x_t) ] dt  >=  -log p(targets | context)

(up to the terms both reference implementations drop too: the prior at t = 1 and the reconstruction at
t = eps). One sample = one t (stratified across a request's samples: t_k = eps + (1 - eps)(u0 + k) / n),
one draw of x_t, one forward pass; its value is (1 - eps) times the summed integrand, so the mean over
samples estimates the integral over [eps, 1] (the references report the mean integrand over U[eps, 1],
larger by the factor 1 / (1 - eps) = 1.001).

Seeding follows `difflm.evaluation.likelihood`: request i draws from its own CPU generator seeded with
`item_seed(seed, key_i)`, so results depend neither on the batch size nor on the device.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from .. import rng
from ..errors import InputError
from ..losses.uniform import (
    SCHEDULE_EPS, draw_uniform_noise, is_uniform_state, time_conditioned_logits, uniform_nll_from_logits, uniform_times,
)
from ..noise import sample_t
from .likelihood import NLLEstimate, ScoreRequest, check_requests, item_seed
from .lm import DiffusionEvalLM
from .progress import progress_bar
from .stats import mean_stderr

__all__ = ["UniformEvalLM", "is_uniform_state", "uniform_elbo_nll"]


def _draws(request: ScoreRequest, n: int, stratified: bool, gen: torch.Generator, vocab: int, eps: float,
           convention: str) -> list[tuple[float, torch.Tensor, torch.Tensor]]:
    """n samples of one request: (t, replace BoolTensor [N], noise tokens LongTensor [N]) over its N targets."""
    t = sample_t(n, antithetic=stratified, eps=eps, generator=gen, device="cpu")
    prob = uniform_times(t, eps=eps, convention=convention).replace_prob
    out = []
    for k in range(n):
        replace, tokens = draw_uniform_noise((1, request.num_targets), prob[k : k + 1], vocab, generator=gen)
        out.append((float(t[k]), replace[0], tokens[0]))
    return out


@torch.inference_mode()
def uniform_elbo_nll(
    model: Any,
    requests: Sequence[ScoreRequest],
    *,
    n_samples: int = 32,
    stratified: bool = True,
    seed: int = 0,
    keys: Sequence[int] | None = None,
    batch_size: int = 32,
    progress: bool = True,
    convention: str = "duo",
    eps: float = SCHEDULE_EPS,
) -> list[NLLEstimate]:
    """Monte Carlo estimates of the uniform-state ELBO bound on -log p(targets | context), one per request.

    Args:
        model: a uniform-state `DiffusionLM` (`is_uniform_state`), time-conditioned.
        requests: what to score; the context is never noised.
        n_samples: forward passes per request (>= 1); seed / keys / stratified as in
            `difflm.evaluation.likelihood.elbo_nll`.
        convention: "duo" (default) or "udlm" (the UDLM code's alpha_t = 1 - t quirk, `difflm.losses.uniform`).
    Returns:
        NLLEstimate per request: nll (nats summed over the targets), stderr (NaN for one sample).
    """
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise InputError(f"n_samples must be an integer >= 1, got {n_samples!r}")
    if not is_uniform_state(model):
        raise InputError("the uniform-state ELBO needs a uniform-state model (config.extra['process'] == 'uniform')")
    if getattr(model.config, "block_size", None) is not None:
        raise InputError("the uniform-state ELBO of a block diffusion model (one noise level per block, two-copy "
                         "forward) is reported by its training run's validation only; difflm eval scores "
                         "full-attention uniform-state models")
    vocab = int(model.vocab_size)
    check_requests(requests, vocab_size=vocab, max_length=model.max_length,
                   first_target=model.first_predictable_position)
    rows = []  # (request, sample, t, replace [N], noise tokens [N])
    for i, r in enumerate(requests):
        gen = rng.seeded_generator(item_seed(seed, i if keys is None else keys[i]))
        rows += [(i, k, *draw) for k, draw in enumerate(_draws(r, n_samples, stratified, gen, vocab, eps, convention))]
    order = sorted(range(len(rows)), key=lambda j: len(requests[rows[j][0]].ids))  # similar lengths share a batch
    values: list[list[float]] = [[0.0] * n_samples for _ in requests]
    cfg = model.config
    pad = next((p for p in (cfg.pad_token_id, cfg.eos_token_id) if p is not None), 0)
    with progress_bar(len(order), "uniform ELBO", enabled=progress) as advance:
        for lo in range(0, len(order), batch_size):
            chunk = order[lo : lo + batch_size]
            length = max(len(requests[rows[j][0]].ids) for j in chunk)
            x0 = torch.full((len(chunk), length), pad, dtype=torch.long)  # built on the CPU, moved once
            xt, attn = x0.clone(), torch.zeros_like(x0)
            targets = torch.zeros_like(x0, dtype=torch.bool)
            t = torch.empty(len(chunk))
            for b, j in enumerate(chunk):
                i, _, t[b], replace, tokens = rows[j]
                r = requests[i]
                x0[b, : len(r.ids)] = torch.tensor(r.ids, dtype=torch.long)
                attn[b, : len(r.ids)] = 1
                targets[b, r.start : r.end] = True
                xt[b] = x0[b]
                xt[b, r.start : r.end] = torch.where(replace, tokens, x0[b, r.start : r.end])
            device = model.device
            x0, xt, attn, targets = x0.to(device), xt.to(device), attn.to(device), targets.to(device)
            times = uniform_times(t.to(device), eps=eps, convention=convention)
            padding = attn if not bool(attn.all()) else None
            logits = time_conditioned_logits(model, xt, padding, times.sigma)
            owner = targets.nonzero()[:, 0]
            nll = uniform_nll_from_logits(logits[targets].float(), x0[targets], xt[targets], times.alpha[owner],
                                          times.dalpha[owner])
            sums = torch.zeros(len(chunk), dtype=torch.float64, device=device).index_add_(0, owner, nll.double())
            for b, j in enumerate(chunk):
                values[rows[j][0]][rows[j][1]] = (1.0 - eps) * float(sums[b])
            advance(len(chunk))
    out = []
    for r, v in zip(requests, values):
        est = mean_stderr(v, source="monte-carlo")
        out.append(NLLEstimate(est.value, est.stderr, r.num_targets, len(v)))
    return out


class UniformEvalLM(DiffusionEvalLM):
    """A uniform-state `DiffusionLM` (UDLM, Duo): likelihoods by `uniform_elbo_nll`; generation and infilling
    through difflm's sampler, which runs the uniform-state reverse process for these models
    (`difflm.sampling.uniform`). The masked-diffusion reference score does not apply."""

    @property
    def scores_likelihood(self) -> bool:
        """False for an encoder-decoder canvas model (DiffusionGemma): no forward over one sequence, no ELBO."""
        return (self.model.config.extra or {}).get("denoiser") != "encoder-decoder"

    @property
    def scoring(self) -> str:
        if not self.scores_likelihood:
            return "none: an encoder-decoder canvas model (DiffusionGemma) has no ELBO; generation tasks only"
        return f"the uniform-state ELBO (Monte Carlo over t, {self.settings.n_samples} samples)"

    def nll(self, requests: Sequence[ScoreRequest], keys: Sequence[int] | None = None) -> list[NLLEstimate]:
        if not self.scores_likelihood:
            raise InputError("this task scores likelihoods, and an encoder-decoder canvas model (DiffusionGemma) has "
                             "no forward over one sequence and no ELBO: run generation tasks (gsm8k, humaneval, "
                             "countdown, sudoku)")
        s = self.settings
        return uniform_elbo_nll(self.model, requests, n_samples=s.n_samples, stratified=s.stratified, seed=s.seed,
                                keys=keys, batch_size=s.batch_size, progress=s.progress)

    def reference_score(self, requests: Sequence[ScoreRequest], keys: Sequence[int] | None = None) -> list[float] | None:
        return None  # DiffuGPT's score masks tokens: a uniform-state model has no mask token
