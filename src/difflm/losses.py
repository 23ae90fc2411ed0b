"""Training objectives: the masked-diffusion ELBO loss, and next-token loss for AR baselines."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import ConfigError, InputError
from .noise import corrupt, get_schedule, sample_t


@dataclass
class DiffusionLossOutput:
    """loss: scalar; num_masked: masked (target) tokens in the batch; num_targets: positions that
    could have been masked (the ELBO's per-token denominator); t: FloatTensor [B]."""

    loss: torch.Tensor
    num_masked: int
    num_targets: int
    t: torch.Tensor


def maskable_positions(x0: torch.Tensor, *, shift: bool, src_mask: torch.Tensor | None = None,
                       attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """BoolTensor [B, L]: positions the forward process may mask. Never the prompt (src_mask),
    never padding, and with shift never position 0 (it has no prediction; it acts as BOS)."""
    allowed = torch.ones_like(x0, dtype=torch.bool)
    if src_mask is not None:
        allowed &= ~src_mask.bool()
    if attention_mask is not None:
        allowed &= attention_mask.bool()
    if shift:
        allowed[:, 0] = False
    return allowed


def masked_diffusion_loss(
    model,
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
) -> DiffusionLossOutput:
    """Monte Carlo estimate of the masked-diffusion ELBO (negative; lower is better).

    loss = sum_i w(t) * CE(logits_i, x0_i) * masked_i / denominator, with w(t) = 1/t for the
    linear schedule and denominator = num_targets ("tokens", the unbiased per-token ELBO) or the
    number of masked tokens ("masked", DiffuLLaMA).

    Args:
        model: a `DiffusionLM` (its config gives mask id, schedule, shift and attention).
        x0: LongTensor [B, L] of clean tokens.
        t: FloatTensor [B] noise levels; drawn from [eps, 1] when None.
        noise_mask: BoolTensor [B, L] of positions to mask; drawn from q(x_t | x0) when None.
        src_mask: BoolTensor [B, L], positions never noised (prompt in SFT).
        attention_mask: [B, L], 0 for padding that must be neither attended nor predicted.
        step: training step, for annealed attention.
        normalization: "tokens" | "masked"; defaults to the model config's.
    """
    cfg = model.config
    normalization = normalization or cfg.loss_normalization
    if normalization not in ("tokens", "masked"):
        raise ConfigError(f"unknown loss normalization {normalization!r}; choose tokens or masked")
    if x0.dim() != 2:
        raise InputError(f"x0 must be [batch, length], got shape {tuple(x0.shape)}")
    schedule = get_schedule(cfg.schedule, eps=cfg.eps)
    allowed = maskable_positions(x0, shift=cfg.shift, src_mask=src_mask, attention_mask=attention_mask)
    if t is None:
        t = sample_t(x0.shape[0], antithetic=antithetic, eps=cfg.eps, generator=generator, device=x0.device)
    t = t.to(x0.device, torch.float32)
    if noise_mask is None:
        x_t, noise_mask = corrupt(x0, t, cfg.mask_token_id, src_mask=~allowed, schedule=schedule, generator=generator)
    else:
        noise_mask = noise_mask.bool() & allowed
        x_t = torch.where(noise_mask, torch.full_like(x0, cfg.mask_token_id), x0)
    logits = model.logits(x_t, attention_mask, step=step, generator=generator)
    return diffusion_loss_from_logits(logits, x0, noise_mask, t, allowed, schedule=schedule, normalization=normalization)


def diffusion_loss_from_logits(
    logits: torch.Tensor,
    x0: torch.Tensor,
    noise_mask: torch.Tensor,
    t: torch.Tensor,
    allowed: torch.Tensor,
    *,
    schedule,
    normalization: str = "tokens",
) -> DiffusionLossOutput:
    """The ELBO loss from aligned logits [B, L, V] of x_t (for callers that run the model
    themselves, e.g. through a DDP wrapper). noise_mask / allowed: BoolTensor [B, L]; t: [B]."""
    ce = F.cross_entropy(logits.float().transpose(1, 2), x0, reduction="none")  # [B, L]
    weights = schedule.weight(t)[:, None] if t.dim() == 1 else schedule.weight(t)
    total = (weights * ce * noise_mask).sum()
    num_masked = int(noise_mask.sum())
    num_targets = int(allowed.sum())
    denominator = num_masked if normalization == "masked" else num_targets
    # max(1, .): a batch with nothing masked gives loss 0 with zero (not NaN) gradients.
    return DiffusionLossOutput(total / max(1, denominator), num_masked, num_targets, t)


def ar_loss(model, x: torch.Tensor, *, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy of a causal model on x [B, L] (padding ignored).

    ``model`` is a `DiffusionLM` with shift (run with causal attention) or a transformers causal LM.
    """
    from .model import DiffusionLM

    if isinstance(model, DiffusionLM):
        if not model.config.shift:
            raise ConfigError("ar_loss needs a model with shift=True (an AR-style backbone)")
        logits = model.logits(x, attention_mask, attention="causal")[:, 1:]
    else:
        logits = model(input_ids=x, attention_mask=attention_mask).logits[:, :-1]
    targets = x[:, 1:]
    if attention_mask is not None:
        targets = targets.masked_fill(~attention_mask[:, 1:].bool(), -100)
    return F.cross_entropy(logits.float().transpose(1, 2), targets, ignore_index=-100)
