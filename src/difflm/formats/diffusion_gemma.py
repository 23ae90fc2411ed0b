"""DiffusionGemma (Google, 2026; transformers' ``DiffusionGemmaForBlockDiffusion``, config.json model_type
"diffusion_gemma"): a uniform-state block diffusion LM - no [MASK] token; each canvas of ``canvas_length``
tokens starts as random tokens and is renoised and refined - built as an encoder that writes the prompt and
every finished canvas into a KV cache, and a decoder (sharing the encoder's weights) that denoises one canvas
reading that cache, with self-conditioning on its previous step's logits.

transformers ships the architecture, so it loads onto transformers' own class, weights as stored (no
checkpoint code exists or is run); `difflm.backbones.diffusion_gemma` registers the class with
``AutoModelForCausalLM`` so that difflm's meta-device loader can build it. difflm holds it as a `DiffusionLM` whose ``config.extra`` says
what it is - ``process: "uniform"`` (no mask token: a placeholder ``mask_token_id`` = vocab_size - 1, a real
token, keeps the config valid), ``denoiser: "encoder-decoder"`` - and decodes it with the renoising sampler
(`difflm.sampling.renoise`: entropy-bound acceptance, linear temperature schedule, stable-and-confident
stopping, EOS handling), which equals its ``generate()`` token for token under ``random_stream="transformers"``.
The decoding defaults are the checkpoint's generation_config.json (transformers' own fields, its defaults
for what it leaves unset). It has no single-sequence forward and no ELBO: `DiffusionLM.logits` refuses it.
"""

from __future__ import annotations

from typing import Any

from ..backbones.diffusion_gemma import DiffusionGemmaForBlockDiffusion  # registered with AutoModelForCausalLM there
from ..errors import ModelLoadError
from .checkpoint import Checkpoint
from .conventions import diffusion_config, first_id
from .generation import GENERATION_CONFIG, GenerationDefaults, read_generation_config
from .loading import LoadPlan, stock_config

FORMAT = "diffusion-gemma"  # its name in registry.FORMATS (and DiffusionConfig.family)
MODEL_TYPE = "diffusion_gemma"
ARCHITECTURE = DiffusionGemmaForBlockDiffusion.__name__
# what DiffusionGemma's generate() uses for a field its generation config leaves unset (transformers 5.23,
# DiffusionGemmaGenerationConfig._get_default_generation_params)
TRANSFORMERS_DEFAULTS: dict[str, Any] = {"max_new_tokens": 256, "max_denoising_steps": 48, "entropy_bound": 0.1,
                                         "t_min": 0.4, "t_max": 0.8, "stability_threshold": 1,
                                         "confidence_threshold": 0.005}
# generation_config.json field -> SamplerOptions field
_OPTION_NAMES = {"max_denoising_steps": "steps", "entropy_bound": "entropy_bound", "t_min": "t_min", "t_max": "t_max",
                 "stability_threshold": "stability_threshold", "confidence_threshold": "confidence_threshold"}


def detect(ckpt: Checkpoint) -> str | None:
    if (ckpt.model_type or "").lower() == MODEL_TYPE or ARCHITECTURE in ckpt.architectures:
        return (f"config.json names model_type {ckpt.model_type!r} / architectures {ckpt.architectures} "
                "(DiffusionGemma: uniform-state block diffusion, an encoder cache + a canvas decoder)")
    return None


def transformers_generation(ckpt: Checkpoint) -> dict[str, Any]:
    """generation_config.json's transformers fields ({} without the file), with the sampler's entropy bound
    lifted out of ``sampler_config``; `ModelLoadError` for a file that is not a JSON object."""
    data = read_generation_config(ckpt.path) or {}
    sampler = data.get("sampler_config")
    if isinstance(sampler, dict) and "entropy_bound" in sampler:
        data = {**data, "entropy_bound": sampler["entropy_bound"]}
    return data


def _ids(value: Any) -> list[int]:
    values = value if isinstance(value, list) else [value]
    return [v for v in values if isinstance(v, int) and not isinstance(v, bool)]


def generation_defaults(ckpt: Checkpoint) -> GenerationDefaults:
    """How the checkpoint decodes: its generation_config.json as `SamplerOptions` (steps = max_denoising_steps
    per canvas, the entropy bound, the temperature schedule, the stopping thresholds; EOS ends a row when the
    file or config.json names one), transformers' defaults for what it leaves unset."""
    given = transformers_generation(ckpt)
    values = {k: given.get(k) if given.get(k) is not None else v for k, v in TRANSFORMERS_DEFAULTS.items()}
    options: dict[str, Any] = {_OPTION_NAMES[k]: values[k] for k in _OPTION_NAMES}
    options["stop_at_eos"] = bool(_stop_ids(ckpt, given))
    source = str(ckpt.path / GENERATION_CONFIG) if given else "DiffusionGemma's generate() defaults"
    return GenerationDefaults(options, values["max_new_tokens"], source, from_layout=True)


def _stop_ids(ckpt: Checkpoint, generation: dict[str, Any]) -> list[int]:
    text = ckpt.hf_config.get("text_config") or {}
    return _ids(generation["eos_token_id"] if generation.get("eos_token_id") is not None else text.get("eos_token_id"))


def plan(ckpt: Checkpoint, tokenizer: Any, overrides: dict[str, Any]) -> LoadPlan:
    hf_config = stock_config(ckpt, MODEL_TYPE)
    text = hf_config.get_text_config()
    vocab, width = int(text.vocab_size), hf_config.canvas_length
    if not isinstance(width, int) or isinstance(width, bool) or width < 1:
        raise ModelLoadError(f"{ckpt.path}: DiffusionGemma needs canvas_length (an integer >= 1), got {width!r}")
    generation = transformers_generation(ckpt)
    stop = [i for i in _stop_ids(ckpt, generation) if 0 <= i < vocab]
    pad = first_id(vocab, generation.get("pad_token_id"), getattr(tokenizer, "pad_token_id", None), text.pad_token_id)
    fields = {
        "mask_token_id": vocab - 1,  # no mask token: a placeholder (a prompt holding this id is refused)
        "shift": False, "attention": "bidirectional", "family": FORMAT,
        "eos_token_id": stop[0] if stop else None, "pad_token_id": pad,
        "bos_token_id": first_id(vocab, getattr(tokenizer, "bos_token_id", None), text.bos_token_id),
        "extra": {"process": "uniform", "denoiser": "encoder-decoder", "canvas_length": width,
                  "self_conditioning": True, "stop_token_ids": stop, "end_of_turn_ids": stop},
    }
    config = diffusion_config(fields, overrides)
    notes = [f"uniform-state: no mask token (mask id {config.mask_token_id} is a placeholder; a prompt holding it "
             "is refused)",
             f"canvases of {width} tokens; decoded by difflm's renoising sampler (random_stream='transformers' "
             "reproduces transformers' generate() token for token); no ELBO, so no likelihood evaluation"]
    return LoadPlan(FORMAT, hf_config, config, notes=notes)
