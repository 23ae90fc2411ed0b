"""LLaDA 2.x (inclusionAI LLaDA2.0 / 2.1 mini and flash): the Ling 2.0 (BailingMoe-V2) mixture-of-experts
transformer its checkpoints hold, as a native transformers model.

Parameter names are the published checkpoint's (``model.word_embeddings``, ``model.layers.N.attention.
query_key_value`` / ``query_layernorm`` / ``key_layernorm`` / ``dense``, ``mlp.gate`` (+ its
``expert_bias`` buffer), ``mlp.experts.E.{gate,up,down}_proj``, ``mlp.shared_experts.*``, ``model.norm``,
``lm_head``), so the format maps weights name for name. What one layer computes:

* attention: one fused q/k/v projection ([heads | kv heads | kv heads] x head_dim), RMSNorm over each
  head's q and k, rotary embedding on the first ``partial_rotary_factor`` of every head's dimensions
  (half-split layout, as Llama), grouped-query attention, an output projection named ``dense``;
  no causal mask of its own: the caller's 4-D mask decides who sees whom (block diffusion);
* feed-forward: the first ``first_k_dense_replace`` layers are a SwiGLU MLP; the rest a mixture of
  experts routed by sigmoid scores: an expert bias (load balancing) shifts the scores used to *choose*,
  experts are chosen within the ``topk_group`` best of ``n_group`` groups (a group's score: the sum of
  its two best experts), the chosen experts' unbiased scores are normalised to sum to one and scaled
  by ``routed_scaling_factor``; shared experts run on every token.

Experts run on the tokens routed to them, one batched call per expert that received any (never a loop
over tokens), and the k contributions of a token are summed in float32 as the published code does.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache, PretrainedConfig, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep

MODEL_TYPE = "difflm_llada2_moe"


class LLaDA2MoeConfig(PretrainedConfig):
    """The published config.json's fields, under difflm's own model_type (defaults: LLaDA2.0-mini's)."""

    model_type = MODEL_TYPE
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        vocab_size: int = 157184,
        hidden_size: int = 2048,
        intermediate_size: int = 5120,
        num_hidden_layers: int = 20,
        num_attention_heads: int = 16,
        num_key_value_heads: int | None = 4,
        head_dim: int | None = 128,
        hidden_act: str = "silu",
        use_qkv_bias: bool = False,
        use_bias: bool = False,
        rms_norm_eps: float = 1e-6,
        max_position_embeddings: int = 16384,
        rope_theta: float = 600000.0,
        partial_rotary_factor: float = 0.5,
        num_experts: int | None = 256,
        num_shared_experts: int | None = 1,
        num_experts_per_tok: int = 8,
        n_group: int = 8,
        topk_group: int = 4,
        routed_scaling_factor: float = 2.5,
        moe_intermediate_size: int = 512,
        first_k_dense_replace: int = 1,
        initializer_range: float = 0.02,
        tie_word_embeddings: bool = False,
        pad_token_id: int | None = 156892,
        **kwargs: Any,
    ) -> None:
        self.vocab_size, self.hidden_size, self.intermediate_size = vocab_size, hidden_size, intermediate_size
        self.num_hidden_layers, self.num_attention_heads = num_hidden_layers, num_attention_heads
        # the published config class reads 0 (its default) as "as many as query heads"
        self.num_key_value_heads = num_key_value_heads or num_attention_heads
        self.head_dim = head_dim or hidden_size // num_attention_heads
        self.hidden_act, self.use_qkv_bias, self.use_bias = hidden_act, use_qkv_bias, use_bias
        self.rms_norm_eps, self.max_position_embeddings = rms_norm_eps, max_position_embeddings
        self.rope_theta, self.partial_rotary_factor = rope_theta, partial_rotary_factor
        self.num_experts, self.num_shared_experts = num_experts, num_shared_experts
        self.num_experts_per_tok, self.n_group, self.topk_group = num_experts_per_tok, n_group, topk_group
        self.routed_scaling_factor, self.moe_intermediate_size = routed_scaling_factor, moe_intermediate_size
        self.first_k_dense_replace, self.initializer_range = first_k_dense_replace, initializer_range
        super().__init__(pad_token_id=pad_token_id, tie_word_embeddings=tie_word_embeddings, **kwargs)


