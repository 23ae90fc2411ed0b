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

__all__ = ["CONVENTIONS", "SCHEDULE_EPS", "UniformLossOutput", "UniformTimes", "draw_uniform_noise",
           "is_uniform_state", "time_conditioned_logits", "uniform_diffusion_loss", "uniform_nll_from_logits",
           "uniform_times"]

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
    every device): ``replace`` BoolTensor [B, L] (u < replace_prob, row-wise) and ``noise_tokens``
    LongTensor [B, L] uniform on [0, vocab_size) (used where ``replace``)."""
    u = rng.uniform(tuple(shape), generator=generator, device="cpu")
    replace = u < replace_prob.detach().float().cpu().reshape(-1, *([1] * (len(shape) - 1)))
    noise_tokens = rng.integers(vocab_size, tuple(shape), generator=generator, device="cpu")
    return replace, noise_tokens


def time_conditioned_logits(model: Any, x_t: torch.Tensor, attention_mask: torch.Tensor | None,
                            sigma: torch.Tensor) -> torch.Tensor:
    """Aligned logits [B, L, V] of a time-conditioned `DiffusionLM` (its backbone takes ``timesteps=``, the
    noise level sigma [B], as difflm's DiT does): `DiffusionLM.logits` with the time input."""
    return model.logits(x_t, attention_mask, timesteps=sigma)


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
) -> UniformLossOutput:
    """Monte Carlo estimate of the uniform-state negative ELBO of ``x0`` (lower is better), exactly
    reproducible on fixed noise: with ``t``, ``replace`` and ``noise_tokens`` given it is a deterministic
    function of the model and x0.

    Args:
        model: a time-conditioned `DiffusionLM` (UDLM / Duo: `is_uniform_state`).
        x0: LongTensor [B, L] of clean tokens.
        t: FloatTensor [B] in (0, 1]; drawn from [eps, 1] (antithetic optionally) when None.
        replace: BoolTensor [B, L], the positions whose token is resampled; with ``noise_tokens``
            (LongTensor [B, L], the uniform draws used there). Drawn together when None.
        attention_mask: [B, L], 0 for padding: neither noised, scored nor attended.
        src_mask: BoolTensor [B, L], positions never noised nor scored (the context of a conditional bound).
        convention: "duo" (default) or "udlm" (the reference quirk, see the module doc).
    Returns:
        `UniformLossOutput`; ``loss`` = sum of token_nll over the scored positions / their number (the
        references' per-token NLL of a batch).
    """
    if x0.dim() != 2:
        raise InputError(f"x0 must be [batch, length], got shape {tuple(x0.shape)}")
    if (replace is None) != (noise_tokens is None):
        raise InputError("give both replace and noise_tokens (one draw of the forward process), or neither")
    device, vocab = x0.device, int(model.vocab_size)
    if t is None:
        if replace is not None:
            raise InputError("a given noise draw needs its noise levels t")
        t = sample_t(x0.shape[0], antithetic=antithetic, eps=eps, generator=generator, device="cpu")
    t = check_t(t.float().reshape(-1).to(device))
    if t.shape[0] != x0.shape[0]:
        raise InputError(f"t has {t.shape[0]} noise levels for {x0.shape[0]} rows; give one per row")
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
    logits = time_conditioned_logits(model, x_t, attention_mask, times.sigma)
    token_nll = torch.zeros(x0.shape, dtype=torch.float32, device=device)
    rows = scored.nonzero()[:, 0]
    if rows.numel():
        token_nll[scored] = uniform_nll_from_logits(logits[scored], x0[scored], x_t[scored], times.alpha[rows],
                                                    times.dalpha[rows]).float()
    count = int(scored.sum())
    return UniformLossOutput(token_nll.sum() / max(count, 1), token_nll, x_t, t, count)

