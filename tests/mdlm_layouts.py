"""Tiny random checkpoints in the published (hub) layouts of the Kuleshov group's DiTs: MDLM, BD3-LM,
UDLM and Duo. config.json carries the official field names, model_type, architectures and auto_map;
model.safetensors the official weight names (``backbone.*``, the rotary ``inv_freq`` buffer and BD3-LM's
``sampling_eps_*`` buffers included). Everything is a function of the seed, so the tests and the
official-fixture script (scripts/official_fixtures/mdlm_family.py) rebuild the same checkpoint.

Weights are drawn away from the published zero init (adaLN, output layer) so that every term counts.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

# one tiny size for all four: 2 blocks, 4 heads of 8, vocabulary of 64 (the last id is MDLM's [MASK])
SIZES = {"vocab_size": 64, "hidden_dim": 32, "cond_dim": 16, "n_blocks": 2, "n_heads": 4, "model_length": 16,
         "dropout": 0.1}
SEEDS = {"mdlm": 11, "bd3lm": 12, "udlm": 13, "duo": 14}


def dit_weights(seed: int, *, vocab: int, dim: int, cond: int, blocks: int, heads: int, adaln: bool = True,
                sigma_map: bool = True) -> dict[str, torch.Tensor]:
    """Random weights under the hub names (float32)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 0.2) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    w = {"backbone.vocab_embed.embedding": rand(vocab, dim, scale=1.0)}
    if sigma_map:
        w.update({"backbone.sigma_map.mlp.0.weight": rand(cond, 256, scale=0.1), "backbone.sigma_map.mlp.0.bias": rand(cond),
                  "backbone.sigma_map.mlp.2.weight": rand(cond, cond), "backbone.sigma_map.mlp.2.bias": rand(cond)})
    head = dim // heads
    w["backbone.rotary_emb.inv_freq"] = 1.0 / (10000 ** (torch.arange(0, head, 2).float() / head))
    for i in range(blocks):
        p = f"backbone.blocks.{i}."
        w.update({p + "norm1.weight": 1 + rand(dim, scale=0.1), p + "attn_qkv.weight": rand(3 * dim, dim),
                  p + "attn_out.weight": rand(dim, dim), p + "norm2.weight": 1 + rand(dim, scale=0.1),
                  p + "mlp.0.weight": rand(4 * dim, dim), p + "mlp.0.bias": rand(4 * dim),
                  p + "mlp.2.weight": rand(dim, 4 * dim), p + "mlp.2.bias": rand(dim)})
        if adaln:
            w.update({p + "adaLN_modulation.weight": rand(6 * dim, cond), p + "adaLN_modulation.bias": rand(6 * dim)})
    w.update({"backbone.output_layer.norm_final.weight": 1 + rand(dim, scale=0.1),
              "backbone.output_layer.linear.weight": rand(vocab, dim), "backbone.output_layer.linear.bias": rand(vocab)})
    if adaln:
        w.update({"backbone.output_layer.adaLN_modulation.weight": rand(2 * dim, cond),
                  "backbone.output_layer.adaLN_modulation.bias": rand(2 * dim)})
    return w


def _write(path: Path, config: dict, weights: dict[str, torch.Tensor], dtype: torch.dtype) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    save_file({k: v.to(dtype).contiguous() for k, v in weights.items()}, str(path / "model.safetensors"))
    return path


def _weights(family: str, seed: int | None, vocab: int | None = None, **kw) -> dict[str, torch.Tensor]:
    s = SIZES
    return dit_weights(SEEDS[family] if seed is None else seed, vocab=vocab or s["vocab_size"], dim=s["hidden_dim"],
                       cond=s["cond_dim"], blocks=s["n_blocks"], heads=s["n_heads"], **kw)


def _sizes() -> dict:
    return dict(SIZES)


def write_mdlm(path: Path, *, seed: int | None = None, dtype: torch.dtype = torch.float32, **changes) -> Path:
    """kuleshov-group/mdlm-owt's layout (MDLM, no time conditioning)."""
    config = {**_sizes(), "model_type": "mdlm", "architectures": ["MDLM"], "time_conditioning": False,
              "return_dict": False,
              "auto_map": {"AutoConfig": "configuration_mdlm.MDLMConfig", "AutoModelForMaskedLM": "modeling_mdlm.MDLM"},
              **changes}
    return _write(path, config, _weights("mdlm", seed), dtype)


def write_bd3lm(path: Path, *, seed: int | None = None, dtype: torch.dtype = torch.float32, block_size: int = 4,
                adaln: bool = True, **changes) -> Path:
    """kuleshov-group/bd3lm-owt-block_size{4,8,16}'s layout (cross_attn two-copy training forward)."""
    config = {**_sizes(), "model_type": "bd3lm", "architectures": ["BD3LM"], "block_size": block_size,
              "cross_attn": True, "adaln": adaln, "attn_backend": "sdpa", "causal": False, "time_conditioning": False,
              "var_min": True, "sampling_eps_min": 1e-3, "sampling_eps_max": 1.0, "return_dict": False,
              "auto_map": {"AutoConfig": "configuration_bd3lm.BD3LMConfig",
                           "AutoModelForMaskedLM": "modeling_bd3lm.BD3LM"},
              **changes}
    weights = _weights("bd3lm", seed, adaln=adaln, sigma_map=adaln)
    weights.update({"sampling_eps_min": torch.tensor(1e-3), "sampling_eps_max": torch.tensor(1.0)})
    return _write(path, config, weights, dtype)


def write_udlm(path: Path, *, seed: int | None = None, dtype: torch.dtype = torch.float32, **changes) -> Path:
    """kuleshov-group/udlm-lm1b's layout (uniform-state, time-conditioned)."""
    config = {**_sizes(), "model_type": "udlm", "architectures": ["UDLM"], "time_conditioning": True, "cfg": False,
              "cfg_num_classes": -1, "return_dict": False,
              "auto_map": {"AutoConfig": "configuration_udlm.UDLMConfig", "AutoModelForMaskedLM": "modeling_udlm.UDLM"},
              **changes}
    return _write(path, config, _weights("udlm", seed, config["vocab_size"]), dtype)


def write_duo(path: Path, *, seed: int | None = None, dtype: torch.dtype = torch.float32, **changes) -> Path:
    """s-sahoo/duo's layout (uniform-state, time-conditioned, adaLN: causal false)."""
    config = {**_sizes(), "model_type": "duo", "architectures": ["DUO"], "causal": False, "return_dict": False,
              "auto_map": {"AutoConfig": "configuration_duo.DUOConfig", "AutoModelForMaskedLM": "modeling_duo.DUO"},
              **changes}
    return _write(path, config, _weights("duo", seed, config["vocab_size"]), dtype)


WRITERS = {"mdlm": write_mdlm, "bd3lm": write_bd3lm, "udlm": write_udlm, "duo": write_duo}
