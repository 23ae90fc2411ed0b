"""The training loop, on top of accelerate: device placement, bf16 autocast, DDP or FSDP2 under
torchrun, gradient accumulation, atomic checkpoints, exact resume, logs and a progress bar.

It names no objective. What is trained - the tokenizer, the data, the model, the micro-batches of a
step and their loss, validation, the saved model - comes from the `Objective` registered under
``cfg.objective`` in `difflm.registry.OBJECTIVES` (difflm.training.objectives).

Exact resumption: the batch and the draws of step k are functions of (seed, k) alone
(`difflm.training.seeding`), and the model/optimizer/scheduler state is checkpointed, so a resumed run
retraces an uninterrupted one. Multi-process: every process draws the whole global batch and keeps its
own rows, so two processes compute the same loss as one process with the same global batch.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup

from ..errors import ConfigError, InputError
from ..registry import OBJECTIVES
from .checkpoint import latest_checkpoint, load_trainer_state, save_checkpoint
from .config import TrainConfig
from .metrics import MetricsLogger, TrainProgress
from .models import attach_generation_defaults
from .objectives import Batch
from .parallel import backward, describe, make_accelerator, prepare_deepspeed
from .seeding import ANNEALING, step_generator


class Trainer:
    """Runs a `TrainConfig` to completion: ``Trainer(cfg).train()``."""

    def __init__(self, cfg: TrainConfig, *, resume: bool = False, show_progress: bool = True) -> None:
        self.cfg, self.resume, self.show_progress = cfg, resume, show_progress
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        cpu = not torch.cuda.is_available()
        precision = cfg.mixed_precision
        if precision == "bf16" and cpu and (not _cpu_supports_bf16() or cfg.distributed == "fsdp"):
            precision = "no"  # emulated bf16 is ~10x slower; FSDP's mixed-precision policy is for GPUs
        self.accelerator = acc = make_accelerator(cfg.distributed, precision)
        per_process, rest = divmod(cfg.batch_size, acc.num_processes * cfg.grad_accum)
        if rest or per_process == 0:
            raise ConfigError(
                f"batch_size {cfg.batch_size} must be a multiple of processes x grad_accum "
                f"({acc.num_processes} x {cfg.grad_accum})"
            )
        # this process's rows of a global batch, one slice per micro-batch
        start = acc.process_index * per_process * cfg.grad_accum
        self.rows = [slice(start + m * per_process, start + (m + 1) * per_process) for m in range(cfg.grad_accum)]

        self.objective = OBJECTIVES.get(cfg.objective)(cfg, acc)
        self.tokenizer = self.objective.load_tokenizer()
        self.train_batches, self.val_batches = self.objective.build_data(self.tokenizer)
        self.model = self.objective.build_model(self.tokenizer)
        if cfg.generation is not None:  # the decoding settings the saved model carries
            attach_generation_defaults(self.model, cfg.generation)

        self.optimizer = torch.optim.AdamW(_param_groups(self.model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas)
        # The scheduler is stepped by hand: accelerate's wrapper would step it once per process.
        self.scheduler = get_cosine_with_min_lr_schedule_with_warmup(
            self.optimizer, cfg.warmup_steps, cfg.max_steps, min_lr=cfg.min_lr
        )
        # DeepSpeed takes its batch numbers from the run, as no DataLoader passes through prepare
        prepare_deepspeed(acc, self.model, micro_batch_size=per_process, grad_accum=cfg.grad_accum,
                          grad_clip=cfg.grad_clip)
        self.wrapped, self.optimizer = acc.prepare(self.model, self.optimizer)
        acc.register_for_checkpointing(self.scheduler)
        self.step, self.tokens = 0, 0

    # -- one optimizer step ----------------------------------------------------------------------
    def micro_batches(self, step: int) -> list[Batch]:
        """This process's micro-batches of step ``step`` (the objective's typed batches)."""
        return self.objective.micro_batches(step, self.rows)

    def train_step(self, step: int) -> float:
        acc, cfg = self.accelerator, self.cfg
        self.wrapped.train()
        total = 0.0
        micro = self.micro_batches(step)
        for m, batch in enumerate(micro):
            # the annealing draw is shared by the whole step: same generator state per micro-batch
            generator = step_generator(cfg.seed, step, ANNEALING)
            sync = contextlib.nullcontext() if m == len(micro) - 1 else acc.no_sync(self.wrapped)
            with sync, acc.autocast():
                loss = self.objective.loss(self.wrapped, batch, step=step, generator=generator) / cfg.grad_accum
            backward(acc, loss, grad_accum=cfg.grad_accum, boundary=m == len(micro) - 1)
            total += loss.item()
        if cfg.grad_clip:
            acc.clip_grad_norm_(self.wrapped.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss_t = torch.tensor(total, device=acc.device)
        return acc.reduce(loss_t, reduction="mean").item()

    # -- validation ------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> float:
        """Validation loss in nats/token on a fixed set of validation batches with fixed draws (the
        objective's: an NLL, or a likelihood bound when ``objective.reports_bound``)."""
        model = self.accelerator.unwrap_model(self.wrapped)
        was_training = model.training
        model.eval()
        n_batches = min(self.cfg.eval_batches, max(1, len(self.val_batches.sequences) // self.val_batches.batch_size))
        terms = []
        for i in range(n_batches):
            batch = self.objective.validation_batch(i)
            with self.accelerator.autocast() if self.objective.validation_autocast else contextlib.nullcontext():
                terms.append(self.objective.validation_loss(model, batch))
        model.train(was_training)
        return self.objective.validation_result(terms)

    # -- the run ---------------------------------------------------------------------------------
    def save_model(self, directory: Path) -> Path:
        """The trained model in the objective's loadable layout. Call on every process: under FSDP /
        DeepSpeed the full state dict is gathered first."""
        return self.objective.save_model(self.wrapped, directory)

    def train(self) -> dict[str, Any]:
        cfg, acc = self.cfg, self.accelerator
        out = Path(cfg.output_dir)
        if self.resume:
            start, ckpt = latest_checkpoint(out)
            if start > cfg.max_steps:
                raise InputError(f"--resume: the newest checkpoint is at step {start}, past max_steps={cfg.max_steps}; "
                                 f"raise max_steps to continue")
            acc.load_state(str(ckpt))
            state = load_trainer_state(ckpt)
            self.step, self.tokens = state["step"], state["tokens"]
        elif acc.is_main_process:
            out.mkdir(parents=True, exist_ok=True)
            (out / "train_config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        logger = MetricsLogger(out, cfg.log_with, enabled=acc.is_main_process, append=self.resume,
                               resume_step=self.step if self.resume else None)
        tokens_per_step = cfg.batch_size * cfg.seq_length
        last_val = None
        if self.step == 0:
            last_val = self.evaluate()
            logger.log({"step": 0, "tokens": 0, "val_loss": last_val, "val_ppl": math.exp(min(last_val, 50))})
        progress = TrainProgress(cfg.max_steps, self.step, enabled=acc.is_main_process and self.show_progress,
                                 bound=self.objective.reports_bound)
        last_saved = self.step
        t0, tokens0 = time.perf_counter(), self.tokens
        try:
            with progress:
                while self.step < cfg.max_steps:
                    loss = self.train_step(self.step)
                    self.step += 1
                    self.tokens += tokens_per_step
                    rate = (self.tokens - tokens0) / max(1e-9, time.perf_counter() - t0)
                    record: dict[str, Any] = {"step": self.step, "tokens": self.tokens, "train_loss": loss,
                                              "lr": self.scheduler.get_last_lr()[0], "tokens_per_s": rate,
                                              "epoch": self.train_batches.epoch_of(self.step),
                                              "elapsed_s": time.perf_counter() - t0}
                    if self.step % cfg.eval_every == 0 or self.step == cfg.max_steps:
                        last_val = self.evaluate()
                        record.update(val_loss=last_val, val_ppl=math.exp(min(last_val, 50)))
                    if self.step % cfg.log_every == 0 or "val_loss" in record:
                        logger.log(record)
                    progress.update(self.step, loss, last_val, rate)
                    if self.step % cfg.save_every == 0 or self.step == cfg.max_steps:
                        save_checkpoint(acc, out, self.step, {"step": self.step, "tokens": self.tokens}, cfg.keep_checkpoints)
                        last_saved = self.step
        except KeyboardInterrupt:
            if self.step > last_saved:  # keep what was trained
                save_checkpoint(acc, out, self.step, {"step": self.step, "tokens": self.tokens}, cfg.keep_checkpoints)
            raise
        finally:
            logger.close()
        if last_val is None:  # resumed at max_steps: nothing left to train, but the run reports its validation
            last_val = self.evaluate()
        final = self.save_model(out / "model")
        return {"step": self.step, "tokens": self.tokens, "val_loss": last_val, "model_dir": str(final),
                "distributed": describe(acc)}


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices, not norms and biases (the usual GPT recipe)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _cpu_supports_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
