"""LLaDA (ML-GSAI; LLaDA-8B-Base / -Instruct): an OLMo-style checkpoint that maps key for key onto
a stock `LlamaForCausalLM`, run without a causal mask and without shift.

config.json (model_type "llada") names the sizes its own way: d_model, n_layers, n_heads,
n_kv_heads, mlp_hidden_size, embedding_size, max_sequence_length, rope_theta, rms_norm_eps,
weight_tying, mask_token_id. The weights live under ``model.transformer``:

    wte -> model.embed_tokens         blocks.N.{q,k,v}_proj -> layers.N.self_attn.{q,k,v}_proj
    ln_f -> model.norm                blocks.N.attn_out -> layers.N.self_attn.o_proj
    ff_out -> lm_head                 blocks.N.ff_proj -> layers.N.mlp.gate_proj (through SiLU)
                                      blocks.N.up_proj -> layers.N.mlp.up_proj
                                      blocks.N.ff_out -> layers.N.mlp.down_proj
                                      blocks.N.attn_norm / ff_norm -> input / post_attention_layernorm

RoPE is the half-split layout of HF Llama (no permutation of q/k). Tokens: BOS 126080, EOS/PAD
126081, mask 126336 (the Base tokenizer does not declare it), end of turn <|eot_id|> 126348.
"""

from __future__ import annotations

import re
from typing import Any

from transformers import LlamaConfig

from ..errors import ModelLoadError
from .checkpoint import Checkpoint
from .conventions import diffusion_config, first_id, published_tokens
from .loading import LoadPlan

MASK_ID, BOS_ID, EOS_ID, EOT_ID = 126336, 126080, 126081, 126348
EOT_TOKEN = "<|eot_id|>"

_TOP = {
    "model.transformer.wte.weight": "model.embed_tokens.weight",
    "model.transformer.ln_f.weight": "model.norm.weight",
    "model.transformer.ff_out.weight": "lm_head.weight",
}
_BLOCK = {
    "q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj", "v_proj": "self_attn.v_proj",
    "attn_out": "self_attn.o_proj", "ff_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj",
    "ff_out": "mlp.down_proj", "attn_norm": "input_layernorm", "ff_norm": "post_attention_layernorm",
}
_BLOCK_KEY = re.compile(r"model\.transformer\.blocks\.(\d+)\.(\w+)\.weight")
# options of LLaDA's own code that change the maths a stock Llama computes: (default, supported values)
_OPTIONS = {
    "block_type": ("llama", ("llama",)),
    "layer_norm_type": ("rms", ("rms",)),
    "activation_type": ("silu", ("silu",)),
    "rope": (True, (True,)),
    "alibi": (False, (False,)),
    "include_bias": (False, (False,)),
    "include_qkv_bias": (False, (False,)),
    "attention_layer_norm": (False, (False,)),
    "input_emb_norm": (False, (False,)),
    "scale_logits": (False, (False,)),
    "clip_qkv": (None, (None,)),
    "block_group_size": (1, (1,)),
}


def detect(ckpt: Checkpoint) -> str | None:
    if "model.transformer.wte.weight" in ckpt.tensors and any(k.startswith("model.transformer.blocks.") for k in ckpt.tensors):
        return "weights named model.transformer.wte / model.transformer.blocks.N.* (the LLaDA layout)"
    if (ckpt.model_type or "").lower() == "llada" or "LLaDAModelLM" in ckpt.architectures:
        return f"config.json names model_type {ckpt.model_type!r} / architectures {ckpt.architectures} (LLaDA)"
    return None


def map_key(key: str) -> str:
    """LLaDA weight name -> LlamaForCausalLM parameter name."""
    if key in _TOP:
        return _TOP[key]
    match = _BLOCK_KEY.fullmatch(key)
    if match and match.group(2) in _BLOCK:
        return f"model.layers.{match.group(1)}.{_BLOCK[match.group(2)]}.weight"
    raise ModelLoadError(f"unexpected weight {key!r} in a LLaDA checkpoint (expected model.transformer.{{wte,ln_f,ff_out,blocks.N.*}})")


def llama_config(ckpt: Checkpoint) -> LlamaConfig:
    """LLaDA's config.json as a stock LlamaConfig (refusing options a Llama cannot compute)."""
    cfg = ckpt.hf_config
    for name, (default, supported) in _OPTIONS.items():
        value = cfg.get(name, default)
        if value not in supported:
            raise ModelLoadError(
                f"{ckpt.path}: LLaDA option {name}={value!r} is not supported (difflm maps LLaDA onto a stock "
                f"LlamaForCausalLM, which needs {name}={supported[0]!r})"
            )
    missing = [k for k in ("d_model", "n_layers", "n_heads") if k not in cfg]
    if missing:
        raise ModelLoadError(f"{ckpt.path}: config.json lacks the LLaDA field(s) {', '.join(missing)}")
    d_model, heads = cfg["d_model"], cfg["n_heads"]
    vocab = cfg.get("embedding_size") or cfg.get("vocab_size")
    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=d_model,
        intermediate_size=cfg.get("mlp_hidden_size") or cfg.get("mlp_ratio", 4) * d_model,
        num_hidden_layers=cfg["n_layers"],
        num_attention_heads=heads,
        num_key_value_heads=cfg.get("n_kv_heads") or heads,
        max_position_embeddings=cfg.get("max_sequence_length", 4096),
        rms_norm_eps=cfg.get("rms_norm_eps", 1e-5),
        rope_theta=cfg.get("rope_theta", 10000.0),
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=bool(cfg.get("weight_tying", False)),
        bos_token_id=first_id(vocab, BOS_ID),
        eos_token_id=first_id(vocab, cfg.get("eos_token_id"), EOS_ID),
        pad_token_id=first_id(vocab, cfg.get("pad_token_id"), EOS_ID),
        architectures=["LlamaForCausalLM"],
    )


def plan(ckpt: Checkpoint, tokenizer: Any, overrides: dict[str, Any]) -> LoadPlan:
    if "model.transformer.wte.weight" not in ckpt.tensors:
        raise ModelLoadError(f"{ckpt.path} is not in the LLaDA layout: no model.transformer.wte.weight ({ckpt.summary()})")
    hf_config = llama_config(ckpt)
    tokens = published_tokens(ckpt, tokenizer, hf_config.vocab_size, overrides, mask=MASK_ID, eos=EOS_ID,
                              bos=BOS_ID, end_of_turn=(EOT_TOKEN, EOT_ID))
    fields = {**tokens, "shift": False, "attention": "bidirectional", "family": "llada"}
    notes = ["LLaDA's own code ignores padding masks: for identical outputs run unpadded batches"]
    return LoadPlan("llada", hf_config, diffusion_config(fields, overrides), map_key, notes)
