"""What a training run starts from: the tokenizer, and the model - a transformers causal LM, or a
`DiffusionLM` built from scratch, loaded, or adapted from an AR checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from ..config import DiffusionConfig
from ..errors import ConfigError, InputError, ModelLoadError
from ..formats.generation import parse_generation_defaults
from ..io import tokenizer_dir
from ..model import DiffusionLM
from ..sampling.options import defaults_options


def load_tokenizer(spec: str) -> Any:
    """The tokenizer of a run's ``tokenizer`` setting: "bundled" (difflm's own) or a directory."""
    return AutoTokenizer.from_pretrained(tokenizer_dir(spec))


def attach_generation_defaults(model: torch.nn.Module, section: Mapping[str, Any]) -> None:
    """Give the model a run trains the decoding settings of the run's ``generation:`` section, so that the
    saved model carries them (its generation_config.json: `difflm.formats.generation`) and decodes
    with them by default. `ConfigError` (one line) for a field `SamplerOptions` does not take, a bad
    value, or a model that is not a DLM."""
    if not isinstance(model, DiffusionLM):
        raise ConfigError("generation: decoding defaults are for diffusion models; this run trains an AR model")
    try:
        defaults = parse_generation_defaults(dict(section), "generation")
        defaults_options(defaults)  # every field a valid SamplerOptions value, checked before any step
    except ModelLoadError as exc:
        raise ConfigError(str(exc).replace(" (fix or delete the file)", "")) from None
    model.generation_defaults = defaults


def build_backbone(tokenizer: Any, architecture: Mapping[str, Any]) -> PreTrainedModel:
    """A randomly initialised transformers causal LM of ``architecture`` (its config fields, with
    ``model_type``), sized to the tokenizer, with sdpa attention (it takes the 4-D masks)."""
    arch = dict(architecture)
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
    return AutoModelForCausalLM.from_config(hf_config, attn_implementation="sdpa")


def build_model(
    tokenizer: Any,
    *,
    seed: int,
    init: str | Path | None = None,
    architecture: Mapping[str, Any] | None = None,
    diffusion: Mapping[str, Any] | None = None,
    from_ar: bool = False,
) -> torch.nn.Module:
    """The model a run trains.

    Args:
        tokenizer: the run's tokenizer (vocabulary size, special ids, the mask token of a DLM).
        seed: seeds the from-scratch initialisation (part of the run's determinism).
        init: a checkpoint directory to start from; None builds ``architecture`` from scratch.
        architecture: transformers config fields (with ``model_type``) of a model built from scratch.
        diffusion: None for an AR model (a transformers causal LM); else the `DiffusionConfig` fields
            of the DLM - the whole config's over the tokenizer's ids when built from scratch, the
            overrides of the checkpoint's own when loaded from ``init``.
        from_ar: ``init`` is an AR checkpoint to turn into a DLM (`DiffusionLM.from_causal_lm`, special
            ids from the checkpoint unless given).
    """
    torch.manual_seed(seed)  # from-scratch initialisation is part of the run's determinism
    if init is not None:
        init = Path(init)
        if not (init / "config.json").is_file():
            raise InputError(f"init {init} is not a model directory (no config.json)")
        if diffusion is None:
            return AutoModelForCausalLM.from_pretrained(init, dtype=torch.float32, attn_implementation="sdpa")
        if from_ar:
            return DiffusionLM.from_causal_lm(init, mask_token=tokenizer.mask_token_id, tokenizer=tokenizer,
                                              dtype=torch.float32, **diffusion)
        return DiffusionLM.from_pretrained(init, dtype=torch.float32, **diffusion)
    backbone = build_backbone(tokenizer, architecture or {})
    if diffusion is None:
        return backbone
    if tokenizer.mask_token_id is None:
        raise ConfigError("the tokenizer has no mask token; a diffusion objective needs one")
    special = {name: getattr(tokenizer, name) for name in ("pad_token_id", "bos_token_id", "eos_token_id")
               if getattr(tokenizer, name) is not None}
    try:
        config = DiffusionConfig.from_dict({**special, "mask_token_id": tokenizer.mask_token_id, **diffusion})
    except ConfigError as exc:
        raise ConfigError(f"diffusion: {exc}") from None
    return DiffusionLM(backbone, config, tokenizer)
