"""``objective: sft``: supervised fine-tuning on prompt/response rows, a DLM or an AR model, optional LoRA.

Data (`difflm.training.sft_data`): every example one row of ``seq_length`` tokens,
``[BOS] prompt | response EOS | tail (EOS, or PAD with sft.pad_with: pad)``.

``sft.loss: diffusion`` (DiffuLLaMA / LLaDA SFT): the prompt positions are ``src`` - never noised,
never scored; every other position (response, its EOS and the tail) is noised and scored as an
ordinary token, so the model learns where an answer ends; full bidirectional attention (no
annealing). The loss is `difflm.losses.masked_diffusion_loss` with ``src_mask`` under the step's
noise. With ``diffusion.block_size`` the model is a block diffusion model (BD3-LM, Fast-dLLM v2):
every block of the row noised at its own level and denoised seeing only the clean blocks before it;
``noised_blocks`` noises only that many blocks per row (`difflm.losses.block.draw_blocks`).
``sft.loss: ar``: next-token cross-entropy on the response and its EOS only (the tail is no
target), the AR baseline trained by the same command.

Normalisation: the loss of a step is the sum over the *global* batch divided by the global batch's
denominator (its maskable positions, or masked tokens with ``loss_normalization: masked``; its
response tokens for AR), so any split into processes and micro-batches gives the same loss.

``lora:`` trains LoRA adapters (peft) on the ``init`` checkpoint and saves an adapter directory
(`difflm.training.lora`), with ``lora.merge`` the merged model beside it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ...bundled import MODELS
from ...errors import ConfigError, InputError
from ...formats import survey, write_generation_defaults
from ...io import resolve_model
from ...losses import draw_blocks, draw_noise, in_blocks, maskable_positions, masked_diffusion_loss
from ...losses.ar import ar_response_loss, response_targets
from ...model import DiffusionLM
from ...tasks.model_task import MODEL_TASKS, write_model_task
from ..lora import attach_lora, merge_adapter, save_adapter
from ..models import build_model
from ..seeding import BLOCKS, NOISE, VALIDATION_SEED, step_generator
from ..sft_data import SFTBatches, build_sft_data, sft_diffusion_settings, sft_tokenizer
from . import Batch, Objective, check_diffusion_model

__all__ = ["LoraSettings", "SFTBatch", "SFTObjective", "SFTSettings"]


@dataclass(frozen=True)
class SFTSettings:
    """``sft:`` - loss: "diffusion" (a DLM) or "ar" (the response's next-token loss); pad_with: "eos"
    (LLaDA) or "pad" (DiffuLLaMA), the tail after the response."""

    loss: str = "diffusion"
    pad_with: str = "eos"


@dataclass(frozen=True)
class LoraSettings:
    """``lora:`` - LoRA adapters through peft: rank r, alpha, dropout, target_modules (a list of module
    names or "all-linear"), merge (also write the adapter merged into the weights)."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: Any = "all-linear"
    merge: bool = False


CHOICES = {"loss": ("diffusion", "ar"), "pad_with": ("eos", "pad")}


@dataclass
class SFTBatch(Batch):
    """SFT rows with their draws. x: LongTensor [B, L]; noise: BoolTensor [B, L] (None for AR); t:
    FloatTensor [B] or [B, L] (block diffusion; None for AR); src: BoolTensor [B, L], the prompt;
    lengths: LongTensor [B], where each row's tail starts; scale: turns a micro-batch's loss sum into its
    share of the global batch's mean (None: the batch's own mean, as validation takes it); blocks:
    LongTensor [B, K], the only blocks noised (``noised_blocks``), else None."""

    x: torch.Tensor
    noise: torch.Tensor | None
    t: torch.Tensor | None
    src: torch.Tensor
    lengths: torch.Tensor
    scale: float | None = None
    blocks: torch.Tensor | None = None


class SFTObjective(Objective):
    """Supervised fine-tuning (module doc): SFT rows, the prompt as ``src``, the diffusion or AR
    response loss, LoRA adapters."""

    name = "sft"

    # -- configuration -----------------------------------------------------------------------------------
    @classmethod
    def check_config(cls, cfg: Any) -> None:
        """Validate and complete ``sft``, ``noised_blocks`` and ``lora``."""
        fields = [f.name for f in dataclasses.fields(SFTSettings)]
        if not isinstance(cfg.sft, dict):
            raise ConfigError(f"sft must be a mapping ({', '.join(fields)}), got {cfg.sft!r}")
        unknown = sorted(set(cfg.sft) - set(fields))
        if unknown:
            raise ConfigError(f"unknown sft setting(s) {', '.join(unknown)}; valid: {', '.join(fields)}")
        cfg.sft = {**dataclasses.asdict(SFTSettings()), **cfg.sft}
        for key, choices in CHOICES.items():
            if cfg.sft[key] not in choices:
                raise ConfigError(f"sft.{key} must be one of {', '.join(choices)}, got {cfg.sft[key]!r}")
        if "bundled" in cfg.train_files or "bundled" in cfg.validation_files:
            raise ConfigError("objective sft needs train_files and validation_files: SFT JSONL files (chat messages, "
                              "prompt/response or task records, see docs/training.md), not the bundled corpus")
        if cfg.complementary_masks:
            raise ConfigError("complementary_masks is not supported with objective sft")
        nb = cfg.noised_blocks
        if nb is not None and (isinstance(nb, bool) or not isinstance(nb, int) or nb < 1):
            raise ConfigError(f"noised_blocks must be an integer >= 1 or null, got {nb!r}")
        if nb is not None and cfg.sft["loss"] != "diffusion":
            raise ConfigError("noised_blocks needs sft.loss diffusion (a block diffusion model)")
        if isinstance(cfg.diffusion, dict):
            # full attention, or block diffusion SFT with diffusion.block_size (its attention implied)
            expected = "block_causal" if cfg.diffusion.get("block_size") is not None else "bidirectional"
            if cfg.diffusion.get("attention", expected) != expected:
                which = ("block-causal attention (block diffusion, diffusion.block_size)" if expected == "block_causal"
                         else "full (bidirectional) attention, or block-causal with diffusion.block_size")
                raise ConfigError(f"objective sft trains with {which}: drop diffusion.attention")
            if cfg.diffusion and cfg.sft["loss"] == "ar":
                raise ConfigError("sft.loss ar trains an AR model: drop the diffusion settings")
        if cfg.lora is not None:
            cfg.lora = cls.check_lora(cfg.lora, cfg)

    @staticmethod
    def check_lora(lora: Any, cfg: Any) -> dict[str, Any]:
        """``lora`` validated and completed with the defaults of `LoraSettings`."""
        fields = [f.name for f in dataclasses.fields(LoraSettings)]
        if not isinstance(lora, dict):
            raise ConfigError(f"lora must be a mapping ({', '.join(fields)}) or null, got {lora!r}")
        unknown = sorted(set(lora) - set(fields))
        if unknown:
            raise ConfigError(f"unknown lora setting(s) {', '.join(unknown)}; valid: {', '.join(fields)}")
        lora = {**dataclasses.asdict(LoraSettings()), **lora}
        for key in ("r", "alpha"):
            value = lora[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"lora.{key} must be an integer >= 1, got {value!r}")
        dropout = lora["dropout"]
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ConfigError(f"lora.dropout must be a number in [0, 1), got {dropout!r}")
        modules = lora["target_modules"]
        if not (modules == "all-linear" or (isinstance(modules, list) and modules
                                            and all(isinstance(m, str) and m for m in modules))):
            raise ConfigError(f"lora.target_modules must be a list of module names or all-linear, got {modules!r}")
        if not isinstance(lora["merge"], bool):
            raise ConfigError(f"lora.merge must be true or false, got {lora['merge']!r}")
        if not cfg.init:
            raise ConfigError("lora needs init: the checkpoint whose weights the adapters adapt")
        if cfg.distributed == "fsdp":
            raise ConfigError("lora with distributed=fsdp is not supported; use DDP (the adapters are small)")
        return lora

    @classmethod
    def trains_masked_diffusion(cls, cfg: Any) -> bool:
        return cfg.sft["loss"] == "diffusion"

    @classmethod
    def diffusion_defaults(cls, cfg: Any) -> dict[str, Any]:
        block = isinstance(cfg.diffusion, dict) and cfg.diffusion.get("block_size") is not None
        return {"attention": "block_causal"} if block else {}  # block diffusion SFT

    # -- one run -----------------------------------------------------------------------------------------
    def __init__(self, cfg: Any, accelerator: Any) -> None:
        super().__init__(cfg, accelerator)
        self.settings = SFTSettings(**cfg.sft)
        self.lora = None if cfg.lora is None else LoraSettings(**cfg.lora)
        self.lora_base: str | None = None  # what a saved adapter names as its base
        self.task: str | None = None  # the one task the data hold, if any (saved models say so)

    def load_tokenizer(self) -> Any:
        self.tokenizer = sft_tokenizer(self.cfg)
        return self.tokenizer

    def build_data(self, tokenizer: Any) -> tuple[SFTBatches, SFTBatches]:
        cfg = self.cfg
        tail = tokenizer.eos_token_id if self.settings.pad_with == "eos" else tokenizer.pad_token_id
        if tail is None:
            raise ConfigError(f"sft.pad_with {self.settings.pad_with}: the tokenizer has no such token")
        train = build_sft_data(cfg.train_files, tokenizer, cfg.seq_length, tail)
        val = build_sft_data(cfg.validation_files, tokenizer, cfg.seq_length, tail)
        # trained on one task's records only: saved models say so (task.json), for `difflm generate`
        self.task = next(iter(train.layouts)) if len(train.layouts) == 1 and train.layouts <= set(MODEL_TASKS) else None
        self.train_batches = SFTBatches(train, cfg.batch_size, cfg.seed)
        self.val_batches = SFTBatches(val, min(cfg.batch_size, len(val.ids)), seed=1234)
        return self.train_batches, self.val_batches

    def build_model(self, tokenizer: Any) -> torch.nn.Module:
        """From ``init`` - an AR checkpoint (adapted into a DLM for sft.loss diffusion) or a DLM (a block
        diffusion one stays one) - or from ``architecture``; LoRA adapters attached when asked."""
        cfg, ar = self.cfg, self.settings.loss == "ar"
        init, from_ar = None, False
        if cfg.init:
            init = resolve_model(cfg.init)
            if not (init / "config.json").is_file():
                raise InputError(f"init {init} is not a model directory (no config.json)")
            found = survey(init)  # what the init is, from its configs: one answer (difflm.formats)
            is_dlm = not found.autoregressive
            if ar and is_dlm:
                raise ConfigError(f"sft.loss ar fine-tunes an AR model; init {cfg.init} is a DLM")
            if self.lora is not None and not ar and not is_dlm and tokenizer.mask_token_id is None:
                raise ConfigError("lora on an AR checkpoint whose tokenizer has no mask token: the new [MASK] row "
                                  "would stay untrained; adapt it first (objective adapt), then fine-tune with LoRA")
            from_ar = not ar and not is_dlm
            self.lora_base = cfg.init if cfg.init in MODELS else str(init.resolve())
        block = cfg.diffusion.get("block_size")
        if block is None and not ar and not from_ar and init is not None:
            block = found.config.block_size  # a block diffusion init fine-tuned further stays one
        diffusion = None if ar else sft_diffusion_settings(cfg.diffusion, block)
        model = build_model(tokenizer, seed=cfg.seed, init=init, architecture=cfg.architecture, diffusion=diffusion,
                            from_ar=from_ar)
        backbone = model.model if isinstance(model, DiffusionLM) else model
        if len(tokenizer) > backbone.get_input_embeddings().weight.shape[0]:
            raise ConfigError(f"the tokenizer ({len(tokenizer)} tokens) is larger than the model's vocabulary")
        if cfg.noised_blocks is not None and not (isinstance(model, DiffusionLM) and model.config.block_size):
            raise ConfigError("noised_blocks needs a block diffusion model: set diffusion.block_size")
        if isinstance(model, DiffusionLM):
            model.tokenizer = tokenizer  # the one the data were tokenized with (its chat template included)
        else:
            context = getattr(model.config, "max_position_embeddings", None)
            if context is not None and cfg.seq_length > context:
                raise ConfigError(f"seq_length {cfg.seq_length} exceeds the model's context of {context}")
        if cfg.lora is not None:
            if isinstance(model, DiffusionLM):
                model.model = attach_lora(model.model, cfg.lora)
            else:
                model = attach_lora(model, cfg.lora)
        check_diffusion_model(model, cfg)
        self.model = model
        return model

    # -- one step ----------------------------------------------------------------------------------------
    def global_batch(self, step: int) -> SFTBatch:
        """The step's rows with their noise (and with ``noised_blocks`` the blocks it covers), drawn for
        the whole global batch, and the ``scale`` of the global batch's denominator (module doc)."""
        cfg, acc = self.cfg, self.accelerator
        x, src, lengths = self.train_batches.global_batch(step)
        noise = t = blocks = None
        if isinstance(self.model, DiffusionLM):
            dlm = self.model
            if cfg.noised_blocks is not None:
                blocks = draw_blocks(dlm, x, cfg.noised_blocks, src_mask=src, ends=lengths,
                                     generator=step_generator(cfg.seed, step, BLOCKS))
            noise, t = draw_noise(dlm, x, src_mask=src, antithetic=cfg.antithetic,
                                  generator=step_generator(cfg.seed, step, NOISE), blocks=blocks)
            if dlm.config.loss_normalization == "masked":
                denominator = int((noise & dlm.predictable_mask(x)).sum())
            else:
                maskable = maskable_positions(dlm, x, src_mask=src)
                if blocks is not None:
                    maskable = maskable & in_blocks(dlm, x, blocks)
                denominator = int(maskable.sum())
        else:
            denominator = int(response_targets(src, lengths).sum())
        scale = acc.num_processes * cfg.grad_accum / max(1, denominator)
        return SFTBatch(x, noise, t, src, lengths, scale, blocks)

    def loss(self, forward: torch.nn.Module, batch: SFTBatch, *, step: int,
             generator: torch.Generator | None = None) -> torch.Tensor:
        return self.batch_loss(forward, batch, step=step, generator=generator)

    def batch_loss(self, forward: torch.nn.Module, batch: SFTBatch, *, step: int | None = None,
                   generator: torch.Generator | None = None, normalization: str | None = None) -> torch.Tensor:
        """The batch's loss sum times its ``scale`` (its share of the global mean), or its own mean when
        ``scale`` is None; the training options (focal loss, AR guidance) only when ``step`` is given."""
        device = self.accelerator.device
        x, src = batch.x.to(device), batch.src.to(device)
        if not isinstance(self.model, DiffusionLM):
            total, count = ar_response_loss(forward, x, src, batch.lengths)
        else:
            out = masked_diffusion_loss(self.model, x, t=batch.t, noise_mask=batch.noise, src_mask=src, step=step,
                                        generator=generator, normalization=normalization, forward=forward,
                                        blocks=batch.blocks, **self.cfg.loss_options(step is not None))
            norm = normalization or self.model.config.loss_normalization
            count = out.num_masked if norm == "masked" else out.num_targets
            total = out.loss * max(1, count)
        return total / max(1, count) if batch.scale is None else total * batch.scale

    # -- validation --------------------------------------------------------------------------------------
    def validation_batch(self, index: int) -> SFTBatch:
        x, src, lengths = self.val_batches.global_batch(index)
        noise = t = None
        if isinstance(self.model, DiffusionLM):
            noise, t = draw_noise(self.model, x, src_mask=src, antithetic=True,
                                  generator=step_generator(VALIDATION_SEED, index, NOISE))
        return SFTBatch(x, noise, t, src, lengths)

    def validation_loss(self, model: torch.nn.Module, batch: SFTBatch) -> float:
        """Nats per target token: the diffusion ELBO bound over the response and its tail (fixed noise,
        "tokens" normalisation), or the AR NLL of the response and its EOS."""
        return self.batch_loss(model, batch, normalization="tokens").item()

    # -- the end -----------------------------------------------------------------------------------------
    def save_model(self, wrapped: torch.nn.Module, directory: Path) -> Path:
        """Full fine-tuning: the model as the other objectives save it. LoRA: an adapter directory
        (`difflm.training.lora`), and with ``lora.merge`` the merged model beside it (model-merged)."""
        acc = self.accelerator
        if self.lora is None:
            super().save_model(wrapped, directory)
            if acc.is_main_process and self.task:
                write_model_task(directory, self.task)
            return directory
        if acc.is_main_process:
            model = acc.unwrap_model(wrapped)
            is_dlm = isinstance(model, DiffusionLM)
            save_adapter(model.model if is_dlm else model, directory, base=self.lora_base, loss=self.settings.loss,
                         tokenizer=self.tokenizer, diffusion=model.config.to_dict() if is_dlm else None,
                         settings=self.cfg.lora)
            if is_dlm and model.generation_defaults is not None:  # the adapter's own decoding settings
                write_generation_defaults(directory, model.generation_defaults)
            if self.task:
                write_model_task(directory, self.task)
            if self.lora.merge:
                merged = Path(directory).parent / "model-merged"
                merge_adapter(directory, merged)
                if self.task:
                    write_model_task(merged, self.task)
        acc.wait_for_everyone()
        return directory
