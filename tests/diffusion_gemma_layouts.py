"""Tiny random DiffusionGemma checkpoints, written by transformers itself (config classes + save_pretrained +
a generation_config.json), for tests/test_diffusion_gemma.py and the format contract test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion, DiffusionGemmaTextConfig
from transformers.models.diffusion_gemma.generation_diffusion_gemma import (
    DiffusionGemmaGenerationConfig, EntropyBoundSamplerConfig,
)
from transformers.models.gemma4 import Gemma4VisionConfig

from difflm.sampling.canvas_denoisers import EncoderDecoderDenoiser

PAD, EOS, BOS = 0, 1, 2
# what the tests decode with unless told otherwise: several steps, a bound that accepts a few tokens per step
GENERATION = dict(max_new_tokens=12, max_denoising_steps=6, entropy_bound=1.0, t_min=0.4, t_max=0.8,
                  stability_threshold=1, confidence_threshold=0.5)


def tiny_diffusion_gemma(vocab: int = 96, canvas: int = 4, seed: int = 0, **text: Any) -> DiffusionGemmaForBlockDiffusion:
    """A random DiffusionGemma: 2 layers (sliding + full attention), hidden 32, a mixture of 4 experts (every
    DiffusionGemma layer has its dense MLP and experts), a one-layer vision tower of width 16."""
    text_config = DiffusionGemmaTextConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, global_head_dim=16, max_position_embeddings=256, sliding_window=8,
        layer_types=["sliding_attention", "full_attention"], num_experts=4, top_k_experts=2, moe_intermediate_size=16,
        pad_token_id=PAD, eos_token_id=EOS, bos_token_id=BOS, **text)
    vision = Gemma4VisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=1,
                                num_key_value_heads=1, head_dim=16, position_embedding_size=64)
    config = DiffusionGemmaConfig(text_config=text_config, vision_config=vision, canvas_length=canvas,
                                  boi_token_id=vocab - 4, eoi_token_id=vocab - 3, image_token_id=vocab - 2)
    torch.manual_seed(seed)
    model = DiffusionGemmaForBlockDiffusion(config).eval()
    with torch.no_grad():  # sharper logits than the init's, so entropies spread and adaptive stopping can trigger
        model.lm_head.weight.mul_(8.0)
    return model


def generation_config(**changes: Any) -> DiffusionGemmaGenerationConfig:
    """The tests' generation config (`GENERATION` with ``changes``) as transformers' own class."""
    values = {**GENERATION, **changes}
    bound = values.pop("entropy_bound")
    return DiffusionGemmaGenerationConfig(sampler_config=EntropyBoundSamplerConfig(entropy_bound=float(bound)),
                                          pad_token_id=PAD, eos_token_id=EOS, **values)


def write_diffusion_gemma(path: Path, *, vocab: int = 96, canvas: int = 4, seed: int = 0, eos_boost: float = 1.0,
                          **generation: Any) -> DiffusionGemmaForBlockDiffusion:
    """Save a tiny DiffusionGemma with its generation_config.json in ``path``; returns the model. ``eos_boost``
    scales EOS's row of the (tied) output head: > 1 makes EOS likelier."""
    model = tiny_diffusion_gemma(vocab, canvas, seed)
    with torch.no_grad():
        model.lm_head.weight[EOS].mul_(eos_boost)
    model.generation_config = generation_config(**generation)
    model.save_pretrained(path)
    return model


def decoder_logits(dlm: Any, ids: torch.Tensor, context: int = 8) -> torch.Tensor:
    """The decoder's logits [B, W, V] of the canvas ``ids[:, context:]`` (one canvas) after the prompt
    ``ids[:, :context]``, through difflm's encoder-decoder denoiser: a fixed-input forward of a DiffusionGemma
    `DiffusionLM` (which has no `logits`), e.g. for the format contract test."""
    width = dlm.model.config.canvas_length
    canvas = ids[:, : context + width].clone()
    generate = torch.zeros_like(canvas, dtype=torch.bool)
    generate[:, context:] = True
    denoiser = EncoderDecoderDenoiser(dlm, canvas, generate, None, None)
    denoiser.start_block(0)
    with torch.no_grad():
        return denoiser(canvas[:, context:], None)
