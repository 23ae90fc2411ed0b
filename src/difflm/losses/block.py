"""Block diffusion training (BD3-LM): the two-copy forward over [x_t | x_0] and the block grid draws.

In training every block of a row is noised at its own level and denoised seeing only the clean blocks
before it - what a block-by-block decoder sees. `two_copy_logits` computes that for all blocks in one
forward over 2L positions (BD3-LM's vectorised form); `draw_blocks` picks the blocks a cheaper step
noises (``noised_blocks``), `in_blocks` tells their positions. Sampling never uses the two-copy
forward: a decoder calls `DiffusionLM.logits` on its canvas.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..attention import block_diffusion_training_mask, to_4d
from ..errors import ConfigError, InputError
from ..model import DiffusionLM
from ..rng import uniform
from .positions import in_blocks, maskable_positions

__all__ = ["draw_blocks", "in_blocks", "two_copy_logits", "two_copy_logits_with_clean"]


def draw_blocks(
    model: DiffusionLM,
    x0: torch.Tensor,
    count: int,
    *,
    src_mask: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    ends: torch.Tensor | None = None,
) -> torch.Tensor:
    """The blocks a block diffusion training step noises when it noises only ``count`` per row:
    LongTensor [B, count] of block numbers (`DiffusionLM.block_groups`), drawn uniformly without
    replacement among the blocks that hold a maskable position (`maskable_positions`); a row with
    fewer such blocks takes them all and is filled with -1. A uniform draw keeps the per-token
    loss over the drawn blocks an unbiased estimate of the loss over all of them.

    ``ends`` (LongTensor [B], SFT): where each row's answer ends (its EOS/pad tail starts there);
    only the blocks up to the first one after the answer's last token are drawn - that one teaches
    that nothing follows the answer, and the blocks past it hold the tail alone, which a decoder
    that stops at EOS never writes."""
    if model.config.block_size is None:
        raise ConfigError("noising only some blocks needs a block diffusion model (diffusion.block_size)")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError(f"the number of noised blocks must be an integer >= 1, got {count!r}")
    groups = model.block_groups(x0, attention_mask)
    allowed = maskable_positions(model, x0, src_mask=src_mask, attention_mask=attention_mask)
    n_blocks = int(groups.max()) + 1
    has_target = torch.zeros(x0.shape[0], n_blocks, device=x0.device).scatter_add_(1, groups, allowed.float()) > 0
    if ends is not None:
        last = groups.gather(1, (ends.to(x0.device).view(-1, 1) - 1).clamp(0, x0.shape[1] - 1))  # the answer's last block
        has_target &= torch.arange(n_blocks, device=x0.device) <= last + 1
    scores = uniform((x0.shape[0], n_blocks), generator=generator, device=x0.device)  # in [0, 1)
    top = scores.masked_fill(~has_target, -1.0).topk(min(count, n_blocks), dim=1)
    blocks = torch.where(top.values >= 0, top.indices, -1)
    return torch.nn.functional.pad(blocks, (0, count - blocks.shape[1]), value=-1)


def two_copy_logits(
    model: DiffusionLM,
    noisy_ids: torch.Tensor,
    clean_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    groups: torch.Tensor | None = None,
    noisy_blocks: torch.Tensor | None = None,
    forward: Callable[..., Any] | None = None,
) -> torch.Tensor:
    """Block diffusion training forward (BD3-LM's vectorised [x_t | x_0]): aligned logits [B, L, V] for
    ``noisy_ids`` (x_t, LongTensor [B, L]) where the prediction of a token of block k sees the noisy
    tokens of block k and the clean tokens (``clean_ids``, x_0 [B, L]) of the blocks before it - what a
    block-by-block decoder sees. Costs one forward over 2L positions (`two_copy_logits_with_clean` also
    returns the clean copy's logits).

    With shift, the position before a block predicts its first token and so belongs to that block's
    attention group (`DiffusionLM.block_attention_ids`); its own token is the last of the previous
    block, which the decoder has committed by then: it is fed clean there.

    ``noisy_blocks`` (LongTensor [B, K], block numbers of `DiffusionLM.block_groups`, -1 = none): the
    noisy copy holds only the positions that predict the tokens of these blocks, so a step costs
    L + K * block_size positions instead of 2L; the logits of the other positions are zero.

    ``forward``: the module the backbone runs through - a DDP/FSDP wrapper of ``model`` while training
    (its hooks then run around this forward, `DiffusionLM.forward`'s ``run``); default ``model``."""
    noisy, _ = _run_two_copy(model, noisy_ids, clean_ids, attention_mask, groups=groups, with_clean=False,
                             noisy_blocks=noisy_blocks, forward=forward)
    return noisy


def two_copy_logits_with_clean(
    model: DiffusionLM,
    noisy_ids: torch.Tensor,
    clean_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    groups: torch.Tensor | None = None,
    noisy_blocks: torch.Tensor | None = None,
    forward: Callable[..., Any] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(`two_copy_logits`, the aligned logits [B, L, V] of the clean copy) from the same one forward:
    under ``block_context="causal"`` the clean copy runs causally, so these are the next-token
    predictions of the model read as an AR model (NBDiff's auxiliary AR loss, for free)."""
    return _run_two_copy(model, noisy_ids, clean_ids, attention_mask, groups=groups, with_clean=True,
                         noisy_blocks=noisy_blocks, forward=forward)


def _run_two_copy(model: DiffusionLM, noisy_ids: torch.Tensor, clean_ids: torch.Tensor,
                  attention_mask: torch.Tensor | None, *, groups: torch.Tensor | None, with_clean: bool,
                  noisy_blocks: torch.Tensor | None, forward: Callable[..., Any] | None) -> tuple[torch.Tensor, Any]:
    if noisy_ids.dim() != 2:
        raise InputError(f"input_ids must be [batch, length], got shape {tuple(noisy_ids.shape)}")
    if model.max_length is not None and noisy_ids.shape[1] > model.max_length:
        raise InputError(f"sequence of {noisy_ids.shape[1]} tokens is longer than the model's context of "
                         f"{model.max_length}; shorten the prompt or ask for fewer new tokens")
    return (forward or model)(noisy_ids, clean_ids, attention_mask, run=_two_copy_forward, groups=groups,
                              with_clean=with_clean, noisy_blocks=noisy_blocks)


def _two_copy_forward(
    model: DiffusionLM,
    noisy_ids: torch.Tensor,
    clean_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    groups: torch.Tensor | None,
    with_clean: bool,
    noisy_blocks: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(noisy logits, clean logits or None) of `two_copy_logits` inside the model's call (see there)."""
    if groups is None:
        groups = model.block_groups(clean_ids, attention_mask)
    ids = model.block_attention_ids(groups)
    batch, length = noisy_ids.shape
    noisy_ids = torch.where(ids != groups, clean_ids, noisy_ids)
    positions = model.position_ids(attention_mask, noisy_ids)
    real = torch.ones_like(noisy_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    causal_context = model.config.block_context == "causal"
    if noisy_blocks is None:
        order, kept, noisy_real, noisy_positions = None, noisy_ids, real, positions
        pattern = block_diffusion_training_mask(ids, causal_context=causal_context)
    else:
        member = (ids.unsqueeze(-1) == noisy_blocks.to(ids.device).unsqueeze(-2)).any(-1)  # [B, L]
        # the members first, in position order (a stable sort): [B, N], N = the most members of a row
        order = torch.sort((~member).long(), dim=1, stable=True).indices[:, : max(1, int(member.sum(-1).max()))]
        kept = noisy_ids.gather(1, order)
        noisy_real = member.gather(1, order) & real.gather(1, order)
        pattern = block_diffusion_training_mask(ids, causal_context=causal_context, noisy_ids=ids.gather(1, order))
        noisy_positions = positions.gather(1, order)
    kept_len = kept.shape[1]
    padding = None if attention_mask is None and order is None else torch.cat([noisy_real, real], dim=1)
    eager = model.model.config._attn_implementation == "eager"
    mask4d = to_4d(pattern, padding, batch_size=batch, dtype=torch.float32 if eager else None)
    keep_noisy = model.keeps_logits and not with_clean  # project only the noisy copy when that is all we need
    kwargs = {"logits_to_keep": torch.arange(kept_len, device=noisy_ids.device)} if keep_noisy else {}
    out = model.model(input_ids=torch.cat([kept, clean_ids], dim=1), attention_mask=mask4d,
                      position_ids=torch.cat([noisy_positions, positions], dim=1), use_cache=False, **kwargs)
    raw = out.logits[:, :kept_len]
    if order is not None:  # back to the row's positions; the positions not noised stay zero
        full = raw.new_zeros(batch, length, raw.shape[-1])
        raw = full.scatter(1, order.unsqueeze(-1).expand_as(raw), raw * noisy_real.unsqueeze(-1))
    return model.aligned(raw), (model.aligned(out.logits[:, kept_len:]) if with_clean else None)
