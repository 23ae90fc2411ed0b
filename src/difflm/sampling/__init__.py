"""Sampling from diffusion LMs: the denoising loop, the one decoding step it shares with the server's
batch, commit strategies, token sampling and the block-wise KV cache."""

from ..registry import CACHE_MODES, FILTER_ORDERS, REVEAL_SCHEDULES, STRATEGIES
from .batch import Row, RowBatch, batch_key
from .canvas import block_masks, decoding_blocks, decoding_groups, build_canvas, template_canvas
from .denoiser import Denoiser
from .options import SamplerOptions
from .sampler import Generation, denoise, fill, generate, infill
from .step import (
    BlockSchedule, DecodingStep, SamplerStep, StepInput, StepOutput, commit_step, stop_token_ids, trim_at_stop,
)
from .strategies import (
    Entropy, LowConfidence, MaskGITPlus, RandomOrder, StepContext, Strategy, Threshold, TopKMargin, commit_counts,
    commit_schedule, dream_commit_count, get_strategy,
)
from .tokens import gumbel_max, sample_tokens, top_k_filter, top_p_filter

SCHEDULES = REVEAL_SCHEDULES  # the old name ("schedule" also names the noise schedule)

__all__ = [
    "BlockSchedule", "CACHE_MODES", "DecodingStep", "Denoiser", "Entropy", "FILTER_ORDERS", "Generation",
    "LowConfidence", "MaskGITPlus", "REVEAL_SCHEDULES", "RandomOrder", "Row", "RowBatch", "SCHEDULES", "STRATEGIES",
    "SamplerOptions", "SamplerStep", "StepContext", "StepInput", "StepOutput", "Strategy", "Threshold", "TopKMargin",
    "batch_key", "block_masks", "build_canvas", "commit_counts", "commit_schedule", "commit_step", "decoding_blocks",
    "decoding_groups", "denoise", "dream_commit_count", "fill", "generate", "get_strategy", "gumbel_max", "infill",
    "sample_tokens", "stop_token_ids", "template_canvas", "top_k_filter", "top_p_filter", "trim_at_stop",
]
