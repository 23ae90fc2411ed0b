"""`ContinuousConfig`: the conventions of an embedding-space (continuous) diffusion LM, saved as
``continuous_config.json`` beside the backbone's ``config.json``. That file is also the marker by
which `difflm generate` / `infill` / `eval` recognise a continuous model directory."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import read_json_config, write_json_config
from ..errors import ConfigError
from ..io import has_marker

CONFIG_NAME = "continuous_config.json"  # also the marker of the "continuous" kind of difflm.registry.MODEL_KINDS
GAUSSIAN_SCHEDULES = ("sqrt", "cosine")  # alpha_bar(t) of the Gaussian forward process (schedule.py)
TIME_SAMPLING = ("uniform", "mixture")
TRAINING_ONLY = ("seq2seq",)  # keys of a run's `continuous:` that configure the run, not the model


@dataclass(frozen=True)
class ContinuousConfig:
    """What a continuous DLM is, beyond its transformer backbone.

    embed_dim: dimension d of the token embeddings the Gaussian process runs on (Diffusion-LM: 16-128).
        Every embedding row is normalised to norm sqrt(d) (each coordinate ~ unit scale, as the noise).
    schedule: alpha_bar(t) of the forward process z_t = sqrt(alpha_bar) e + sqrt(1 - alpha_bar) eps:
        "sqrt" (Diffusion-LM: 1 - sqrt(t + s)) or "cosine" (Nichol & Dhariwal).
    schedule_offset: s of the schedule (sqrt: 1e-4, the noise floor at t = 0; cosine: 0.008).
    self_condition: feed the previous estimate of x0 as an extra input (Chen et al.; CDCD, Plaid):
        half of the training rows get a first, gradient-free pass's estimate.
    cond_prob: probability that a training row gets clean conditioning positions (a random prefix and,
        half of the time, a random suffix); they are never noised and never scored. This is what lets
        the model continue prompts, fill gaps (clamped tokens) and run classifier-free guidance (the
        unconditional pass noises them like any other position).
    max_cond_fraction: the longest clean prefix, as a fraction of the row (suffixes: half of it).
    time_embed_dim: width of the sinusoidal features of t fed through the time MLP.
    time_sampling: how training draws t: "uniform" (Diffusion-LM, CDCD without warping) or "mixture"
        (half the rows uniform in t, half uniform in log-SNR: the likelihood bound's importance
        distribution, a fixed stand-in for CDCD's learned time warping; it trains the low-noise end,
        where the bound's weight is largest, ~10x more often under the sqrt schedule).
    mse_weight: weight of Diffusion-LM's MSE term ||x0_hat - e||^2 / d added to the cross-entropy
        (CDCD's "score interpolation" loss is the cross-entropy alone: 0).
    vocab_size: rows of the embedding table and of the output head.
    bos/eos/pad_token_id: the tokenizer's special ids (BOS is always a clean position).
    """

    embed_dim: int = 64
    schedule: str = "sqrt"
    schedule_offset: float | None = None
    self_condition: bool = True
    cond_prob: float = 0.5
    max_cond_fraction: float = 0.5
    time_embed_dim: int = 64
    time_sampling: str = "mixture"
    mse_weight: float = 0.0
    vocab_size: int = 0
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        for name in ("embed_dim", "time_embed_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 2 or value % 2:
                raise ConfigError(f"continuous.{name} must be an even integer >= 2, got {value!r}")
        if self.schedule not in GAUSSIAN_SCHEDULES:
            raise ConfigError(f"continuous.schedule must be one of {', '.join(GAUSSIAN_SCHEDULES)}, got {self.schedule!r}")
        if self.time_sampling not in TIME_SAMPLING:
            raise ConfigError(f"continuous.time_sampling must be one of {', '.join(TIME_SAMPLING)}, "
                              f"got {self.time_sampling!r}")
        if self.schedule_offset is not None and not (isinstance(self.schedule_offset, (int, float))
                                                     and 0 < self.schedule_offset < 0.5):
            raise ConfigError(f"continuous.schedule_offset must be a number in (0, 0.5), got {self.schedule_offset!r}")
        for name in ("cond_prob", "max_cond_fraction"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ConfigError(f"continuous.{name} must be a number in [0, 1], got {value!r}")
        if isinstance(self.mse_weight, bool) or not isinstance(self.mse_weight, (int, float)) or self.mse_weight < 0:
            raise ConfigError(f"continuous.mse_weight must be a number >= 0, got {self.mse_weight!r}")
        if not isinstance(self.self_condition, bool):
            raise ConfigError(f"continuous.self_condition must be true or false, got {self.self_condition!r}")
        if isinstance(self.vocab_size, bool) or not isinstance(self.vocab_size, int) or self.vocab_size < 0:
            raise ConfigError(f"continuous.vocab_size must be an integer >= 0, got {self.vocab_size!r}")

    @property
    def offset(self) -> float:
        """The schedule's s (its default when not given)."""
        if self.time_sampling not in TIME_SAMPLING:
            raise ConfigError(f"continuous.time_sampling must be one of {', '.join(TIME_SAMPLING)}, "
                              f"got {self.time_sampling!r}")
        if self.schedule_offset is not None:
            return float(self.schedule_offset)
        return 1e-4 if self.schedule == "sqrt" else 0.008

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ContinuousConfig":
        """A config from a mapping; an unknown key is a `ConfigError` naming the valid ones."""
        if not isinstance(data, dict):
            raise ConfigError(f"continuous must be a mapping of ContinuousConfig fields, got {data!r}")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"unknown continuous setting(s) {', '.join(unknown)}; valid: {', '.join(known)}")
        return cls(**data)

    def replace(self, **changes: Any) -> "ContinuousConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, directory: str | os.PathLike) -> Path:
        return write_json_config(Path(directory) / CONFIG_NAME, self.to_dict())

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "ContinuousConfig":
        return cls.from_dict(read_json_config(Path(directory) / CONFIG_NAME))


def is_continuous_model(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a continuous DLM directory (it holds ``continuous_config.json``, the marker of
    its kind in `difflm.registry.MODEL_KINDS`)."""
    return has_marker(path, "continuous")


def check_train_settings(cfg: Any) -> None:
    """`TrainConfig` validation of ``objective: continuous`` (`ConfigError`, one line)."""
    if not isinstance(cfg.continuous, dict):
        raise ConfigError(f"continuous must be a mapping of ContinuousConfig fields, got {cfg.continuous!r}")
    if cfg.objective != "continuous":
        if cfg.continuous:
            raise ConfigError("continuous settings need objective continuous")
        return
    if cfg.init:
        raise ConfigError("objective continuous trains from scratch: drop init and give architecture")
    if cfg.diffusion:
        raise ConfigError("objective continuous has no diffusion settings: write them under continuous:")
    if cfg.complementary_masks:
        raise ConfigError("complementary_masks is a masked-diffusion option; objective continuous has none")
    seq2seq = cfg.continuous.get("seq2seq", False)
    if not isinstance(seq2seq, bool):
        raise ConfigError(f"continuous.seq2seq must be true or false, got {seq2seq!r}")
    if seq2seq and ("bundled" in cfg.train_files or "bundled" in cfg.validation_files):
        raise ConfigError("continuous.seq2seq needs train_files and validation_files: prompt/response JSONL "
                          "(e.g. `python -m difflm.continuous.seq2seq data`), not the bundled corpus")
    ContinuousConfig.from_dict({k: v for k, v in cfg.continuous.items() if k not in TRAINING_ONLY})
