"""One training loop for the objectives - ``ar`` (next token), ``diffusion`` (a DLM from scratch),
``adapt`` (an AR checkpoint continued as a DLM with attention annealing and shift), ``block`` and
``sft`` (supervised fine-tuning, `difflm.training.sft`) - on top of accelerate: device placement,
bf16 autocast, DDP under torchrun, gradient accumulation.

Exact resumption: the batch and the noise of step k are functions of (seed, k) alone, and the
model/optimizer/scheduler state is checkpointed, so a resumed run retraces an uninterrupted one.
Multi-process: every process draws the noise of the whole global batch and keeps its own rows, so
two processes compute the same loss as one process with the same global batch.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup

from ..bundled import TOKENIZER_DIR
from ..atomic import atomic_directory
from ..errors import ConfigError, InputError
from ..losses import ar_loss, check_ar_loss_weight, draw_noise, maskable_positions, masked_diffusion_loss
from ..model import DiffusionLM
from ..rng import seeded_generator
from .checkpoint import latest_checkpoint, load_trainer_state, save_checkpoint
from .config import TrainConfig
from .data import BlockBatches, pack_blocks, resolve_files, tokenize_files
from .metrics import MetricsLogger, TrainProgress
from .parallel import describe, make_accelerator


def load_tokenizer_for(cfg: TrainConfig) -> Any:
    path = TOKENIZER_DIR if cfg.tokenizer == "bundled" else Path(cfg.tokenizer)
    if not path.is_dir():
        raise InputError(f"tokenizer directory {path} not found")
    return AutoTokenizer.from_pretrained(path)


def build_model(cfg: TrainConfig, tokenizer: Any) -> torch.nn.Module:
    """The model to train: a transformers causal LM (ar) or a `DiffusionLM` (diffusion, adapt)."""
    torch.manual_seed(cfg.seed)  # from-scratch initialisation is part of the run's determinism
    if cfg.init:
        init = Path(cfg.init)
        if not (init / "config.json").is_file():
            raise InputError(f"init {init} is not a model directory (no config.json)")
        if cfg.objective in ("adapt", "block"):
            # cfg.diffusion was validated by TrainConfig; special ids come from the checkpoint unless given
            attention = "annealed" if cfg.objective == "adapt" else "block_causal"
            return DiffusionLM.from_causal_lm(init, mask_token=tokenizer.mask_token_id, tokenizer=tokenizer,
                                              dtype=torch.float32, **{"attention": attention, **cfg.diffusion})
        if cfg.objective == "diffusion":
            return DiffusionLM.from_pretrained(init, dtype=torch.float32, **cfg.diffusion)
        return AutoModelForCausalLM.from_pretrained(init, dtype=torch.float32, attn_implementation="sdpa")
    arch = dict(cfg.architecture)
    model_type = arch.pop("model_type", None)
    if model_type is None:
        raise ConfigError("architecture needs a model_type (e.g. llama, gpt2, qwen2)")
    ids = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
               eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    try:
        hf_config = AutoConfig.for_model(model_type, **{**ids, **arch})
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"architecture: {exc}") from None
    hf_config._attn_implementation = "sdpa"
    backbone = AutoModelForCausalLM.from_config(hf_config, attn_implementation="sdpa")
    if cfg.objective == "ar":
        return backbone
    if tokenizer.mask_token_id is None:
        raise ConfigError("the tokenizer has no mask token; a diffusion objective needs one")
    dcfg = cfg.diffusion_config(tokenizer.mask_token_id, pad_token_id=tokenizer.pad_token_id,
                                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return DiffusionLM(backbone, dcfg, tokenizer)


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices, not norms and biases (the usual GPT recipe)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _step_generator(seed: int, step: int, stream: int) -> torch.Generator:
    """The RNG of one stream (0 = noise, 1 = annealing) of one step: a function of (seed, step)
    alone, for exact resumption. A CPU generator whose draws are moved to the training device
    (`difflm.rng`), so a run draws the same noise on any device."""
    return seeded_generator((seed * 1_000_003 + step) * 8 + stream)


class Trainer:
    """Runs `TrainConfig` to completion: ``Trainer(cfg).train()``. For ``objective: sft`` this is
    a `difflm.training.sft.SFTTrainer` (its data, model and loss; the loop is this one)."""

    def __new__(cls, cfg: TrainConfig, **kwargs: Any) -> "Trainer":
        if cls is Trainer and cfg.objective == "sft":
            from .sft import SFTTrainer

            cls = SFTTrainer
        elif cls is Trainer and cfg.objective == "continuous":
            from ..continuous.trainer import ContinuousTrainer

            cls = ContinuousTrainer
        return super().__new__(cls)

    def __init__(self, cfg: TrainConfig, *, resume: bool = False, show_progress: bool = True) -> None:
        self.cfg, self.resume, self.show_progress = cfg, resume, show_progress
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        cpu = not torch.cuda.is_available()
        precision = cfg.mixed_precision
        if precision == "bf16" and cpu and (not _cpu_supports_bf16() or cfg.distributed == "fsdp"):
            precision = "no"  # emulated bf16 is ~10x slower; FSDP's mixed-precision policy is for GPUs
        self.accelerator = make_accelerator(cfg.distributed, precision)
        acc = self.accelerator
        per_process, rest = divmod(cfg.batch_size, acc.num_processes * cfg.grad_accum)
        if rest or per_process == 0:
            raise ConfigError(
                f"batch_size {cfg.batch_size} must be a multiple of processes x grad_accum "
                f"({acc.num_processes} x {cfg.grad_accum})"
            )
        self.micro_batch = per_process
        self.tokenizer = load_tokenizer_for(cfg)
        self._build_data()
        self.model = self._build_model()
        self.dlm = self.model if isinstance(self.model, DiffusionLM) else None
        if self.dlm is not None and cfg.block_size > (self.dlm.max_length or cfg.block_size):
            raise ConfigError(f"block_size {cfg.block_size} exceeds the model's context of {self.dlm.max_length}")
        if self.dlm is not None:
            check_ar_loss_weight(self.dlm.config, cfg.ar_loss_weight)
        self.optimizer = torch.optim.AdamW(_param_groups(self.model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas)
        # The scheduler is stepped by hand: accelerate's wrapper would step it once per process.
        self.scheduler = get_cosine_with_min_lr_schedule_with_warmup(
            self.optimizer, cfg.warmup_steps, cfg.max_steps, min_lr=cfg.min_lr
        )
        self.wrapped, self.optimizer = acc.prepare(self.model, self.optimizer)
        acc.register_for_checkpointing(self.scheduler)
        self.step, self.tokens = 0, 0

    @property
    def reports_bound(self) -> bool:
        """Whether validation is a likelihood bound (a DLM's), not an exact NLL."""
        return self.dlm is not None

    def _build_data(self) -> None:
        """``train_batches`` / ``val_batches``: the corpus files tokenized and packed into blocks."""
        cfg, acc = self.cfg, self.accelerator
        train_files = resolve_files(cfg.train_files, "train")
        val_files = resolve_files(cfg.validation_files, "validation")
        with acc.main_process_first():  # one process tokenizes, the others read its cache
            train_stream = tokenize_files(train_files, self.tokenizer, source_weights=cfg.source_weights, seed=cfg.seed)
            val_stream = tokenize_files(val_files, self.tokenizer)
        bos = self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.tokenizer.eos_token_id
        self.train_batches = BlockBatches(pack_blocks(train_stream, cfg.block_size, bos), cfg.batch_size, cfg.seed)
        val_blocks = pack_blocks(val_stream, cfg.block_size, bos)
        self.val_batches = BlockBatches(val_blocks, min(cfg.batch_size, len(val_blocks)), seed=1234)

    def _build_model(self) -> torch.nn.Module:
        return build_model(self.cfg, self.tokenizer)

    # -- one optimizer step ----------------------------------------------------------------------
    def _micro_batches(self, step: int) -> list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]]:
        """This process's micro-batches of step ``step``: (x0, noise_mask, t) each. The noise is
        drawn for the whole global batch, so it does not depend on the number of processes."""
        cfg, acc = self.cfg, self.accelerator
        x = self.train_batches.global_batch(step)
        noise = t = None
        if self.dlm is not None:
            noise, t = draw_noise(self.dlm, x, antithetic=cfg.antithetic, generator=_step_generator(cfg.seed, step, 0))
        start = acc.process_index * self.micro_batch * cfg.grad_accum
        out = []
        for m in range(cfg.grad_accum):
            rows = slice(start + m * self.micro_batch, start + (m + 1) * self.micro_batch)
            part = (x[rows], None if noise is None else noise[rows], None if t is None else t[rows])
            out.append(self._with_complements(*part) if cfg.complementary_masks and noise is not None else part)
        return out

    def _with_complements(self, x: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each row twice: with its noise mask and with the complement among the maskable positions
        (Fast-dLLM v2), every token a target once. The complement of a level-t mask is a level-(1 - t)
        mask, so it gets the weight of 1 - t (kept >= eps)."""
        allowed = maskable_positions(self.dlm, x)
        return (torch.cat([x, x]), torch.cat([noise, allowed & ~noise]),
                torch.cat([t, (1.0 - t).clamp_min(self.dlm.config.eps)]))

    def _loss(self, model: torch.nn.Module, x: torch.Tensor, noise: torch.Tensor | None, t: torch.Tensor | None, *,
              step: int | None = None, mask_generator: torch.Generator | None = None,
              normalization: str | None = None) -> torch.Tensor:
        """AR loss, or the diffusion loss of x under the given noise, through ``model`` (the DDP
        wrapper while training, the plain module for validation)."""
        device = self.accelerator.device
        x = x.to(device)
        if self.dlm is None:
            return ar_loss(model, x)
        return masked_diffusion_loss(self.dlm, x, t=t, noise_mask=noise, step=step, generator=mask_generator,
                                     normalization=normalization, forward=model,
                                     **self.cfg.loss_options(step is not None)).loss

    def train_step(self, step: int) -> float:
        acc, cfg = self.accelerator, self.cfg
        self.wrapped.train()
        total = 0.0
        micro = self._micro_batches(step)
        for m, batch in enumerate(micro):  # (x, noise, t), and more for sft
            # the annealing draw is shared by the whole step: same generator state per micro-batch
            mask_gen = _step_generator(cfg.seed, step, 1)
            sync = contextlib.nullcontext() if m == len(micro) - 1 else acc.no_sync(self.wrapped)
            with sync, acc.autocast():
                loss = self._loss(self.wrapped, *batch, step=step, mask_generator=mask_gen) / cfg.grad_accum
            acc.backward(loss)
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
        """Validation loss in nats/token: AR NLL, or the diffusion ELBO bound (bidirectional, fixed
        noise, "tokens" normalisation: an unbiased per-token estimate)."""
        model = self.accelerator.unwrap_model(self.wrapped)
        model.eval()
        losses = []
        n_batches = min(self.cfg.eval_batches, max(1, len(self.val_batches.blocks) // self.val_batches.batch_size))
        for i in range(n_batches):
            x = self.val_batches.global_batch(i)
            noise = t = None
            if self.dlm is not None:  # the same noise at every evaluation: curves compare like with like
                noise, t = draw_noise(self.dlm, x, antithetic=True, generator=_step_generator(4321, i, 0))
            with self.accelerator.autocast():
                losses.append(self._loss(model, x, noise, t, normalization="tokens").item())
        return sum(losses) / len(losses)

    # -- the run ---------------------------------------------------------------------------------
    def save_model(self, directory: Path) -> Path:
        """The trained model in a loadable layout (difflm for DLMs, transformers for AR). Call on
        every process: under FSDP / DeepSpeed the full state dict is gathered first."""
        acc = self.accelerator
        state = acc.get_state_dict(self.wrapped)
        if acc.is_main_process:
            model = acc.unwrap_model(self.wrapped)
            if isinstance(model, DiffusionLM):
                # annealing is over once training ends: ship the bidirectional model
                if model.config.attention == "annealed":
                    model.config = model.config.replace(attention="bidirectional")
                backbone = {k.removeprefix("model."): v for k, v in state.items()}
                model.save_pretrained(directory, state_dict=backbone)
            else:
                with atomic_directory(directory) as tmp:
                    model.save_pretrained(tmp, state_dict=state)
                    self.tokenizer.save_pretrained(tmp)
        acc.wait_for_everyone()
        return directory

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
        tokens_per_step = cfg.batch_size * cfg.block_size
        last_val = None
        if self.step == 0:
            last_val = self.evaluate()
            logger.log({"step": 0, "tokens": 0, "val_loss": last_val, "val_ppl": math.exp(min(last_val, 50))})
        progress = TrainProgress(cfg.max_steps, self.step, enabled=acc.is_main_process and self.show_progress,
                                 objective=cfg.objective if self.reports_bound else "ar")  # AR SFT reports an NLL too
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


def _cpu_supports_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
