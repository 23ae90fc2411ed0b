"""Training objectives: the masked-diffusion ELBO loss, and next-token loss for AR baselines."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .errors import ConfigError, InputError
from .noise import NoiseSchedule, check_t, corrupt, get_schedule, sample_t
from .rng import uniform


@dataclass
class DiffusionLossOutput:
    """loss: scalar; num_masked: masked tokens scored (targets) in the batch; num_targets: positions that
    could have been masked (the ELBO's per-token denominator); t: FloatTensor [B]."""

    loss: torch.Tensor
    num_masked: int
    num_targets: int
    t: torch.Tensor


def maskable_positions(model, x0: torch.Tensor, *, src_mask: torch.Tensor | None = None,
                       attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """BoolTensor [B, L]: positions the forward process may mask - those with a prediction of
    their own (`DiffusionLM.predictable_mask`: never padding, and with shift never a row's first
    real token, which acts as BOS), minus the prompt (``src_mask``)."""
    allowed = model.predictable_mask(x0, attention_mask)
    if src_mask is not None:
        allowed &= ~src_mask.bool()
    return allowed


def draw_blocks(
    model,
    x0: torch.Tensor,
    count: int,
    *,
    src_mask: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    ends: torch.Tensor | None = None,
) -> torch.Tensor:
    """The blocks a block diffusion training step noises when it noises only ``count`` per row:
    LongTensor [B, count] of block numbers (`DiffusionLM.block_groups`), drawn uniformly without
    replacement among the blocks that hold a maskable position (`maskable_positions`); a row with
    fewer such blocks takes them all and is filled with -1. A uniform draw keeps the per-token
    loss over the drawn blocks an unbiased estimate of the loss over all of them.

    ``ends`` (LongTensor [B], SFT): where each row's answer ends (its EOS/pad tail starts there);
    only the blocks up to the first one after the answer's last token are drawn - that one teaches
    that nothing follows the answer, and the blocks past it hold the tail alone, which a decoder
    that stops at EOS never writes."""
    if model.config.block_size is None:
        raise ConfigError("noising only some blocks needs a block diffusion model (diffusion.block_size)")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError(f"the number of noised blocks must be an integer >= 1, got {count!r}")
    groups = model.block_groups(x0, attention_mask)
    allowed = maskable_positions(model, x0, src_mask=src_mask, attention_mask=attention_mask)
    n_blocks = int(groups.max()) + 1
    has_target = torch.zeros(x0.shape[0], n_blocks, device=x0.device).scatter_add_(1, groups, allowed.float()) > 0
    if ends is not None:
        last = groups.gather(1, (ends.to(x0.device).view(-1, 1) - 1).clamp(0, x0.shape[1] - 1))  # the answer's last block
        has_target &= torch.arange(n_blocks, device=x0.device) <= last + 1
    scores = uniform((x0.shape[0], n_blocks), generator=generator, device=x0.device)  # in [0, 1)
    top = scores.masked_fill(~has_target, -1.0).topk(min(count, n_blocks), dim=1)
    blocks = torch.where(top.values >= 0, top.indices, -1)
    return torch.nn.functional.pad(blocks, (0, count - blocks.shape[1]), value=-1)


def in_blocks(model, x0: torch.Tensor, blocks: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """BoolTensor [B, L]: the positions of x0 [B, L] whose block is one of ``blocks`` [B, K]."""
    groups = model.block_groups(x0, attention_mask)
    return (groups.unsqueeze(-1) == blocks.to(groups.device).unsqueeze(-2)).any(-1)


def draw_noise(
    model,
    x0: torch.Tensor,
    *,
    t: torch.Tensor | None = None,
    src_mask: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    antithetic: bool = False,
    generator: torch.Generator | None = None,
    blocks: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample q(x_t | x_0) for a batch: (noise_mask BoolTensor [B, L], t FloatTensor [B], or [B, L]
    for a block diffusion model).

    One t per sequence from [eps, 1] (antithetic across the batch if asked) unless given - one per
    block for a block diffusion model (``config.block_size``), given per token; then each of the
    `maskable_positions` is masked independently with probability 1 - alpha(t) - only those of the
    ``blocks`` [B, K] of each row when given (`draw_blocks`). Seeded draws work on any device
    (`difflm.rng`)."""
    cfg = model.config
    if t is None and cfg.block_size is not None:
        # a block diffusion model: every block gets its own noise level (BD3-LM); t per token
        groups = model.block_groups(x0, attention_mask)
        per_block = sample_t(x0.shape[0] * (int(groups.max()) + 1), antithetic=antithetic, eps=cfg.eps,
                             generator=generator, device=x0.device)
        t = per_block.view(x0.shape[0], -1).gather(1, groups)
    elif t is None:
        t = sample_t(x0.shape[0], antithetic=antithetic, eps=cfg.eps, generator=generator, device=x0.device)
    t = check_t(t.to(x0.device, torch.float32))
    allowed = maskable_positions(model, x0, src_mask=src_mask, attention_mask=attention_mask)
    if blocks is not None:
        allowed = allowed & in_blocks(model, x0, blocks, attention_mask)
    _, noise_mask = corrupt(x0, t, cfg.mask_token_id, src_mask=~allowed,
                            schedule=get_schedule(cfg.schedule, eps=cfg.eps), generator=generator)
    return noise_mask, t


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
    forward over [x_t | x_0] (`DiffusionLM.two_copy_logits`).

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
        forward: what computes the aligned logits, called as forward(x_t, attention_mask,
            step=..., generator=...); default ``model.logits`` (pass a DDP/FSDP wrapper of the
            model while training).
        token_reweighting: (alpha, gamma) - a training loss, no longer the ELBO: each target's
            cross-entropy ce scaled by alpha * (1 - exp(-ce)) ** gamma (the focal loss of MGDM,
            Ye et al. 2025, and Dream), which moves the gradient onto the tokens the model still
            gets wrong. None: the ELBO.
        ar_weight: a block diffusion model with ``block_context="causal"`` only: add this weight
            times the next-token cross-entropy of the clean copy (which runs causally: the model
            read as an AR model) over the same maskable positions and with the same denominator
            (NBDiff's AR guidance). 0: the ELBO.
        blocks: a block diffusion model only: LongTensor [B, K], the only blocks of each row that are
            noised and scored (`draw_blocks`); the noisy copy of the forward then holds just those,
            so a step costs L + K * block_size positions instead of 2L. The diffusion loss is the
            per-token mean over these blocks' maskable positions (``num_targets`` counts them); the AR
            guidance still covers every maskable position, normalised by their own count.
    """
    cfg = model.config
    normalization = normalization or cfg.loss_normalization
    if normalization not in ("tokens", "masked"):
        raise ConfigError(f"unknown loss normalization {normalization!r}; choose tokens or masked")
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
    subset = {} if blocks is None else {"noisy_blocks": blocks}
    if ar_weight:
        check_ar_loss_weight(cfg, ar_weight)
        logits, clean_logits = (forward or model.logits)(x_t, attention_mask, clean_ids=x0, with_clean=True, **subset)
    elif cfg.block_size is not None:  # every block denoised next to the clean blocks before it
        logits = (forward or model.logits)(x_t, attention_mask, clean_ids=x0, **subset)
    else:
        anneal_step = step if cfg.attention == "annealed" else None
        logits = (forward or model.logits)(x_t, attention_mask, step=anneal_step, generator=generator)
    predictable = model.predictable_mask(x0, attention_mask)
    targets = noise_mask & predictable
    schedule = get_schedule(cfg.schedule, eps=cfg.eps)
    out = diffusion_loss_from_logits(logits, x0, targets, t, int(allowed.sum()), schedule=schedule,
                                     normalization=normalization, token_reweighting=token_reweighting)
    if ar_weight:
        ar_targets = everywhere & predictable
        ce = F.cross_entropy(clean_logits.float().transpose(1, 2), x0, reduction="none")
        denominator = out.num_masked if normalization == "masked" else out.num_targets
        # with some blocks noised, scale to all maskable positions: their own count under "tokens"
        denominator = denominator * int(everywhere.sum()) / max(1, int(allowed.sum()))
        out.loss = out.loss + ar_weight * (ce * ar_targets).sum() / max(1, denominator)
    return out


def check_ar_loss_weight(config, weight: float) -> None:
    """`ConfigError` unless ``weight`` is 0 or the model (its `DiffusionConfig`) reads finished blocks
    causally: only then is the clean copy of the two-copy forward an AR model."""
    if weight and (config.block_size is None or config.block_context != "causal"):
        raise ConfigError("ar_loss_weight needs a block diffusion model with diffusion.block_context: causal "
                          "(its clean copy is then an AR model); this model "
                          + ("has no block_size" if config.block_size is None else "reads finished blocks as blocks"))


def diffusion_loss_from_logits(
    logits: torch.Tensor,
    x0: torch.Tensor,
    targets: torch.Tensor,
    t: torch.Tensor,
    num_targets: int,
    *,
    schedule: NoiseSchedule,
    normalization: str = "tokens",
    token_reweighting: tuple[float, float] | None = None,
) -> DiffusionLossOutput:
    """The ELBO loss from aligned logits [B, L, V] of x_t. targets: BoolTensor [B, L], the masked
    positions scored; t: [B] (or [B, L]); num_targets: the maskable positions ("tokens" denominator);
    token_reweighting: (alpha, gamma) of the focal reweighting (see `masked_diffusion_loss`)."""
    ce = F.cross_entropy(logits.float().transpose(1, 2), x0, reduction="none")  # [B, L]
    if token_reweighting is not None:
        alpha, gamma = token_reweighting
        ce = alpha * (1 - torch.exp(-ce)) ** gamma * ce
    weights = schedule.weight(t)[:, None] if t.dim() == 1 else schedule.weight(t)
    total = (weights * ce * targets).sum()
    num_masked = int(targets.sum())
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
