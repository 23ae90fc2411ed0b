"""`ContinuousTrainer`: ``objective: continuous`` in the shared training loop (`difflm.training.Trainer`).

The loop, resume, DDP / FSDP, checkpoints, logging and the progress bar are the shared ones; this class
supplies the model (`ContinuousDLM` from ``architecture`` and ``continuous:``), the step's draws (a
function of (seed, step), drawn for the whole global batch: any number of processes computes the
same loss) and the loss (`continuous_loss`). The loss of a step is the sum over the global batch's
target positions divided by their number, so neither processes nor ``grad_accum`` change it.
Validation reports the likelihood bound (`nll_bound`) in nats/token on fixed draws.

Data: the packed corpus blocks (a language model; BOS clean, random clean prefixes/suffixes), or with
``continuous.seq2seq: true`` prompt/response JSONL rows (DiffuSeq: the source clean, the target and
its padding tail noised), read as for SFT (`difflm.training.sft`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from ..training.sft import SFTBatches, build_sft_data
from ..training.trainer import Trainer, _step_generator
from .config import TRAINING_ONLY, ContinuousConfig
from .likelihood import bound_per_token, nll_bound
from .model import ContinuousDLM, backbone_config
from .objective import continuous_loss, draw_continuous_noise



def model_config(settings: dict[str, Any], tokenizer: Any) -> ContinuousConfig:
    """The `ContinuousConfig` of a run: its ``continuous:`` settings (training-only keys dropped) and
    the tokenizer's vocabulary and special ids."""
    fields = {k: v for k, v in settings.items() if k not in TRAINING_ONLY}
    ids = {name: getattr(tokenizer, name, None) for name in ("bos_token_id", "eos_token_id", "pad_token_id")}
    return ContinuousConfig.from_dict({**fields, "vocab_size": len(tokenizer), **ids})


class ContinuousTrainer(Trainer):
    """`Trainer` for ``objective: continuous`` (``Trainer(cfg)`` returns one)."""

    reports_bound = True

    @property
    def seq2seq(self) -> bool:
        return bool(self.cfg.continuous.get("seq2seq", False))

    def _build_data(self) -> None:
        if not self.seq2seq:
            return super()._build_data()
        cfg, tok = self.cfg, self.tokenizer
        tail = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        train = build_sft_data(cfg.train_files, tok, cfg.block_size, tail)
        val = build_sft_data(cfg.validation_files, tok, cfg.block_size, tail)
        self.train_batches = SFTBatches(train, cfg.batch_size, cfg.seed)
        self.val_batches = SFTBatches(val, min(cfg.batch_size, len(val.ids)), seed=1234)

    def _build_model(self) -> torch.nn.Module:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)  # the initialisation is part of the run's determinism
        model = ContinuousDLM(backbone_config(cfg.architecture), model_config(cfg.continuous, self.tokenizer),
                              self.tokenizer)
        if model.max_length is not None and cfg.block_size > model.max_length:
            raise ConfigError(f"block_size {cfg.block_size} exceeds the model's context of {model.max_length}")
        return model

    def _batch(self, batches: Any, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(x [B, L], src [B, L] or None) of a batch index."""
        if self.seq2seq:
            x, src, _ = batches.global_batch(index)
            return x, src
        return batches.global_batch(index), None

    def _micro_batches(self, step: int) -> list[tuple[Any, ...]]:
        """This process's micro-batches: (x, draws, scale); ``scale`` turns a micro-batch's loss sum into
        its share of the global batch's mean."""
        cfg, acc = self.cfg, self.accelerator
        model = acc.unwrap_model(self.wrapped)
        x, src = self._batch(self.train_batches, step)
        draws = draw_continuous_noise(x, model.config, antithetic=cfg.antithetic,
                                      generator=_step_generator(cfg.seed, step, 0), src=src)
        scale = acc.num_processes * cfg.grad_accum / max(1, int((~draws.clean).sum()))
        start = acc.process_index * self.micro_batch * cfg.grad_accum
        out = []
        for m in range(cfg.grad_accum):
            rows = slice(start + m * self.micro_batch, start + (m + 1) * self.micro_batch)
            out.append((x[rows], draws.rows(rows), scale))
        return out

    def _loss(self, model: torch.nn.Module, x: torch.Tensor, draws: Any, scale: float, **_: Any) -> torch.Tensor:
        total, _count = continuous_loss(self.accelerator.unwrap_model(self.wrapped), x, draws, forward=model)
        return total * scale

    @torch.no_grad()
    def evaluate(self) -> float:
        """The likelihood bound in nats per target token (every token after BOS; seq2seq: the target and
        its tail) on fixed validation batches and fixed draws, in float32."""
        model = self.accelerator.unwrap_model(self.wrapped)
        model.eval()
        terms = []
        n_batches = min(self.cfg.eval_batches, max(1, len(self.val_batches.blocks) // self.val_batches.batch_size))
        for i in range(n_batches):
            x, src = self._batch(self.val_batches, i)
            clean = torch.zeros_like(x, dtype=torch.bool) if src is None else src.bool()
            clean[:, 0] = True
            terms.append(nll_bound(model, x, clean, generator=_step_generator(4321, i, 0)))
        model.train()
        return bound_per_token(terms)

    def save_model(self, directory: Path) -> Path:
        """The model as a continuous DLM directory (`ContinuousDLM.save_pretrained`)."""
        acc = self.accelerator
        state = acc.get_state_dict(self.wrapped)
        if acc.is_main_process:
            acc.unwrap_model(self.wrapped).save_pretrained(directory, state_dict=state)
        acc.wait_for_everyone()
        return directory

