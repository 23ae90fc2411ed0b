"""Continuous (embedding-space) diffusion LMs: Diffusion-LM / CDCD / Plaid / DiffuSeq (docs/continuous.md).

| module          | concept                                                                  |
|-----------------|--------------------------------------------------------------------------|
| `config`        | `ContinuousConfig` (continuous_config.json, the directory marker)        |
| `schedule`      | noise schedules (sqrt, cosine), SNR, seeded Gaussian draws               |
| `model`         | `ContinuousDLM`: embeddings, time conditioning, bidirectional backbone   |
| `objective`     | the training draws (t, noise, clean positions, self-conditioning) and loss |
| `likelihood`    | the variational bound on -log p in nats (VDM / Plaid)                    |
| `sampler`       | DDPM / DDIM, clamping, classifier-free guidance, infilling               |
| `trainer`       | ``objective: continuous`` in the shared training loop                    |
| `evaluation`    | `ContinuousEvalLM` for `difflm eval`                                     |
| `seq2seq`       | verse-to-next-verse data, BLEU, distinct-n, MBR decoding (DiffuSeq)      |

Importing this package loads no torch (the config is read by `TrainConfig`); the names below are
imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from .config import CONFIG_NAME, ContinuousConfig, is_continuous_model

LAZY = {
    "ContinuousDLM": ".model", "NoiseSchedule": ".schedule", "ContinuousSamplerOptions": ".sampler",
    "sample": ".sampler", "generate": ".sampler", "infill": ".sampler", "nll_bound": ".likelihood",
    "continuous_loss": ".objective", "ContinuousEvalLM": ".evaluation",
}

__all__ = ["CONFIG_NAME", "ContinuousConfig", "is_continuous_model", *LAZY]


def __getattr__(name: str) -> Any:
    if name in LAZY:
        value = getattr(importlib.import_module(LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
