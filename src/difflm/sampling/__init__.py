"""Sampling from diffusion LMs: the denoising loop, commit strategies and token sampling."""

from .sampler import SamplerStep, build_canvas, denoise, generate, infill
from .strategies import STRATEGIES, LowConfidence, RandomOrder, StepContext, Strategy, commit_counts, get_strategy
from .tokens import sample_tokens, top_p_filter

__all__ = [
    "STRATEGIES", "LowConfidence", "RandomOrder", "SamplerStep", "StepContext", "Strategy", "build_canvas",
    "commit_counts", "denoise", "generate", "get_strategy", "infill", "sample_tokens", "top_p_filter",
]
