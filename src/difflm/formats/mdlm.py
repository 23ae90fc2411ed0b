"""The Kuleshov group's DiT checkpoints: MDLM, BD3-LM, UDLM and Duo (custom code on the hub, loaded
there with ``AutoModelForMaskedLM`` + ``trust_remote_code``; here onto difflm's native DiT,
`difflm.backbones.dit`, without running any of it).

All four store one DiT under ``backbone.`` with the same weight names (see `difflm.backbones.dit`) and
a config.json naming its sizes ``hidden_dim`` / ``n_blocks`` / ``n_heads`` / ``cond_dim`` /
``model_length`` / ``vocab_size``. What differs:

==========  ==============  =====================================  ===================================
family      model_type      diffusion                              conventions here
==========  ==============  =====================================  ===================================
MDLM        ``mdlm``        masked (absorbing), SUBS               bidirectional, no shift, mask id =
                                                                   vocab_size - 1 (GPT-2 + one row)
BD3-LM      ``bd3lm``       masked, per block (``block_size``)     block-causal blocks of block_size
                                                                   from position 0, no shift, SUBS
UDLM        ``udlm``        uniform-state (no mask token)          bidirectional, time-conditioned
Duo         ``duo``         uniform-state (Gaussian-relaxed)       bidirectional, time-conditioned
==========  ==============  =====================================  ===================================

A checkpoint trained without time conditioning (``time_conditioning: false``: mdlm-owt, the BD3-LMs)
is run with sigma = 0, as its own code does. Uniform-state models have no mask token: difflm's masked
ELBO does not apply to them - `difflm eval` scores them with `difflm.losses.uniform` and the sampler runs
their reverse process (`difflm.sampling.uniform`); they load with ``extra["process"] = "uniform"`` and a
placeholder mask id so that the rest of difflm can hold them.
"""

from __future__ import annotations

from typing import Any

from ..backbones.dit import DiTConfig
from ..errors import ModelLoadError
from .checkpoint import Checkpoint
from .conventions import diffusion_config, first_id, special_ids
from .loading import LoadPlan

# model_type / architecture -> family; the masked (absorbing-state) ones use SUBS
FAMILIES = {"mdlm": "MDLM", "bd3lm": "BD3LM", "udlm": "UDLM", "duo": "DUO"}
MASKED = ("mdlm", "bd3lm")
EMBEDDING_KEY = "backbone.vocab_embed.embedding"
_SIZES = ("vocab_size", "hidden_dim", "n_blocks", "n_heads")
# buffers the published models store that the native DiT recomputes (rotary) or does not need
_DROPPED = ("backbone.rotary_emb.inv_freq", "sampling_eps_min", "sampling_eps_max")


def family_of(ckpt: Checkpoint) -> str | None:
    """"mdlm" | "bd3lm" | "udlm" | "duo" from config.json's model_type or architectures, else None."""
    model_type = (ckpt.model_type or "").lower()
    if model_type in FAMILIES:
        return model_type
    for name, arch in FAMILIES.items():
        if arch in ckpt.architectures:
            return name
    return None


def detect(ckpt: Checkpoint) -> str | None:
    family = family_of(ckpt)
    if family is not None:
        kind = "masked" if family in MASKED else "uniform-state"
        return (f"config.json names model_type {ckpt.model_type!r} / architectures {ckpt.architectures} "
                f"({FAMILIES[family]}: the Kuleshov group's DiT, {kind} diffusion)")
    if EMBEDDING_KEY in ckpt.tensors and "backbone.blocks.0.attn_qkv.weight" in ckpt.tensors:
        return ("weights named backbone.vocab_embed.embedding / backbone.blocks.N.attn_qkv (the Kuleshov group's "
                "DiT); config.json does not say which family: read as MDLM")
    return None


def map_key(key: str) -> str | None:
    """Stored name -> native DiT parameter name (the same; recomputed buffers are dropped)."""
    return None if key.endswith(_DROPPED) else key


