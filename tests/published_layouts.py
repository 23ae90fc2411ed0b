"""Tiny random checkpoints in the published layouts of DiffuGPT, DiffuLLaMA, LLaDA and Dream, and
reference forward passes written from the published architecture descriptions (plain torch, no
transformers), used to check that difflm maps every weight and convention right.

Each writer returns the weights as float32 tensors (after rounding through the stored dtype) under
the names the reference forward uses, so the test compares like with like.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

# -- saving ------------------------------------------------------------------------------------------


def save_weights(path: Path, tensors: dict[str, torch.Tensor], *, dtype: torch.dtype, shards: int = 1) -> None:
    """Write ``tensors`` as model.safetensors, or as ``shards`` files plus an index."""
    path.mkdir(parents=True, exist_ok=True)
    stored = {k: v.to(dtype).contiguous() for k, v in tensors.items()}
    if shards == 1:
        save_file(stored, str(path / "model.safetensors"))
        return
    names = sorted(stored)
    weight_map = {}
    for i in range(shards):
        part = names[i::shards]
        file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: stored[k] for k in part}, str(path / file))
        weight_map.update({k: file for k in part})
    index = {"metadata": {"total_size": sum(v.numel() * v.element_size() for v in stored.values())}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))


def _rand(*shape: int, scale: float = 0.15) -> torch.Tensor:
    return torch.randn(*shape) * scale


def _norm(n: int) -> torch.Tensor:
    return 1.0 + 0.1 * torch.randn(n)


def _rounded(tensors: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: v.to(dtype).float() for k, v in tensors.items()}


# -- reference forwards ------------------------------------------------------------------------------


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def half_split_rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary embedding, half-split layout: dims (j, j + d/2) rotate together. x: [B, H, L, d]."""
    d, length = x.shape[-1], x.shape[-2]
    inv_freq = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    angles = torch.arange(length, dtype=torch.float64)[:, None] * inv_freq[None]
    cos, sin = torch.cat([angles.cos()] * 2, -1).float(), torch.cat([angles.sin()] * 2, -1).float()
    first, second = x[..., : d // 2], x[..., d // 2 :]
    return x * cos + torch.cat([-second, first], -1) * sin


def full_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Every position attends to every position (no causal mask), or where ``allowed`` [L, L] says.
    q, k, v: [B, H, L, d]."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    return scores.softmax(-1) @ v


def llama_like_forward(ids: torch.Tensor, w: dict[str, torch.Tensor], *, layers: int, heads: int, kv_heads: int,
                       theta: float, eps: float, qkv_bias: bool = False, qk_norm: bool = False,
                       allowed: torch.Tensor | None = None) -> torch.Tensor:
    """Pre-norm transformer with RMSNorm, RoPE, grouped-query bidirectional attention (or the
    pattern ``allowed`` [L, L]) and a SwiGLU MLP ``down(silu(gate(x)) * up(x))``; ``qk_norm``: an
    RMSNorm over each head's queries and keys before RoPE (Qwen3). Returns the raw logits [B, L, V]
    (no shift applied)."""
    x = w["embed"][ids]
    b, length, hidden = x.shape
    d = hidden // heads
    for i in range(layers):
        h = rms_norm(x, w[f"{i}.attn_norm"], eps)

        def proj(name: str, n: int) -> torch.Tensor:
            y = h @ w[f"{i}.{name}"].T + (w[f"{i}.{name}_bias"] if qkv_bias else 0)
            return y.view(b, length, n, d).transpose(1, 2)

        q, k, v = proj("q", heads), proj("k", kv_heads), proj("v", kv_heads)
        if qk_norm:
            q, k = rms_norm(q, w[f"{i}.q_norm"], eps), rms_norm(k, w[f"{i}.k_norm"], eps)
        q, k = half_split_rope(q, theta), half_split_rope(k, theta)
        k, v = k.repeat_interleave(heads // kv_heads, 1), v.repeat_interleave(heads // kv_heads, 1)
        att = full_attention(q, k, v, allowed).transpose(1, 2).reshape(b, length, hidden)
        x = x + att @ w[f"{i}.o"].T
        h = rms_norm(x, w[f"{i}.mlp_norm"], eps)
        x = x + (F.silu(h @ w[f"{i}.gate"].T) * (h @ w[f"{i}.up"].T)) @ w[f"{i}.down"].T
    return rms_norm(x, w["norm"], eps) @ w["head"].T


def gpt2_forward(ids: torch.Tensor, w: dict[str, torch.Tensor], *, layers: int, heads: int) -> torch.Tensor:
    """GPT-2 run bidirectionally: learned positions, LayerNorm, Conv1D weights [in, out], tanh-GELU,
    output head tied to the token embedding. Returns raw logits [B, L, V]."""
    b, length = ids.shape
    x = w["wte"][ids] + w["wpe"][:length]
    hidden = x.shape[-1]
    d = hidden // heads
    for i in range(layers):
        h = F.layer_norm(x, (hidden,), w[f"{i}.ln_1.weight"], w[f"{i}.ln_1.bias"], 1e-5)
        qkv = h @ w[f"{i}.c_attn.weight"] + w[f"{i}.c_attn.bias"]
        q, k, v = (t.view(b, length, heads, d).transpose(1, 2) for t in qkv.split(hidden, -1))
        att = full_attention(q, k, v).transpose(1, 2).reshape(b, length, hidden)
        x = x + att @ w[f"{i}.attn_proj.weight"] + w[f"{i}.attn_proj.bias"]
        h = F.layer_norm(x, (hidden,), w[f"{i}.ln_2.weight"], w[f"{i}.ln_2.bias"], 1e-5)
        h = F.gelu(h @ w[f"{i}.c_fc.weight"] + w[f"{i}.c_fc.bias"], approximate="tanh")
        x = x + h @ w[f"{i}.mlp_proj.weight"] + w[f"{i}.mlp_proj.bias"]
    x = F.layer_norm(x, (hidden,), w["ln_f.weight"], w["ln_f.bias"], 1e-5)
    return x @ w["wte"].T


def shifted(raw: torch.Tensor) -> torch.Tensor:
    """Aligned logits of a shift model: position i takes the prediction made at i-1 (Dream's
    convention for position 0: a copy of its own raw logits)."""
    return torch.cat([raw[:, :1], raw[:, :-1]], 1)


# -- writers -----------------------------------------------------------------------------------------

LLADA = dict(layers=2, heads=4, kv_heads=4, hidden=32, mlp=48, vocab=128, theta=500000.0, eps=1e-5, mask=120)


def write_llada(path: Path, *, dtype=torch.float32, shards: int = 1, seed: int = 0, **config_changes):
    """LLaDA-8B layout: model.transformer.{wte, blocks.N.*, ln_f, ff_out} + its own config.json."""
    torch.manual_seed(seed)
    c = LLADA
    h, m = c["hidden"], c["mlp"]
    stored, ref = {}, {}
    stored["model.transformer.wte.weight"] = ref["embed"] = _rand(c["vocab"], h, scale=1.0)
    for i in range(c["layers"]):
        blk = f"model.transformer.blocks.{i}."
        for name, ref_name, shape in (
            ("q_proj", "q", (h, h)), ("k_proj", "k", (h, h)), ("v_proj", "v", (h, h)), ("attn_out", "o", (h, h)),
            ("ff_proj", "gate", (m, h)), ("up_proj", "up", (m, h)), ("ff_out", "down", (h, m)),
        ):
            stored[blk + name + ".weight"] = ref[f"{i}.{ref_name}"] = _rand(*shape)
        stored[blk + "attn_norm.weight"] = ref[f"{i}.attn_norm"] = _norm(h)
        stored[blk + "ff_norm.weight"] = ref[f"{i}.mlp_norm"] = _norm(h)
    stored["model.transformer.ln_f.weight"] = ref["norm"] = _norm(h)
    stored["model.transformer.ff_out.weight"] = ref["head"] = _rand(c["vocab"], h)
    save_weights(path, stored, dtype=dtype, shards=shards)
    config = {
        "architectures": ["LLaDAModelLM"], "model_type": "llada",
        "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig", "AutoModel": "modeling_llada.LLaDAModelLM"},
        "d_model": h, "n_layers": c["layers"], "n_heads": c["heads"], "n_kv_heads": c["kv_heads"],
        "mlp_hidden_size": m, "mlp_ratio": 4, "vocab_size": c["vocab"], "embedding_size": c["vocab"],
        "max_sequence_length": 64, "rope_theta": c["theta"], "rms_norm_eps": c["eps"], "rope": True,
        "alibi": False, "block_type": "llama", "layer_norm_type": "rms", "activation_type": "silu",
        "include_bias": False, "include_qkv_bias": False, "weight_tying": False, "block_group_size": 1,
        "mask_token_id": c["mask"], "eos_token_id": 101, "pad_token_id": 101, "use_cache": False,
    }
    config.update(config_changes)
    (path / "config.json").write_text(json.dumps(config))
    return _rounded(ref, dtype)


def llada_reference(ids: torch.Tensor, ref: dict[str, torch.Tensor]) -> torch.Tensor:
    c = LLADA
    return llama_like_forward(ids, ref, layers=c["layers"], heads=c["heads"], kv_heads=c["kv_heads"], theta=c["theta"], eps=c["eps"])


DREAM = dict(layers=2, heads=4, kv_heads=2, hidden=32, mlp=48, vocab=272, theta=1e6, eps=1e-6,
             mask=263, eos=260, im_end=262)


def _hf_llama_weights(c: dict, *, biases: bool) -> tuple[dict, dict]:
    """Weights under the stock Llama/Qwen2 names (model.layers.N.*), and the reference's names."""
    h, m = c["hidden"], c["mlp"]
    kv = h // c["heads"] * c["kv_heads"]
    stored, ref = {}, {}
    stored["model.embed_tokens.weight"] = ref["embed"] = _rand(c["vocab"], h, scale=1.0)
    for i in range(c["layers"]):
        pre = f"model.layers.{i}."
        for name, ref_name, shape in (
            ("self_attn.q_proj", "q", (h, h)), ("self_attn.k_proj", "k", (kv, h)), ("self_attn.v_proj", "v", (kv, h)),
            ("self_attn.o_proj", "o", (h, h)), ("mlp.gate_proj", "gate", (m, h)), ("mlp.up_proj", "up", (m, h)),
            ("mlp.down_proj", "down", (h, m)),
        ):
            stored[pre + name + ".weight"] = ref[f"{i}.{ref_name}"] = _rand(*shape)
        if biases:
            for name, ref_name, n in (("q_proj", "q", h), ("k_proj", "k", kv), ("v_proj", "v", kv)):
                stored[pre + f"self_attn.{name}.bias"] = ref[f"{i}.{ref_name}_bias"] = _rand(n)
        stored[pre + "input_layernorm.weight"] = ref[f"{i}.attn_norm"] = _norm(h)
        stored[pre + "post_attention_layernorm.weight"] = ref[f"{i}.mlp_norm"] = _norm(h)
    stored["model.norm.weight"] = ref["norm"] = _norm(h)
    stored["lm_head.weight"] = ref["head"] = _rand(c["vocab"], h)
    return stored, ref


def write_dream(path: Path, *, dtype=torch.float32, shards: int = 1, seed: int = 0, **config_changes):
    """Dream-7B layout: Qwen2ForCausalLM names (q/k/v biases) under a model_type "Dream" config.json."""
    torch.manual_seed(seed)
    c = DREAM
    stored, ref = _hf_llama_weights(c, biases=True)
    save_weights(path, stored, dtype=dtype, shards=shards)
    config = {
        "architectures": ["DreamModel"], "model_type": "Dream",
        "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
        "hidden_size": c["hidden"], "intermediate_size": c["mlp"], "num_hidden_layers": c["layers"],
        "num_attention_heads": c["heads"], "num_key_value_heads": c["kv_heads"], "vocab_size": c["vocab"],
        "max_position_embeddings": 64, "rms_norm_eps": c["eps"], "rope_theta": c["theta"], "rope_scaling": None,
        "hidden_act": "silu", "tie_word_embeddings": False, "use_sliding_window": False, "sliding_window": None,
        "attention_dropout": 0.0, "mask_token_id": c["mask"], "pad_token_id": c["eos"], "bos_token_id": c["eos"],
        "eos_token_id": c["eos"], "use_cache": False,
    }
    config.update(config_changes)
    (path / "config.json").write_text(json.dumps(config))
    return _rounded(ref, dtype)


def dream_reference(ids: torch.Tensor, ref: dict[str, torch.Tensor]) -> torch.Tensor:
    c = DREAM
    raw = llama_like_forward(ids, ref, layers=c["layers"], heads=c["heads"], kv_heads=c["kv_heads"], theta=c["theta"],
                             eps=c["eps"], qkv_bias=True)
    return shifted(raw)


DIFFULLAMA = dict(layers=2, heads=4, kv_heads=4, hidden=32, mlp=48, vocab=1000, theta=10000.0, eps=1e-5, mask=811)

SDAR = dict(layers=2, heads=4, kv_heads=2, hidden=32, mlp=48, vocab=280, theta=1e6, eps=1e-6,
            mask=277, eos=270, im_end=272, block=4)


def write_sdar(path: Path, *, dtype=torch.float32, seed: int = 0, **config_changes):
    """SDAR (JetLM/SDAR-*-Chat) layout: Qwen3ForCausalLM names (per-head q_norm / k_norm, no biases)
    under a model_type "sdar" / SDARForCausalLM config.json with Qwen3's field names."""
    torch.manual_seed(seed)
    c = SDAR
    stored, ref = _hf_llama_weights(c, biases=False)
    d = c["hidden"] // c["heads"]
    for i in range(c["layers"]):
        stored[f"model.layers.{i}.self_attn.q_norm.weight"] = ref[f"{i}.q_norm"] = _norm(d)
        stored[f"model.layers.{i}.self_attn.k_norm.weight"] = ref[f"{i}.k_norm"] = _norm(d)
    save_weights(path, stored, dtype=dtype)
    config = {
        "architectures": ["SDARForCausalLM"], "model_type": "sdar",
        "auto_map": {"AutoConfig": "configuration_sdar.SDARConfig", "AutoModelForCausalLM": "modeling_sdar.SDARForCausalLM"},
        "hidden_size": c["hidden"], "intermediate_size": c["mlp"], "num_hidden_layers": c["layers"],
        "num_attention_heads": c["heads"], "num_key_value_heads": c["kv_heads"], "head_dim": d, "vocab_size": c["vocab"],
        "max_position_embeddings": 64, "rms_norm_eps": c["eps"], "rope_theta": c["theta"], "rope_scaling": None,
        "hidden_act": "silu", "tie_word_embeddings": False, "attention_bias": False, "use_sliding_window": False,
        "sliding_window": None, "attention_dropout": 0.0, "bos_token_id": c["eos"], "eos_token_id": c["eos"],
        "mask_token_id": c["mask"], "use_cache": True,
    }
    config.update(config_changes)
    (path / "config.json").write_text(json.dumps(config))
    return _rounded(ref, dtype)


def sdar_reference(ids: torch.Tensor, ref: dict[str, torch.Tensor], block: int = SDAR["block"]) -> torch.Tensor:
    """SDAR's own decoder view: block-causal attention over blocks of ``block`` from position 0
    (its generate builds tril(ones(blocks, blocks)).repeat_interleave(block)), no shift."""
    c = SDAR
    blocks = torch.arange(ids.shape[1]) // block
    allowed = blocks[None, :] <= blocks[:, None]
    return llama_like_forward(ids, ref, layers=c["layers"], heads=c["heads"], kv_heads=c["kv_heads"], theta=c["theta"],
                              eps=c["eps"], qk_norm=True, allowed=allowed)


def write_llama(path: Path, *, marker: bool = True, dtype=torch.float32, seed: int = 0):
    """A plain LlamaForCausalLM directory (DiffuLLaMA's published layout); ``marker`` adds
    mask_token_id 811 to config.json."""
    torch.manual_seed(seed)
    c = DIFFULLAMA
    stored, ref = _hf_llama_weights(c, biases=False)
    save_weights(path, stored, dtype=dtype)
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": c["hidden"],
        "intermediate_size": c["mlp"], "num_hidden_layers": c["layers"], "num_attention_heads": c["heads"],
        "num_key_value_heads": c["kv_heads"], "vocab_size": c["vocab"], "max_position_embeddings": 64,
        "rms_norm_eps": c["eps"], "rope_theta": c["theta"], "hidden_act": "silu", "tie_word_embeddings": False,
        "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "bfloat16",
    }
    if marker:
        config["mask_token_id"] = c["mask"]
    (path / "config.json").write_text(json.dumps(config))
    return _rounded(ref, dtype)


