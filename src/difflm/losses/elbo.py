"""The masked-diffusion ELBO from aligned logits: weighted cross-entropy of the masked targets over a
denominator ("tokens": the maskable positions, the unbiased per-token ELBO; "masked": the targets,
DiffuLLaMA)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..config import LOSS_NORMALIZATIONS
from ..errors import ConfigError
from ..noise import NoiseSchedule
from .guidance import focal_reweighting


@dataclass
class DiffusionLossOutput:
    """loss: scalar; num_masked: masked tokens scored (targets) in the batch; num_targets: positions that
    could have been masked (the ELBO's per-token denominator); t: FloatTensor [B] (or [B, L])."""

    loss: torch.Tensor
    num_masked: int
    num_targets: int
    t: torch.Tensor

    def denominator(self, normalization: str) -> int:
        """What the loss was divided by under ``normalization`` (at least 1)."""
        return max(1, self.num_masked if normalization == "masked" else self.num_targets)


def check_normalization(normalization: str) -> str:
    """``normalization`` if it is one of "tokens" / "masked", else `ConfigError`."""
    if normalization not in LOSS_NORMALIZATIONS:
        raise ConfigError(f"unknown loss normalization {normalization!r}; choose tokens or masked")
    return normalization


def diffusion_loss_from_logits(
    logits: torch.Tensor,
    x0: torch.Tensor,
    targets: torch.Tensor,
    t: torch.Tensor,
    num_targets: int,
    *,
    schedule: NoiseSchedule,
    normalization: str = "tokens",
    token_reweighting: tuple[float, float] | None = None,
) -> DiffusionLossOutput:
    """The ELBO loss from aligned logits [B, L, V] of x_t. targets: BoolTensor [B, L], the masked
    positions scored; t: [B] (or [B, L]); num_targets: the maskable positions ("tokens" denominator);
    token_reweighting: (alpha, gamma) of the focal reweighting (`difflm.losses.guidance.focal_reweighting`)."""
    ce = F.cross_entropy(logits.float().transpose(1, 2), x0, reduction="none")  # [B, L]
    if token_reweighting is not None:
        ce = focal_reweighting(ce, token_reweighting)
    weights = schedule.weight(t)[:, None] if t.dim() == 1 else schedule.weight(t)
    total = (weights * ce * targets).sum()
    num_masked = int(targets.sum())
    denominator = num_masked if normalization == "masked" else num_targets
    # max(1, .): a batch with nothing masked gives loss 0 with zero (not NaN) gradients.
    return DiffusionLossOutput(total / max(1, denominator), num_masked, num_targets, t)
