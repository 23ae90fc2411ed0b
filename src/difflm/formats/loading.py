"""Turning a checkpoint into a stock transformers model without ever holding two copies of it.

Every format describes *what* to load as a `LoadPlan` (a stock transformers config, a key
mapping, the diffusion conventions); this module does the loading the same way for all of them:

1. build the model on the meta device (parameters without storage, buffers real);
2. check every stored name and shape against it from the safetensors headers alone, so a wrong
   config fails in a second instead of after reading 16 GB;
3. read the shards one at a time and *assign* the tensors as the parameters. safetensors hands
   out tensors backed by a private memory map, so a weight already in the wanted dtype is never
   copied: resident memory ends near the checkpoint's size (measured in bench/load_memory.py).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from transformers import PretrainedConfig, PreTrainedModel

from .. import backbones  # noqa: F401  (registers difflm's native backbones with the Auto classes)
from ..config import DiffusionConfig
from ..errors import ConfigError, ModelLoadError
from .checkpoint import Checkpoint, iter_tensors
from .generation import SECTION, read_generation_config

KeyMap = Callable[[str], "str | None"]
DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}
# config.json fields that belong to the checkpoint's own code, never to a stock config
_FOREIGN_FIELDS = ("auto_map", "architectures", "model_type", "transformers_version", "_name_or_path")


def same_key(key: str) -> str:
    return key


@dataclass
class LoadPlan:
    """How a checkpoint becomes a `DiffusionLM`, decided from config.json and headers only.

    Attributes:
        format: the registry name of the layout ("llada", ...).
        hf_config: the stock transformers config of the backbone (no custom code, no auto_map).
        config: the diffusion conventions (mask id, shift, attention, special ids, family).
        key_map: stored weight name -> backbone parameter name (None: the tensor is not needed).
    """

    format: str
    hf_config: PretrainedConfig
    config: DiffusionConfig
    key_map: KeyMap = same_key
    notes: list[str] = field(default_factory=list)


def resolve_dtype(dtype: torch.dtype | str | None, ckpt: Checkpoint,
                  declared: torch.dtype | str | None = None) -> torch.dtype:
    """The dtype to load in: explicit, or (None / "auto") ``declared`` - the dtype a checkpoint
    difflm wrote declares in config.json - else the one the weights are stored in. (The bundled
    models store bf16 weights to stay small but declare float32: fast on any CPU, the precision they
    trained in. Published layouts load as stored: their config's dtype is often not their weights'.)"""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        if declared is not None and declared != "auto":
            return resolve_dtype(declared, ckpt)
        return ckpt.stored_dtype or torch.float32
    if isinstance(dtype, str) and dtype.lower() in DTYPES:
        return DTYPES[dtype.lower()]
    raise ConfigError(f"unknown dtype {dtype!r}; choose one of auto, float32, bfloat16, float16")


def stock_config(ckpt: Checkpoint, model_type: str | None = None, **changes: Any) -> PretrainedConfig:
    """config.json read into the stock transformers config class of ``model_type`` (default: the
    one config.json names), with the fields of custom code dropped."""
    from transformers import CONFIG_MAPPING

    model_type = model_type or ckpt.model_type
    if model_type not in CONFIG_MAPPING:
        raise ModelLoadError(
            f"{ckpt.path}: config.json has model_type {ckpt.model_type!r}, which is not a stock transformers "
            "architecture (it needs the checkpoint's own code, which difflm never runs); "
            "pass format=... if it is one of the supported layouts (`difflm inspect` lists them)"
        )
    fields = {k: v for k, v in ckpt.hf_config.items() if k not in _FOREIGN_FIELDS}
    fields.update(changes)
    try:
        return CONFIG_MAPPING[model_type].from_dict(fields)
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"{ckpt.path}: config.json does not make a valid {model_type} config: {exc}") from None


def empty_model(hf_config: PretrainedConfig, attn_implementation: str) -> PreTrainedModel:
    """The backbone with its parameters on the meta device (no memory, no random init)."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    # buffers stay real: the rotary inv_freq and similar are computed here, never stored
    with init_empty_weights(include_buffers=False):
        try:
            return AutoModelForCausalLM.from_config(hf_config, attn_implementation=attn_implementation)
        except ValueError as exc:
            raise ModelLoadError(f"transformers cannot build a causal LM from this config: {exc}") from None


def _tied_names(model: PreTrainedModel) -> set[str]:
    """Parameters that `tie_weights` fills from another one (the output head of tied models)."""
    expanded = getattr(model, "all_tied_weights_keys", None)  # transformers 5: every tied name, patterns expanded
    if expanded:  # DiffusionGemma ties its encoder's layers to its decoder's by regex patterns
        return set(expanded)
    if not getattr(model.config.get_text_config(), "tie_word_embeddings", False):
        return set()
    tied = getattr(model, "_tied_weights_keys", None) or {}
    return set(tied)