def diffullama_reference(ids: torch.Tensor, ref: dict[str, torch.Tensor]) -> torch.Tensor:
    c = DIFFULLAMA
    raw = llama_like_forward(ids, ref, layers=c["layers"], heads=c["heads"], kv_heads=c["kv_heads"], theta=c["theta"], eps=c["eps"])
    return shifted(raw)


DIFFUGPT = dict(layers=2, heads=2, hidden=8, positions=64)


def write_diffugpt(path: Path, *, medium: bool = False, dtype=torch.float16, seed: int = 0, **config_changes):
    """DiffuGPT hub layout: a plain gpt2 config.json + the wrapper's keys (embed_tokens,
    denoise_model.*), head tied and not stored. ``medium``: vocab 50258 (DiffuGPT-M)."""
    torch.manual_seed(seed)
    c = DIFFUGPT
    h, vocab = c["hidden"], 50258 if medium else 50257
    stored, ref = {}, {}
    stored["embed_tokens.weight"] = ref["wte"] = _rand(vocab, h, scale=1.0)
    stored["denoise_model.wpe.weight"] = ref["wpe"] = _rand(c["positions"], h, scale=0.5)
    for i in range(c["layers"]):
        pre = f"denoise_model.h.{i}."
        for name, ref_name, shape in (
            ("attn.c_attn", "c_attn", (h, 3 * h)), ("attn.c_proj", "attn_proj", (h, h)),
            ("mlp.c_fc", "c_fc", (h, 4 * h)), ("mlp.c_proj", "mlp_proj", (4 * h, h)),
        ):
            stored[pre + name + ".weight"] = ref[f"{i}.{ref_name}.weight"] = _rand(*shape)
            stored[pre + name + ".bias"] = ref[f"{i}.{ref_name}.bias"] = _rand(shape[1], scale=0.05)
        for ln in ("ln_1", "ln_2"):
            stored[pre + ln + ".weight"] = ref[f"{i}.{ln}.weight"] = _norm(h)
            stored[pre + ln + ".bias"] = ref[f"{i}.{ln}.bias"] = _rand(h, scale=0.05)
    stored["denoise_model.ln_f.weight"] = ref["ln_f.weight"] = _norm(h)
    stored["denoise_model.ln_f.bias"] = ref["ln_f.bias"] = _rand(h, scale=0.05)
    save_weights(path, stored, dtype=dtype)
    config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": vocab, "n_embd": h,
              "n_layer": c["layers"], "n_head": c["heads"], "n_positions": c["positions"], "n_ctx": c["positions"],
              "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "bos_token_id": 50256, "eos_token_id": 50256}
    config.update(config_changes)
    (path / "config.json").write_text(json.dumps(config))
    return _rounded(ref, dtype)


