"""Pretraining objectives on the packed corpus: ``ar`` (next token, the baseline), ``diffusion`` (a
masked DLM from scratch, or continued from a DLM checkpoint) and ``adapt`` (an AR checkpoint continued
as a DLM: attention annealed from causal to bidirectional, shift kept - DiffuGPT / DiffuLLaMA).

The diffusion loss is `difflm.losses.masked_diffusion_loss`, the function users call: the objective only
chooses the step's noise (`difflm.losses.draw_noise`, seeded by (seed, step)) and runs the model through
its DDP/FSDP wrapper. Validation is the ELBO bound ("tokens" normalisation, fixed noise) of a DLM, or
the NLL of an AR model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ...errors import ConfigError
from ...losses import ar_loss, draw_noise, maskable_positions, masked_diffusion_loss
from ..data import PackedBatches, pack_sequences, resolve_files, tokenize_files
from ..models import build_model
from ..seeding import NOISE, VALIDATION_SEED, step_generator
from . import Batch, Objective, check_diffusion_model

__all__ = ["ARObjective", "AdaptObjective", "DiffusionObjective", "PretrainBatch", "PretrainObjective"]


@dataclass
class PretrainBatch(Batch):
    """Packed rows and their noise. x: LongTensor [B, L] (each row [BOS] + corpus tokens); noise:
    BoolTensor [B, L], the positions replaced by [MASK] (None for AR); t: FloatTensor [B] noise levels
    ([B, L], per token, for a block diffusion model; None for AR)."""

    x: torch.Tensor
    noise: torch.Tensor | None = None
    t: torch.Tensor | None = None


class PretrainObjective(Objective):
    """The corpus packed into ``seq_length`` rows (`difflm.training.data`); an AR loss or the
    masked-diffusion ELBO. Subclasses say which (``diffusion``) and how the model starts."""

    diffusion: ClassVar[bool] = True  # a masked-diffusion loss (else next-token)
    from_ar: ClassVar[bool] = False  # ``init`` is an AR checkpoint turned into a DLM

    @classmethod
    def trains_masked_diffusion(cls, cfg: Any) -> bool:
        return cls.diffusion

    def build_data(self, tokenizer: Any) -> tuple[PackedBatches, PackedBatches]:
        """The corpus files tokenized and packed into blocks."""
        cfg, acc = self.cfg, self.accelerator
        train_files = resolve_files(cfg.train_files, "train")
        val_files = resolve_files(cfg.validation_files, "validation")
        with acc.main_process_first():  # one process tokenizes, the others read its cache
            train_stream = tokenize_files(train_files, tokenizer, source_weights=cfg.source_weights, seed=cfg.seed)
            val_stream = tokenize_files(val_files, tokenizer)
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        self.train_batches = PackedBatches(pack_sequences(train_stream, cfg.seq_length, bos), cfg.batch_size, cfg.seed)
        val_rows = pack_sequences(val_stream, cfg.seq_length, bos)
        self.val_batches = PackedBatches(val_rows, min(cfg.batch_size, len(val_rows)), seed=1234)
        return self.train_batches, self.val_batches

    def build_model(self, tokenizer: Any) -> torch.nn.Module:
        """A transformers causal LM (ar) or a `DiffusionLM`, from ``architecture`` or ``init``."""
        cfg = self.cfg
        # cfg.diffusion was validated by TrainConfig; special ids come from the checkpoint unless given
        diffusion = {**self.diffusion_defaults(cfg), **cfg.diffusion} if self.diffusion else None
        self.model = build_model(tokenizer, seed=cfg.seed, init=cfg.init, architecture=cfg.architecture,
                                 diffusion=diffusion, from_ar=self.from_ar)
        check_diffusion_model(self.model, cfg)
        return self.model

    # -- one step ----------------------------------------------------------------------------------------
    def global_batch(self, step: int) -> PretrainBatch:
        cfg = self.cfg
        x = self.train_batches.global_batch(step)
        if not self.diffusion:
            return PretrainBatch(x)
        noise, t = draw_noise(self.model, x, antithetic=cfg.antithetic, generator=step_generator(cfg.seed, step, NOISE))
        return PretrainBatch(x, noise, t)

    def micro_batches(self, step: int, rows: Any) -> list[PretrainBatch]:
        parts = super().micro_batches(step, rows)
        if self.cfg.complementary_masks and self.diffusion:
            return [self.with_complements(part) for part in parts]
        return parts

    def with_complements(self, batch: PretrainBatch) -> PretrainBatch:
        """Each row twice: with its noise mask and with the complement among the maskable positions
        (Fast-dLLM v2), every token a target once. The complement of a level-t mask is a level-(1 - t)
        mask, so it gets the weight of 1 - t (kept >= eps)."""
        x, noise, t = batch.x, batch.noise, batch.t
        allowed = maskable_positions(self.model, x)
        return PretrainBatch(torch.cat([x, x]), torch.cat([noise, allowed & ~noise]),
                             torch.cat([t, (1.0 - t).clamp_min(self.model.config.eps)]))

    def loss(self, forward: torch.nn.Module, batch: PretrainBatch, *, step: int,
             generator: torch.Generator | None = None) -> torch.Tensor:
        return self.batch_loss(forward, batch, step=step, generator=generator)

    def batch_loss(self, forward: torch.nn.Module, batch: PretrainBatch, *, step: int | None = None,
                   generator: torch.Generator | None = None, normalization: str | None = None) -> torch.Tensor:
        """The mean loss of ``batch`` through ``forward``: the AR loss, or the diffusion loss under the
        batch's noise - with the training options (focal loss, AR guidance) when ``step`` is given."""
        x = batch.x.to(self.accelerator.device)
        if not self.diffusion:
            return ar_loss(forward, x)
        return masked_diffusion_loss(self.model, x, t=batch.t, noise_mask=batch.noise, step=step, generator=generator,
                                     normalization=normalization, forward=forward,
                                     **self.cfg.loss_options(step is not None)).loss

    # -- validation --------------------------------------------------------------------------------------
    def validation_batch(self, index: int) -> PretrainBatch:
        x = self.val_batches.global_batch(index)
        if not self.diffusion:
            return PretrainBatch(x)
        noise, t = draw_noise(self.model, x, antithetic=True, generator=step_generator(VALIDATION_SEED, index, NOISE))
        return PretrainBatch(x, noise, t)

    def validation_loss(self, model: torch.nn.Module, batch: PretrainBatch) -> float:
        """AR NLL, or the diffusion ELBO bound (bidirectional, fixed noise, "tokens" normalisation: an
        unbiased per-token estimate), in nats/token."""
        return self.batch_loss(model, batch, normalization="tokens").item()


class ARObjective(PretrainObjective):
    """``objective: ar``: next-token cross-entropy of a transformers causal LM (the baseline)."""

    name = "ar"
    diffusion = False


class DiffusionObjective(PretrainObjective):
    """``objective: diffusion``: a masked DLM (bidirectional unless ``diffusion.attention`` says
    otherwise), from ``architecture`` or continued from the DLM checkpoint ``init``."""

    name = "diffusion"


class AdaptObjective(PretrainObjective):
    """``objective: adapt``: the AR checkpoint ``init`` continued as a DLM, its attention annealed from
    causal to bidirectional over ``diffusion.anneal_steps``, shift kept (DiffuGPT, DiffuLLaMA)."""

    name = "adapt"
    from_ar = True

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        if not cfg.init:
            raise ConfigError("objective 'adapt' needs init: the AR checkpoint to adapt")

    @classmethod
    def diffusion_defaults(cls, cfg: Any) -> dict[str, Any]:
        return {"attention": "annealed"}
