"""The forward (noising) process of absorbing-state diffusion.

A schedule gives alpha(t), the probability that a token is still clean at time t in [0, 1], and
the ELBO weight w(t) = -alpha'(t) / (1 - alpha(t)) that multiplies the cross-entropy of each masked
token. For the linear schedule alpha(t) = 1 - t, so a token is masked with probability t and w = 1/t
(DiffuLLaMA, LLaDA, MDLM).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .errors import ConfigError, InputError
from .rng import uniform


@dataclass(frozen=True)
class NoiseSchedule:
    """Base class: subclasses define `alpha` and `alpha_derivative`."""

    name: str = "base"

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def alpha_derivative(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def mask_prob(self, t: torch.Tensor) -> torch.Tensor:
        """Probability that a token is masked at time t: 1 - alpha(t). Shape as t."""
        return 1.0 - self.alpha(t)

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        """ELBO weight of a masked token's cross-entropy at time t. Shape as t."""
        return -self.alpha_derivative(t) / self.mask_prob(t)


@dataclass(frozen=True)
class LinearSchedule(NoiseSchedule):
    """alpha(t) = 1 - t; mask probability t; weight 1/t."""

    name: str = "linear"

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return 1.0 - t

    def alpha_derivative(self, t: torch.Tensor) -> torch.Tensor:
        return -torch.ones_like(t)

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        return 1.0 / t  # exact form avoids a 0/0 at nothing


@dataclass(frozen=True)
class CosineSchedule(NoiseSchedule):
    """alpha(t) = cos(pi t / 2): fewer masks early, more late."""

    name: str = "cosine"

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return torch.cos(0.5 * math.pi * t)

    def alpha_derivative(self, t: torch.Tensor) -> torch.Tensor:
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * t)

    def mask_prob(self, t: torch.Tensor) -> torch.Tensor:
        # 1 - cos(x) = 2 sin^2(x / 2): no cancellation near t = 0, where 1 - cos(x) in float32 is 0
        return 2.0 * torch.sin(0.25 * math.pi * t) ** 2

    def weight(self, t: torch.Tensor) -> torch.Tensor:
        # (pi/2) sin(x) / (2 sin^2(x/2)) = (pi/2) / tan(x/2), with x = pi t / 2
        return 0.5 * math.pi / torch.tan(0.25 * math.pi * t)


@dataclass(frozen=True)
class LogLinearSchedule(NoiseSchedule):
    """MDLM's log-linear schedule: total noise sigma(t) = -log(1 - (1 - eps) t), so
    alpha(t) = 1 - (1 - eps) t never reaches full masking; its weight is still 1/t."""

    name: str = "loglinear"
    eps: float = 1e-3

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return 1.0 - (1.0 - self.eps) * t

    def alpha_derivative(self, t: torch.Tensor) -> torch.Tensor:
        return torch.full_like(t, -(1.0 - self.eps))


def check_t(t: torch.Tensor) -> torch.Tensor:
    """``t`` unchanged if every noise level lies in (0, 1]; else `InputError` (t = 0 would give
    the 1/t weight of an empty corruption: a NaN loss)."""
    bad = ~((t > 0) & (t <= 1))
    if bool(bad.any()):
        raise InputError(f"noise levels t must lie in (0, 1]; got {t[bad].flatten()[0].item()!r}")
    return t


def get_schedule(name: str, *, eps: float = 1e-3) -> NoiseSchedule:
    """Schedule by name: "linear", "cosine" or "loglinear"."""
    if name == "linear":
        return LinearSchedule()
    if name == "cosine":
        return CosineSchedule()
    if name == "loglinear":
        return LogLinearSchedule(eps=eps)
    raise ConfigError(f"unknown schedule {name!r}; choose one of linear, cosine, loglinear")


def sample_t(
    batch_size: int,
    *,
    antithetic: bool = False,
    eps: float = 1e-3,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Draw one noise level per sequence: t = (1 - eps) u + eps, u ~ U(0, 1).

    With ``antithetic`` the u's are low-discrepancy across the batch, u_i = (u0 + i) / B (MDLM),
    which lowers the variance of the batch loss. Returns FloatTensor [batch_size] in [eps, 1].
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if antithetic:
        u0 = uniform((1,), generator=generator, device=device)
        u = (u0 + torch.arange(batch_size, device=device)) / batch_size
    else:
        u = uniform((batch_size,), generator=generator, device=device)
    return (1.0 - eps) * u + eps


def corrupt(
    x0: torch.Tensor,
    t: torch.Tensor,
    mask_token_id: int,
    *,
    src_mask: torch.Tensor | None = None,
    schedule: NoiseSchedule | str = "linear",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample x_t ~ q(x_t | x_0): each token not in ``src_mask`` is replaced by the mask id
    independently with probability 1 - alpha(t).

    Args:
        x0: LongTensor [B, L], clean tokens.
        t: FloatTensor [B] (one level per sequence) or [B, L] (per token).
        src_mask: BoolTensor [B, L]; True marks positions that are never noised (prompt, padding).
    Returns:
        (x_t LongTensor [B, L], noise_mask BoolTensor [B, L] - True where a mask was placed).
    """
    if isinstance(schedule, str):
        schedule = get_schedule(schedule)
    if t.dim() == 1:
        t = t[:, None]
    p = schedule.mask_prob(t.float()).expand(x0.shape)
    noise_mask = uniform(x0.shape, generator=generator, device=x0.device) < p
    if src_mask is not None:
        noise_mask &= ~src_mask.bool()
    x_t = torch.where(noise_mask, torch.full_like(x0, mask_token_id), x0)
    return x_t, noise_mask
