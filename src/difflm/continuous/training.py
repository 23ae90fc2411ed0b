"""``objective: continuous``: an embedding-space DLM (`ContinuousDLM`) trained in the shared loop
(`difflm.training.Trainer`), registered in `difflm.registry.OBJECTIVES`.

The loop, resume, DDP / FSDP, checkpoints, logging and the progress bar are the shared ones; this
objective supplies the model (`ContinuousDLM` from ``architecture`` and ``continuous:``), the step's
draws (a function of (seed, step), drawn for the whole global batch: any number of processes computes
the same loss) and the loss (`continuous_loss`). The loss of a step is the sum over the global batch's
target positions divided by their number, so neither processes nor ``grad_accum`` change it.
Validation reports the likelihood bound (`nll_bound`) in nats/token on fixed draws, in float32.

Data: the packed corpus blocks (a language model; BOS clean, random clean prefixes/suffixes), or with
``continuous.seq2seq: true`` prompt/response JSONL rows (DiffuSeq: the source clean, the target and
its padding tail noised), read as for SFT (`difflm.training.sft_data`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from ..training.objectives import Batch
from ..training.objectives.pretrain import PretrainObjective
from ..training.seeding import NOISE, VALIDATION_SEED, step_generator
from ..training.sft_data import SFTBatches, build_sft_data
from .config import TRAINING_ONLY, ContinuousConfig, check_train_settings
from .likelihood import BoundTerms, bound_per_token, nll_bound
from .model import ContinuousDLM, backbone_config
from .objective import ContinuousNoise, continuous_loss, draw_continuous_noise

__all__ = ["BoundBatch", "ContinuousBatch", "ContinuousObjective", "model_config"]


def model_config(settings: dict[str, Any], tokenizer: Any) -> ContinuousConfig:
    """The `ContinuousConfig` of a run: its ``continuous:`` settings (training-only keys dropped) and
    the tokenizer's vocabulary and special ids."""
    fields = {k: v for k, v in settings.items() if k not in TRAINING_ONLY}
    ids = {name: getattr(tokenizer, name, None) for name in ("bos_token_id", "eos_token_id", "pad_token_id")}
    return ContinuousConfig.from_dict({**fields, "vocab_size": len(tokenizer), **ids})


@dataclass
class ContinuousBatch(Batch):
    """x: LongTensor [B, L]; draws: the step's `ContinuousNoise` of these rows (t, Gaussian noise, clean
    positions, self-conditioning rows); scale: turns the loss sum into its share of the global mean."""

    x: torch.Tensor
    draws: ContinuousNoise
    scale: float


@dataclass
class BoundBatch(Batch):
    """A validation batch: x: LongTensor [B, L]; clean: BoolTensor [B, L], the positions not scored (BOS,
    and the source of a seq2seq row); generator: the batch's fixed draws."""

    x: torch.Tensor
    clean: torch.Tensor
    generator: torch.Generator


class ContinuousObjective(PretrainObjective):
    """``objective: continuous`` (module doc). The packed corpus data of `PretrainObjective` unless
    ``continuous.seq2seq``; everything else its own."""

    name = "continuous"
    diffusion = False  # not a masked-diffusion loss
    validation_autocast = False  # the bound is computed in float32
    reports_bound = True  # type: ignore[assignment]

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        """The ``continuous:`` section (`difflm.continuous.config.check_train_settings`)."""
        check_train_settings(cfg)

    @property
    def seq2seq(self) -> bool:
        return bool(self.cfg.continuous.get("seq2seq", False))

    def build_data(self, tokenizer: Any) -> tuple[Any, Any]:
        if not self.seq2seq:
            return super().build_data(tokenizer)
        cfg = self.cfg
        tail = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        train = build_sft_data(cfg.train_files, tokenizer, cfg.seq_length, tail)
        val = build_sft_data(cfg.validation_files, tokenizer, cfg.seq_length, tail)
        self.train_batches = SFTBatches(train, cfg.batch_size, cfg.seed)
        self.val_batches = SFTBatches(val, min(cfg.batch_size, len(val.ids)), seed=1234)
        return self.train_batches, self.val_batches

    def build_model(self, tokenizer: Any) -> torch.nn.Module:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)  # the initialisation is part of the run's determinism
        model = ContinuousDLM(backbone_config(cfg.architecture), model_config(cfg.continuous, tokenizer), tokenizer)
        if model.max_length is not None and cfg.seq_length > model.max_length:
            raise ConfigError(f"seq_length {cfg.seq_length} exceeds the model's context of {model.max_length}")
        self.model = model
        return model

    def rows_of(self, batches: Any, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(x [B, L], src [B, L] or None) of batch ``index``."""
        if self.seq2seq:
            x, src, _ = batches.global_batch(index)
            return x, src
        return batches.global_batch(index), None

    # -- one step ----------------------------------------------------------------------------------------
    def global_batch(self, step: int) -> ContinuousBatch:  # type: ignore[override]
        cfg, acc = self.cfg, self.accelerator
        x, src = self.rows_of(self.train_batches, step)
        draws = draw_continuous_noise(x, self.model.config, antithetic=cfg.antithetic,
                                      generator=step_generator(cfg.seed, step, NOISE), src=src)
        scale = acc.num_processes * cfg.grad_accum / max(1, int((~draws.clean).sum()))
        return ContinuousBatch(x, draws, scale)

    def loss(self, forward: torch.nn.Module, batch: ContinuousBatch, *, step: int,  # type: ignore[override]
             generator: torch.Generator | None = None) -> torch.Tensor:
        total, _count = continuous_loss(self.model, batch.x, batch.draws, forward=forward)
        return total * batch.scale

    # -- validation --------------------------------------------------------------------------------------
    def validation_batch(self, index: int) -> BoundBatch:  # type: ignore[override]
        x, src = self.rows_of(self.val_batches, index)
        clean = torch.zeros_like(x, dtype=torch.bool) if src is None else src.bool()
        clean[:, 0] = True
        return BoundBatch(x, clean, step_generator(VALIDATION_SEED, index, NOISE))

    def validation_loss(self, model: torch.nn.Module, batch: BoundBatch) -> BoundTerms:  # type: ignore[override]
        return nll_bound(model, batch.x, batch.clean, generator=batch.generator)

    def validation_result(self, terms: list[Any]) -> float:
        """The likelihood bound in nats per target token (every token after BOS; seq2seq: the target and
        its tail)."""
        return bound_per_token(terms)

    # -- the end -----------------------------------------------------------------------------------------
    def save_model(self, wrapped: torch.nn.Module, directory: Path) -> Path:
        """The model as a continuous DLM directory (`ContinuousDLM.save_pretrained`)."""
        acc = self.accelerator
        state = acc.get_state_dict(wrapped)
        if acc.is_main_process:
            acc.unwrap_model(wrapped).save_pretrained(directory, state_dict=state)
        acc.wait_for_everyone()
        return directory
