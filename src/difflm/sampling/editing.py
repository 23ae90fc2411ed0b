"""Revisiting committed tokens inside the current block: token editing (LLaDA 2.1's editing
threshold) and ReMDM-style remasking. Both are parts of the one denoising loop (`denoise`), run
on the positions the loop already committed in the current block - never on the prompt, a suffix
or an earlier block - and both are capped per position (`SamplerOptions.max_edits`), so a run
always settles within its step budget.
"""

from __future__ import annotations

import torch

from .. import rng


def uniform_at(positions: torch.Tensor, generator: rng.Generators) -> torch.Tensor:
    """U[0, 1) numbers on the grid, FloatTensor [B, L] (meaningful at ``positions`` only): one per
    cell from a batch generator, or one per position from its row's own generator."""
    if not isinstance(generator, rng.RowGenerators):
        return rng.uniform(positions.shape, generator=generator, device=positions.device)
    counts = positions.sum(-1)
    values = generator.uniform(counts, device=positions.device)
    return torch.full(positions.shape, 1.0, device=positions.device).masked_scatter(positions, values)


def remask(canvas: torch.Tensor, editable: torch.Tensor, rate: float, generator: rng.Generators,
           mask_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask each ``editable`` position (BoolTensor [B, L]) again with probability ``rate``.
    Returns (canvas LongTensor [B, L], remasked BoolTensor [B, L])."""
    hit = editable & (uniform_at(editable, generator) < rate)
    return canvas.masked_fill(hit, mask_id), hit


def edit(canvas: torch.Tensor, editable: torch.Tensor, logits: torch.Tensor, threshold: float,
         mask_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace an ``editable`` token by the model's top prediction there when it differs and its
    probability exceeds ``threshold`` (LLaDA 2.1).

    Args:
        logits: FloatTensor [N, V], the aligned logits of the editable positions in row-major order.
    Returns:
        (canvas LongTensor [B, L], edited BoolTensor [B, L]).
    """
    logits = logits.float()
    logits[:, mask_id] = float("-inf")  # an edit never writes the mask token
    confidence, top = logits.softmax(-1).max(-1)
    change = (top != canvas[editable]) & (confidence > threshold)
    edited = torch.zeros_like(editable).masked_scatter(editable, change)
    return canvas.masked_scatter(edited, top[change]), edited
