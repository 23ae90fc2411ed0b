"""Published checkpoint layouts: each family loads onto a stock transformers class and its aligned
logits equal an independent forward pass written from the published architecture description."""

from __future__ import annotations

import json

import os

import pytest
import torch
from published_layouts import (
    DIFFULLAMA,
    DREAM,
    LLADA,
    LLADA_CHAT_TEMPLATE,
    QWEN_CHAT_TEMPLATE,
    diffugpt_reference,
    diffullama_reference,
    dream_reference,
    llada_reference,
    write_diffugpt,
    write_dream,
    write_llada,
    write_llama,
    write_qwen2_style_tokenizer,
    write_word_tokenizer,
)

from difflm import DiffusionLM, ModelLoadError
from difflm.chat import chat_prompt_ids, end_of_turn_ids
from difflm.errors import InputError
from difflm.formats import detect, detect_format

from conftest import tiny_backbone, tiny_dlm


def _ids(vocab: int, length: int = 12, batch: int = 2) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(1))


def _logits(model: DiffusionLM, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.logits(ids).float()


# -- one test per family: key mapping + conventions, against the reference forward --------------------


# family -> (writer, reference forward, vocabulary, stock class, shift, mask id, eos id, pad id)
LLAMA_LIKE = {
    "llada": (write_llada, llada_reference, LLADA["vocab"], "LlamaForCausalLM", False, LLADA["mask"], 101, 101),
    "dream": (write_dream, dream_reference, DREAM["vocab"], "Qwen2ForCausalLM", True, DREAM["mask"], DREAM["eos"], DREAM["eos"]),
    # DiffuLLaMA's pad 30399 does not fit the tiny vocabulary, and LLaMA has none of its own
    "diffullama": (write_llama, diffullama_reference, DIFFULLAMA["vocab"], "LlamaForCausalLM", True, 811, 2, None),
}


@pytest.mark.parametrize("family", LLAMA_LIKE)
def test_llama_like_families_match_their_reference_forward(tmp_path, family):
    """LLaDA: renamed keys, SwiGLU with ff_proj as gate, no shift. Dream: Qwen2 with q/k/v biases,
    shifted. DiffuLLaMA: plain LLaMA, shifted. All bidirectional."""
    writer, reference, vocab, arch, shift, mask, eos, pad = LLAMA_LIKE[family]
    ref = writer(tmp_path / family)
    model = DiffusionLM.from_pretrained(tmp_path / family)
    assert type(model.model).__name__ == arch
    cfg = model.config
    assert (cfg.family, cfg.shift, cfg.attention, cfg.mask_token_id) == (family, shift, "bidirectional", mask)
    assert (cfg.eos_token_id, cfg.pad_token_id) == (eos, pad)
    ids = _ids(vocab)
    torch.testing.assert_close(_logits(model, ids), reference(ids, ref), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("medium", [False, True], ids=["S", "M"])
def test_diffugpt_s_and_m(tmp_path, medium):
    ref = write_diffugpt(tmp_path / "gpt", medium=medium)
    model = DiffusionLM.from_pretrained(tmp_path / "gpt", dtype=torch.float32)
    cfg = model.config
    assert (cfg.family, cfg.shift, cfg.attention) == ("diffugpt", True, "bidirectional")
    assert cfg.mask_token_id == (50257 if medium else 10541)
    ids = _ids(50257)
    torch.testing.assert_close(_logits(model, ids)[:, 1:], diffugpt_reference(ids, ref)[:, 1:], rtol=1e-4, atol=1e-4)


def test_diffugpt_m_takes_pad_and_sep_from_its_tokenizer(tmp_path):
    write_diffugpt(tmp_path / "m", medium=True)
    tok = write_word_tokenizer(tmp_path / "m", ["¨", "======", "[¨M¨]"])
    model = DiffusionLM.from_pretrained(tmp_path / "m")
    pad, sep, mask = tok.convert_tokens_to_ids(["¨", "======", "[¨M¨]"])
    assert model.config.pad_token_id == pad and model.config.extra["sep_token_id"] == sep
    assert model.mask_token_id == mask  # the tokenizer's "[¨M¨]" wins over the id by vocabulary size
    write_word_tokenizer(tmp_path / "m", ["¨", "======"])  # no "[¨M¨]": unknown is not an id
    assert DiffusionLM.from_pretrained(tmp_path / "m").mask_token_id == 50257


# -- what a wrong mapping would look like: the comparison can fail ------------------------------------


def test_a_wrong_convention_is_caught_by_the_reference(tmp_path):
    ref = write_llada(tmp_path / "llada")
    ids = _ids(LLADA["vocab"])
    want = llada_reference(ids, ref)
    wrong_shift = DiffusionLM.from_pretrained(tmp_path / "llada", shift=True)
    wrong_mask = DiffusionLM.from_pretrained(tmp_path / "llada", attention="causal")
    assert not torch.allclose(_logits(wrong_shift, ids), want, atol=1e-3)
    assert not torch.allclose(_logits(wrong_mask, ids), want, atol=1e-3)
    # gate and up swapped: SiLU on the wrong branch
    swapped = {k: v for k, v in ref.items()}
    for i in range(LLADA["layers"]):
        swapped[f"{i}.gate"], swapped[f"{i}.up"] = ref[f"{i}.up"], ref[f"{i}.gate"]
    assert not torch.allclose(llada_reference(ids, swapped), want, atol=1e-3)


# -- storage: shards, index, half precision, memory-frugal loading ------------------------------------


@pytest.mark.parametrize("writer", [write_llada, write_dream], ids=["llada", "dream"])
def test_sharded_checkpoint_with_index_loads_like_one_file(tmp_path, writer):
    writer(tmp_path / "one")
    writer(tmp_path / "three", shards=3)
    assert len(list((tmp_path / "three").glob("*.safetensors"))) == 3
    vocab = LLADA["vocab"] if writer is write_llada else DREAM["vocab"]
    ids = _ids(vocab)
    one, three = DiffusionLM.from_pretrained(tmp_path / "one"), DiffusionLM.from_pretrained(tmp_path / "three")
    assert torch.equal(_logits(one, ids), _logits(three, ids))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_weights_load_as_stored_or_as_asked(tmp_path, dtype):
    ref = write_llada(tmp_path / "half", dtype=dtype, shards=2)
    ids = _ids(LLADA["vocab"])
    as_stored = DiffusionLM.from_pretrained(tmp_path / "half")
    assert as_stored.dtype == dtype
    assert all(p.dtype == dtype for p in as_stored.model.parameters())
    upcast = DiffusionLM.from_pretrained(tmp_path / "half", dtype="float32")
    assert upcast.dtype == torch.float32
    want = llada_reference(ids, ref)  # the reference uses the same rounded weights, in float32
    torch.testing.assert_close(_logits(upcast, ids), want, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(_logits(as_stored, ids), want, rtol=0.1, atol=0.15)


def test_a_declared_dtype_wins_over_the_stored_one(tmp_path):
    """A checkpoint difflm wrote loads in the dtype its config.json declares (as transformers reads
    dtype="auto"), else as stored. The bundled models store bf16 weights but declare float32, so
    they compute in float32 by default."""
    import json

    from safetensors.torch import load_file, save_file

    from conftest import tiny_dlm

    model = tiny_dlm()
    model.save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    save_file({k: v.to(torch.bfloat16) for k, v in load_file(str(weights)).items()}, str(weights), metadata={"format": "pt"})
    config_file = tmp_path / "m" / "config.json"
    for declared, want in (("float32", torch.float32), (None, torch.bfloat16)):
        config = json.loads(config_file.read_text())
        config.pop("torch_dtype", None)
        config.pop("dtype", None)
        if declared:
            config["dtype"] = declared
        config_file.write_text(json.dumps(config))
        loaded = DiffusionLM.from_pretrained(tmp_path / "m")
        assert loaded.dtype == want and all(p.dtype == want for p in loaded.model.parameters()), declared
    assert DiffusionLM.from_pretrained(tmp_path / "m", dtype="float32").dtype == torch.float32


def test_weights_are_never_randomly_initialised(tmp_path):
    """Built on the meta device: a checkpoint missing a tensor is an error, not a silent random init."""
    from safetensors.torch import load_file, save_file

    write_llada(tmp_path / "cut")
    state = load_file(str(tmp_path / "cut" / "model.safetensors"))
    del state["model.transformer.blocks.1.up_proj.weight"]
    save_file(state, str(tmp_path / "cut" / "model.safetensors"))
    with pytest.raises(ModelLoadError, match="lack 1 tensor.*layers.1.mlp.up_proj"):
        DiffusionLM.from_pretrained(tmp_path / "cut")


def _file_mappings(path) -> list[tuple[int, int]]:
    """Address ranges at which this process has ``path`` memory-mapped (Linux /proc/self/maps)."""
    ranges = []
    for line in open("/proc/self/maps"):
        fields = line.split()
        if len(fields) >= 6 and os.path.realpath(fields[5]) == os.path.realpath(path):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            ranges.append((start, end))
    return ranges


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs Linux /proc/self/maps")
def test_loaded_weights_share_memory_with_the_file_not_a_copy(tmp_path):
    """Stored dtype == wanted dtype: parameters are the memory-mapped tensors themselves (their
    data lies inside the file's mapping), and writing to them (training) never changes the
    checkpoint on disk. A cast to another dtype is a copy outside the mapping."""
    write_llada(tmp_path / "llada", dtype=torch.bfloat16)
    weights = tmp_path / "llada" / "model.safetensors"
    model = DiffusionLM.from_pretrained(tmp_path / "llada")
    mapped = _file_mappings(weights)
    assert mapped, "the checkpoint is not memory-mapped"
    inside = lambda t: any(a <= t.data_ptr() < b for a, b in mapped)  # noqa: E731
    params = dict(model.model.named_parameters())
    assert all(inside(p) for p in params.values()), [n for n, p in params.items() if not inside(p)][:3]
    weight = model.model.model.embed_tokens.weight
    before = weight[0, 0].item()
    with torch.no_grad():
        weight.add_(1.0)
    again = DiffusionLM.from_pretrained(tmp_path / "llada")
    assert again.model.model.embed_tokens.weight[0, 0].item() == before
    cast = DiffusionLM.from_pretrained(tmp_path / "llada", dtype=torch.float32)
    mapped = _file_mappings(weights)
    assert not any(any(a <= p.data_ptr() < b for a, b in mapped) for p in cast.model.parameters())


# -- detection ----------------------------------------------------------------------------------------


def test_detection_of_every_family_and_its_reason(tmp_path):
    write_llada(tmp_path / "a")
    write_dream(tmp_path / "b")
    write_llama(tmp_path / "c", marker=True)
    write_diffugpt(tmp_path / "d")
    write_diffugpt(tmp_path / "e", medium=True)
    tiny_dlm("qwen2").save_pretrained(tmp_path / "f")
    found = {name: detect(tmp_path / name) for name in "abcdef"}
    assert {n: d.format for n, d in found.items()} == {
        "a": "llada", "b": "dream", "c": "diffullama", "d": "diffugpt", "e": "diffugpt", "f": "difflm"}
    assert "model.transformer.blocks" in found["a"].reason and "Dream" in found["b"].reason
    assert "mask_token_id 811" in found["c"].reason and "denoise_model" in found["d"].reason
    # the directory name plays no part: a LLaDA checkpoint in a directory called "dream" is LLaDA
    write_llada(tmp_path / "dream-7b")
    assert detect_format(tmp_path / "dream-7b") == "llada"


def test_plain_ar_checkpoints_are_refused_unless_told_what_to_do(tmp_path):
    tiny_backbone("gpt2").save_pretrained(tmp_path / "gpt2")
    assert detect_format(tmp_path / "gpt2") == "causal-lm"
    with pytest.raises(ModelLoadError, match="plain causal LM.*from_causal_lm.*mask_token_id"):
        DiffusionLM.from_pretrained(tmp_path / "gpt2")
    adapted = DiffusionLM.from_causal_lm(tmp_path / "gpt2", mask_token=10)
    assert adapted.config.attention == "annealed"
    # a LLaMA without diffusion markers might be DiffuLLaMA: the refusal says how to load it as such
    ref = write_llama(tmp_path / "llama", marker=False)
    with pytest.raises(ModelLoadError, match="format='diffullama'"):
        DiffusionLM.from_pretrained(tmp_path / "llama")
    model = DiffusionLM.from_pretrained(tmp_path / "llama", format="diffullama")
    assert (model.config.family, model.mask_token_id, model.config.shift) == ("diffullama", 811, True)
    ids = _ids(DIFFULLAMA["vocab"])
    torch.testing.assert_close(_logits(model, ids)[:, 1:], diffullama_reference(ids, ref)[:, 1:], rtol=1e-4, atol=1e-4)
    as_is = DiffusionLM.from_pretrained(tmp_path / "llama", mask_token_id=5, shift=False)
    assert (as_is.config.family, as_is.mask_token_id, as_is.config.shift) == ("causal-lm", 5, False)


# -- helpful errors -----------------------------------------------------------------------------------


def test_unknown_layout_lists_the_supported_ones_and_what_was_found(tmp_path):
    write_llada(tmp_path / "x")
    config = json.loads((tmp_path / "x" / "config.json").read_text())
    (tmp_path / "x" / "config.json").write_text(json.dumps({**config, "model_type": "mystery", "architectures": ["MysteryLM"]}))
    from safetensors.torch import save_file

    save_file({"encoder.weight": torch.zeros(2, 2)}, str(tmp_path / "x" / "model.safetensors"))
    with pytest.raises(ModelLoadError) as err:
        DiffusionLM.from_pretrained(tmp_path / "x")
    message = str(err.value)
    for expected in ("unknown checkpoint layout", "'mystery'", "MysteryLM", "encoder.weight", "llada", "dream", "diffullama"):
        assert expected in message


def test_config_that_does_not_fit_the_weights_says_so(tmp_path):
    write_llada(tmp_path / "llada", d_model=64)
    with pytest.raises(ModelLoadError, match=r"model.transformer.wte.weight has shape \[128, 32\].*\[128, 64\]"):
        DiffusionLM.from_pretrained(tmp_path / "llada")
    write_diffugpt(tmp_path / "m", medium=True, n_embd=16)
    with pytest.raises(ModelLoadError, match="weights need a config with vocab_size 50258, n_embd 8"):
        DiffusionLM.from_pretrained(tmp_path / "m")


def test_unsupported_llada_options_and_missing_mask_ids_are_explained(tmp_path):
    write_llada(tmp_path / "alibi", alibi=True)
    with pytest.raises(ModelLoadError, match="alibi=True is not supported"):
        DiffusionLM.from_pretrained(tmp_path / "alibi")
    # no mask id in config.json and the published 151666 does not fit a 272-token vocabulary
    write_dream(tmp_path / "nomask", mask_token_id=None)
    with pytest.raises(ModelLoadError, match="no usable mask token.*pass mask_token_id="):
        DiffusionLM.from_pretrained(tmp_path / "nomask")
    assert DiffusionLM.from_pretrained(tmp_path / "nomask", mask_token_id=7).mask_token_id == 7


# -- tokenizers and chat ------------------------------------------------------------------------------


def test_dream_tokenizer_without_remote_code_and_its_chat_turn(tmp_path):
    write_dream(tmp_path / "dream")
    specials = write_qwen2_style_tokenizer(tmp_path / "dream", ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|mask|>"],
                                           chat_template=QWEN_CHAT_TEMPLATE)
    assert specials["<|mask|>"] == DREAM["mask"] and specials["<|endoftext|>"] == DREAM["eos"]
    model = DiffusionLM.from_pretrained(tmp_path / "dream")
    assert type(model.tokenizer).__name__ == "Qwen2Tokenizer"  # Dream's own class is custom code
    assert end_of_turn_ids(model) == [DREAM["im_end"], DREAM["eos"]]
    prompt = chat_prompt_ids(model, "hello world")
    assert prompt[0] == specials["<|im_start|>"] and prompt.count(DREAM["im_end"]) == 1
    assert model.tokenizer.decode(prompt).endswith("<|im_start|>assistant\n")
    # the mask token spelled in the message would turn its positions into generated ones: refused
    with pytest.raises(InputError, match="mask token"):
        chat_prompt_ids(model, "hello <|mask|> world")


def test_llada_instruct_tokenizer_mask_and_end_of_turn(tmp_path):
    specials = ["<|startoftext|>", "<|endoftext|>", "<|eot_id|>", "<|mdm_mask|>", "<|start_header_id|>", "<|end_header_id|>"]
    tok = write_word_tokenizer(tmp_path / "llada", specials, chat_template=LLADA_CHAT_TEMPLATE,
                               bos_token="<|startoftext|>", eos_token="<|endoftext|>")
    bos, eos, eot, mask = tok.convert_tokens_to_ids(specials[:4])
    write_llada(tmp_path / "llada", mask_token_id=mask, eos_token_id=eos, pad_token_id=eos)
    model = DiffusionLM.from_pretrained(tmp_path / "llada")
    cfg = model.config
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.mask_token_id) == (bos, eos, mask)
    assert end_of_turn_ids(model) == [eot, eos]
    prompt = chat_prompt_ids(model, "w1 w2")
    assert prompt[0] == bos and prompt.count(bos) == 1 and prompt[-1] == tok.convert_tokens_to_ids("<|end_header_id|>")


def test_chat_without_a_template_says_what_to_do(tmp_path):
    from difflm import InputError

    write_llada(tmp_path / "base")
    write_word_tokenizer(tmp_path / "base", ["<|endoftext|>"], eos_token="<|endoftext|>")
    model = DiffusionLM.from_pretrained(tmp_path / "base")
    with pytest.raises(InputError, match="no chat template.*without --chat"):
        chat_prompt_ids(model, "hi")


# -- SDAR: a published block diffusion model (Qwen3 weights) -----------------------------------------
def test_sdar_loads_as_a_block_diffusion_model_and_matches_its_reference_forward(tmp_path):
    """SDAR: Qwen3 names (per-head q/k norms), block-causal attention over blocks of 4 from position 0,
    no shift; its decoder's view, recomputed independently, logit for logit."""
    from published_layouts import SDAR, sdar_reference, write_sdar

    ref = write_sdar(tmp_path / "sdar")
    assert detect_format(tmp_path / "sdar") == "sdar"
    model = DiffusionLM.from_pretrained(tmp_path / "sdar")
    assert type(model.model).__name__ == "Qwen3ForCausalLM"
    cfg = model.config
    assert (cfg.family, cfg.shift, cfg.attention, cfg.block_size, cfg.mask_token_id) == ("sdar", False, "block_causal", 4, SDAR["mask"])
    ids = _ids(SDAR["vocab"], length=14)
    torch.testing.assert_close(_logits(model, ids), sdar_reference(ids, ref), rtol=1e-4, atol=1e-4)
    # a block size in config.json wins over the published default
    write_sdar(tmp_path / "sdar8", block_size=8)
    assert DiffusionLM.from_pretrained(tmp_path / "sdar8").config.block_size == 8
