"""``objective: block``: a block diffusion model (BD3-LM) on the packed corpus - every block of a row
noised at its own level and denoised seeing only the clean blocks before it, in one two-copy forward
(`difflm.losses.block.two_copy_logits`, called by `difflm.losses.masked_diffusion_loss`). From scratch,
or adapted from the AR checkpoint ``init`` keeping its shift; needs ``diffusion.block_size``. With
``diffusion.block_context: causal``, ``ar_loss_weight`` adds the clean copy's AR loss (NBDiff)."""

from __future__ import annotations

from typing import Any

from ...errors import ConfigError
from .pretrain import PretrainObjective

__all__ = ["BlockObjective"]


class BlockObjective(PretrainObjective):
    """Block diffusion pretraining: `PretrainObjective` with block-causal attention and the block size
    the config gives; ``init`` (optional) is an AR checkpoint."""

    name = "block"
    from_ar = True

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        if not isinstance(cfg.diffusion, dict) or cfg.diffusion.get("block_size") is None:
            raise ConfigError("objective 'block' needs diffusion.block_size (e.g. 4, 8, 16 or 32)")

    @classmethod
    def diffusion_defaults(cls, cfg: Any) -> dict[str, Any]:
        return {"attention": "block_causal"}