def dit_config(ckpt: Checkpoint, family: str, mask_id: int | None) -> DiTConfig:
    """config.json as a `DiTConfig` (refusing what the native DiT does not compute)."""
    cfg = ckpt.hf_config
    missing = [k for k in _SIZES if k not in cfg]
    if missing:
        raise ModelLoadError(f"{ckpt.path}: config.json lacks the DiT field(s) {', '.join(missing)} "
                             f"({FAMILIES[family]} config.json names vocab_size, hidden_dim, n_blocks, n_heads)")
    if cfg.get("causal", False):
        raise ModelLoadError(f"{ckpt.path}: a causal (autoregressive) DiT (causal: true) is not a diffusion model; "
                             "difflm loads only the bidirectional / block DiTs")
    if cfg.get("cfg", False):
        raise ModelLoadError(f"{ckpt.path}: class-conditioned UDLM checkpoints (cfg: true) are not supported")
    if cfg["hidden_dim"] % cfg["n_heads"]:
        raise ModelLoadError(f"{ckpt.path}: hidden_dim {cfg['hidden_dim']} is not a multiple of n_heads {cfg['n_heads']}")
    adaln = bool(cfg.get("adaln", True))
    # mdlm-owt and the BD3-LMs were trained without time conditioning; UDLM and Duo with it
    timed = bool(cfg.get("time_conditioning", family not in MASKED))
    return DiTConfig(
        vocab_size=cfg["vocab_size"],
        hidden_size=cfg["hidden_dim"],
        num_hidden_layers=cfg["n_blocks"],
        num_attention_heads=cfg["n_heads"],
        cond_dim=cfg.get("cond_dim", 128),
        max_position_embeddings=cfg.get("model_length", 1024),
        adaln=adaln,
        time_conditioning=timed and adaln,
        suppressed_token_id=mask_id if family in MASKED else None,
        architectures=["DiTForDiffusion"],
    )


def plan(ckpt: Checkpoint, tokenizer: Any, overrides: dict[str, Any]) -> LoadPlan:
    if EMBEDDING_KEY not in ckpt.tensors:
        raise ModelLoadError(f"{ckpt.path} is not in the DiT layout: no {EMBEDDING_KEY} ({ckpt.summary()})")
    family = family_of(ckpt) or "mdlm"
    cfg = ckpt.hf_config
    vocab = cfg.get("vocab_size") or ckpt.tensors[EMBEDDING_KEY].shape[0]
    fields: dict[str, Any] = {"shift": False, "family": family, "schedule": "loglinear", "extra": {}}
    notes = []
    if family in MASKED:
        # the training code appends [MASK] after a tokenizer without one (GPT-2): the last row
        mask = overrides.get("mask_token_id", first_id(vocab, cfg.get("mask_token_id"),
                                                       getattr(tokenizer, "mask_token_id", None), vocab - 1))
        fields["extra"]["process"] = "masked"
        notes.append("the published code ignores padding masks: its logits match difflm's on unpadded rows")
    else:
        # no mask token: a placeholder id keeps DiffusionConfig valid; the masked machinery must not be used
        mask = overrides.get("mask_token_id", vocab - 1)
        fields["extra"]["process"] = "uniform"
        notes.append(f"{FAMILIES[family]} is a uniform-state model: score it with difflm.losses.uniform, "
                     "not the masked ELBO (difflm eval does so); difflm's sampler runs its ancestral reverse process")
    hf_config = dit_config(ckpt, family, mask)
    fields["extra"]["time_conditioning"] = bool(hf_config.time_conditioning)
    fields.update(special_ids(hf_config, tokenizer, vocab))
    fields["mask_token_id"] = mask
    if family == "bd3lm":
        block = cfg.get("block_size")
        if not isinstance(block, int) or isinstance(block, bool) or block < 1:
            raise ModelLoadError(f"{ckpt.path}: a BD3LM config.json needs block_size (an integer >= 1), got {block!r}")
        fields.update(attention="block_causal", block_size=block)
    else:
        fields["attention"] = "bidirectional"
    return LoadPlan("mdlm", hf_config, diffusion_config(fields, overrides), map_key, notes)