class LLaDA2RMSNorm(nn.Module):
    """RMSNorm computed in float32, scaled by the weight in the input's dtype (as published)."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class PartialRotary(nn.Module):
    """cos / sin of the rotary angles over the first ``int(head_dim * partial_rotary_factor)`` dimensions.
    (Not named "...RotaryEmbedding": transformers' generic init would recompute such a module's buffers.)"""

    def __init__(self, config: LLaDA2MoeConfig) -> None:
        super().__init__()
        dim = int(config.head_dim * config.partial_rotary_factor)
        exponents = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
        self.register_buffer("inv_freq", 1.0 / (config.rope_theta ** exponents), persistent=False)

    @torch.no_grad()
    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """position_ids LongTensor [B, L] -> (cos, sin), each [B, L, rotary dims], in ``dtype``."""
        inv = self.inv_freq[None, :, None].float().expand(position_ids.shape[0], -1, 1).to(position_ids.device)
        with torch.autocast(device_type=position_ids.device.type, enabled=False):  # angles in float32
            freqs = (inv @ position_ids[:, None, :].float()).transpose(1, 2)
            angles = torch.cat([freqs, freqs], dim=-1)
            return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_partially(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding on the leading ``cos.shape[-1]`` dims of x [B, H, L, D] (half-split pairs); the
    rest of each head passes unrotated. cos, sin: [B, L, R]."""
    rot = cos.shape[-1]
    cos, sin = cos[:, None], sin[:, None]
    head, tail = x[..., :rot], x[..., rot:]
    half = rot // 2
    turned = torch.cat([-head[..., half:], head[..., :half]], dim=-1)
    return torch.cat([head * cos + turned * sin, tail], dim=-1)


class LLaDA2Attention(nn.Module):
    """Fused-qkv grouped-query attention with per-head q/k RMSNorm and partial rotary (module doc)."""

    def __init__(self, config: LLaDA2MoeConfig, layer_idx: int) -> None:
        super().__init__()
        self.config, self.layer_idx = config, layer_idx
        self.heads, self.kv_heads, self.head_dim = config.num_attention_heads, config.num_key_value_heads, config.head_dim
        self.query_key_value = nn.Linear(config.hidden_size, (self.heads + 2 * self.kv_heads) * self.head_dim,
                                         bias=config.use_qkv_bias)
        self.query_layernorm = LLaDA2RMSNorm(self.head_dim, config.rms_norm_eps)
        self.key_layernorm = LLaDA2RMSNorm(self.head_dim, config.rms_norm_eps)
        self.dense = nn.Linear(self.heads * self.head_dim, config.hidden_size, bias=config.use_bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor,
                past: Cache | None) -> torch.Tensor:
        """x [B, L, H] -> [B, L, H]. mask: None or [B, 1, L, K] (bool for sdpa, additive for eager) over the
        K = cached + L keys; past: a transformers cache that receives this call's keys/values."""
        b, n, _ = x.shape
        qkv = self.query_key_value(x).view(b, n, self.heads + 2 * self.kv_heads, self.head_dim).transpose(1, 2)
        q, k, v = qkv.split([self.heads, self.kv_heads, self.kv_heads], dim=1)
        q = rotate_partially(self.query_layernorm(q), cos, sin)
        k = rotate_partially(self.key_layernorm(k), cos, sin)
        if past is not None:
            k, v = past.update(k, v, self.layer_idx)
        groups = self.heads // self.kv_heads
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        if self.config._attn_implementation == "eager":
            scores = (q @ k.transpose(-1, -2)) * self.head_dim ** -0.5
            if mask is not None:
                scores = scores + mask
            out = scores.softmax(-1, dtype=torch.float32).to(q.dtype) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.dense(out.transpose(1, 2).reshape(b, n, self.heads * self.head_dim))


