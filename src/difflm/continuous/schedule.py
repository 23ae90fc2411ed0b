"""Noise schedules of the Gaussian forward process on embeddings, and seeded Gaussian draws.

Variance preserving: z_t = alpha(t) e + sigma(t) eps with alpha^2 = alpha_bar(t), sigma^2 = 1 - alpha_bar(t),
t in [0, 1]. What the likelihood bound needs is the signal-to-noise ratio SNR(t) = alpha^2 / sigma^2
and its derivative (Kingma et al. 2021, "Variational Diffusion Models"), both in closed form here.

* ``sqrt`` (Diffusion-LM): alpha_bar = 1 - sqrt(s + (1 - s) t): noise rises fast near t = 0, which is
  what makes rounding to tokens hard-but-learnable (Li et al. 2022); s = 1e-4 puts a noise floor of
  sigma(0)^2 = 0.01 under the clean embeddings.
* ``cosine`` (Nichol & Dhariwal): alpha_bar = (1 - floor) cos^2(pi/2 (t + s)/(1 + s)) / cos^2(pi/2 s/(1 + s)),
  with a floor of 1e-4 so that sigma(0) > 0 (the bound's reconstruction term needs it).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from .. import rng
from ..errors import ConfigError
from .config import GAUSSIAN_SCHEDULES

COSINE_FLOOR = 1e-4
_EPS = 1e-12


class GaussianSchedule:
    """alpha_bar(t) and the SNR of one schedule of the Gaussian forward process (not to be confused with
    `difflm.noise`'s masking schedules alpha(t)); every method takes t as a FloatTensor of any shape."""

    def __init__(self, name: str, offset: float) -> None:
        if name not in GAUSSIAN_SCHEDULES:
            raise ConfigError(f"unknown continuous schedule {name!r}; choose sqrt or cosine")
        self.name, self.s = name, float(offset)

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """alpha_bar(t) in [0, 1): the signal's share of the variance at time t."""
        t = t.double().clamp(0.0, 1.0)
        if self.name == "sqrt":
            out = 1.0 - torch.sqrt(self.s + (1.0 - self.s) * t)
        else:
            f0 = math.cos(math.pi / 2 * self.s / (1 + self.s)) ** 2
            out = (1.0 - COSINE_FLOOR) * torch.cos(math.pi / 2 * (t + self.s) / (1 + self.s)) ** 2 / f0
        return out.clamp(0.0, 1.0).float()

    def d_alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """d alpha_bar / dt (<= 0)."""
        t = t.double().clamp(0.0, 1.0)
        if self.name == "sqrt":
            out = -(1.0 - self.s) / (2.0 * torch.sqrt(self.s + (1.0 - self.s) * t))
        else:
            f0 = math.cos(math.pi / 2 * self.s / (1 + self.s)) ** 2
            angle = math.pi * (t + self.s) / (1 + self.s)
            out = -(1.0 - COSINE_FLOOR) * math.pi / (2 * (1 + self.s)) * torch.sin(angle) / f0
        return out.float()

    def t_of_alpha_bar(self, a: torch.Tensor) -> torch.Tensor:
        """The inverse of `alpha_bar`: the time at which alpha_bar(t) = a (clamped into [0, 1])."""
        a = a.double().clamp(0.0, 1.0)
        if self.name == "sqrt":
            t = ((1.0 - a) ** 2 - self.s) / (1.0 - self.s)
        else:
            f0 = math.cos(math.pi / 2 * self.s / (1 + self.s)) ** 2
            inner = torch.sqrt((a * f0 / (1.0 - COSINE_FLOOR)).clamp(0.0, 1.0))
            t = 2.0 / math.pi * (1 + self.s) * torch.arccos(inner) - self.s
        return t.clamp(0.0, 1.0).float()

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha(t), sigma(t)): the scales of the signal and of the noise."""
        a = self.alpha_bar(t)
        return a.sqrt(), (1.0 - a).clamp_min(0.0).sqrt()

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        """alpha_bar / (1 - alpha_bar)."""
        a = self.alpha_bar(t).double()
        return (a / (1.0 - a).clamp_min(_EPS)).float()

    def d_snr(self, t: torch.Tensor) -> torch.Tensor:
        """d SNR / dt = alpha_bar' / (1 - alpha_bar)^2 (<= 0): the weight of the diffusion term of the bound."""
        a = self.alpha_bar(t).double()
        return (self.d_alpha_bar(t).double() / (1.0 - a).clamp_min(_EPS) ** 2).float()


def standard_normal(shape: Sequence[int] | torch.Size, *, generator: torch.Generator | None = None,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """N(0, 1) samples of ``shape`` on ``device``: Box-Muller on `difflm.rng.uniform` draws, so a seed gives
    the same numbers on every device (the generator may be a CPU generator; see `difflm.rng`)."""
    shape = tuple(shape)
    n = math.prod(shape)
    u = rng.uniform((2, (n + 1) // 2), generator=generator, device=device, dtype=torch.float64)
    radius = torch.sqrt(-2.0 * torch.log1p(-u[0]))  # 1 - u is in (0, 1]: log never sees 0
    angle = 2.0 * math.pi * u[1]
    z = torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)])[:n]
    return z.float().reshape(shape)
