"""The diffusion transformer (DiT) of the Kuleshov group's checkpoints (MDLM, BD3-LM, UDLM, Duo), as a
transformers model that takes difflm's calling convention.

The published checkpoints store their weights under ``backbone.``: a token embedding held as a bare
matrix (``vocab_embed.embedding``), a sinusoidal time embedding followed by an MLP (``sigma_map.mlp.{0,2}``),
pre-LayerNorm blocks without biases in attention (``blocks.N.{norm1, attn_qkv, attn_out, norm2, mlp.0,
mlp.2, adaLN_modulation}``) and a final layer (``output_layer.{norm_final, linear, adaLN_modulation}``).
The module tree below uses the same names, so a checkpoint loads with a plain rename (none at all).

What the maths is (read from the authors' code, written here in our own words):

* adaLN conditioning: ``c = silu(sigma_map(sigma))``; each block turns ``c`` into shift / scale / gate
  pairs for its attention and MLP halves; the final layer into a shift / scale. A checkpoint trained
  without time conditioning still has these layers and is run with sigma = 0 (a constant ``c``).
  BD3-LM can be built without adaLN at all (``adaln: false``): then the LayerNorms act alone.
* LayerNorm without bias, computed in float32 (eps 1e-5).
* Rotary embeddings in the half-split layout (the first half of a head's channels rotates with the
  second half, as HF Llama's ``rotate_half``) over the whole head dimension, base 10000; here the
  angles come from ``position_ids`` so that left padding and the two-copy forward of block diffusion
  training ([x_t | x_0] with positions 0..L-1 twice) work.
* Attention: softmax(q k^T / sqrt(d)) v under difflm's explicit 4-D mask (the published code has no
  padding mask; bidirectional for MDLM / UDLM / Duo, block-causal for BD3-LM).
* SUBS parameterisation (MDLM, BD3-LM): the mask token is never a prediction. With
  ``suppressed_token_id`` set, that logit is pushed to the dtype's lowest value, so a softmax or a
  cross-entropy over the output equals the one of the published code after its SUBS step.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..errors import InputError

MODEL_TYPE = "difflm_dit"
__all__ = ["DiTConfig", "DiTForDiffusion", "MODEL_TYPE"]


class DiTConfig(PretrainedConfig):
    """Sizes and options of a DiT (names as transformers' usual ones; the formats translate the
    published ``hidden_dim`` / ``n_blocks`` / ``n_heads`` / ``model_length``).

    Args:
        cond_dim: width of the time embedding ``c`` (the adaLN input).
        adaln: whether the blocks have adaLN modulation (False: plain pre-LayerNorm blocks, BD3-LM option).
        time_conditioning: whether ``timesteps`` reach the model; False feeds sigma = 0 whatever is given.
        suppressed_token_id: the mask id of a SUBS-parameterised checkpoint (its logit is never a
            prediction), or None (uniform-state models: every id is a prediction).
        frequency_embedding_size: size of the sinusoidal time features (256 in every published model).
    """

    model_type = MODEL_TYPE

    def __init__(
        self,
        vocab_size: int = 50258,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        cond_dim: int = 128,
        mlp_ratio: int = 4,
        max_position_embeddings: int = 1024,
        adaln: bool = True,
        time_conditioning: bool = False,
        suppressed_token_id: int | None = None,
        rope_theta: float = 10000.0,
        frequency_embedding_size: int = 256,
        tie_word_embeddings: bool = False,
        **kwargs: Any,
    ) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.cond_dim = cond_dim
        self.mlp_ratio = mlp_ratio
        self.max_position_embeddings = max_position_embeddings
        self.adaln = adaln
        self.time_conditioning = time_conditioning
        self.suppressed_token_id = suppressed_token_id
        self.rope_theta = rope_theta
        self.frequency_embedding_size = frequency_embedding_size
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)


class TokenEmbedding(nn.Module):
    """The token table as a bare matrix ``embedding`` [V, D] (the published name); ``weight`` is the
    same tensor under transformers' usual name."""

    def __init__(self, vocab_size: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Parameter(torch.empty(vocab_size, dim))

    @property
    def weight(self) -> nn.Parameter:
        return self.embedding

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embedding[ids]


class TimeEmbedding(nn.Module):
    """sigma [B] -> [B, cond_dim]: sinusoidal features (cos half first), then Linear-SiLU-Linear."""

    def __init__(self, cond_dim: int, frequencies: int) -> None:
        super().__init__()
        self.frequencies = frequencies
        self.mlp = nn.Sequential(nn.Linear(frequencies, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))

    def forward(self, sigma: torch.Tensor) -> torch.Tensor:
        half = self.frequencies // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=sigma.device) / half)
        angles = sigma.float()[:, None] * freqs[None]
        features = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
        if self.frequencies % 2:
            features = F.pad(features, (0, 1))
        return self.mlp(features.to(self.mlp[0].weight.dtype))


class LayerNorm(nn.Module):
    """LayerNorm without bias, normalised in float32 (as published)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), (x.shape[-1],)).to(x.dtype) * self.weight


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


class DiTBlock(nn.Module):
    """One pre-LayerNorm block with adaLN-modulated attention and MLP halves (gated residuals)."""

    def __init__(self, config: DiTConfig, layer_idx: int) -> None:
        super().__init__()
        dim = config.hidden_size
        self.layer_idx = layer_idx
        self.heads = config.num_attention_heads
        self.norm1 = LayerNorm(dim)
        self.attn_qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.attn_out = nn.Linear(dim, dim, bias=False)
        self.norm2 = LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, config.mlp_ratio * dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(config.mlp_ratio * dim, dim))
        self.adaLN_modulation = nn.Linear(config.cond_dim, 6 * dim) if config.adaln else None

    def attention(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None,
                  cache: Any) -> torch.Tensor:
        """x [B, L, D] (normalised) -> attention output [B, L, D]; ``cos``/``sin`` [B, 1, L, d]."""
        batch, length, dim = x.shape
        q, k, v = self.attn_qkv(x).view(batch, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        q = q * cos + _rotate_half(q) * sin  # [B, H, L, d]
        k = k * cos + _rotate_half(k) * sin
        if cache is not None:
            k, v = cache.update(k, v, self.layer_idx)
        if mask is not None and mask.dtype != torch.bool:  # eager attention: an additive mask
            scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
            out = (scores + mask.to(scores.dtype)).softmax(-1) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.attn_out(out.transpose(1, 2).reshape(batch, length, dim))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, c: torch.Tensor | None,
                mask: torch.Tensor | None, cache: Any) -> torch.Tensor:
        if self.adaLN_modulation is None:
            x = x + self.attention(self.norm1(x), cos, sin, mask, cache)
            return x + self.mlp(self.norm2(x))
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN_modulation(c)[:, None].chunk(6, dim=2)
        x = x + gate_a * self.attention(_modulate(self.norm1(x), shift_a, scale_a), cos, sin, mask, cache)
        return x + gate_m * self.mlp(_modulate(self.norm2(x), shift_m, scale_m))


class FinalLayer(nn.Module):
    """LayerNorm (adaLN-modulated when the model has adaLN), then the vocabulary projection (with bias)."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.norm_final = LayerNorm(config.hidden_size)
        self.linear = nn.Linear(config.hidden_size, config.vocab_size)
        self.adaLN_modulation = nn.Linear(config.cond_dim, 2 * config.hidden_size) if config.adaln else None

    def forward(self, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
        x = self.norm_final(x)
        if self.adaLN_modulation is not None:
            shift, scale = self.adaLN_modulation(c)[:, None].chunk(2, dim=2)
            x = _modulate(x, shift, scale)
        return self.linear(x)


class DiTBackbone(nn.Module):
    """The published ``backbone`` module tree (names as stored)."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.vocab_embed = TokenEmbedding(config.vocab_size, config.hidden_size)
        self.sigma_map = TimeEmbedding(config.cond_dim, config.frequency_embedding_size) if config.adaln else None
        self.blocks = nn.ModuleList(DiTBlock(config, i) for i in range(config.num_hidden_layers))
        self.output_layer = FinalLayer(config)


class DiTForDiffusion(PreTrainedModel):
    """A DiT denoiser with the causal-LM calling convention of difflm's backbones: ``input_ids``, an
    explicit 4-D ``attention_mask`` (boolean for sdpa, additive for eager; None = full attention, as
    the published code), ``position_ids`` and an optional ``timesteps`` (sigma [B]) -> ``.logits``."""

    config_class = DiTConfig
    base_model_prefix = "backbone"
    _no_split_modules = ["DiTBlock"]
    _supports_sdpa = True
    _supports_attention_backend = False

    def __init__(self, config: DiTConfig) -> None:
        super().__init__(config)
        self.backbone = DiTBackbone(config)
        head_dim = config.hidden_size // config.num_attention_heads
        inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.backbone.vocab_embed

    def get_output_embeddings(self) -> nn.Module:
        return self.backbone.output_layer.linear

    def _init_weights(self, module: nn.Module) -> None:
        # only for models built from scratch (tests, training); published weights overwrite all of it
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, TokenEmbedding):
            nn.init.normal_(module.embedding, std=0.02)
        elif isinstance(module, LayerNorm):
            nn.init.ones_(module.weight)

    def _mask(self, attention_mask: torch.Tensor | None, batch: int, length: int, keys: int) -> torch.Tensor | None:
        """The 4-D mask in the form the attention takes (bool for sdpa, additive float for eager)."""
        if attention_mask is None:
            return None
        if attention_mask.dim() == 2:  # a padding mask [B, K]: hide padded keys
            if attention_mask.shape[-1] != keys:
                raise InputError(f"attention_mask covers {attention_mask.shape[-1]} keys, the model sees {keys}")
            attention_mask = attention_mask.bool()[:, None, None, :].expand(batch, 1, length, keys)
        if attention_mask.dim() != 4:
            raise InputError(f"attention_mask must be [batch, length] or [batch, 1, queries, keys], got "
                             f"{tuple(attention_mask.shape)}")
        eager = self.config._attn_implementation == "eager"
        if attention_mask.dtype == torch.bool:
            if eager:
                return torch.zeros(attention_mask.shape, dtype=torch.float32,
                                   device=attention_mask.device).masked_fill(~attention_mask, torch.finfo(torch.float32).min)
            return attention_mask
        return attention_mask.to(self.dtype)  # additive, in the compute dtype

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool | None = None,
        timesteps: torch.Tensor | float | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Args: input_ids LongTensor [B, L]; attention_mask [B, 1, L, K] (or [B, K]); position_ids [B, L]
        (default 0..L-1 after the cached keys); timesteps: sigma, FloatTensor [B] or a number (ignored -
        taken as 0 - without ``time_conditioning``). Returns CausalLMOutputWithPast(logits [B, L, V])."""
        batch, length = input_ids.shape
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        cache = past_key_values if use_cache or past_key_values is not None else None
        past = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past, past + length, device=input_ids.device).expand(batch, -1)
        bb = self.backbone
        x = bb.vocab_embed(input_ids)
        c = None
        if bb.sigma_map is not None:
            sigma = torch.zeros(batch, device=x.device) if timesteps is None or not self.config.time_conditioning \
                else torch.as_tensor(timesteps, dtype=torch.float32, device=x.device).reshape(-1).expand(batch)
            c = F.silu(bb.sigma_map(sigma))
        angles = position_ids.to(torch.float32)[..., None] * self.inv_freq.float().to(x.device)  # [B, L, d/2]
        emb = torch.cat((angles, angles), dim=-1)[:, None]  # [B, 1, L, d]: half-split layout
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        mask = self._mask(attention_mask, batch, length, past + length)
        for block in bb.blocks:
            x = block(x, cos, sin, c, mask, cache)
        logits = bb.output_layer(x, c)
        suppressed = self.config.suppressed_token_id
        if suppressed is not None:  # SUBS: the mask token is never a prediction
            logits[..., suppressed] = torch.finfo(logits.dtype).min
        return CausalLMOutputWithPast(logits=logits, past_key_values=cache if use_cache else None)


AutoConfig.register(MODEL_TYPE, DiTConfig, exist_ok=True)
AutoModelForCausalLM.register(DiTConfig, DiTForDiffusion, exist_ok=True)
