"""DiffusionLM: shift alignment, mask-token handling, save/load, DiffuGPT layout, bad input."""

import json

import pytest
import torch
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel

from difflm import ConfigError, DiffusionConfig, DiffusionLM, InputError, ModelLoadError
from difflm.formats import detect_format
from conftest import VOCAB, tiny_backbone, tiny_dlm, tiny_tokenizer


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2"])
def test_shift_aligns_logit_i_with_raw_logit_i_minus_1(arch):
    x = torch.randint(0, 60, (2, 10), generator=torch.Generator().manual_seed(0))
    for shift in (True, False):
        model = tiny_dlm(arch, shift=shift)
        with torch.no_grad():
            aligned = model.logits(x)
            raw = model.model(input_ids=x, attention_mask=model.attention_mask_4d(x)).logits
        if shift:
            torch.testing.assert_close(aligned[:, 1:], raw[:, :-1], rtol=0, atol=0)
        else:
            torch.testing.assert_close(aligned, raw, rtol=0, atol=0)


def test_causal_mode_with_shift_reproduces_the_ar_model():
    backbone = tiny_backbone("llama")
    x = torch.randint(0, 60, (2, 10))
    with torch.no_grad():
        ar = backbone(input_ids=x).logits
        dlm = DiffusionLM.from_causal_lm(backbone, mask_token=VOCAB - 1).logits(x, attention="causal")
    torch.testing.assert_close(dlm[:, 1:], ar[:, :-1], rtol=1e-5, atol=1e-6)


def test_config_validation():
    with pytest.raises(ConfigError, match="attention"):
        DiffusionConfig(mask_token_id=3, attention="full")
    with pytest.raises(ConfigError, match="schedule"):
        DiffusionConfig(mask_token_id=3, schedule="quadratic")
    with pytest.raises(ConfigError, match="loss_normalization"):
        DiffusionConfig(mask_token_id=3, loss_normalization="batch")
    with pytest.raises(ConfigError, match="eps"):
        DiffusionConfig(mask_token_id=3, eps=0.0)
    with pytest.raises(ConfigError, match="anneal_steps"):
        DiffusionConfig(mask_token_id=3, anneal_steps=0)
    with pytest.raises(ConfigError, match="unknown DiffusionConfig field"):
        DiffusionConfig.from_dict({"mask_token_id": 3, "atention": "causal"})
    with pytest.raises(ConfigError, match="outside the vocabulary"):
        DiffusionLM(tiny_backbone(), DiffusionConfig(mask_token_id=VOCAB))
    with pytest.raises(ConfigError, match="outside the vocabulary"):
        DiffusionLM.from_causal_lm(tiny_backbone(), mask_token=VOCAB + 5)


def test_mask_token_reused_or_added():
    # an existing id is reused, nothing grows
    model = DiffusionLM.from_causal_lm(tiny_backbone(), mask_token=7)
    assert model.mask_token_id == 7 and model.vocab_size == VOCAB
    # no tokenizer, no mask: a new row, initialised to the mean of the old ones
    backbone = tiny_backbone()
    old_mean = backbone.get_input_embeddings().weight.mean(0).clone()
    model = DiffusionLM.from_causal_lm(backbone)
    assert model.mask_token_id == VOCAB and model.vocab_size == VOCAB + 1
    torch.testing.assert_close(model.model.get_input_embeddings().weight[VOCAB], old_mean)
    # a tokenizer without mask token: "<|mask|>" is added to it and to the embeddings
    tok = tiny_tokenizer()
    model = DiffusionLM.from_causal_lm(tiny_backbone(vocab=len(tok)), tokenizer=tok)
    assert tok.mask_token == "<|mask|>" and model.mask_token_id == len(tok) - 1 == model.vocab_size - 1
    assert tok.convert_ids_to_tokens(model.mask_token_id) == "<|mask|>"
    # a token string already in the vocabulary is reused (DiffuGPT-S style)
    tok = tiny_tokenizer()
    model = DiffusionLM.from_causal_lm(tiny_backbone(vocab=len(tok)), tokenizer=tok, mask_token="w39")
    assert model.mask_token_id == tok.convert_tokens_to_ids("w39") and model.vocab_size == len(tok)
    # special ids come from the tokenizer
    assert (model.config.pad_token_id, model.config.bos_token_id, model.config.eos_token_id) == (0, 1, 2)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2"])
