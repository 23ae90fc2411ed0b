"""Attention patterns as boolean [L, L] matrices (True = query i may attend to key j), and their
conversion into the 4-D masks that transformers models accept.

Stock transformers attention falls back to causal when it gets no mask, so the model wrapper always
passes an explicit 4-D mask built here.
"""

from __future__ import annotations

import torch

from .errors import ConfigError
from .rng import uniform


def causal_attention_mask(length: int, *, device: torch.device | str | None = None) -> torch.Tensor:
    """Lower-triangular pattern (each query sees itself and the past). BoolTensor [L, L]."""
    return torch.ones(length, length, dtype=torch.bool, device=device).tril()


def bidirectional_attention_mask(length: int, *, device: torch.device | str | None = None) -> torch.Tensor:
    """Every query sees every key. BoolTensor [L, L]."""
    return torch.ones(length, length, dtype=torch.bool, device=device)


def anneal_ratio(step: int | None, anneal_steps: int) -> float:
    """Fraction of future entries opened at a training step: min(1, (step + 1) / anneal_steps).
    ``step=None`` means annealing is over (ratio 1)."""
    if step is None:
        return 1.0
    if step < 0:
        raise ConfigError(f"step must be >= 0, got {step}")
    return min(1.0, (step + 1) / anneal_steps)


def annealed_attention_mask(
    length: int,
    ratio: float,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """DiffuLLaMA's attention-mask annealing: the causal part is always open; each future entry
    (i, j > i) is opened independently with probability ``ratio``. One draw per call, to be shared
    by the batch, heads and layers. BoolTensor [L, L]."""
    if not 0.0 <= ratio <= 1.0:
        raise ConfigError(f"anneal ratio must be in [0, 1], got {ratio}")
    causal = causal_attention_mask(length, device=device)
    if ratio >= 1.0:
        return torch.ones_like(causal)
    if ratio <= 0.0:
        return causal
    opened = uniform((length, length), generator=generator, device=device) < ratio  # any device: difflm.rng
    return causal | opened


def block_causal_attention_mask(block_ids: torch.Tensor) -> torch.Tensor:
    """Block-causal pattern (block diffusion, BD3-LM): query i sees key j iff j's block is not
    after i's, so attention is bidirectional inside a block and causal across blocks.

    Args:
        block_ids: LongTensor [L] or [B, L], non-decreasing block index of every position.
    Returns:
        BoolTensor [L, L] or [B, L, L].
    """
    return block_ids.unsqueeze(-2) <= block_ids.unsqueeze(-1)


def block_diffusion_training_mask(ids: torch.Tensor, *, causal_context: bool = False,
                                  noisy_ids: torch.Tensor | None = None) -> torch.Tensor:
    """BD3-LM's two-copy training pattern over [x_t | x_0] (2L positions), from the block ids of
    the queries/keys (LongTensor [L] or [B, L], non-decreasing):

    * a noisy position (x_t copy) sees the noisy positions of its own block (bidirectional) and the
      clean positions of earlier blocks;
    * a clean position (x_0 copy) sees the clean positions of its own and earlier blocks (block
      causal), or with ``causal_context`` the clean positions up to itself (causal: NBDiff's
      context-causal pattern, the clean copy is then exactly an AR model's forward), so the clean
      copy yields exactly the keys a block-by-block decoder would cache.

    Every block is thus denoised, conditioned on the clean blocks before it, in one forward of
    twice the length. Returns BoolTensor [2L, 2L] (or [B, 2L, 2L]).

    ``noisy_ids`` (LongTensor [B, N]): the block ids of a noisy copy that holds only some of the
    positions (a training step that noises only some blocks); the pattern is then [N + L, N + L]
    per row, the same rules applied to those N noisy positions."""
    noisy = ids if noisy_ids is None else noisy_ids
    q, k = noisy.unsqueeze(-1), noisy.unsqueeze(-2)
    noisy_to_noisy = q == k
    noisy_to_clean = ids.unsqueeze(-2) < q
    length = ids.shape[-1]
    if causal_context:  # by position: the clean copy is the AR model's forward
        clean_to_clean = causal_attention_mask(length, device=ids.device).expand(*ids.shape[:-1], length, length)
    else:
        clean_to_clean = ids.unsqueeze(-2) <= ids.unsqueeze(-1)
    clean_to_noisy = torch.zeros(*clean_to_clean.shape[:-1], noisy.shape[-1], dtype=torch.bool, device=ids.device)
    batch = torch.broadcast_shapes(noisy_to_noisy.shape[:-2], clean_to_clean.shape[:-2])
    top = torch.cat([noisy_to_noisy.expand(*batch, -1, -1), noisy_to_clean.expand(*batch, -1, -1)], dim=-1)
    bottom = torch.cat([clean_to_noisy.expand(*batch, -1, -1), clean_to_clean.expand(*batch, -1, -1)], dim=-1)
    return torch.cat([top, bottom], dim=-2)


def context_causal_attention_mask(block_ids: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """NBDiff's decoding pattern: the finished blocks (ids below ``active``) read causally, the
    active block and those after it block-causally (bidirectional inside, causal across) - what
    the clean and noisy copies of `block_diffusion_training_mask(causal_context=True)` see.

    Args:
        block_ids: LongTensor [B, L], non-decreasing block index of every position.
        active: LongTensor [B], the block being denoised in each row.
    Returns:
        BoolTensor [B, L, L].
    """
    length = block_ids.shape[-1]
    causal = causal_attention_mask(length, device=block_ids.device)
    finished = (block_ids < active.view(-1, 1)).unsqueeze(-1)  # [B, L, 1]: the query's block is done
    return torch.where(finished, causal, block_causal_attention_mask(block_ids))


def attention_pattern(
    mode: str,
    length: int,
    *,
    ratio: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The [L, L] pattern of an attention mode ("causal" | "bidirectional" | "annealed")."""
    if mode == "causal":
        return causal_attention_mask(length, device=device)
    if mode == "bidirectional":
        return bidirectional_attention_mask(length, device=device)
    if mode == "annealed":
        return annealed_attention_mask(length, ratio, generator=generator, device=device)
    raise ConfigError(f"unknown attention mode {mode!r}; choose one of causal, bidirectional, annealed")


def to_4d(
    pattern: torch.Tensor,
    padding_mask: torch.Tensor | None = None,
    *,
    batch_size: int = 1,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Combine a pattern with a key-padding mask into the 4-D mask transformers expects.

    Args:
        pattern: BoolTensor [L, L] or [B, L, L]; True = may attend.
        padding_mask: [B, L], 1/True for real tokens. Padded keys are hidden from every query.
        dtype: None gives a boolean mask (True = attend; for sdpa); a float dtype gives the
            additive form (0 or the dtype's minimum; for eager attention).
    Returns:
        [B, 1, L, L] mask. The diagonal is always open so no row is empty (an empty row would
        turn the softmax of a padded query into NaN).
    """
    allowed = pattern if pattern.dim() == 3 else pattern[None]
    if padding_mask is not None:
        allowed = allowed & padding_mask.bool()[:, None, :]
    eye = torch.eye(allowed.shape[-1], dtype=torch.bool, device=allowed.device)
    allowed = (allowed | eye)[:, None]
    if padding_mask is None and allowed.shape[0] == 1 and batch_size > 1:
        allowed = allowed.expand(batch_size, -1, -1, -1)
    if dtype is None:
        return allowed
    additive = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return additive.masked_fill(~allowed, torch.finfo(dtype).min)
