"""The canvas: a left-padded batch [pad | template] where the mask id marks what to generate,
and its split into semi-autoregressive blocks."""

from __future__ import annotations

from typing import Sequence

import torch

from ..errors import InputError

TokenIds = torch.Tensor | Sequence[int] | Sequence[Sequence[int]]


def as_rows(ids: TokenIds, attention_mask: torch.Tensor | None = None) -> list[list[int]]:
    """Normalise token ids (1-D/2-D tensor, list, list of lists) into a list of rows; padding
    marked by ``attention_mask`` is dropped."""
    if isinstance(ids, torch.Tensor):
        if ids.dim() == 1:
            ids = ids[None]
        if ids.dim() != 2:
            raise InputError(f"token ids must be 1-D or 2-D, got shape {tuple(ids.shape)}")
        if attention_mask is not None:
            return [row[m.bool()].tolist() for row, m in zip(ids, attention_mask)]
        return ids.tolist()
    ids = list(ids)
    if not ids or isinstance(ids[0], int):
        return [[int(i) for i in ids]]
    return [[int(i) for i in row] for row in ids]


def template_canvas(model, templates: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Left-padded canvas [B, L] from templates in which the mask id marks the positions to generate.

    Returns (canvas, attention_mask [B, L] or None when no row is padded, generate_mask [B, L]).
    """
    cfg = model.config
    mask_id = cfg.mask_token_id
    vocab = model.vocab_size
    if not templates:
        raise InputError("no prompts given")
    for row in templates:
        if any(not 0 <= tok < vocab for tok in row):
            raise InputError(f"token ids must lie in [0, {vocab}); got {row}")
        if mask_id not in row:
            raise InputError("a template has no masked position; mark the tokens to generate with the mask id")
    length = max(len(r) for r in templates)
    if model.max_length is not None and length > model.max_length:
        raise InputError(
            f"prompt plus new tokens is {length} tokens, longer than the model's context of "
            f"{model.max_length}; shorten the prompt or ask for fewer tokens"
        )
    pad = next((i for i in (cfg.pad_token_id, cfg.eos_token_id) if i is not None), 0)
    canvas = torch.full((len(templates), length), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(templates), length), dtype=torch.long)
    for b, row in enumerate(templates):
        canvas[b, length - len(row) :] = torch.tensor(row)
        attention_mask[b, length - len(row) :] = 1
    generate_mask = (canvas == mask_id) & attention_mask.bool()
    if bool((generate_mask & ~model.predictable_mask(canvas, attention_mask)).any()):
        raise InputError("a shifted model needs at least one token (e.g. BOS) before the first masked position")
    device = model.device
    has_padding = bool((attention_mask == 0).any())
    return canvas.to(device), attention_mask.to(device) if has_padding else None, generate_mask.to(device)


def build_canvas(
    model,
    prefixes: list[list[int]],
    middle_length: int,
    suffixes: list[list[int]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Left-padded canvas [B, L] = [pad | prefix | MASK * middle_length | suffix] per row.

    Returns (canvas, attention_mask [B, L] or None when no row is padded, generate_mask [B, L]).
    """
    suffixes = suffixes or [[] for _ in prefixes]
    if len(suffixes) != len(prefixes):
        raise InputError(f"{len(prefixes)} prefixes but {len(suffixes)} suffixes")
    if any(model.config.mask_token_id in row for row in prefixes + suffixes):
        raise InputError("the prompt contains the mask token; use infill() to mark positions to generate")
    mask = [model.config.mask_token_id] * middle_length
    return template_canvas(model, [p + mask + s for p, s in zip(prefixes, suffixes)])


def block_masks(generate_mask: torch.Tensor, block_length: int) -> list[torch.Tensor]:
    """Split each row's generated positions, in order, into chunks of ``block_length`` (the last
    one shorter when the count is not a multiple). Returns a list of BoolTensor [B, L]."""
    rank = generate_mask.long().cumsum(-1) - 1
    block_id = torch.where(generate_mask, rank // block_length, -1)
    n_blocks = int(block_id.max()) + 1
    return [block_id == b for b in range(n_blocks)]


def decoding_groups(blocks: list[torch.Tensor]) -> torch.Tensor:
    """The decoding group of every position: LongTensor [B, L].

    Group k + 1 runs from the first position of block k to the position before block k + 1 (0
    before the first block: the prompt), so committed text between or after blocks (an infilling
    suffix, the text between two gaps) joins the block before it. The groups are the block-causal
    attention blocks (`DiffusionLM.block_attention_ids`) and the cache windows (`Denoiser`).
    """
    starts = torch.zeros(blocks[0].shape, dtype=torch.long, device=blocks[0].device)
    for block in blocks:
        has = block.any(-1)
        first = block.long().argmax(-1)
        starts[has, first[has]] += 1
    return starts.cumsum(-1)


def decoding_blocks(model, canvas: torch.Tensor, generate_mask: torch.Tensor, attention_mask: torch.Tensor | None,
                    block_length: int | None) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The blocks a run decodes in order (list of BoolTensor [B, L]) and the decoding group of every
    position (LongTensor [B, L]).

    A model trained as a block diffusion model (``config.block_size``) decodes on its own block
    grid - the one it was trained on, tiling each row from its first real token - so a prompt
    that ends inside a block shares that block with the first generated tokens, as in training;
    ``block_length`` must then be None or the model's block size. Any other model decodes
    ``block_length`` generated positions at a time (`block_masks`, `decoding_groups`).
    """
    size = model.config.block_size
    if size is None:
        blocks = block_masks(generate_mask, block_length or int(generate_mask.sum(-1).max()))
        return blocks, decoding_groups(blocks)
    if block_length not in (None, size):
        raise InputError(f"this block diffusion model decodes blocks of {size} (its training grid); "
                         f"leave block_length unset or give {size}, not {block_length}")
    groups = model.block_groups(canvas, attention_mask)
    # renumber each row's grid blocks that hold generated positions 0, 1, 2, ... in reading order
    first = torch.where(generate_mask, groups, groups.max() + 1).amin(-1, keepdim=True)
    index = torch.where(generate_mask, groups - first, -1)
    return [index == b for b in range(int(index.max()) + 1)], groups
