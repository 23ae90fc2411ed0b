"""Seeded random draws that work on every device.

A `torch.Generator` lives on one device, and PyTorch refuses to draw a tensor for another device
with it (a CPU generator cannot fill a CUDA tensor). difflm's seeded draws are small (one [L, L]
annealing pattern, a [B, L] noise mask, a few uniforms per position), so they are drawn on the
generator's own device and moved: the same seed then gives the same numbers on the CPU and on a
GPU, and a run is reproducible wherever it runs. Without a generator the draw happens on the
target device from torch's global RNG.
"""

from __future__ import annotations

from typing import Sequence

import torch


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed``: the device-independent source of difflm's draws."""
    return torch.Generator().manual_seed(int(seed))


def uniform(
    shape: Sequence[int] | torch.Size,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """U[0, 1) samples of ``shape`` on ``device``, drawn with ``generator`` wherever it lives."""
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