class LLaDA2MLP(nn.Module):
    """SwiGLU feed-forward (a dense layer's, an expert's, the shared experts')."""

    def __init__(self, config: LLaDA2MoeConfig, intermediate_size: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, config.hidden_size, bias=False)
        self.act = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class LLaDA2Router(nn.Module):
    """Sigmoid router with expert bias and group-limited top-k (module doc). Stored as ``mlp.gate``."""

    def __init__(self, config: LLaDA2MoeConfig) -> None:
        super().__init__()
        self.top_k, self.n_group, self.topk_group = config.num_experts_per_tok, config.n_group, config.topk_group
        self.scale = config.routed_scaling_factor
        self.weight = nn.Parameter(torch.empty(config.num_experts, config.hidden_size))
        self.register_buffer("expert_bias", torch.zeros(config.num_experts))  # persistent: it is in the checkpoint

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [T, H] -> (experts LongTensor [T, k], weights FloatTensor [T, k] in float32)."""
        scores = F.linear(x.float(), self.weight.float()).sigmoid()  # the router runs in float32
        choice = scores + self.expert_bias.float()  # the bias steers the choice, never the weights
        tokens, experts = choice.shape
        grouped = choice.view(tokens, self.n_group, experts // self.n_group)
        group_score = grouped.topk(2, dim=-1).values.sum(-1)
        best_groups = group_score.topk(self.topk_group, dim=-1, sorted=False).indices
        allowed = torch.zeros_like(group_score, dtype=torch.bool).scatter_(1, best_groups, True)
        allowed = allowed[:, :, None].expand_as(grouped).reshape(tokens, experts)
        chosen = choice.masked_fill(~allowed, float("-inf")).topk(self.top_k, dim=-1).indices
        weights = scores.gather(1, chosen)
        if self.top_k > 1:
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
        return chosen, weights * self.scale


class LLaDA2SparseMoe(nn.Module):
    """Routed experts + shared experts. One call per expert that received tokens (see module doc)."""

    def __init__(self, config: LLaDA2MoeConfig) -> None:
        super().__init__()
        self.experts = nn.ModuleList(LLaDA2MLP(config, config.moe_intermediate_size) for _ in range(config.num_experts))
        self.gate = LLaDA2Router(config)
        shared = config.num_shared_experts
        self.shared_experts = LLaDA2MLP(config, config.moe_intermediate_size * shared) if shared else None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [B, L, H] -> [B, L, H]."""
        x = hidden.reshape(-1, hidden.shape[-1])
        chosen, weights = self.gate(x)
        k = chosen.shape[1]
        order = chosen.flatten().argsort(stable=True)  # (token, slot) pairs grouped by expert
        counts = torch.bincount(chosen.flatten(), minlength=len(self.experts)).tolist()
        routed = x[order // k]
        outputs = torch.empty_like(routed)
        start = 0
        for expert, count in zip(self.experts, counts):
            if count:
                outputs[start:start + count] = expert(routed[start:start + count])
                start += count
        per_slot = torch.empty_like(outputs)
        per_slot[order] = outputs
        # weight and sum the k experts of a token in float32, as the published code does
        y = (per_slot.view(x.shape[0], k, -1).float() * weights[..., None]).sum(1).to(x.dtype)
        y = y.view_as(hidden)
        if self.shared_experts is not None:
            y = y + self.shared_experts(hidden)
        return y


class LLaDA2DecoderLayer(nn.Module):
    def __init__(self, config: LLaDA2MoeConfig, layer_idx: int) -> None:
        super().__init__()
        self.attention = LLaDA2Attention(config, layer_idx)
        moe = config.num_experts is not None and layer_idx >= config.first_k_dense_replace
        self.mlp = LLaDA2SparseMoe(config) if moe else LLaDA2MLP(config, config.intermediate_size)
        self.input_layernorm = LLaDA2RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = LLaDA2RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor,
                past: Cache | None) -> torch.Tensor:
        x = x + self.attention(self.input_layernorm(x), mask, cos, sin, past)
        return x + self.mlp(self.post_attention_layernorm(x))


