"""Training losses as small composable terms, and the masked-diffusion ELBO loss composed of them.

* `noise_draw`: the forward process q(x_t | x_0) (`draw_noise`; `maskable_positions`);
* `elbo`: the weighted cross-entropy of the masked targets and its normalisations;
* `block`: block diffusion training - the two-copy forward, the block grid draws;
* `guidance`: training-only reshaping - focal reweighting, the AR guidance of the clean copy;
* `ar`: next-token losses (the AR baselines).

`masked_diffusion_loss` is what users and every diffusion objective call: draw (or take) the noise,
run the right forward, score the targets.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..errors import ConfigError, InputError
from ..model import DiffusionLM
from ..noise import check_t, get_schedule
from .ar import ar_loss, ar_response_loss
from .block import draw_blocks, two_copy_logits, two_copy_logits_with_clean
from .elbo import DiffusionLossOutput, check_normalization, diffusion_loss_from_logits
from .guidance import ar_guidance, check_ar_loss_weight, focal_reweighting
from .noise_draw import draw_noise
from .positions import in_blocks, maskable_positions

__all__ = [
    "DiffusionLossOutput", "ar_guidance", "ar_loss", "ar_response_loss", "check_ar_loss_weight", "diffusion_loss_from_logits",
    "draw_blocks", "draw_noise", "focal_reweighting", "in_blocks", "maskable_positions", "masked_diffusion_loss",
    "two_copy_logits", "two_copy_logits_with_clean",
]


def masked_diffusion_loss(
    model: DiffusionLM,
    x0: torch.Tensor,
    *,
    t: torch.Tensor | None = None,
    noise_mask: torch.Tensor | None = None,
    src_mask: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    step: int | None = None,
    normalization: str | None = None,
    antithetic: bool = False,
    generator: torch.Generator | None = None,
    forward: Callable[..., torch.Tensor] | None = None,
    token_reweighting: tuple[float, float] | None = None,
    ar_weight: float = 0.0,
    blocks: torch.Tensor | None = None,
) -> DiffusionLossOutput:
    """Monte Carlo estimate of the masked-diffusion ELBO (negative; lower is better).

    loss = sum_i w(t) * CE(logits_i, x0_i) * target_i / denominator, with w(t) = 1/t for the
    linear schedule and denominator = the number of maskable positions ("tokens", the unbiased
    per-token ELBO) or the number of targets ("masked", DiffuLLaMA).

    A block diffusion model (``config.block_size``) is trained with BD3-LM's objective: each
    block noised at its own level and denoised seeing only the clean blocks before it, in one
    forward over [x_t | x_0] (`difflm.losses.block.two_copy_logits`).

    The input x_t has [MASK] exactly where ``noise_mask`` says (drawn by `draw_noise` when not
    given); the targets are the masked positions that have a prediction of their own. A given
    noise mask is followed as the reference (DiffuLLaMA) does: with shift, a mask at position 0
    (or at a row's first real token under left padding) is fed to the model but is no target.
    The default draw never masks those positions in the first place.

    Args:
        model: a `DiffusionLM` (its config gives mask id, schedule, shift and attention).
        x0: LongTensor [B, L] of clean tokens.
        t: FloatTensor [B] (or [B, L], per token) noise levels in (0, 1]; drawn from [eps, 1]
            when None (one per block for a block diffusion model; required with ``noise_mask``).
        noise_mask: BoolTensor [B, L] of positions to mask; drawn from q(x_t | x0) when None. It
            must not cover ``src_mask``.
        src_mask: BoolTensor [B, L], positions never noised (prompt in SFT).
        attention_mask: [B, L], 0 for padding that must be neither attended nor predicted.
        step: training step, for annealed attention.
        normalization: "tokens" | "masked"; defaults to the model config's.
        generator: RNG of the noise and the annealing draw (any device).
        forward: the module that computes the aligned logits, called as forward(x_t, attention_mask,
            step=..., generator=...) (and with ``run=`` for the two-copy forward); default ``model``
            (pass a DDP/FSDP wrapper of the model while training).
        token_reweighting: (alpha, gamma) - a training loss, no longer the ELBO: each target's
            cross-entropy reweighted (`difflm.losses.guidance.focal_reweighting`). None: the ELBO.
        ar_weight: a block diffusion model with ``block_context="causal"`` only: add this weight
            times the next-token cross-entropy of the clean copy (which runs causally: the model
            read as an AR model) over the same maskable positions and with the same denominator
            (NBDiff's AR guidance, `difflm.losses.guidance.ar_guidance`). 0: the ELBO.
        blocks: a block diffusion model only: LongTensor [B, K], the only blocks of each row that are
            noised and scored (`draw_blocks`); the noisy copy of the forward then holds just those,
            so a step costs L + K * block_size positions instead of 2L. The diffusion loss is the
            per-token mean over these blocks' maskable positions (``num_targets`` counts them); the AR
            guidance still covers every maskable position, normalised by their own count.
    """
    cfg = model.config
    normalization = check_normalization(normalization or cfg.loss_normalization)
    if x0.dim() != 2:
        raise InputError(f"x0 must be [batch, length], got shape {tuple(x0.shape)}")
    everywhere = maskable_positions(model, x0, src_mask=src_mask, attention_mask=attention_mask)
    allowed = everywhere
    if blocks is not None:
        if cfg.block_size is None:
            raise ConfigError("noising only some blocks needs a block diffusion model (diffusion.block_size)")
        allowed = everywhere & in_blocks(model, x0, blocks, attention_mask)
    if noise_mask is None:
        noise_mask, t = draw_noise(model, x0, t=t, src_mask=src_mask, attention_mask=attention_mask,
                                   antithetic=antithetic, generator=generator, blocks=blocks)
    else:
        if t is None:
            raise InputError("a given noise_mask needs its noise levels t")
        t = check_t(t.to(x0.device, torch.float32))
        noise_mask = noise_mask.to(x0.device).bool()
        if src_mask is not None and bool((noise_mask & src_mask.bool()).any()):
            raise InputError("noise_mask covers positions of src_mask, which are never noised")
        if blocks is not None and bool((noise_mask & ~allowed & everywhere).any()):
            raise InputError("noise_mask covers positions outside the given blocks")
    x_t = torch.where(noise_mask, torch.full_like(x0, cfg.mask_token_id), x0)
    clean_logits = None
    if ar_weight:
        check_ar_loss_weight(cfg, ar_weight)
        logits, clean_logits = two_copy_logits_with_clean(model, x_t, x0, attention_mask, noisy_blocks=blocks,
                                                          forward=forward)
    elif cfg.block_size is not None:  # every block denoised next to the clean blocks before it
        logits = two_copy_logits(model, x_t, x0, attention_mask, noisy_blocks=blocks, forward=forward)
    else:
        anneal_step = step if cfg.attention == "annealed" else None
        logits = (forward or model)(x_t, attention_mask, step=anneal_step, generator=generator)
    predictable = model.predictable_mask(x0, attention_mask)
    out = diffusion_loss_from_logits(logits, x0, noise_mask & predictable, t, int(allowed.sum()),
                                     schedule=get_schedule(cfg.schedule, eps=cfg.eps), normalization=normalization,
                                     token_reweighting=token_reweighting)
    if clean_logits is not None:
        denominator = out.num_masked if normalization == "masked" else out.num_targets
        # with some blocks noised, scale to all maskable positions: their own count under "tokens"
        denominator = denominator * int(everywhere.sum()) / max(1, int(allowed.sum()))
        out.loss = out.loss + ar_guidance(clean_logits, x0, everywhere & predictable, denominator, ar_weight)
    return out