def plan_key_mapping(plan: LoadPlan, ckpt: Checkpoint, model: PreTrainedModel) -> dict[str, str]:
    """Stored name -> parameter name for every stored tensor the model needs, after checking
    names and shapes against the (meta) model. Raises `ModelLoadError` on any mismatch."""
    params = {name: tuple(p.shape) for name, p in model.named_parameters(remove_duplicate=False)}
    persistent = set(model.state_dict())
    params.update({name: tuple(b.shape) for name, b in model.named_buffers() if name in persistent})
    prefix = model.base_model_prefix
    mapping: dict[str, str] = {}
    unexpected = []
    embedding = next(n for n, p in model.named_parameters() if p is model.get_input_embeddings().weight)
    # the embedding first: its shape (vocabulary x hidden size) is the most telling mismatch
    for key in sorted(ckpt.tensors, key=lambda k: (plan.key_map(k) != embedding, k)):
        target = plan.key_map(key)
        if target is None:
            continue
        if target not in params and f"{prefix}.{target}" in params:  # saved from the bare base model
            target = f"{prefix}.{target}"
        if target not in params:
            unexpected.append(key)
            continue
        stored, wanted = ckpt.tensors[key].shape, params[target]
        if stored != wanted:
            raise ModelLoadError(
                f"{ckpt.path}: weight {key} has shape {list(stored)} but the config gives {target} the shape "
                f"{list(wanted)}: config.json does not fit these weights (check hidden size, vocabulary and layer counts)"
            )
        mapping[key] = target
    if unexpected:
        raise ModelLoadError(
            f"{ckpt.path}: {len(unexpected)} weight(s) have no place in a {type(model).__name__} built from config.json "
            f"(e.g. {', '.join(unexpected[:3])}); is config.json the right one, or is this another layout (format=...)?"
        )
    buffers = {name for name, _ in model.named_buffers()}
    missing = sorted(set(params) - set(mapping.values()) - _tied_names(model) - buffers)
    if missing:
        raise ModelLoadError(
            f"{ckpt.path}: the weights lack {len(missing)} tensor(s) the config needs (e.g. {', '.join(missing[:3])}); "
            "the checkpoint is incomplete or config.json describes a bigger model"
        )
    return mapping


def load_backbone(
    plan: LoadPlan,
    ckpt: Checkpoint,
    *,
    dtype: torch.dtype | str | None = None,
    attn_implementation: str = "sdpa",
    progress: bool | None = None,
) -> PreTrainedModel:
    """Build the plan's backbone on the meta device and fill it shard by shard (see module doc).

    Floating tensors are cast to ``dtype`` (default: as stored); a cast makes one copy of one
    tensor at a time. Returns the model on CPU in eval mode.
    """
    declared = getattr(plan.hf_config, "dtype", None) if plan.format == "difflm" else None
    target_dtype = resolve_dtype(dtype, ckpt, declared)
    model = empty_model(plan.hf_config, attn_implementation)
    mapping = plan_key_mapping(plan, ckpt, model)
    with _Progress(len(mapping), f"loading {ckpt.path.name}", progress) as bar:
        for f in ckpt.weight_files:
            chunk = {}
            for key, tensor in iter_tensors([f]):
                if key not in mapping:
                    continue
                if tensor.is_floating_point() and tensor.dtype != target_dtype:
                    tensor = tensor.to(target_dtype)
                chunk[mapping[key]] = tensor
                bar.advance()
            # assign=True makes the stored tensors the parameters: no second copy, no init
            model.load_state_dict(chunk, strict=False, assign=True)
            del chunk
    model.tie_weights()
    keep_generation_config(model, ckpt)
    still_empty = [name for name, p in model.named_parameters() if p.is_meta]
    if still_empty:  # plan_key_mapping should have caught it; never hand out a half-empty model
        raise ModelLoadError(f"{ckpt.path}: no weights for {', '.join(still_empty[:3])}")
    model.config.dtype = target_dtype
    return model.eval()


def keep_generation_config(model: PreTrainedModel, ckpt: Checkpoint) -> None:
    """The checkpoint's generation_config.json (transformers' fields; difflm's own section left out) as the
    backbone's ``generation_config``, as ``from_pretrained`` reads it - so a model difflm saves again keeps them
    (DiffusionGemma's decoding settings live there). A file the backbone's generation config class refuses
    leaves the default: difflm reads its decoding settings from the file itself (`formats.generation`)."""
    data = read_generation_config(ckpt.path)
    if not data:
        return
    try:
        model.generation_config = type(model.generation_config).from_dict(
            {k: v for k, v in data.items() if k != SECTION})
    except (ValueError, TypeError, KeyError, AttributeError):
        pass


def parameter_count(model: PreTrainedModel) -> int:
    """Distinct parameters (a tied head counts once); works on a meta model."""
    return sum(p.numel() for p in model.parameters())


class _Progress:
    """A rich progress bar on a terminal; silent otherwise (tests, pipes)."""

    def __init__(self, total: int, description: str, enabled: bool | None) -> None:
        self._bar = None
        if enabled is None:
            enabled = sys.stderr.isatty()
        if enabled and total:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn(description), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                                 console=Console(stderr=True), transient=True)
            self._task = self._bar.add_task(description, total=total)

    def __enter__(self) -> "_Progress":
        if self._bar:
            self._bar.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar:
            self._bar.stop()

    def advance(self) -> None:
        if self._bar:
            self._bar.advance(self._task)
