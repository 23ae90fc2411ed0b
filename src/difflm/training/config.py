"""`TrainConfig`: one YAML preset (configs/*.yaml) + ``key=value`` overrides -> a validated config."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import DiffusionConfig
from ..errors import ConfigError
from ..registry import OBJECTIVES


@dataclass
class TrainConfig:
    """Everything a training run needs. See configs/*.yaml for annotated presets.

    objective: "ar" (next token), "diffusion" (a DLM from scratch), "block" (a block diffusion
        model, BD3-LM: from scratch, or adapted from the AR checkpoint ``init`` keeping its shift;
        needs ``diffusion.block_size``) or "adapt" (continual
        pretraining of the AR checkpoint ``init`` into a DLM with annealing and shift), or "sft"
        (supervised fine-tuning on prompt/response data, `difflm.training.objectives.sft`), or "continuous" (an
        embedding-space DLM from scratch, `difflm.continuous`; docs/continuous.md).
    init: AR checkpoint directory (adapt; optional for ar) - or None to build ``architecture``.
    architecture: transformers config fields of a model built from scratch (model_type key).
    tokenizer: tokenizer directory ("bundled" = difflm's bundled tokenizer).
    train_files / validation_files: local .txt, .jsonl(.gz) ("text" field) or .parquet files;
        "bundled" = the bundled corpus split.
    source_weights: per "source" field of JSONL documents, how many times each document is used
        per epoch (0.5 = half of them, chosen deterministically).
    seq_length: tokens per training sequence (each starts with BOS): a packed corpus row, or an SFT
        example padded to it. (Not the diffusion block, which is ``diffusion.block_size``; the name
        ``block_size`` for this, used before, is still read, with a warning.)
    batch_size: GLOBAL sequences per optimizer step (split over processes and accumulation).
    grad_accum: micro-batches per step and process.
    max_steps: optimizer steps of the whole run; warmup_steps then cosine decay to min_lr.
    diffusion: `DiffusionConfig` fields of the DLM being trained (diffusion, adapt): shift,
        anneal_steps, schedule, loss_normalization, eps, attention, ... The mask, pad, BOS and
        EOS ids come from the tokenizer unless given; attention defaults to "annealed" for adapt
        and "bidirectional" for diffusion. Validated by `DiffusionConfig` itself.
    antithetic: low-discrepancy noise levels across the batch (MDLM).
    token_reweighting: None, or ``{alpha, gamma}`` (defaults 1.0, 1.0) - diffusion objectives: train on
        the focal loss alpha * (1 - p) ** gamma * CE of every target (p its probability; MGDM, Ye et
        al. 2025, uses alpha 0.25, which only scales the loss), so hard tokens weigh more than the
        template around them. Validation stays the plain ELBO.
    ar_loss_weight: diffusion objectives on a block diffusion model with ``diffusion.block_context:
        causal`` only: add this weight times the next-token loss of the clean copy of the
        two-copy forward (NBDiff's AR guidance, Tian et al. 2025: the clean copy runs causally, so
        the AR loss costs no second forward and keeps what the AR init knew). 0 = off; validation
        stays the plain ELBO.
    generation: a DLM's recommended decoding settings, saved with the trained model (the ``difflm``
        section of its generation_config.json) and used by `difflm generate`, `eval`, `serve` and
        `DiffusionLM.generate` unless overridden: `difflm.sampling.SamplerOptions` fields
        (``strategy``, ``threshold``, ``cache``, ``stop_at_eos``, ...) and ``max_new_tokens``. None:
        none (a model fine-tuned from an init keeps the init's).
    noised_blocks: objective sft with a block diffusion model only: noise and score just this many
        blocks of each row per step, drawn uniformly among those with targets up to the first block
        after the answer's end (the others are the clean context only), so the two-copy forward holds
        L + noised_blocks * diffusion.block_size positions instead of 2L - more steps for the same
        compute; the AR guidance still covers the whole row. null = every block.
    complementary_masks: also train on the complement of every noise mask (Fast-dLLM v2), so every
        maskable token is a target in one of the two rows; the complement of a mask drawn at level
        t is a mask drawn at 1 - t, so the loss stays an unbiased ELBO estimate. Doubles the rows.
    eval_every / eval_batches: validation every N steps on a fixed set of validation batches.
    save_every / keep_checkpoints: atomic checkpoints for --resume.
    mixed_precision: "bf16" or "no"; bf16 autocast trains ~2x faster on AVX-512-bf16 CPUs.
    sft: objective sft only - ``loss``: "diffusion" (a DLM: the prompt never noised, the response and
        its EOS/pad tail noised, full attention) or "ar" (next-token loss on the response, the AR
        baseline); ``pad_with``: "eos" (LLaDA) or "pad" (DiffuLLaMA), the tail after the response.
        train_files / validation_files are then SFT JSONL files (chat messages, prompt/response, or
        a task's records: `difflm.tasks.formatting`), each example padded to ``seq_length``.
    lora: objective sft only; None = full fine-tuning. ``r``, ``alpha``, ``dropout``,
        ``target_modules`` (a list of module names, or "all-linear"), ``merge`` (also write the
        adapter merged into the weights): LoRA adapters through peft on the ``init`` checkpoint.
    continuous: objective continuous only - `difflm.continuous.ContinuousConfig` fields (embed_dim,
        schedule, self_condition, cond_prob, ...) and ``seq2seq`` (prompt/response JSONL data, DiffuSeq).
    distributed: None (what the launcher says: DDP under torchrun, or an accelerate config file),
        "ddp", or "fsdp" (FSDP2: parameters, gradients and optimizer state sharded across
        processes; sharded checkpoints). See `difflm.training.parallel` and docs/training.md.
    """

    objective: str = "ar"
    output_dir: str = "runs/default"
    init: str | None = None
    architecture: dict[str, Any] = field(default_factory=dict)
    tokenizer: str = "bundled"
    train_files: list[str] = field(default_factory=lambda: ["bundled"])
    validation_files: list[str] = field(default_factory=lambda: ["bundled"])
    source_weights: dict[str, float] = field(default_factory=dict)
    seq_length: int = 256
    batch_size: int = 16
    grad_accum: int = 1
    max_steps: int = 1000
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    diffusion: dict[str, Any] = field(default_factory=dict)
    antithetic: bool = True
    complementary_masks: bool = False
    token_reweighting: dict[str, float] | None = None
    ar_loss_weight: float = 0.0
    noised_blocks: int | None = None
    generation: dict[str, Any] | None = None
    sft: dict[str, Any] = field(default_factory=dict)
    lora: dict[str, Any] | None = None
    continuous: dict[str, Any] = field(default_factory=dict)
    eval_every: int = 200
    eval_batches: int = 8
    save_every: int = 200
    keep_checkpoints: int = 2
    log_every: int = 10
    log_with: list[str] = field(default_factory=lambda: ["jsonl", "csv"])
    mixed_precision: str = "bf16"
    distributed: str | None = None
    seed: int = 0
    threads: int | None = None

    def __post_init__(self) -> None:
        OBJECTIVES.entry(self.objective)  # an unknown name lists the registered ones
        if self.generation is not None and not isinstance(self.generation, dict):
            raise ConfigError(f"generation must be a mapping of SamplerOptions fields (and max_new_tokens), "
                              f"got {self.generation!r}")
        if not self.init and not self.architecture:
            raise ConfigError("give either init (a checkpoint) or architecture (a model to build from scratch)")
        for name in ("seq_length", "batch_size", "grad_accum", "max_steps", "eval_every", "eval_batches",
                     "save_every", "keep_checkpoints", "log_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps must be an integer >= 0, got {self.warmup_steps!r}")
        for name in ("lr", "min_lr", "weight_decay", "grad_clip"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"{name} must be a number >= 0, got {value!r}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr!r}")
        if (not isinstance(self.betas, (list, tuple)) or len(self.betas) != 2
                or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in self.betas)):
            raise ConfigError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1):
            raise ConfigError(f"threads must be an integer >= 1 or null, got {self.threads!r}")
        for name in ("antithetic", "complementary_masks"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        self._check_sections()
        self.objective_class.check_config(self)  # its own section(s), validated and completed
        self._check_token_reweighting()  # after the objective's check: is_diffusion may read its section
        self._check_ar_loss_weight()
        self.diffusion_config(mask_token_id=0)  # validates the diffusion fields now, before any work
        if self.mixed_precision is False:  # YAML reads a bare `no` as false
            self.mixed_precision = "no"
        if self.mixed_precision not in ("bf16", "no"):
            raise ConfigError(f"mixed_precision must be 'bf16' or 'no', got {self.mixed_precision!r}")
        if self.distributed is not None and self.distributed not in ("ddp", "fsdp"):
            raise ConfigError(f"distributed must be ddp, fsdp or null, got {self.distributed!r}")
        unknown = sorted(set(self.log_with) - {"jsonl", "csv", "tensorboard"})
        if unknown:
            raise ConfigError(f"unknown log_with entries {unknown}; choose from jsonl, csv, tensorboard")
        if not self.train_files or not self.validation_files:
            raise ConfigError("train_files and validation_files must each name at least one file")
        self.betas = tuple(self.betas)

    @property
    def objective_class(self) -> Any:
        """The `difflm.training.objectives.Objective` subclass of ``objective`` (`difflm.registry.OBJECTIVES`)."""
        return OBJECTIVES.get(self.objective)

    def _check_sections(self) -> None:
        """Refuse settings of a section another objective owns (its registry entry's ``sections``):
        ``sft: {loss: ar}`` under objective diffusion is a mistake, not something to ignore."""
        defaults = {f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
                    for f in dataclasses.fields(self)}
        for name in OBJECTIVES:
            if name == self.objective:
                continue
            for section in OBJECTIVES.entry(name).meta.get("sections", ()):
                if getattr(self, section) != defaults[section]:
                    raise ConfigError(f"{section} settings need objective {name}")

    def _check_token_reweighting(self) -> None:
        """``token_reweighting``: a mapping of alpha > 0 and gamma >= 0 (defaults filled in), for a diffusion loss."""
        if self.token_reweighting is None:
            return
        if not isinstance(self.token_reweighting, dict):
            raise ConfigError(f"token_reweighting must be a mapping (alpha, gamma) or null, got {self.token_reweighting!r}")
        unknown = sorted(set(self.token_reweighting) - {"alpha", "gamma"})
        if unknown:
            raise ConfigError(f"unknown token_reweighting setting(s) {', '.join(unknown)}; valid: alpha, gamma")
        self.token_reweighting = {"alpha": 1.0, "gamma": 1.0, **self.token_reweighting}
        for key, positive in (("alpha", True), ("gamma", False)):
            value = self.token_reweighting[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (positive and value == 0):
                raise ConfigError(f"token_reweighting.{key} must be a number {'> 0' if positive else '>= 0'}, got {value!r}")
        self._require_masked_diffusion("token_reweighting weighs the masked-diffusion loss")

    def _check_ar_loss_weight(self) -> None:
        """``ar_loss_weight``: a number >= 0, non-zero only with a diffusion loss (the model's block context
        is checked when the model exists, `difflm.losses.check_ar_loss_weight`)."""
        w = self.ar_loss_weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w < float("inf"):
            raise ConfigError(f"ar_loss_weight must be a number >= 0, got {w!r}")
        if w:
            self._require_masked_diffusion("ar_loss_weight adds an AR loss to the block diffusion loss")

    def _require_masked_diffusion(self, what: str) -> None:
        """`ConfigError` ("WHAT: use a diffusion objective ...") unless the run trains a masked-diffusion loss."""
        if not self.is_diffusion:
            raise ConfigError(f"{what}: use a diffusion objective (diffusion, adapt, block, or sft with sft.loss diffusion)")

    @property
    def reweighting(self) -> tuple[float, float] | None:
        """(alpha, gamma) of ``token_reweighting``, or None."""
        tr = self.token_reweighting
        return None if tr is None else (float(tr["alpha"]), float(tr["gamma"]))

    def loss_options(self, training: bool) -> dict[str, Any]:
        """The `masked_diffusion_loss` options of a training step (the focal loss, the AR guidance), or
        none for validation, which is always the plain ELBO."""
        if not training:
            return {}
        return {"token_reweighting": self.reweighting, "ar_weight": float(self.ar_loss_weight)}

    def diffusion_config(self, mask_token_id: int, **special_ids: int | None) -> DiffusionConfig:
        """The `DiffusionConfig` of the model to train: ``diffusion`` over the objective's defaults
        (`Objective.diffusion_defaults`: attention annealed for adapt, block-causal for block diffusion,
        else bidirectional) and the tokenizer's ``special_ids`` (pad/bos/eos_token_id)."""
        if not isinstance(self.diffusion, dict):
            raise ConfigError(f"diffusion must be a mapping of DiffusionConfig fields, got {self.diffusion!r}")
        defaults = {**self.objective_class.diffusion_defaults(self),
                    **{k: v for k, v in special_ids.items() if v is not None}}
        try:
            return DiffusionConfig.from_dict({**defaults, "mask_token_id": mask_token_id, **self.diffusion})
        except ConfigError as exc:
            raise ConfigError(f"diffusion: {exc}") from None

    @property
    def is_diffusion(self) -> bool:
        """Whether the run trains a masked-diffusion loss (`Objective.trains_masked_diffusion`)."""
        return self.objective_class.trains_masked_diffusion(self)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["betas"] = list(self.betas)
        return data


def _parse_value(text: str) -> Any:
    """A command-line value, read as YAML: 3 -> int, 1e-4 -> float, [a, b] -> list, true -> bool."""
    value = yaml.safe_load(text)
    if isinstance(value, str):  # YAML reads 1e-4 as a string
        try:
            return float(value)
        except ValueError:
            return value
    return value


def load_train_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML preset and apply ``key=value`` overrides (``architecture.hidden_size=128`` reaches
    into dicts). Unknown keys are errors (they are usually typos)."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} not found")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p} must hold a mapping of config keys")
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        target = data
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ConfigError(f"override {key!r}: {part} is not a mapping")
        target[parts[-1]] = _parse_value(text)
    if "block_size" in data:  # this key's name before seq_length (a name diffusion.block_size now owns alone)
        if "seq_length" in data:
            raise ConfigError("give seq_length only: block_size is its old name (diffusion.block_size is the diffusion block)")
        warnings.warn("the config key block_size is now seq_length (tokens per training sequence); "
                      "diffusion.block_size stays the diffusion block - rename it", FutureWarning, stacklevel=2)
        data["seq_length"] = data.pop("block_size")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    nested = [k for k in unknown if k in {f.name for f in dataclasses.fields(DiffusionConfig)}]
    if nested:
        raise ConfigError(f"{nested[0]} is a diffusion setting: write it under `diffusion:` in the YAML, "
                          f"or as diffusion.{nested[0]}=... on the command line")
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(unknown)}; valid keys: {', '.join(sorted(known))}")
    return TrainConfig(**data)
