"""LLaDA 2.0 / 2.1 (inclusionAI; mini 16B and flash 100B mixture-of-experts, block diffusion converted
from Ling 2.0). config.json: model_type "llada2_moe", architectures ["LLaDA2MoeModelLM"], the Ling 2.0
(BailingMoe-V2) field names; weights under ``model.word_embeddings``, ``model.layers.N.attention.*``,
``model.layers.N.mlp.*``, ``model.norm``, ``lm_head``. No stock transformers class computes this
architecture, so it loads onto difflm's native one (`difflm.backbones.llada2_moe`), name for name.

Conventions (from the published modeling code's ``generate``): block diffusion with blocks of 32 tiling
the sequence from position 0 (a prompt shares its last block with the first new tokens), block-causal
attention, no shift (the logit at i predicts token i), mask 156895, EOS / pad <|endoftext|> 156892.
Decoding: threshold decoding, at least one token per step; LLaDA 2.1 adds token editing. The authors'
two modes (diffusers' presets for LLaDA2.1) are `PRESETS`: "quality" (threshold 0.7, editing 0.5) and
"speed" (threshold 0.5, no editing); a checkpoint without saved settings decodes as the published
``generate()`` and diffusers' ``LLaDA2Pipeline`` do by default (threshold 0.95, no editing: "llada2.0"),
and ``--preset quality`` / ``--preset speed`` picks a mode (`generation_presets`).
"""

from __future__ import annotations

from typing import Any

from ..backbones.llada2_moe import LLaDA2MoeConfig
from ..errors import ModelLoadError
from .checkpoint import Checkpoint
from .conventions import diffusion_config, published_tokens
from .generation import GenerationDefaults
from .loading import LoadPlan

MASK_ID, EOS_ID = 156895, 156892
ROLE_END_TOKEN = "<|role_end|>"  # Ling's end of a chat turn; its id is taken from the tokenizer only
BLOCK_SIZE = 32
MODEL_TYPES = ("llada2_moe", "llada21_moe")
ARCHITECTURE = "LLaDA2MoeModelLM"
# the decoding of the published generate(): greedy threshold decoding on the block grid; the block cache is
# exact under block-causal attention; stop once a finished block holds EOS
_BASE = {"strategy": "threshold", "temperature": 0.0, "cache": "block", "stop_at_eos": True}
PRESETS = {
    # LLaDA2.1's generate() caps no position's edits and keeps editing a filled block for up to 16 calls
    "quality": GenerationDefaults({**_BASE, "threshold": 0.7, "editing_threshold": 0.5, "max_edits": 48,
                                   "post_edit_steps": 16}),
    "speed": GenerationDefaults({**_BASE, "threshold": 0.5}),
    "llada2.0": GenerationDefaults({**_BASE, "threshold": 0.95}),  # LLaDA2.0's generate() defaults
}
# options of the published config whose other values its modeling code does not compute (or that
# difflm does not): (default, supported values)
_OPTIONS = {
    "score_function": ("sigmoid", ("sigmoid",)),
    "use_qk_norm": (True, (True,)),
    "norm_topk_prob": (True, (True,)),
    "moe_router_enable_expert_bias": (True, (True,)),
    "use_sliding_window": (False, (False,)),
    "norm_head": (False, (False,)),
    "rope_scaling": (None, (None,)),
    "using_split_qkv_in_self_attention": (False, (False,)),
}
_SIZES = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")
_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
           "num_key_value_heads", "head_dim", "hidden_act", "use_qkv_bias", "use_bias", "rms_norm_eps",
           "max_position_embeddings", "rope_theta", "partial_rotary_factor", "num_experts", "num_shared_experts",
           "num_experts_per_tok", "n_group", "topk_group", "routed_scaling_factor", "moe_intermediate_size",
           "first_k_dense_replace", "initializer_range", "tie_word_embeddings", "pad_token_id", "eos_token_id",
           "bos_token_id")


def generation_presets(ckpt: Checkpoint) -> dict[str, GenerationDefaults]:
    """The authors' named decoding modes (``difflm generate --preset NAME``)."""
    return {name: GenerationDefaults(d.options, d.max_new_tokens, f"the LLaDA 2.x preset {name!r}")
            for name, d in PRESETS.items()}