class LLaDA2MoePreTrainedModel(PreTrainedModel):
    config_class = LLaDA2MoeConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = False
    _no_split_modules = ["LLaDA2DecoderLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, LLaDA2Router):
            nn.init.normal_(module.weight, std=self.config.initializer_range)
            nn.init.zeros_(module.expert_bias)


class LLaDA2MoeModel(LLaDA2MoePreTrainedModel):
    """The transformer without its head: token ids -> final-norm hidden states."""

    def __init__(self, config: LLaDA2MoeConfig) -> None:
        super().__init__(config)
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(LLaDA2DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = LLaDA2RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = PartialRotary(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.word_embeddings = value

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, past_key_values: Cache | None = None,
                inputs_embeds: torch.Tensor | None = None, use_cache: bool = False) -> tuple[torch.Tensor, Cache | None]:
        """Hidden states [B, L, H] and the cache (None unless ``use_cache`` or ``past_key_values``)."""
        x = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache()
        if position_ids is None:
            start = past_key_values.get_seq_length() if past_key_values is not None else 0
            position_ids = torch.arange(start, start + x.shape[1], device=x.device).expand(x.shape[0], -1)
        mask = attention_bias(attention_mask, x.dtype, self.config._attn_implementation)
        cos, sin = self.rotary(position_ids, x.dtype)
        for layer in self.layers:
            x = layer(x, mask, cos, sin, past_key_values)
        return self.norm(x), past_key_values


def attention_bias(mask: torch.Tensor | None, dtype: torch.dtype, implementation: str) -> torch.Tensor | None:
    """The caller's mask in the form the attention takes: None (everyone sees everyone: no causal mask),
    a [B, K] key-padding mask (1 = real), or a 4-D [B, 1, Q, K] mask, boolean (True = may attend) or
    additive. sdpa gets booleans as they are; eager attention gets an additive mask in ``dtype``."""
    if mask is None:
        return None
    if mask.dim() == 2:
        mask = mask.bool()[:, None, None, :]
    if mask.dtype == torch.bool:
        if implementation == "eager":
            return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
        return mask
    return mask.to(dtype)


class LLaDA2MoeForCausalLM(LLaDA2MoePreTrainedModel):
    """LLaDA 2.x: the transformer plus its vocabulary head. ``logits[:, i]`` predicts token i (no shift)."""

    _tied_weights_keys = {"lm_head.weight": "model.word_embeddings.weight"}

    def __init__(self, config: LLaDA2MoeConfig) -> None:
        super().__init__(config)
        self.model = LLaDA2MoeModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.word_embeddings = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Args: input_ids LongTensor [B, L]; attention_mask None, [B, K] or [B, 1, L, K] (`attention_bias`);
        position_ids LongTensor [B, L] (default: after the cached positions); past_key_values: a transformers
        cache whose keys come before this call's; logits_to_keep: as transformers' causal LMs (an int keeps the
        last n positions, a BoolTensor [B, L] keeps those positions, flattened to [N, V]).
        Returns ``.logits`` [B, L', V] (or [N, V]) and ``.past_key_values`` (with ``use_cache``)."""
        hidden, past = self.model(input_ids, attention_mask, position_ids, past_key_values, inputs_embeds,
                                  bool(use_cache))
        logits = self.lm_head(slice_logits_to_keep(hidden, logits_to_keep))
        return CausalLMOutputWithPast(logits=logits, past_key_values=past if use_cache else None)


AutoConfig.register(MODEL_TYPE, LLaDA2MoeConfig, exist_ok=True)
AutoModelForCausalLM.register(LLaDA2MoeConfig, LLaDA2MoeForCausalLM, exist_ok=True)
