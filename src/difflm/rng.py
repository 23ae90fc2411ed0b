"""Seeded random draws that work on every device.

A `torch.Generator` lives on one device, and PyTorch refuses to draw a tensor for another device
with it (a CPU generator cannot fill a CUDA tensor). difflm's seeded draws are small (one [L, L]
annealing pattern, a [B, L] noise mask, a few uniforms per position), so they are drawn on the
generator's own device and moved: the same seed then gives the same numbers on the CPU and on a
GPU, and a run is reproducible wherever it runs. Without a generator the draw happens on the
target device from torch's global RNG.

A batch may draw from one generator (the numbers are handed out in batch order) or from a
`RowGenerators`, one stream per row: then a row's numbers depend on its own generator and its own
draws only, never on the other rows of the batch (continuous batching in `difflm.serve`: the same
seed gives the same output whether a request ran alone or batched with others).
"""

from __future__ import annotations

from typing import Sequence, Union

import torch

from .errors import InputError


class RowGenerators:
    """One random stream per row of a batch.

    Draws that take ``rows`` (how many items each row owns, in row order) take row b's items from
    ``generators[b]`` alone, in order, so what a row draws never depends on which rows sit beside
    it, how many there are, or how wide their canvas is. Rows that own no item draw nothing.
    Generators may live on any devices (each row draws on its own generator's device).

    Args:
        generators: one `torch.Generator` per batch row.
    """

    def __init__(self, generators: Sequence[torch.Generator]) -> None:
        generators = list(generators)
        if not generators or not all(isinstance(g, torch.Generator) for g in generators):
            raise InputError("RowGenerators needs one torch.Generator per row")
        self.generators = generators

    def __len__(self) -> int:
        return len(self.generators)

    def select(self, rows: Sequence[int]) -> RowGenerators:
        """The streams of the given rows, in that order (a batch that lost or reordered rows)."""
        return RowGenerators([self.generators[i] for i in rows])

    def uniform(
        self,
        rows: Sequence[int] | torch.Tensor,
        item_shape: Sequence[int] = (),
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """U[0, 1) samples [sum(rows), *item_shape]: ``rows[b]`` items of ``item_shape`` each from
        ``generators[b]``, concatenated in row order."""
        counts = [int(c) for c in (rows.tolist() if isinstance(rows, torch.Tensor) else rows)]
        if len(counts) != len(self.generators):
            raise InputError(f"{len(counts)} row counts for {len(self.generators)} row generators")
        parts = [
            torch.rand((count, *item_shape), generator=gen, device=gen.device, dtype=dtype).to(device or gen.device)
            for count, gen in zip(counts, self.generators) if count > 0
        ]
        if not parts:
            return torch.empty((0, *item_shape), device=device, dtype=dtype)
        return torch.cat(parts)


# What the sampler's ``generator=`` accepts: one stream for the batch, one per row, or torch's global RNG.
Generators = Union[torch.Generator, RowGenerators, None]


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed``: the device-independent source of difflm's draws."""
    return torch.Generator().manual_seed(int(seed))


def uniform(
    shape: Sequence[int] | torch.Size,
    *,
    generator: Generators = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    rows: Sequence[int] | torch.Tensor | None = None,
) -> torch.Tensor:
    """U[0, 1) samples of ``shape`` on ``device``, drawn with ``generator`` wherever it lives.

    With a `RowGenerators`, ``rows`` (ints [B] summing to shape[0]) says how many of the
    ``shape[0]`` items belong to each row; each row's items come from its own stream.
    """
    if isinstance(generator, RowGenerators):
        if rows is None:
            raise InputError("a draw with per-row generators needs the number of items of each row")
        if int(sum(int(c) for c in rows)) != (tuple(shape)[0] if len(shape) else 1):
            raise InputError(f"row counts {list(map(int, rows))} do not add up to the {tuple(shape)[0]} items drawn")
        return generator.uniform(rows, tuple(shape)[1:], device=device, dtype=dtype)
    if generator is None:
        return torch.rand(tuple(shape), device=device, dtype=dtype)
    values = torch.rand(tuple(shape), generator=generator, device=generator.device, dtype=dtype)
    return values.to(device) if device is not None else values


def permutation(n: int, *, generator: torch.Generator | None = None,
                device: torch.device | str | None = None) -> torch.Tensor:
    """A random permutation of range(n) (LongTensor [n]) on ``device``, drawn like `uniform`."""
    if generator is None:
        return torch.randperm(n, device=device)
    values = torch.randperm(n, generator=generator, device=generator.device)
    return values.to(device) if device is not None else values


def integers(high: int, shape: Sequence[int] | torch.Size, *, generator: torch.Generator | None = None,
             device: torch.device | str | None = None) -> torch.Tensor:
    """Integers uniform on [0, high) (LongTensor of ``shape``) on ``device``, drawn like `uniform`."""
    if generator is None:
        return torch.randint(high, tuple(shape), device=device)
    values = torch.randint(high, tuple(shape), generator=generator, device=generator.device)
    return values.to(device) if device is not None else values


def multinomial(probs: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """One index per row of ``probs`` [N, V] (LongTensor [N, 1], on ``probs``' device) by torch's own
    ``multinomial`` - the draws transformers' samplers make, so a stream can follow theirs - drawn like
    `uniform` (on the generator's device, or from torch's global RNG on ``probs``' device)."""
    if generator is None:
        return torch.multinomial(probs, num_samples=1)
    values = torch.multinomial(probs.to(generator.device), num_samples=1, generator=generator)
    return values.to(probs.device)
