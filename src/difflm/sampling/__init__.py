"""Sampling from diffusion LMs: the denoising loop, the one decoding step it shares with the server's
batch, commit strategies, token sampling and the block-wise KV cache.

Importing this package loads no torch: `SamplerOptions` (`difflm.sampling.options`) and the infilling
templates (`difflm.sampling.templates`) are torch-free, so the command line validates sampler flags and
templates before torch loads; every other name below is imported on first use.
"""

from __future__ import annotations

from ..registry import CACHE_MODES, FILTER_ORDERS, REVEAL_SCHEDULES, STRATEGIES, lazy_attributes

SCHEDULES = REVEAL_SCHEDULES  # the old name ("schedule" also names the noise schedule)

# name -> the module of this package that defines it (imported on first access)
LAZY = {
    **dict.fromkeys(("Row", "RowBatch", "batch_key"), ".batch"),
    **dict.fromkeys(("block_masks", "decoding_blocks", "decoding_groups", "build_canvas", "template_canvas"), ".canvas"),
    "Denoiser": ".denoiser",
    "SamplerOptions": ".options",
    **dict.fromkeys(("Generation", "denoise", "fill", "generate", "infill"), ".sampler"),
    **dict.fromkeys(("BlockSchedule", "DecodingStep", "SamplerStep", "StepInput", "StepOutput", "commit_step",
                     "stop_token_ids", "trim_at_stop"), ".step"),
    **dict.fromkeys(("Entropy", "LowConfidence", "MaskGITPlus", "RandomOrder", "StepContext", "Strategy", "Threshold",
                     "TopKMargin", "commit_counts", "commit_schedule", "dream_commit_count", "get_strategy"), ".strategies"),
    **dict.fromkeys(("gumbel_max", "sample_tokens", "top_k_filter", "top_p_filter"), ".tokens"),
}
__getattr__ = lazy_attributes(__name__, LAZY)

__all__ = [
    "BlockSchedule", "CACHE_MODES", "DecodingStep", "Denoiser", "Entropy", "FILTER_ORDERS", "Generation",
    "LowConfidence", "MaskGITPlus", "REVEAL_SCHEDULES", "RandomOrder", "Row", "RowBatch", "SCHEDULES", "STRATEGIES",
    "SamplerOptions", "SamplerStep", "StepContext", "StepInput", "StepOutput", "Strategy", "Threshold", "TopKMargin",
    "batch_key", "block_masks", "build_canvas", "commit_counts", "commit_schedule", "commit_step", "decoding_blocks",
    "decoding_groups", "denoise", "dream_commit_count", "fill", "generate", "get_strategy", "gumbel_max", "infill",
    "sample_tokens", "stop_token_ids", "template_canvas", "top_k_filter", "top_p_filter", "trim_at_stop",
]


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
