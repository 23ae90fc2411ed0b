"""`ContinuousDLM`: an embedding-space diffusion LM (Diffusion-LM / CDCD / Plaid lineage).

    tokens -> normalised embeddings e (d dims) -> z_t = alpha(t) e + sigma(t) eps
    [z_t | self-conditioning x0 estimate] -> linear -> + time embedding (+ a "clean" vector on
    conditioning positions) -> bidirectional transformers backbone -> linear -> logits over tokens

The denoiser predicts the token distribution (CDCD's score interpolation): x0_hat = softmax(logits) @ e,
trained with cross-entropy. The backbone is a stock transformers base model (LlamaModel, ...) fed
``inputs_embeds``; like `DiffusionLM`, it always gets an explicit 4-D mask, because stock attention
turns causal without one. Its own token-embedding table is unused and built with one row.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig

from ..atomic import atomic_directory
from ..attention import bidirectional_attention_mask, to_4d
from ..errors import ConfigError, InputError, ModelLoadError
from ..formats import LoadedModel, load_tokenizer
from ..formats.loading import DTYPES
from .config import CONFIG_NAME, ContinuousConfig
from .schedule import GaussianSchedule

WEIGHTS_NAME = "model.safetensors"


def backbone_config(architecture: dict[str, Any]) -> PretrainedConfig:
    """The transformers config of a denoiser backbone from ``architecture`` (a model_type key plus
    config fields). Its vocabulary is one row: tokens enter as embeddings, never as ids."""
    arch = dict(architecture)
    model_type = arch.pop("model_type", None)
    if model_type is None:
        raise ConfigError("architecture needs a model_type (e.g. llama, qwen2)")
    arch.pop("tie_word_embeddings", None)  # the head is the denoiser's own (see ContinuousDLM)
    try:
        cfg = AutoConfig.for_model(model_type, **{**arch, "vocab_size": 1, "pad_token_id": None,
                                                  "bos_token_id": None, "eos_token_id": None})
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"architecture: {exc}") from None
    cfg._attn_implementation = "sdpa"
    return cfg


def time_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features [B, dim] of the times t [B] in [0, 1] (scaled by 1000, as in DDPM)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class ContinuousDLM(nn.Module):
    """A continuous DLM: a `ContinuousConfig`, a transformers backbone and the small modules around it."""

    def __init__(self, backbone_cfg: PretrainedConfig, config: ContinuousConfig, tokenizer: Any = None) -> None:
        super().__init__()
        if config.vocab_size < 2:
            raise ConfigError(f"a continuous DLM needs vocab_size >= 2, got {config.vocab_size}")
        self.config, self.tokenizer = config, tokenizer
        self.schedule = GaussianSchedule(config.schedule, config.offset)
        hidden, d = backbone_cfg.hidden_size, config.embed_dim
        self.embedding = nn.Parameter(torch.randn(config.vocab_size, d))
        self.in_proj = nn.Linear(2 * d if config.self_condition else d, hidden)
        self.time_mlp = nn.Sequential(nn.Linear(config.time_embed_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.clean_vector = nn.Parameter(torch.zeros(hidden))  # tells the backbone which positions are given
        self.backbone = AutoModel.from_config(backbone_cfg, attn_implementation="sdpa")
        # tokens enter as embeddings: the backbone's one-row token table is frozen (DDP needs every
        # trainable parameter to get a gradient)
        self.backbone.get_input_embeddings().weight.requires_grad_(False)
        self.head = nn.Linear(hidden, config.vocab_size, bias=False)

    # -- properties ----------------------------------------------------------------------------
    @property
    def max_length(self) -> int | None:
        value = getattr(self.backbone.config, "max_position_embeddings", None)
        return value if isinstance(value, int) else None

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    @property
    def num_parameters(self) -> int:
        """Trainable parameters, the backbone's unused one-row token table excluded."""
        unused = self.backbone.get_input_embeddings().weight.numel()
        return sum(p.numel() for p in self.parameters()) - unused

    # -- embeddings ----------------------------------------------------------------------------
    def embedding_table(self) -> torch.Tensor:
        """The normalised embeddings [V, d]: every row has norm sqrt(d) (coordinates on the noise's scale;
        normalising keeps them from collapsing or growing to escape the noise, as in CDCD)."""
        table = self.embedding.float()
        return F.normalize(table, dim=-1) * math.sqrt(self.config.embed_dim)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Clean embeddings [B, L, d] of token ids [B, L]."""
        return self.embedding_table()[ids]

    def x0_estimate(self, logits: torch.Tensor) -> torch.Tensor:
        """Score interpolation: the expected embedding softmax(logits) @ e, [B, L, d] from logits [B, L, V]."""
        # in float32 even under autocast: the likelihood bound weights ||e - x0_hat||^2 by up to ~1e3
        with torch.autocast(logits.device.type, enabled=False):
            return torch.softmax(logits.float(), dim=-1) @ self.embedding_table()

    def noisy(self, ids: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """z_t = alpha(t) e(ids) + sigma(t) noise: [B, L, d] from ids [B, L], t [B], noise [B, L, d]."""
        alpha, sigma = self.schedule.alpha_sigma(t.to(self.device))
        return alpha[:, None, None] * self.embed(ids) + sigma[:, None, None] * noise.to(self.device)

    # -- the denoiser --------------------------------------------------------------------------
    def denoise(self, z: torch.Tensor, t: torch.Tensor, clean: torch.Tensor, ids: torch.Tensor,
                self_cond: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [B, L, V] of the clean tokens given the latents.

        Args:
            z: FloatTensor [B, L, d], the noisy latents (read at the positions that are not clean).
            t: FloatTensor [B], the noise level of every row.
            clean: BoolTensor [B, L], positions given clean (the prompt, BOS, infilling's known tokens):
                they take ``e(ids)`` instead of z, and are marked as given.
            ids: LongTensor [B, L], the tokens of the clean positions (others are ignored).
            self_cond: FloatTensor [B, L, d], the previous x0 estimate (None: zeros, "no estimate yet").
            attention_mask: [B, L], 1 for real tokens; padded keys are hidden. Attention is bidirectional.
        """
        if z.dim() != 3 or clean.shape != z.shape[:2] or ids.shape != z.shape[:2]:
            raise InputError(f"denoise needs z [B, L, d] and clean/ids [B, L]; got {tuple(z.shape)}, "
                             f"{tuple(clean.shape)}, {tuple(ids.shape)}")
        length = z.shape[1]
        if self.max_length is not None and length > self.max_length:
            raise InputError(f"sequence of {length} tokens is longer than the model's context of {self.max_length}")
        device = self.device
        clean, ids = clean.to(device), ids.to(device)
        e = self.embed(ids)
        given = clean[..., None]
        inputs = torch.where(given, e, z.to(device).float())
        if self.config.self_condition:
            sc = torch.zeros_like(inputs) if self_cond is None else self_cond.to(device).float()
            inputs = torch.cat([inputs, torch.where(given, e, sc)], dim=-1)
        hidden = self.in_proj(inputs) + self.time_mlp(time_features(t.to(device), self.config.time_embed_dim))[:, None]
        hidden = hidden + given * self.clean_vector
        pattern = bidirectional_attention_mask(length, device=device)
        mask4d = to_4d(pattern, attention_mask, batch_size=z.shape[0])
        position_ids = None
        if attention_mask is not None:  # real tokens count from 0 whatever the padding (as DiffusionLM)
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0).to(device)
        out = self.backbone(inputs_embeds=hidden, attention_mask=mask4d, position_ids=position_ids, use_cache=False)
        return self.head(out.last_hidden_state)

    def forward(self, ids: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, clean: torch.Tensor,
                self_cond: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Training forward: logits [B, L, V] of ``ids`` [B, L] noised to level ``t`` [B] with ``noise``
        [B, L, d] (the embedding lookup happens here, inside the DDP wrapper, so its gradient is synced)."""
        return self.denoise(self.noisy(ids, t, noise), t, clean, ids, self_cond, attention_mask)

    # -- save / load ---------------------------------------------------------------------------
    def save_pretrained(self, path: str | os.PathLike, *, state_dict: dict[str, torch.Tensor] | None = None,
                        dtype: torch.dtype | None = None) -> Path:
        """Write config.json (the backbone's), continuous_config.json, model.safetensors and the tokenizer,
        atomically. ``state_dict`` replaces the module's own (e.g. gathered from FSDP); ``dtype`` casts
        the floating weights (bf16 halves the size)."""
        state = self.state_dict() if state_dict is None else state_dict
        state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous()
                 for k, v in state.items()}
        with atomic_directory(path) as tmp:
            self.backbone.config.save_pretrained(tmp)
            save_file(state, str(Path(tmp) / WEIGHTS_NAME), metadata={"format": "pt", "difflm": "continuous"})
            self.config.save(tmp)
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(tmp)
        return Path(path)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, dtype: torch.dtype = torch.float32,
                        device: str | torch.device = "cpu") -> "ContinuousDLM":
        """Load a directory written by `save_pretrained` (a bundled name is resolved by the caller)."""
        path = Path(path)
        if not (path / CONFIG_NAME).is_file():
            raise ModelLoadError(f"{path} is not a continuous DLM directory (no {CONFIG_NAME})")
        config = ContinuousConfig.load(path)
        try:
            bcfg = AutoConfig.from_pretrained(path)
            state = load_file(str(path / WEIGHTS_NAME))
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"could not load the continuous DLM in {path}: {exc}") from None
        bcfg._attn_implementation = "sdpa"
        tokenizer = None
        if (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file():
            tokenizer = load_tokenizer(path)
        model = cls(bcfg, config, tokenizer)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ModelLoadError(f"{path}: weights do not match the config (missing {missing[:3]}, unexpected {unexpected[:3]})")
        return model.to(device=device, dtype=dtype).eval()


def load_continuous(path: str | os.PathLike, *, format: str | None = None, dtype: torch.dtype | str | None = None,
                    **overrides: Any) -> LoadedModel:
    """The "continuous" kind of `difflm.registry.MODEL_KINDS` (`difflm.formats.load` of a directory holding
    continuous_config.json): the `ContinuousDLM` and its tokenizer, in float32 unless ``dtype`` says."""
    if overrides:
        raise ConfigError(f"{path} is a continuous DLM: it takes no DiffusionConfig settings "
                          f"({', '.join(sorted(overrides))})")
    if isinstance(dtype, str):
        if dtype.lower() not in {**DTYPES, "auto": None}:
            raise ConfigError(f"unknown dtype {dtype!r}; choose one of auto, float32, bfloat16, float16")
        dtype = DTYPES.get(dtype.lower())
    model = ContinuousDLM.from_pretrained(path, dtype=dtype or torch.float32)
    return LoadedModel("continuous", model, model.tokenizer, Path(path), "continuous",
                       f"{CONFIG_NAME} (a continuous DLM)", model_type="continuous")
