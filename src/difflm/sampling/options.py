"""`SamplerOptions`: every knob of the denoising loop in one validated object."""

from __future__ import annotations

from dataclasses import dataclass, fields

from ..errors import InputError
from .forward import CACHE_MODES
from .strategies import Strategy, get_strategy
from .tokens import check_sampling_args

ATTENTION_OVERRIDES = ("causal", "bidirectional", "block_causal")


@dataclass
class SamplerOptions:
    """Options of `denoise` / `generate` / `infill` / `fill` (all keyword arguments there).

    steps: model calls at most (default: one per generated token); split evenly across blocks.
    strategy: a name of `STRATEGIES` ("low_confidence" default) or a `Strategy` instance.
    block_length: semi-autoregressive block size in generated tokens (default: one block). A
        length that is not a multiple gives a shorter last block.
    temperature, top_p, top_k, gumbel: token sampling (temperature 0 = greedy; gumbel = LLaDA's
        float64 Gumbel-max draw).
    threshold: confidence threshold of strategy "threshold" (default 0.9).
    alg_temp: > 0 samples positions with softmax(score / alg_temp) instead of the top scores (Dream).
    cfg_scale: classifier-free guidance scale (0 = off); the unconditional pass masks the prompt.
    cache: "none" | "prefix" | "dual" (block-wise KV cache, see `forward`).
    attention: None (the model's mode) | "causal" | "bidirectional" | "block_causal" (block
        diffusion: bidirectional inside a decoding block, causal across; makes the caches exact).
    stop_at_eos: once a finished block holds EOS/pad in a row, fill the rest of that row with
        EOS and stop denoising it (variable-length output; the run ends when every row stopped).
    suppress_eos: commit positions that drew EOS/pad only when nothing else is left in the step.
    """

    steps: int | None = None
    strategy: str | Strategy = "low_confidence"
    block_length: int | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    gumbel: bool = False
    threshold: float | None = None
    alg_temp: float = 0.0
    cfg_scale: float = 0.0
    cache: str = "none"
    attention: str | None = None
    stop_at_eos: bool = False
    suppress_eos: bool = False

    def __post_init__(self) -> None:
        check_sampling_args(self.temperature, self.top_p, self.top_k)
        if self.steps is not None and self.steps < 1:
            raise InputError(f"steps must be >= 1, got {self.steps}")
        if self.block_length is not None and self.block_length < 1:
            raise InputError(f"block_length must be >= 1, got {self.block_length}")
        if not self.cfg_scale >= 0:
            raise InputError(f"cfg_scale must be >= 0, got {self.cfg_scale}")
        if self.cache not in CACHE_MODES:
            raise InputError(f"unknown cache mode {self.cache!r}; choose one of {', '.join(CACHE_MODES)}")
        if self.attention is not None and self.attention not in ATTENTION_OVERRIDES:
            raise InputError(f"unknown attention {self.attention!r}; choose one of {', '.join(ATTENTION_OVERRIDES)}")
        self.strategy = get_strategy(self.strategy, threshold=self.threshold, alg_temp=self.alg_temp)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))
