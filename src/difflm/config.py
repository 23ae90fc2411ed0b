"""`DiffusionConfig`: everything that turns a causal LM into a diffusion LM, in one JSON file.

It is saved as ``difflm_config.json`` next to the weights. The backbone's own ``config.json`` stays
untouched, so the weights remain loadable by plain transformers.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

CONFIG_NAME = "difflm_config.json"


def write_json_config(path: Path, data: dict[str, Any]) -> Path:
    """Write a config dict as indented JSON with sorted keys (diffable, stable across saves)."""
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


def read_json_config(path: Path) -> Any:
    """The JSON in ``path``; `ConfigError` (one line) when it is missing, unreadable or not JSON."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path} not found") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path} cannot be read: {exc}") from None
ATTENTION_MODES = ("causal", "bidirectional", "annealed", "block_causal")
BLOCK_CONTEXTS = ("block", "causal")
NOISE_SCHEDULES = ("linear", "cosine", "loglinear")  # alpha(t) of the forward process (difflm.noise)
LOSS_NORMALIZATIONS = ("tokens", "masked")


@dataclass
class DiffusionConfig:
    """Conventions of a masked diffusion LM.

    Attributes:
        mask_token_id: id of the absorbing [MASK] token; must lie inside the vocabulary.
        shift: if True the hidden state at i-1 predicts token i (DiffuGPT, DiffuLLaMA, Dream);
            if False position i predicts token i (LLaDA, MDLM).
        attention: "causal", "bidirectional", "annealed" (causal -> bidirectional over
            ``anneal_steps`` training steps; outside training, i.e. without a step, it is
            bidirectional) or "block_causal" (a block diffusion model: bidirectional inside each
            block of ``block_size`` positions, causal across blocks; BD3-LM, Fast-dLLM v2).
        anneal_steps: length of the attention-mask annealing (DiffuLLaMA default 10000; 1 = full
            attention from the first step, as in SFT).
        schedule: noise schedule alpha(t): "linear" (1 - t), "cosine", "loglinear" (MDLM).
        loss_normalization: "tokens" divides the weighted loss by the number of positions that
            could be noised (the unbiased ELBO per token, LLaDA/MDLM); "masked" divides by the
            number of masked tokens (DiffuLLaMA).
        eps: smallest noise level; t is drawn from [eps, 1].
        pad_token_id, bos_token_id, eos_token_id: special ids the samplers and data code use
            (optional).
        block_size: positions per block of a block diffusion model ("block_causal" attention):
            blocks tile the sequence from its first real token (position id 0); None otherwise.
        block_context: how a block diffusion model reads the finished blocks before the one it
            denoises: "block" (BD3-LM, SDAR, Fast-dLLM v2: a finished block's tokens see each other)
            or "causal" (NBDiff, Tian et al. 2025: finished text is read causally, exactly as the AR
            model it was adapted from reads it; only the block being denoised is bidirectional).
        family: where the weights came from ("difflm", "diffugpt", "llada", ...), informational.
    """

    mask_token_id: int
    shift: bool = True
    attention: str = "bidirectional"
    anneal_steps: int = 10000
    schedule: str = "linear"
    loss_normalization: str = "tokens"
    eps: float = 1e-3
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    block_size: int | None = None
    block_context: str = "block"
    family: str = "difflm"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, vocab_size: int | None = None) -> None:
        """Raise `ConfigError` on any invalid value (and on a mask id outside ``vocab_size``)."""
        if isinstance(self.mask_token_id, bool) or not isinstance(self.mask_token_id, int):
            raise ConfigError(f"mask_token_id must be an integer token id, got {self.mask_token_id!r}")
        if self.mask_token_id < 0:
            raise ConfigError(f"mask_token_id must be >= 0, got {self.mask_token_id}")
        if vocab_size is not None and self.mask_token_id >= vocab_size:
            raise ConfigError(
                f"mask_token_id {self.mask_token_id} is outside the vocabulary (size {vocab_size}); "
                "pass an existing token id, or mask_token=None to add a new [MASK] token"
            )
        if not isinstance(self.shift, bool):
            raise ConfigError(f"shift must be true or false, got {self.shift!r}")
        if self.attention not in ATTENTION_MODES:
            raise ConfigError(f"unknown attention mode {self.attention!r}; choose one of {', '.join(ATTENTION_MODES)}")
        if self.block_size is not None and (isinstance(self.block_size, bool) or not isinstance(self.block_size, int)
                                            or self.block_size < 1):
            raise ConfigError(f"block_size must be an integer >= 1 or null, got {self.block_size!r}")
        if (self.attention == "block_causal") != (self.block_size is not None):
            raise ConfigError("attention 'block_causal' and block_size go together: a block diffusion model needs "
                              "both, any other model neither")
        if self.block_context not in BLOCK_CONTEXTS:
            raise ConfigError(f"unknown block_context {self.block_context!r}; choose one of {', '.join(BLOCK_CONTEXTS)}")
        if self.block_context != "block" and self.block_size is None:
            raise ConfigError(f"block_context {self.block_context!r} belongs to a block diffusion model (block_size)")
        if isinstance(self.anneal_steps, bool) or not isinstance(self.anneal_steps, int) or self.anneal_steps < 1:
            raise ConfigError(f"anneal_steps must be an integer >= 1, got {self.anneal_steps!r}")
        if self.schedule not in NOISE_SCHEDULES:
            raise ConfigError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(NOISE_SCHEDULES)}")
        if self.loss_normalization not in LOSS_NORMALIZATIONS:
            raise ConfigError(
                f"unknown loss_normalization {self.loss_normalization!r}; choose one of {', '.join(LOSS_NORMALIZATIONS)}"
            )
        if not isinstance(self.eps, (int, float)) or not 0.0 < float(self.eps) < 1.0:
            raise ConfigError(f"eps must be a number in (0, 1), got {self.eps!r}")
        for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ConfigError(f"{name} must be a non-negative integer or null, got {value!r}")

    # -- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DiffusionConfig":
        """Build from a dict; unknown keys are an error (they are usually typos)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown DiffusionConfig field(s): {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
        if "mask_token_id" not in data:
            raise ConfigError("DiffusionConfig needs mask_token_id")
        return cls(**data)

    def replace(self, **changes: Any) -> "DiffusionConfig":
        """A copy with some fields changed (validated)."""
        return self.from_dict({**self.to_dict(), **changes})

    def save(self, directory: str | os.PathLike) -> Path:
        return write_json_config(Path(directory) / CONFIG_NAME, self.to_dict())

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "DiffusionConfig":
        return cls.from_dict(read_json_config(Path(directory) / CONFIG_NAME))


def is_uniform_state(model: Any) -> bool:
    """Whether ``model`` (anything with a `DiffusionConfig` ``config``) is a uniform-state diffusion LM
    (UDLM, Duo: no mask token, tokens renoised to uniform noise): ``config.extra["process"] == "uniform"``,
    set by its loader (`difflm.formats.mdlm`)."""
    extra = getattr(getattr(model, "config", None), "extra", None) or {}
    return extra.get("process") == "uniform"