def diffugpt_reference(ids: torch.Tensor, ref: dict[str, torch.Tensor]) -> torch.Tensor:
    return shifted(gpt2_forward(ids, ref, layers=DIFFUGPT["layers"], heads=DIFFUGPT["heads"]))


# -- tokenizers --------------------------------------------------------------------------------------


def write_qwen2_style_tokenizer(path: Path, specials: list[str], *, chat_template: str | None = None) -> dict[str, int]:
    """vocab.json + merges.txt of a tiny byte-level BPE and a tokenizer_config.json that names a
    custom class through auto_map (as Dream ships); the specials get ids after the BPE vocabulary.
    Returns {special: id}."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=260, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(["hello world, hello there"] * 20, trainer)
    path.mkdir(parents=True, exist_ok=True)
    tok.model.save(str(path))
    first = tok.get_vocab_size()
    ids = {s: first + i for i, s in enumerate(specials)}
    added = {str(i): {"content": s, "special": True, "lstrip": False, "rstrip": False, "normalized": False,
                      "single_word": False} for s, i in ids.items()}
    config = {"tokenizer_class": "DreamTokenizer", "auto_map": {"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]},
              "added_tokens_decoder": added, "eos_token": specials[0], "pad_token": specials[0]}
    if chat_template:
        config["chat_template"] = chat_template
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return ids


def write_word_tokenizer(path: Path, specials: list[str], *, chat_template: str | None = None, **special_roles: str):
    """A tokenizer.json (word level: w0..w39 then ``specials``) saved as PreTrainedTokenizerFast
    (as LLaDA ships). Returns the tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>"] + [f"w{i}" for i in range(40)] + specials
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", **special_roles)
    fast.add_special_tokens({"additional_special_tokens": specials})
    if chat_template:
        fast.chat_template = chat_template
    fast.save_pretrained(path)
    return fast


LLADA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|> {{ m['role'] }} <|end_header_id|> {{ m['content'] }} <|eot_id|> "
    "{% endfor %}{% if add_generation_prompt %}<|start_header_id|> assistant <|end_header_id|> {% endif %}"
)
QWEN_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
