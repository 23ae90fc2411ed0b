"""The continuous-time ELBO of uniform-state discrete diffusion (UDLM, Duo).

Forward process: each token is kept with probability alpha_t and otherwise replaced by a token drawn
uniformly from the whole vocabulary of V ids (there is no mask token; a replacement may draw the
token it replaces). Both reference implementations use the log-linear schedule with eps = 1e-3:

    alpha_t = 1 - (1 - eps) t,   alpha'_t = -(1 - eps),   the model's time input sigma_t = -log alpha_t.

With x_bar = V alpha_t onehot(x0) + (1 - alpha_t) (the forward marginal times V) and
x_bar_theta = V alpha_t p_theta(. | x_t) + (1 - alpha_t), the negative ELBO of one position whose
noisy token is z = x_t is (UDLM, Schiff et al. 2025, eq. for the continuous-time uniform bound)

    alpha'_t / (V alpha_t) * [ V / x_bar_z - V / x_bar_theta_z
                               - sum_j x_bar_j / x_bar_z * log( x_bar_theta_z x_bar_j / (x_bar_theta_j x_bar_z) ) ]

integrated over t in [eps, 1] (one Monte Carlo t per sequence). ``uniform_nll_from_logits`` computes it
without materialising x_bar: x_bar has only two distinct entries, so every sum over j reduces to the
sum of log x_bar_theta over the vocabulary plus its value at x0 (one [N, V] tensor, log-space).

Two conventions (``convention=``):

* ``"duo"`` (default, s-sahoo/duo `DUO_BASE.nll_per_token` + `LogLinear`): the bound above,
  the same alpha_t for drawing x_t, for the time input and for the bound.
* ``"udlm"`` (kuleshov-group/discrete-diffusion-guidance, `_forward_pass_diffusion`, uniform, T = 0):
  x_t and sigma_t as above, but the bound is evaluated with alpha_t = 1 - t and alpha'_t = -1 (the
  code's hard-coded log-linear form ignores eps). A reference quirk, reproduced only on request: it
  differs from the "duo" value by O(eps).

Neither reference adds the prior term at t = 1 or a reconstruction term at t = 0 in evaluation (UDLM:
``zero_recon_loss``); neither does this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .. import rng
from ..config import is_uniform_state
from ..errors import InputError
from ..noise import check_t, sample_t
from .block import two_copy_logits

__all__ = ["CONVENTIONS", "SCHEDULE_EPS", "UniformLossOutput", "UniformTimes", "draw_uniform_noise",
           "is_uniform_state", "time_conditioned_logits", "uniform_block_times", "uniform_diffusion_loss",
           "uniform_nll_from_logits", "uniform_times"]

SCHEDULE_EPS = 1e-3  # the log-linear eps of both reference repositories
CONVENTIONS = ("duo", "udlm")


@dataclass(frozen=True)
class UniformTimes:
    """The schedule at noise levels t [B]: replace_prob [B] (1 - alpha_t of the forward draw), sigma [B]
    (the model's time input), and alpha [B] / dalpha [B] with which the bound is evaluated."""

    replace_prob: torch.Tensor
    sigma: torch.Tensor
    alpha: torch.Tensor
    dalpha: torch.Tensor


def uniform_times(t: torch.Tensor, *, eps: float = SCHEDULE_EPS, convention: str = "duo") -> UniformTimes:
    """The log-linear schedule of uniform-state diffusion at ``t`` (FloatTensor [B] in (0, 1]); see the
    module doc for the two conventions."""
    if convention not in CONVENTIONS:
        raise InputError(f"unknown uniform-state convention {convention!r}; choose one of {', '.join(CONVENTIONS)}")
    t = t.float()
    alpha = 1.0 - (1.0 - eps) * t
    sigma = -torch.log1p(-(1.0 - eps) * t)  # = -log alpha, without the cancellation near t = 0
    if convention == "udlm":
        return UniformTimes(1.0 - alpha, sigma, 1.0 - t, torch.full_like(t, -1.0))
    return UniformTimes(1.0 - alpha, sigma, alpha, torch.full_like(t, -(1.0 - eps)))


def uniform_nll_from_logits(logits: torch.Tensor, x0: torch.Tensor, xt: torch.Tensor, alpha: torch.Tensor,
                            dalpha: torch.Tensor) -> torch.Tensor:
    """The per-position negative ELBO integrand of uniform-state diffusion (module doc), in nats.

    Args:
        logits: FloatTensor [..., V], the denoiser's prediction of x0 given x_t (any normalisation).
        x0, xt: LongTensor [...], clean and noisy tokens.
        alpha, dalpha: FloatTensor broadcastable to [...], alpha_t and its time derivative.
    Returns:
        FloatTensor [...] (float32 or wider).
    """
    vocab = logits.shape[-1]
    dtype = torch.promote_types(logits.dtype, torch.float32)
    alpha = torch.as_tensor(alpha, dtype=dtype, device=logits.device).expand(x0.shape)
    dalpha = torch.as_tensor(dalpha, dtype=dtype, device=logits.device).expand(x0.shape)
    a, keep = alpha[..., None], 1.0 - alpha[..., None]
    # log x_bar_theta_j = log(V a p_j + 1 - a), in log space so that tiny probabilities stay exact
    log_bar_theta = torch.logaddexp(torch.log(vocab * a) + logits.to(dtype).log_softmax(-1), torch.log(keep))
    at_z = log_bar_theta.gather(-1, xt[..., None]).squeeze(-1)
    at_x0 = log_bar_theta.gather(-1, x0[..., None]).squeeze(-1)
    total = log_bar_theta.sum(-1)
    same = x0 == xt
    # x_bar takes two values: hi = V a + 1 - a at x0, lo = 1 - a elsewhere; x_bar_z is hi where z = x0
    lo = 1.0 - alpha
    hi = vocab * alpha + lo
    bar_z = torch.where(same, hi, lo)
    log_lo, log_hi = torch.log(lo), torch.log(hi)
    term1 = vocab / bar_z - vocab * torch.exp(-at_z)
    # sum_j x_bar_j (log x_bar_theta_z - log x_bar_z) = V (log x_bar_theta_z - log x_bar_z)   (sum_j x_bar_j = V)
    # sum_j x_bar_j log x_bar_theta_j = lo * total + V a * log x_bar_theta_x0
    # sum_j x_bar_j log x_bar_j       = (V - 1) lo log lo + hi log hi
    weighted = (vocab * (at_z - torch.log(bar_z)) - (lo * total + vocab * alpha * at_x0)
                + (vocab - 1) * lo * log_lo + hi * log_hi)
    term2 = weighted / bar_z
    return dalpha / (vocab * alpha) * (term1 - term2)


def draw_uniform_noise(shape: torch.Size | tuple[int, ...], replace_prob: torch.Tensor, vocab_size: int, *,
                       generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One draw of the forward process's randomness on the CPU (`difflm.rng`: a seed gives the same draw on
    every device): ``replace`` BoolTensor [B, L] (u < replace_prob, given per row [B] or per token [B, L]) and ``noise_tokens``
    LongTensor [B, L] uniform on [0, vocab_size) (used where ``replace``)."""
    u = rng.uniform(tuple(shape), generator=generator, device="cpu")
    prob = replace_prob.detach().float().cpu()
    replace = u < (prob if prob.dim() == len(shape) else prob.reshape(-1, *([1] * (len(shape) - 1))))
    noise_tokens = rng.integers(vocab_size, tuple(shape), generator=generator, device="cpu")
    return replace, noise_tokens


def uniform_block_times(model: Any, x0: torch.Tensor, *, antithetic: bool = False, eps: float = SCHEDULE_EPS,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """Noise levels t FloatTensor [B, L] (CPU) of a block diffusion model: one level per block of
    `DiffusionLM.block_groups`, drawn from [eps, 1] (antithetic across all blocks if asked), given per token."""
    groups = model.block_groups(x0.cpu())
    per_block = sample_t(x0.shape[0] * (int(groups.max()) + 1), antithetic=antithetic, eps=eps, generator=generator,
                         device="cpu")
    return per_block.view(x0.shape[0], -1).gather(1, groups)


def time_conditioned_logits(model: Any, x_t: torch.Tensor, attention_mask: torch.Tensor | None,
                            sigma: torch.Tensor, *, forward: Any = None, step: int | None = None,
                            generator: torch.Generator | None = None) -> torch.Tensor:
    """Aligned logits [B, L, V] of a uniform-state `DiffusionLM` given the noise level sigma [B]: `DiffusionLM.logits`
    with the time input (a time-free backbone ignores it). ``forward``: the module to call instead of ``model``
    (a training run's DDP/FSDP wrapper), with ``step`` / ``generator`` for annealed attention."""
    if forward is None:
        return model.logits(x_t, attention_mask, timesteps=sigma, step=step, generator=generator)
    return forward(x_t, attention_mask, timesteps=sigma, step=step, generator=generator)


@dataclass
class UniformLossOutput:
    """loss: the negative ELBO per scored token (scalar: token_nll summed / num_tokens); token_nll [B, L]
    (0 where not scored); x_t [B, L]; t [B]; num_tokens: scored positions."""

    loss: torch.Tensor
    token_nll: torch.Tensor
    x_t: torch.Tensor
    t: torch.Tensor
    num_tokens: int


def uniform_diffusion_loss(
    model: Any,
    x0: torch.Tensor,
    *,
    t: torch.Tensor | None = None,
    replace: torch.Tensor | None = None,
    noise_tokens: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    src_mask: torch.Tensor | None = None,
    convention: str = "duo",
    eps: float = SCHEDULE_EPS,
    antithetic: bool = False,
    generator: torch.Generator | None = None,
    forward: Any = None,
    step: int | None = None,
    anneal_generator: torch.Generator | None = None,
) -> UniformLossOutput:
    """Monte Carlo estimate of the uniform-state negative ELBO of ``x0`` (lower is better), exactly
    reproducible on fixed noise: with ``t``, ``replace`` and ``noise_tokens`` given it is a deterministic
    function of the model and x0.

    Args:
        model: a time-conditioned `DiffusionLM` (UDLM / Duo: `is_uniform_state`).
        x0: LongTensor [B, L] of clean tokens.
        t: FloatTensor [B] in (0, 1], or [B, L] per token (a block diffusion model: one level per block,
            `uniform_block_times`); drawn from [eps, 1] (antithetic optionally) when None.
        replace: BoolTensor [B, L], the positions whose token is resampled; with ``noise_tokens``
            (LongTensor [B, L], the uniform draws used there). Drawn together when None.
        attention_mask: [B, L], 0 for padding: neither noised, scored nor attended.
        src_mask: BoolTensor [B, L], positions never noised nor scored (the context of a conditional bound).
        convention: "duo" (default) or "udlm" (the reference quirk, see the module doc).
        forward: the module that computes the logits (a training run's wrapped model); default ``model``.
        step, anneal_generator: the training step and its draw for annealed attention (adaptation from an
            AR model); without a step the model's attention is used as configured, annealing over.
    Returns:
        `UniformLossOutput`; ``loss`` = sum of token_nll over the scored positions / their number (the
        references' per-token NLL of a batch).
    """
    if x0.dim() != 2:
        raise InputError(f"x0 must be [batch, length], got shape {tuple(x0.shape)}")
    if (replace is None) != (noise_tokens is None):
        raise InputError("give both replace and noise_tokens (one draw of the forward process), or neither")
    device, vocab = x0.device, int(model.vocab_size)
    blockwise = getattr(model.config, "block_size", None) is not None
    if t is None:
        if replace is not None:
            raise InputError("a given noise draw needs its noise levels t")
        t = uniform_block_times(model, x0, antithetic=antithetic, eps=eps, generator=generator) if blockwise else \
            sample_t(x0.shape[0], antithetic=antithetic, eps=eps, generator=generator, device="cpu")
    t = t.float().to(device)
    per_token = t.dim() == 2
    t = check_t(t if per_token else t.reshape(-1))
    if (t.shape != x0.shape) if per_token else (t.shape[0] != x0.shape[0]):
        raise InputError(f"t has shape {tuple(t.shape)} for x0 of shape {tuple(x0.shape)}; give one level per row "
                         "(or per token, for a block diffusion model)")
    if per_token and getattr(model, "takes_time", False):
        raise InputError("per-token noise levels need a backbone without a time input (its sigma is per row)")
    times = uniform_times(t, eps=eps, convention=convention)
    if replace is None:
        replace, noise_tokens = draw_uniform_noise(x0.shape, times.replace_prob, vocab, generator=generator)
    replace, noise_tokens = replace.to(device).bool(), noise_tokens.to(device).long()
    if replace.shape != x0.shape or noise_tokens.shape != x0.shape:
        raise InputError(f"replace / noise_tokens must have x0's shape {tuple(x0.shape)}")
    scored = torch.ones_like(x0, dtype=torch.bool) if attention_mask is None else attention_mask.to(device).bool()
    if src_mask is not None:
        scored = scored & ~src_mask.to(device).bool()
    x_t = torch.where(replace & scored, noise_tokens, x0)
    if blockwise:  # every block denoised seeing the clean blocks before it (BD3-LM's two-copy forward)
        logits = two_copy_logits(model, x_t, x0, attention_mask, forward=forward)
    else:
        logits = time_conditioned_logits(model, x_t, attention_mask, times.sigma, forward=forward, step=step,
                                         generator=anneal_generator)
    token_nll = torch.zeros(x0.shape, dtype=torch.float32, device=device)
    if scored.any():
        pick = (lambda v: v[scored]) if per_token else (lambda v: v[scored.nonzero()[:, 0]])
        token_nll[scored] = uniform_nll_from_logits(logits[scored], x0[scored], x_t[scored], pick(times.alpha),
                                                    pick(times.dalpha)).float()
    count = int(scored.sum())
    return UniformLossOutput(token_nll.sum() / max(count, 1), token_nll, x_t, t, count)

