"""Tiny random backbones of the three architectures difflm must support (no network)."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

VOCAB = 64
ARCHITECTURES = ("gpt2", "llama", "qwen2")
IMPLEMENTATIONS = ("sdpa", "eager")


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Every test module runs on one intra-op thread, restored after it: the models here are tiny and
    overhead-bound, and on a shared 2-core machine OpenMP contention made a decoding module alone 100x
    slower (tests/test_task_models.py: 889 s) - fast only when an earlier module had left torch at one
    thread. Pinned here, a module's speed no longer depends on which modules ran before it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def free_port() -> int:
    """A TCP port free on this host now (the OS picks it: bind port 0 and read it back), for a torchrun
    rendezvous: a fixed port collides when two test suites run on one host."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tiny_backbone(arch: str = "llama", attn: str = "sdpa", vocab: int = VOCAB, seed: int = 0, positions: int = 64):
    """A 2-layer random causal LM of the given architecture, in float32, eval mode."""
    torch.manual_seed(seed)
    if arch == "gpt2":
        cfg = GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=positions,
                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                         bos_token_id=0, eos_token_id=0)
        model = GPT2LMHeadModel(cfg)
    elif arch == "llama":
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=positions)
        model = LlamaForCausalLM(cfg)
    elif arch == "qwen2":
        cfg = Qwen2Config(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=positions)
        model = Qwen2ForCausalLM(cfg)
    else:
        raise ValueError(arch)
    model.config._attn_implementation = attn
    return model.eval()


def tiny_dlm(arch: str = "llama", attn: str = "sdpa", *, shift: bool = True, attention: str = "bidirectional", **kw):
    from difflm import DiffusionLM

    return DiffusionLM.from_causal_lm(tiny_backbone(arch, attn), mask_token=VOCAB - 1, shift=shift,
                                      attention=attention, **kw).eval()


@pytest.fixture(params=[(a, i) for a in ARCHITECTURES for i in IMPLEMENTATIONS], ids=lambda p: f"{p[0]}-{p[1]}")
def arch_impl(request):
    return request.param


def tiny_tokenizer(with_mask: bool = False):
    """A word-level tokenizer over 40 words + specials, built in memory (no network)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<bos>", "<eos>", "<unk>"] + [f"w{i}" for i in range(40)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    extra = {"mask_token": "<mask>"} if with_mask else {}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>", **extra)
    return fast


@pytest.fixture
def cuda_like_generators(monkeypatch):
    """torch.rand / torch.multinomial refuse a generator that lives on another device than the
    tensor they fill, as they do for CUDA tensors."""
    real_rand, real_multinomial = torch.rand, torch.multinomial

    def check(generator, device):
        device = torch.device(device if device is not None else "cpu")
        if generator is not None and generator.device.type != device.type:
            raise RuntimeError(f"Expected a '{device.type}' device type for generator but found '{generator.device.type}'")

    def rand(*size, generator=None, device=None, **kwargs):
        check(generator, device)
        return real_rand(*size, generator=generator, device=device, **kwargs)

    def multinomial(input, num_samples, replacement=False, *, generator=None, **kwargs):
        check(generator, input.device)
        return real_multinomial(input, num_samples, replacement, generator=generator, **kwargs)

    monkeypatch.setattr(torch, "rand", rand)
    monkeypatch.setattr(torch, "multinomial", multinomial)
