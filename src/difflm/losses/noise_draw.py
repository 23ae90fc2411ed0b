"""The noise draw q(x_t | x_0) of masked diffusion: noise levels t and the positions they mask."""

from __future__ import annotations

import torch

from ..model import DiffusionLM
from ..noise import check_t, corrupt, get_schedule, sample_t
from .positions import in_blocks, maskable_positions

__all__ = ["draw_noise", "maskable_positions"]


def draw_noise(
    model: DiffusionLM,
    x0: torch.Tensor,
    *,
    t: torch.Tensor | None = None,
    src_mask: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    antithetic: bool = False,
    generator: torch.Generator | None = None,
    blocks: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample q(x_t | x_0) for a batch x0 [B, L]: (noise_mask BoolTensor [B, L], t FloatTensor [B], or
    [B, L] for a block diffusion model).

    One t per sequence from [eps, 1] (antithetic across the batch if asked) unless given - one per
    block for a block diffusion model (``config.block_size``), given per token; then each of the
    `maskable_positions` is masked independently with probability 1 - alpha(t) - only those of the
    ``blocks`` [B, K] of each row when given (`difflm.losses.block.draw_blocks`). Seeded draws work on
    any device (`difflm.rng`)."""
    cfg = model.config
    if t is None and cfg.block_size is not None:
        # a block diffusion model: every block gets its own noise level (BD3-LM); t per token
        groups = model.block_groups(x0, attention_mask)
        per_block = sample_t(x0.shape[0] * (int(groups.max()) + 1), antithetic=antithetic, eps=cfg.eps,
                             generator=generator, device=x0.device)
        t = per_block.view(x0.shape[0], -1).gather(1, groups)
    elif t is None:
        t = sample_t(x0.shape[0], antithetic=antithetic, eps=cfg.eps, generator=generator, device=x0.device)
    t = check_t(t.to(x0.device, torch.float32))
    allowed = maskable_positions(model, x0, src_mask=src_mask, attention_mask=attention_mask)
    if blocks is not None:
        allowed = allowed & in_blocks(model, x0, blocks, attention_mask)
    _, noise_mask = corrupt(x0, t, cfg.mask_token_id, src_mask=~allowed,
                            schedule=get_schedule(cfg.schedule, eps=cfg.eps), generator=generator)
    return noise_mask, t
