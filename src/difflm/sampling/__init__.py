"""Sampling from diffusion LMs: the denoising loop, commit strategies, token sampling and the
block-wise KV cache."""

from .batch import Row, RowBatch, batch_key
from .canvas import block_masks, decoding_blocks, decoding_groups, build_canvas, template_canvas
from .denoiser import CACHE_MODES, Denoiser
from .options import FILTER_ORDERS, SamplerOptions
from .sampler import Generation, SamplerStep, commit_step, denoise, fill, generate, infill, stop_token_ids, trim_at_stop
from .strategies import (
    SCHEDULES, STRATEGIES, Entropy, LowConfidence, MaskGITPlus, RandomOrder, StepContext, Strategy, Threshold,
    TopKMargin, commit_counts, commit_schedule, dream_commit_count, get_strategy,
)
from .tokens import gumbel_max, sample_tokens, top_k_filter, top_p_filter

__all__ = [
    "CACHE_MODES", "FILTER_ORDERS", "Row", "RowBatch", "batch_key", "commit_step", "SCHEDULES", "STRATEGIES", "Denoiser", "Entropy", "Generation", "LowConfidence", "MaskGITPlus", "RandomOrder",
    "SamplerOptions", "SamplerStep", "StepContext", "Strategy", "Threshold", "TopKMargin", 
    "block_masks", "build_canvas", "decoding_blocks", "decoding_groups", "commit_counts", "commit_schedule", "denoise", "dream_commit_count", "fill", "generate", "get_strategy",
    "gumbel_max", "infill", "sample_tokens", "stop_token_ids", "template_canvas", "top_k_filter", "top_p_filter",
    "trim_at_stop",
]
