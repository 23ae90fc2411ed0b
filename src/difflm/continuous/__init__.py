"""Continuous (embedding-space) diffusion LMs: Diffusion-LM / CDCD / Plaid / DiffuSeq (docs/continuous.md).

| module          | concept                                                                  |
|-----------------|--------------------------------------------------------------------------|
| `config`        | `ContinuousConfig` (continuous_config.json, the directory marker)        |
| `schedule`      | `GaussianSchedule` (sqrt, cosine), SNR, seeded Gaussian draws            |
| `model`         | `ContinuousDLM`: embeddings, time conditioning, bidirectional backbone   |
| `objective`     | the training draws (t, noise, clean positions, self-conditioning) and loss |
| `likelihood`    | the variational bound on -log p in nats (VDM / Plaid)                    |
| `sampler`       | DDPM / DDIM, clamping, classifier-free guidance, infilling               |
| `training`      | `ContinuousObjective`: ``objective: continuous`` (registry.OBJECTIVES)   |
| `plugin`        | the family's command-line plug-in (registry.FAMILIES), torch-free        |
| `cli`           | its generation runner (`difflm generate` / `infill` on a continuous model) |
| `evaluation`    | `ContinuousEvalLM` for `difflm eval`                                     |
| `seq2seq`       | verse-to-next-verse data, BLEU, distinct-n, MBR decoding (DiffuSeq)      |

Importing this package loads no torch and nothing of its own (`difflm generate --help` imports `plugin`);
the names below are imported on first use.
"""

from __future__ import annotations

from ..registry import lazy_attributes

LAZY = {
    "CONFIG_NAME": ".config", "ContinuousConfig": ".config", "is_continuous_model": ".config",
    "ContinuousDLM": ".model", "GaussianSchedule": ".schedule", "ContinuousSamplerOptions": ".sampler",
    "sample": ".sampler", "generate": ".sampler", "infill": ".sampler", "nll_bound": ".likelihood",
    "continuous_loss": ".objective", "ContinuousEvalLM": ".evaluation",
}

__all__ = sorted(LAZY)


__getattr__ = lazy_attributes(__name__, LAZY)
