"""The training objective of a continuous DLM: the step's seeded draws and the cross-entropy loss.

One training row: a noise level t, Gaussian noise for every position, and a set of *clean* positions
(BOS always; with probability ``cond_prob`` a random prefix and, half of the time, a random suffix -
DiffuSeq's partial noising, which is what conditional generation, infilling and classifier-free
guidance need). The denoiser predicts the tokens of the other positions; the loss is their
cross-entropy (CDCD's score interpolation), plus Diffusion-LM's MSE on x0 when ``mse_weight`` > 0.
With self-conditioning, half of the rows first get a gradient-free estimate of x0 at the same z_t.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .. import rng
from ..noise import sample_t
from .config import ContinuousConfig
from .likelihood import importance_times
from .schedule import GaussianSchedule, standard_normal


@dataclass
class ContinuousNoise:
    """The draws of a batch: ``t`` [B], ``noise`` [B, L, d], ``clean`` [B, L] (bool), ``self_cond`` [B]
    (bool: the rows that get a self-conditioning estimate)."""

    t: torch.Tensor
    noise: torch.Tensor
    clean: torch.Tensor
    self_cond: torch.Tensor

    def rows(self, rows: slice) -> "ContinuousNoise":
        return ContinuousNoise(self.t[rows], self.noise[rows], self.clean[rows], self.self_cond[rows])


def conditioning_mask(batch: int, length: int, config: ContinuousConfig, *,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """BoolTensor [B, L]: the clean positions of each training row (see the module doc). Position 0
    (BOS) is always clean."""
    u = rng.uniform((batch, 4), generator=generator)
    positions = torch.arange(length)[None, :]
    longest = max(1, int(config.max_cond_fraction * length))
    prefix = 1 + (u[:, 1] * longest).long()  # 1..longest
    suffix = (u[:, 3] * (longest // 2 + 1)).long() * (u[:, 2] < 0.5)  # 0..longest/2, half of the rows
    conditioned = (u[:, 0] < config.cond_prob)[:, None]
    cond = (positions < prefix[:, None]) | (positions >= length - suffix[:, None])
    return (positions == 0) | (conditioned & cond)


def draw_continuous_noise(x: torch.Tensor, config: ContinuousConfig, *, antithetic: bool = True,
                          generator: torch.Generator | None = None, src: torch.Tensor | None = None) -> ContinuousNoise:
    """The draws of a training batch ``x`` [B, L] from one (CPU) generator, so that they depend only on
    its seed. ``src`` [B, L] (seq2seq data: the source) replaces the random conditioning positions."""
    b, length = x.shape
    t = sample_t(b, antithetic=antithetic, eps=0.0, generator=generator)
    if config.time_sampling == "mixture":
        pick = rng.uniform((b,), generator=generator)
        t = importance_times(t, pick, GaussianSchedule(config.schedule, config.offset))[0]
    noise = standard_normal((b, length, config.embed_dim), generator=generator)
    clean = conditioning_mask(b, length, config, generator=generator)
    if src is not None:
        clean = src.bool() | (torch.arange(length)[None, :] == 0)
    self_cond = rng.uniform((b,), generator=generator) < 0.5
    if not config.self_condition:
        self_cond = torch.zeros_like(self_cond)
    return ContinuousNoise(t, noise, clean, self_cond)


def continuous_loss(model, x: torch.Tensor, draws: ContinuousNoise, *, forward: Callable | None = None,
                    attention_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """(sum over target positions of the loss, number of targets) of a batch ``x`` [B, L].

    ``model`` is the `ContinuousDLM`; ``forward`` the module to run it through (the DDP wrapper while
    training). Targets are the positions that are neither clean nor padding.
    """
    forward = forward or model
    device = model.device
    x = x.to(device)
    t, noise, clean = draws.t, draws.noise, draws.clean.to(device)
    self_cond = None
    if draws.self_cond.any():
        rows = draws.self_cond.to(device)
        with torch.no_grad():  # the plain module: no DDP bookkeeping for a pass without gradients
            first = model(x[rows], t[draws.self_cond], noise[draws.self_cond], clean[rows],
                          attention_mask=None if attention_mask is None else attention_mask[rows])
            estimate = model.x0_estimate(first)
        self_cond = torch.zeros(*x.shape, model.config.embed_dim, device=device)
        self_cond[rows] = estimate
    logits = forward(x, t, noise, clean, self_cond, attention_mask)
    targets = ~clean if attention_mask is None else ~clean & attention_mask.to(device).bool()
    ce = F.cross_entropy(logits.float().transpose(1, 2), x, reduction="none")
    total = (ce * targets).sum()
    if model.config.mse_weight > 0:
        table = model.embedding_table().detach()  # the MSE trains the predictor, not the embeddings
        error = ((model.x0_estimate(logits) - table[x]) ** 2).sum(-1) / model.config.embed_dim
        total = total + model.config.mse_weight * (error * targets).sum()
    return total, int(targets.sum())