def generation_defaults(ckpt: Checkpoint) -> GenerationDefaults:
    """How a LLaDA 2.x checkpoint without saved settings decodes: the published generate()'s defaults
    (threshold 0.95, no editing; diffusers' LLaDA2Pipeline has the same)."""
    return generation_presets(ckpt)["llada2.0"]


def detect(ckpt: Checkpoint) -> str | None:
    if (ckpt.model_type or "").lower() in MODEL_TYPES or ARCHITECTURE in ckpt.architectures:
        return (f"config.json names model_type {ckpt.model_type!r} / architectures {ckpt.architectures} "
                "(LLaDA 2.x, Ling 2.0 mixture of experts)")
    if "model.word_embeddings.weight" in ckpt.tensors and "model.layers.0.attention.query_key_value.weight" in ckpt.tensors:
        return "weights named model.word_embeddings / model.layers.N.attention.query_key_value (the LLaDA 2.x layout)"
    return None


def moe_config(ckpt: Checkpoint) -> LLaDA2MoeConfig:
    """config.json as difflm's `LLaDA2MoeConfig`, refusing what the published code would not compute."""
    cfg = ckpt.hf_config
    for name, (default, supported) in _OPTIONS.items():
        value = cfg.get(name, default)
        if value not in supported:
            raise ModelLoadError(f"{ckpt.path}: LLaDA 2.x option {name}={value!r} is not supported "
                                 f"(difflm computes {name}={supported[0]!r}, as the published LLaDA 2.x do)")
    missing = [k for k in _SIZES if k not in cfg]
    if missing:
        raise ModelLoadError(f"{ckpt.path}: config.json lacks the LLaDA 2.x field(s) {', '.join(missing)}")
    fields = {k: cfg[k] for k in _FIELDS if k in cfg}
    experts = fields.get("num_experts")
    if experts is not None:
        groups, kept, top_k = cfg.get("n_group", 8), cfg.get("topk_group", 4), cfg.get("num_experts_per_tok", 8)
        if groups < 1 or experts % groups or experts // groups < 2 or not 1 <= kept <= groups \
                or not 1 <= top_k <= kept * (experts // groups) or not cfg.get("moe_intermediate_size"):
            raise ModelLoadError(
                f"{ckpt.path}: inconsistent LLaDA 2.x routing (num_experts={experts}, n_group={groups}, "
                f"topk_group={kept}, num_experts_per_tok={top_k}, moe_intermediate_size="
                f"{cfg.get('moe_intermediate_size')}): the groups must split the experts evenly, at least 2 per "
                "group, and the kept groups must hold num_experts_per_tok experts")
    if cfg.get("hidden_act", "silu") not in ("silu", "gelu", "relu", "gelu_pytorch_tanh"):
        raise ModelLoadError(f"{ckpt.path}: LLaDA 2.x hidden_act={cfg['hidden_act']!r} is not supported")
    heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    if heads % kv:
        raise ModelLoadError(f"{ckpt.path}: num_attention_heads={heads} is not a multiple of num_key_value_heads={kv}")
    return LLaDA2MoeConfig(**fields, architectures=["LLaDA2MoeForCausalLM"])


def plan(ckpt: Checkpoint, tokenizer: Any, overrides: dict[str, Any]) -> LoadPlan:
    if "model.word_embeddings.weight" not in ckpt.tensors:
        raise ModelLoadError(f"{ckpt.path} is not in the LLaDA 2.x layout: no model.word_embeddings.weight "
                             f"({ckpt.summary()})")
    hf_config = moe_config(ckpt)
    tokens = published_tokens(ckpt, tokenizer, hf_config.vocab_size, overrides, mask=MASK_ID, eos=EOS_ID,
                              end_of_turn=(ROLE_END_TOKEN, None))
    block = ckpt.hf_config.get("block_size") or ckpt.hf_config.get("block_length") or BLOCK_SIZE
    fields = {**tokens, "shift": False, "attention": "block_causal", "block_size": int(block), "family": "llada2"}
    notes = ["decoding presets of the authors (LLaDA2.1): quality = threshold 0.7 + editing 0.5, "
             "speed = threshold 0.5 without editing (difflm.formats.llada2.PRESETS)"]
    return LoadPlan("llada2", hf_config, diffusion_config(fields, overrides), notes=notes)