def test_save_and_reload_gives_bit_identical_logits(tmp_path, arch):
    tok = tiny_tokenizer(with_mask=True)
    model = DiffusionLM.from_causal_lm(tiny_backbone(arch, vocab=len(tok)), tokenizer=tok, attention="bidirectional")
    model.save_pretrained(tmp_path / "m")
    files = {p.name for p in (tmp_path / "m").iterdir()}
    assert {"config.json", "model.safetensors", "difflm_config.json", "tokenizer.json"} <= files
    assert detect_format(tmp_path / "m") == "difflm"
    loaded = DiffusionLM.from_pretrained(tmp_path / "m").eval()
    assert loaded.config == model.config and loaded.tokenizer.mask_token_id == model.mask_token_id
    x = torch.randint(0, len(tok), (2, 12))
    with torch.no_grad():
        assert torch.equal(model.logits(x), loaded.logits(x))
    # saving again over the same directory replaces it in one piece
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    # overrides replace stored fields
    assert DiffusionLM.from_pretrained(tmp_path / "m", attention="causal").config.attention == "causal"


def _write_diffugpt(path, source: GPT2LMHeadModel, *, dtype=torch.float16, with_head=False):
    """A DiffuGPT hub-layout directory: plain gpt2 config.json + wrapper keys."""
    path.mkdir()
    state = {}
    for k, v in source.state_dict().items():
        if k == "transformer.wte.weight":
            state["embed_tokens.weight"] = v
        elif k.startswith("transformer.") and not k.endswith(".attn.bias"):
            state["denoise_model." + k[len("transformer."):]] = v
    if with_head:
        state["lm_head.weight"] = source.lm_head.weight.detach().clone()
    save_file({k: v.to(dtype).contiguous() for k, v in state.items()}, str(path / "model.safetensors"))
    cfg = source.config.to_dict()
    cfg.pop("_attn_implementation_autoset", None)
    (path / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("dtype,with_head", [(torch.float16, False), (torch.float32, True)])
def test_diffugpt_layout_loads_and_matches_the_source_model(tmp_path, dtype, with_head):
    torch.manual_seed(0)
    source = GPT2LMHeadModel(GPT2Config(vocab_size=50257, n_embd=32, n_layer=2, n_head=2, n_positions=64)).eval()
    # the reference weights went through float16: compare against the same rounding
    source.load_state_dict({k: v.to(dtype).float() for k, v in source.state_dict().items()})
    _write_diffugpt(tmp_path / "diffugpt", source, dtype=dtype, with_head=with_head)
    assert detect_format(tmp_path / "diffugpt") == "diffugpt"
    model = DiffusionLM.from_pretrained(tmp_path / "diffugpt", dtype=torch.float32)
    assert model.config.family == "diffugpt" and model.config.shift and model.mask_token_id == 10541
    assert model.config.attention == "bidirectional"
    assert DiffusionLM.from_pretrained(tmp_path / "diffugpt").dtype == dtype  # stored dtype by default
    x = torch.randint(0, 50257, (2, 16))
    mask4d = model.attention_mask_4d(x)
    with torch.no_grad():
        want = source(input_ids=x, attention_mask=mask4d).logits
        got = model.logits(x)
    torch.testing.assert_close(got[:, 1:], want[:, :-1], rtol=1e-4, atol=1e-4)


def test_diffugpt_with_a_config_of_the_wrong_size_says_which_config_it_needs(tmp_path):
    torch.manual_seed(0)
    source = GPT2LMHeadModel(GPT2Config(vocab_size=50258, n_embd=1024, n_layer=1, n_head=16, n_positions=8))
    _write_diffugpt(tmp_path / "m", source)
    small = GPT2Config(vocab_size=50257, n_embd=768, n_layer=12, n_head=12).to_dict()
    (tmp_path / "m" / "config.json").write_text(json.dumps(small))
    with pytest.raises(ModelLoadError, match="gpt2-medium"):
        DiffusionLM.from_pretrained(tmp_path / "m")


def test_loading_errors_are_specific(tmp_path):
    with pytest.raises(ModelLoadError, match="not a directory"):
        DiffusionLM.from_pretrained(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="config.json is missing"):
        DiffusionLM.from_pretrained(tmp_path / "empty")
    # a plain causal LM is refused unless told how to use it
    tiny_backbone("gpt2").save_pretrained(tmp_path / "ar")
    with pytest.raises(ModelLoadError, match="plain causal LM"):
        DiffusionLM.from_pretrained(tmp_path / "ar")
    model = DiffusionLM.from_pretrained(tmp_path / "ar", mask_token_id=VOCAB - 1, attention="bidirectional")
    assert model.config.family == "causal-lm"
    with pytest.raises(ModelLoadError, match="unknown format"):
        DiffusionLM.from_pretrained(tmp_path / "ar", format="nope")


def test_bad_inputs_to_logits():
    model = tiny_dlm("gpt2")
    with pytest.raises(InputError, match="context"):
        model.logits(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(InputError, match="batch, length"):
        model.logits(torch.zeros(4, dtype=torch.long))
