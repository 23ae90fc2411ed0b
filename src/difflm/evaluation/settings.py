"""`EvalSettings`: how models are scored and decoded in an evaluation (everything that changes a number)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..errors import InputError
from ..sampling import SamplerOptions
from ..sampling.options import over_model
from .likelihood import ESTIMATORS


DEFAULT_MAX_NEW_TOKENS = 256  # the generation budget of a model that recommends none
SAMPLER_FIELDS = ("steps", "strategy", "block_length", "threshold", "cache", "stop_at_eos", "speculative")  # SamplerOptions


@dataclass
class EvalSettings:
    """How models are scored and decoded. Everything that changes a number is in here (and in the JSON).

    n_samples: Monte Carlo samples (= forward passes) per scored sequence of a DLM.
    estimator: "count" (LLaDA's l-sampling) or "time" (t-sampling), see `difflm.evaluation.likelihood`.
    stratified: stratify l (or t) across the samples of one sequence.
    common_random_numbers: the options of a multiple-choice question share their random draws, so
        that their comparison is less noisy than each option's own error.
    seed: base seed of every random draw.
    batch_size: sequences per forward pass.
    reference_steps: T of DiffuGPT's unweighted multiple-choice score (0 = do not compute it).
    steps: denoising steps per generation (None = one per generated token, the reference protocol).
    block_length, strategy: sampler options (semi-autoregressive blocks, commit strategy).
    threshold: confidence threshold in (0, 1] of strategy "threshold" (None = the sampler's 0.9).
    cache: the sampler's block-wise KV cache: "none", "prefix", "dual" (or "block").
    stop_at_eos: stop a generated row once a finished block holds EOS/pad (variable-length answers,
        e.g. GSM8K); applies to open-ended generation, not to infilling (its length is given).
    speculative: self-speculative decoding of a block model with a causal view (open-ended generation
        only: it continues a prompt; infilling tasks decode as the other options say).
    The DLM sampler options (steps .. stop_at_eos) are validated here, before any model loads; an AR
    model ignores them. Left at None they are the model's own (its generation_config.json,
    `difflm.sampling.options.model_options`), else the sampler's defaults.
    max_new_tokens: generation budget of open-ended tasks (GSM8K, HumanEval); None = the model's
        recommended length, else `DEFAULT_MAX_NEW_TOKENS`.
    limit: evaluate only the first ``limit`` examples of each task.
    """

    n_samples: int = 32
    estimator: str = "count"
    stratified: bool = True
    common_random_numbers: bool = True
    seed: int = 0
    batch_size: int = 16
    reference_steps: int = 0
    steps: int | None = None
    block_length: int | None = None
    strategy: str | None = None
    threshold: float | None = None
    cache: str | None = None
    stop_at_eos: bool | None = None
    speculative: bool | None = None
    max_new_tokens: int | None = None
    limit: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        def positive(name: str, value: Any, minimum: int = 1) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")

        positive("n_samples", self.n_samples)
        positive("batch_size", self.batch_size)
        positive("reference_steps", self.reference_steps, 0)
        for name in ("steps", "block_length", "limit", "max_new_tokens"):
            if getattr(self, name) is not None:
                positive(name, getattr(self, name))
        if self.estimator not in ESTIMATORS:
            raise InputError(f"unknown estimator {self.estimator!r}; choose one of {', '.join(ESTIMATORS)}")
        if self.threshold is not None and (isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float))):
            raise InputError(f"threshold must be a number in (0, 1], got {self.threshold!r}")
        for name in ("stop_at_eos", "speculative"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), bool):
                raise InputError(f"{name} must be true or false, got {getattr(self, name)!r}")
        # strategy, threshold and cache: fail now, not after the model loaded (a threshold without a strategy is
        # checked as the threshold strategy's: the model's own strategy decides, once it has loaded)
        self.sampler_options(SamplerOptions(strategy="threshold") if self.strategy is None and self.threshold else None)

    def sampler_options(self, base: SamplerOptions | None = None) -> SamplerOptions:
        """The DLM sampler's options of these settings over ``base`` (a model's saved defaults; None: the
        sampler's): the settings left at None keep the base's (validated: `InputError` on a bad value)."""
        given = {name: getattr(self, name) for name in SAMPLER_FIELDS if getattr(self, name) is not None}
        return over_model(base, **given)

    def generation_budget(self, recommended: int | None = None) -> int:
        """``max_new_tokens``, else the model's ``recommended`` length, else `DEFAULT_MAX_NEW_TOKENS`."""
        return self.max_new_tokens or recommended or DEFAULT_MAX_NEW_TOKENS

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "progress"}
