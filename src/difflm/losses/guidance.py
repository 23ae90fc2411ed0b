"""Training-only terms that reshape the masked-diffusion loss (both leave validation the plain ELBO):

* focal reweighting (MGDM, Ye et al. 2025; Dream): each target's cross-entropy ce scaled by
  alpha * (1 - exp(-ce)) ** gamma, which moves the gradient onto the tokens the model still gets wrong;
* AR guidance (NBDiff, Tian et al. 2025): for a block diffusion model whose finished blocks are read
  causally, the clean copy of the two-copy forward is an AR model - its next-token loss comes for free.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..errors import ConfigError


def focal_reweighting(ce: torch.Tensor, token_reweighting: tuple[float, float]) -> torch.Tensor:
    """ce [B, L] (per-token cross-entropies) reweighted: alpha * (1 - exp(-ce)) ** gamma * ce."""
    alpha, gamma = token_reweighting
    return alpha * (1 - torch.exp(-ce)) ** gamma * ce


def check_ar_loss_weight(config: Any, weight: float) -> None:
    """`ConfigError` unless ``weight`` is 0 or the model (its `DiffusionConfig`) reads finished blocks
    causally: only then is the clean copy of the two-copy forward an AR model."""
    if weight and (config.block_size is None or config.block_context != "causal"):
        raise ConfigError("ar_loss_weight needs a block diffusion model with diffusion.block_context: causal "
                          "(its clean copy is then an AR model); this model "
                          + ("has no block_size" if config.block_size is None else "reads finished blocks as blocks"))


def ar_guidance(clean_logits: torch.Tensor, x0: torch.Tensor, targets: torch.Tensor, denominator: float,
                weight: float) -> torch.Tensor:
    """``weight`` times the next-token cross-entropy of the clean copy's aligned logits [B, L, V] over
    ``targets`` (BoolTensor [B, L]), divided by ``denominator`` (at least 1): the term added to the
    diffusion loss."""
    ce = F.cross_entropy(clean_logits.float().transpose(1, 2), x0, reduction="none")
    return weight * (ce * targets).sum() / max(1, denominator)
