"""Ancestral sampling of uniform-state diffusion LMs (UDLM, Duo): the reverse process without a mask token.

A uniform-state model starts the generated positions from uniformly random tokens (its prior at t = 1) and
walks a time grid t_0 = 1 > t_1 > ... > t_steps = eps (eps = 1e-5, both references). At each step every
generated position is redrawn from the approximate posterior

    q(x_s | x_t, p) ∝ (alpha_ts onehot(x_t) + (1 - alpha_ts) / V) * (alpha_s p + (1 - alpha_s) / V),

with alpha_ts = alpha_t / alpha_s, p = softmax of the model's prediction of x0 (time input sigma_t =
-log alpha_t) and the log-linear schedule alpha_t = 1 - (1 - 1e-3) t: the product of "x_t arose from x_s"
and "x_s arose from the predicted x0". It equals the closed form of UDLM's `_compute_posterior` and Duo's
`_posterior_from_x0` (which are this product, normalised in closed form). Context tokens (prompt, suffix,
padding) are never written.

The end of the walk (``noise_removal``): "none" stops at t = eps (UDLM's sampler); "ancestral" takes one more
posterior step to alpha = 1 (Duo's default); "greedy" replaces every generated token by the argmax of one
more prediction (Duo's ``noise_removal=greedy``, what its distilled few-step models use). Default: the
family's ("udlm": none, "duo": ancestral), or ``config.extra["noise_removal"]``.

Options: ``steps`` (default one per generated token), ``temperature`` / ``top_k`` / ``top_p`` shape the
x0 prediction p (the references sample with temperature 1; temperature 0 makes p one-hot, the posterior
itself stays random), ``stop_at_eos`` trims the returned tokens. Options of masked decoding that have no
meaning here (classifier-free guidance, KV caches, remasking, editing, blocks) are refused.
All draws go through `difflm.rng` in float64: one generator per row makes a row's output independent of
its batch.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import torch

from .. import rng
from ..config import is_uniform_state
from ..errors import InputError
from .options import SamplerOptions
from .step import SamplerStep, stop_token_ids, trim_at_stop
from .tokens import inverse_cdf, top_k_filter, top_p_filter

__all__ = ["NOISE_REMOVAL", "UniformRun", "is_uniform_state", "posterior", "uniform_denoise"]

NOISE_REMOVAL = ("none", "ancestral", "greedy")
FAMILY_NOISE_REMOVAL = {"udlm": "none", "duo": "ancestral"}
SCHEDULE_EPS = 1e-3  # the log-linear schedule of both references (difflm.losses.uniform)
TIME_EPS = 1e-5  # the last time of the sampling grid (both references' `eps` of sampling)


class UniformRun(NamedTuple):
    """What `uniform_denoise` returns, in the field order of `difflm.sampling.Generation`."""

    sequences: torch.Tensor
    generate_mask: torch.Tensor
    new_tokens: list[list[int]]
    steps: int
    history: list[torch.Tensor] | None


def _alpha(t: torch.Tensor) -> torch.Tensor:
    return 1.0 - (1.0 - SCHEDULE_EPS) * t


def posterior(p: torch.Tensor, x_t: torch.Tensor, alpha_t: float, alpha_s: float) -> torch.Tensor:
    """q(x_s | x_t, p): p FloatTensor [N, V] (a distribution over x0 per position), x_t LongTensor [N];
    returns FloatTensor [N, V], rows summing to 1 (see the module doc)."""
    vocab = p.shape[-1]
    alpha_ts = alpha_t / alpha_s
    from_t = torch.full_like(p, (1.0 - alpha_ts) / vocab)  # q(x_t | x_s) as a function of x_s
    from_t[torch.arange(len(x_t), device=p.device), x_t] += alpha_ts
    q = from_t * (alpha_s * p + (1.0 - alpha_s) / vocab)
    return q / q.sum(-1, keepdim=True)


def _noise_removal(model: Any, given: str | None) -> str:
    extra = getattr(model.config, "extra", None) or {}
    choice = given or extra.get("noise_removal") or FAMILY_NOISE_REMOVAL.get(getattr(model.config, "family", None), "none")
    if choice not in NOISE_REMOVAL:
        raise InputError(f"unknown noise_removal {choice!r}; choose one of {', '.join(NOISE_REMOVAL)}")
    return choice


def _check_options(opts: SamplerOptions) -> None:
    refused = {"cfg_scale": opts.cfg_scale > 0, "cache": opts.cache != "none", "remask": opts.remask > 0,
               "editing_threshold": opts.editing_threshold is not None, "block_length": opts.block_length is not None,
               "sub_block_length": opts.sub_block_length is not None}
    bad = [name for name, on in refused.items() if on]
    if bad:
        raise InputError(f"option(s) {', '.join(bad)} of masked decoding do not apply to a uniform-state model "
                         "(UDLM / Duo sample by ancestral steps over the whole generated span)")


def _forward(model: Any, x: torch.Tensor, attention_mask: torch.Tensor | None, t: float) -> torch.Tensor:
    """Aligned logits [B, L, V] at time t: the backbone with the time input sigma_t = -log alpha_t."""
    sigma = -torch.log(_alpha(torch.full((x.shape[0],), t, dtype=torch.float64))).float().to(x.device)
    return model.logits(x, attention_mask, timesteps=sigma)


def _prediction(logits: torch.Tensor, opts: SamplerOptions) -> torch.Tensor:
    """p [N, V] float64 from logits [N, V]: temperature, then top-k and top-p (0 = one-hot argmax)."""
    logits = logits.double()
    if opts.temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).double()
    logits = top_p_filter(top_k_filter(logits / opts.temperature, opts.top_k), opts.top_p)
    return logits.softmax(-1)


@torch.inference_mode()
def uniform_denoise(
    model: Any,
    canvas: torch.Tensor,
    generate_mask: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    options: SamplerOptions,
    generator: rng.Generators = None,
    callback: Callable[[SamplerStep], None] | None = None,
    output_history: bool = False,
    logits_processor: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    noise_removal: str | None = None,
) -> UniformRun:
    """Fill every position of ``generate_mask`` (BoolTensor [B, L]) of ``canvas`` (LongTensor [B, L]) by
    ancestral sampling; the other positions are never written. ``generator``: one for the batch, a
    `difflm.rng.RowGenerators` (one per row), or None. Returns a `UniformRun` (model calls in ``steps``)."""
    _check_options(options)
    removal = _noise_removal(model, noise_removal)
    counts = generate_mask.sum(-1)
    total = int(counts.sum())
    steps = options.steps or int(counts.max())
    rows = counts.tolist()
    vocab = int(model.vocab_size)

    def uniforms() -> torch.Tensor:  # one U[0, 1) per generated position, row by row in reading order
        return rng.uniform((total,), generator=generator, device=canvas.device, dtype=torch.float64, rows=rows)

    x = canvas.clone()
    x[generate_mask] = (uniforms() * vocab).long().clamp_(max=vocab - 1)  # the prior: uniform tokens
    history: list[torch.Tensor] | None = [] if output_history else None
    grid = torch.linspace(1.0, TIME_EPS, steps + 1, dtype=torch.float64)
    calls = 0

    def predict(t: float) -> torch.Tensor:
        logits = _forward(model, x, attention_mask, t)[generate_mask]
        if logits_processor is not None:
            logits = logits_processor(logits, generate_mask)
        return _prediction(logits, options)

    def record(new: torch.Tensor, step: int, total_steps: int) -> None:
        changed = generate_mask & (new != x)
        if history is not None:
            history.append(new.clone())
        if callback is not None:
            callback(SamplerStep(step, total_steps, 0, new, changed, generate_mask, new, attention_mask, None))

    total_steps = steps + (removal != "none")
    for i in range(steps):
        q = posterior(predict(float(grid[i])), x[generate_mask], float(_alpha(grid[i])), float(_alpha(grid[i + 1])))
        new = x.clone()
        new[generate_mask] = inverse_cdf(q, uniforms())
        calls += 1
        record(new, i, total_steps)
        x = new
    if removal != "none":
        p = predict(float(grid[-1]))
        new = x.clone()
        if removal == "greedy":
            new[generate_mask] = p.argmax(-1)
        else:  # one more posterior step, to alpha = 1
            new[generate_mask] = inverse_cdf(posterior(p, x[generate_mask], float(_alpha(grid[-1])), 1.0), uniforms())
        calls += 1
        record(new, steps, total_steps)
        x = new
    new_tokens = [row[m].tolist() for row, m in zip(x, generate_mask)]
    if options.stop_at_eos:
        new_tokens = [trim_at_stop(row, stop_token_ids(model)) for row in new_tokens]
    return UniformRun(x, generate_mask, new_tokens, calls, history)
