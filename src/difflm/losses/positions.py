"""Which positions a masked-diffusion loss may noise and score: the maskable positions of a row, and
the positions of some blocks of a block diffusion model's grid."""

from __future__ import annotations

import torch

from ..model import DiffusionLM


def maskable_positions(model: DiffusionLM, x0: torch.Tensor, *, src_mask: torch.Tensor | None = None,
                       attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """BoolTensor [B, L]: positions the forward process may mask - those with a prediction of
    their own (`DiffusionLM.predictable_mask`: never padding, and with shift never a row's first
    real token, which acts as BOS), minus the prompt (``src_mask`` [B, L])."""
    allowed = model.predictable_mask(x0, attention_mask)
    if src_mask is not None:
        allowed &= ~src_mask.bool()
    return allowed


def in_blocks(model: DiffusionLM, x0: torch.Tensor, blocks: torch.Tensor,
              attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """BoolTensor [B, L]: the positions of x0 [B, L] whose block (`DiffusionLM.block_groups`) is one of
    ``blocks`` [B, K] (-1 = none)."""
    groups = model.block_groups(x0, attention_mask)
    return (groups.unsqueeze(-1) == blocks.to(groups.device).unsqueeze(-2)).any(-1)
