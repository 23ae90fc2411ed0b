"""A tiny random LLaDA 2.x checkpoint in the published layout (config.json with the official field names,
model_type "llada2_moe", weights under the official names), written the same way by the tests and by
scripts/official_fixtures/llada2.py (which runs the official modeling code on it in a separate venv).

Deterministic: the weights come from a CPU generator seeded with ``seed`` in a fixed order, so the tests
rebuild exactly the checkpoint the stored official outputs were computed on. The weights are scaled so
the tiny model makes confident, context-dependent predictions (threshold decoding and token editing then
really commit and edit), and the output row of the mask token is zero: like a trained model, it never
predicts [MASK] (the published sampler leaves the mask token in its softmax, difflm's drops it; with a
zero row its probability is ~1e-9 and the two agree).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from published_layouts import save_weights

# Published field names; a small model with every feature the 16B / 100B ones have: a dense first layer,
# grouped routing (4 groups of 2 experts, 2 groups kept, top-2), a shared expert, GQA, partial rotary.
LLADA2 = {
    "architectures": ["LLaDA2MoeModelLM"],
    "auto_map": {"AutoConfig": "configuration_llada2_moe.LLaDA2MoeConfig",
                 "AutoModelForCausalLM": "modeling_llada2_moe.LLaDA2MoeModelLM"},
    "model_type": "llada2_moe",
    "vocab_size": 160,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "hidden_act": "silu",
    "use_qkv_bias": False,
    "use_bias": False,
    "use_qk_norm": True,
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 256,
    "rope_theta": 600000,
    "rope_scaling": None,
    "partial_rotary_factor": 0.5,
    "rotary_dim": 4,
    "num_experts": 8,
    "num_shared_experts": 1,
    "num_experts_per_tok": 2,
    "n_group": 4,
    "topk_group": 2,
    "routed_scaling_factor": 2.5,
    "moe_intermediate_size": 16,
    "first_k_dense_replace": 1,
    "score_function": "sigmoid",
    "moe_router_enable_expert_bias": True,
    "norm_topk_prob": True,
    "router_dtype": "fp32",
    "norm_head": False,
    "tie_word_embeddings": False,
    "use_sliding_window": False,
    "embedding_dropout": 0.0,
    "attention_dropout": 0.0,
    "output_dropout": 0.0,
    "initializer_range": 0.02,
    "torch_dtype": "bfloat16",
    # the published ids (156892 / 156895) lie outside a 160-token vocabulary: these stand in for them
    "pad_token_id": 157,
    "eos_token_id": 157,
    "mask_token_id": 159,
}
MASK_ID, EOS_ID = LLADA2["mask_token_id"], LLADA2["eos_token_id"]


def llada2_weights(c: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under the published names for config ``c`` (deterministic in ``seed``)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    def norm(n: int) -> torch.Tensor:
        return 1.0 + 0.1 * torch.randn(n, generator=g)

    h, d, heads, kv = c["hidden_size"], c["head_dim"], c["num_attention_heads"], c["num_key_value_heads"]
    w = {"model.word_embeddings.weight": rand(c["vocab_size"], h, scale=1.0)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = norm(h)
        w[p + "post_attention_layernorm.weight"] = norm(h)
        w[p + "attention.query_key_value.weight"] = rand((heads + 2 * kv) * d, h, scale=0.3)
        if c.get("use_qkv_bias"):
            w[p + "attention.query_key_value.bias"] = rand((heads + 2 * kv) * d, scale=0.1)
        w[p + "attention.query_layernorm.weight"] = norm(d)
        w[p + "attention.key_layernorm.weight"] = norm(d)
        w[p + "attention.dense.weight"] = rand(h, heads * d, scale=0.3)
        if c.get("use_bias"):
            w[p + "attention.dense.bias"] = rand(h, scale=0.1)
        mlps = []
        if i < c["first_k_dense_replace"]:
            mlps.append((p + "mlp.", c["intermediate_size"]))
        else:
            w[p + "mlp.gate.weight"] = rand(c["num_experts"], h, scale=0.5)
            w[p + "mlp.gate.expert_bias"] = rand(c["num_experts"], scale=0.1)
            mlps += [(f"{p}mlp.experts.{e}.", c["moe_intermediate_size"]) for e in range(c["num_experts"])]
            if c.get("num_shared_experts"):
                mlps.append((p + "mlp.shared_experts.", c["moe_intermediate_size"] * c["num_shared_experts"]))
        for prefix, inner in mlps:
            w[prefix + "gate_proj.weight"] = rand(inner, h, scale=0.3)
            w[prefix + "up_proj.weight"] = rand(inner, h, scale=0.3)
            w[prefix + "down_proj.weight"] = rand(h, inner, scale=0.3)
    w["model.norm.weight"] = norm(h)
    head = rand(c["vocab_size"], h, scale=1.5)
    head[c["mask_token_id"]] = 0.0  # never predicts [MASK] (module doc)
    w["lm_head.weight"] = head
    return w


def write_llada2(path: Path, *, dtype: torch.dtype = torch.float32, shards: int = 1, seed: int = 0,
                 **config_changes) -> dict[str, torch.Tensor]:
    """Write the tiny checkpoint to ``path``; returns its weights (float32, rounded through ``dtype``).
    ``config_changes`` replace config.json fields (None removes one) - the weights follow the sizes."""
    c = {**LLADA2, **config_changes}
    c = {k: v for k, v in c.items() if v is not None or k == "rope_scaling"}
    weights = llada2_weights(c, seed)
    path = Path(path)
    save_weights(path, weights, dtype=dtype, shards=shards)
    (path / "config.json").write_text(json.dumps(c, indent=2))
    return {k: v.to(dtype).float() for k, v in weights.items()}
