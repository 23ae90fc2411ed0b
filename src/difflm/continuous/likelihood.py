"""The variational bound on -log p(tokens) of a continuous DLM, in nats (as Plaid reports it).

The continuous-time bound of Variational Diffusion Models (Kingma et al. 2021) on the embeddings
e = e(x) of the target tokens (conditioning tokens are given clean and are not scored):

    -log p(x) <= L_prior + L_recon + L_diffusion
    L_prior     = KL(q(z_1 | x) || N(0, I))                      (0 when alpha_bar(1) = 0)
    L_recon     = E_{z_0 ~ q(z_0 | x)} [ -log p(x | z_0) ]        rounding: p(x_i = v | z_0) is the
                  posterior of a uniform prior over tokens, softmax_v(alpha_0 <z_0, e_v> / sigma_0^2)
    L_diffusion = 1/2 integral_0^1 -SNR'(t) E_eps || e - x0_hat(z_t, t) ||^2 dt

x0_hat is the denoiser's estimate softmax(logits) @ e, self-conditioned on its own first estimate at
the same z_t (a deterministic function of z_t, so the bound stays valid). The integral is estimated
by importance sampling: t is drawn from an even mixture of U(0, 1) and of "log-SNR uniform on
[LOG_SNR_MIN, log SNR(0)]", weighted by 1 / q(t) - unbiased, and far less noisy than uniform t,
whose weight -SNR'(t) is ~1e5 near t = 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..noise import sample_t
from .. import rng
from .schedule import GaussianSchedule, standard_normal

LOG_SNR_MIN = -12.0


@dataclass
class BoundTerms:
    """Per-row nats summed over the row's targets (FloatTensor [B] each) and the targets' number [B]."""

    prior: torch.Tensor
    recon: torch.Tensor
    diffusion: torch.Tensor
    count: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        return self.prior + self.recon + self.diffusion


def _log_snr_range(schedule: GaussianSchedule) -> tuple[float, float]:
    hi = float(torch.log(schedule.snr(torch.zeros(1))).item())
    return LOG_SNR_MIN, hi


def importance_times(u: torch.Tensor, pick: torch.Tensor, schedule: GaussianSchedule) -> tuple[torch.Tensor, torch.Tensor]:
    """(t [B], weight [B] = -SNR'(t) / q(t)) from uniforms ``u`` [B] (stratify them) and ``pick`` [B]: each t
    comes from U(0, 1) when pick < 1/2, else from log-SNR uniform on [LOG_SNR_MIN, log SNR(0)]; q is the
    density of the even mixture."""
    lo, hi = _log_snr_range(schedule)
    lam = lo + (hi - lo) * u.double()
    t_lambda = schedule.t_of_alpha_bar(torch.sigmoid(lam))
    t = torch.where(pick < 0.5, u.float(), t_lambda)
    snr, d_snr = schedule.snr(t).double(), schedule.d_snr(t).double()
    log_snr = torch.log(snr.clamp_min(1e-30))
    in_range = (log_snr >= lo) & (log_snr <= hi + 1e-6)
    density = 0.5 + 0.5 * in_range * (-d_snr / snr.clamp_min(1e-30)) / (hi - lo)
    return t, (-d_snr / density).float()


@torch.no_grad()
def nll_bound(model, ids: torch.Tensor, clean: torch.Tensor, *, generator: torch.Generator | None = None,
              antithetic: bool = True, attention_mask: torch.Tensor | None = None, u: torch.Tensor | None = None
              ) -> BoundTerms:
    """One Monte Carlo sample of the bound for every row of ``ids`` [B, L] given its ``clean`` [B, L]
    positions (scored: the others that are real tokens). ``u`` [B] fixes the time uniforms (stratified
    across samples of one sequence by the caller); else they are drawn, stratified across the batch
    with ``antithetic``. Every draw comes from ``generator`` (CPU) and is moved to the model's device."""
    cfg, schedule, device = model.config, model.schedule, model.device
    b, length = ids.shape
    if u is None:
        u = sample_t(b, antithetic=antithetic, eps=0.0, generator=generator)
    pick = rng.uniform((b,), generator=generator)
    noise = standard_normal((b, length, cfg.embed_dim), generator=generator)
    noise0 = standard_normal((b, length, cfg.embed_dim), generator=generator)
    ids, clean = ids.to(device), clean.to(device)
    targets = ~clean if attention_mask is None else ~clean & attention_mask.to(device).bool()
    table = model.embedding_table()
    e = table[ids]
    d = cfg.embed_dim

    # prior: KL of N(alpha_1 e, sigma_1^2 I) from N(0, I) per target; ||e||^2 = d and alpha^2 + sigma^2 = 1
    alpha_bar1 = schedule.alpha_bar(torch.ones(1)).double().clamp(max=1 - 1e-12)
    kl = float(-0.5 * d * torch.log1p(-alpha_bar1))
    prior = targets.sum(-1).double() * kl

    # reconstruction (rounding) at t = 0
    a0, s0 = (float(v) for v in schedule.alpha_sigma(torch.zeros(1)))
    z0 = a0 * e + s0 * noise0.to(device)
    with torch.autocast(device.type, enabled=False):  # logits of scale 1/sigma_0^2: float32
        log_p = torch.log_softmax(a0 * (z0 @ table.T) / s0**2, dim=-1)
    recon = -(log_p.gather(-1, ids[..., None])[..., 0] * targets).sum(-1).double()

    # diffusion: 1/2 w(t)/q(t) ||e - x0_hat||^2 at one importance-sampled t per row
    t, weight = importance_times(u, pick, schedule)
    alpha, sigma = schedule.alpha_sigma(t)
    zt = alpha[:, None, None].to(device) * e + sigma[:, None, None].to(device) * noise.to(device)
    t = t.to(device)
    estimate = None
    if cfg.self_condition:
        estimate = model.x0_estimate(model.denoise(zt, t, clean, ids, None, attention_mask))
    x0_hat = model.x0_estimate(model.denoise(zt, t, clean, ids, estimate, attention_mask))
    error = (((e - x0_hat) ** 2).sum(-1) * targets).sum(-1).double()
    diffusion = 0.5 * weight.to(device).double() * error
    return BoundTerms(prior.cpu(), recon.cpu(), diffusion.cpu(), targets.sum(-1).cpu())


def bound_per_token(terms: list[BoundTerms]) -> float:
    """Nats per target token over several batches of `nll_bound`."""
    total = sum(float(t.total.sum()) for t in terms)
    count = sum(int(t.count.sum()) for t in terms)
    return total / max(1, count) if count else math.nan
