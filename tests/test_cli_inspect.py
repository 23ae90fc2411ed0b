"""`difflm inspect` and `difflm convert` on tiny checkpoints in the published layouts."""

from __future__ import annotations

import json

import torch
from published_layouts import LLADA, LLADA_CHAT_TEMPLATE, llada_reference, write_diffugpt, write_llada, write_llama, write_word_tokenizer

from difflm import DiffusionLM
from difflm.cli import main
from difflm.formats import detect_format


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _fields(text: str) -> dict[str, str]:
    """'name   value' lines -> {name: value} (the first word is the name; 'mask id' has two)."""
    fields = {}
    for line in text.splitlines():
        name, value = line[:13].strip(), line[13:].strip()
        fields[name] = value
    return fields


def test_inspect_says_what_it_detected_and_why(tmp_path, capsys):
    specials = ["<|startoftext|>", "<|endoftext|>", "<|eot_id|>", "<|mdm_mask|>"]
    tok = write_word_tokenizer(tmp_path / "llada", specials, chat_template=LLADA_CHAT_TEMPLATE,
                               bos_token="<|startoftext|>", eos_token="<|endoftext|>")
    bos, eos, eot, mask = tok.convert_tokens_to_ids(specials)
    write_llada(tmp_path / "llada", dtype=torch.bfloat16, shards=2, mask_token_id=mask, eos_token_id=eos, pad_token_id=eos)
    code, out, err = _run(capsys, "inspect", str(tmp_path / "llada"))
    assert code == 0, err
    f = _fields(out)
    assert f["format"].startswith("llada") and "model.transformer.blocks" in f["format"]
    assert f["family"] == "llada" and f["architecture"].startswith("LlamaForCausalLM")
    assert f["weights"].startswith("bfloat16") and "2 file(s)" in f["weights"]
    n_params = LLADA["vocab"] * LLADA["hidden"] * 2 + LLADA["layers"] * (4 * 32 * 32 + 3 * 32 * 48 + 2 * 32) + 32
    assert f"({n_params:,})" in f["parameters"]
    assert f["mask id"] == f"{mask} '<|mdm_mask|>'" and f["process"].startswith("masked")
    assert f["shift"].startswith("no") and f["attention"] == "bidirectional"
    assert f"bos {bos} '<|startoftext|>'" in f["tokens"] and f"end_of_turn[0] {eot} '<|eot_id|>'" in f["tokens"]
    assert f["tokenizer"].endswith("chat template: yes")


def test_inspect_json(tmp_path, capsys):
    write_diffugpt(tmp_path / "gpt")
    code, out, _ = _run(capsys, "inspect", str(tmp_path / "gpt"), "--json")
    info = json.loads(out)
    assert code == 0 and info["format"] == "diffugpt" and info["architecture"] == "GPT2LMHeadModel"
    assert info["config"]["mask_token_id"] == 10541 and info["config"]["shift"] is True
    assert info["stored_dtype"] == "float16"


def test_inspect_refuses_a_plain_llama_after_saying_what_it_saw(tmp_path, capsys):
    write_llama(tmp_path / "llama", marker=False)
    code, out, err = _run(capsys, "inspect", str(tmp_path / "llama"))
    assert code == 2
    assert "causal-lm" in out and "without diffusion markers" in out
    assert err.count("\n") == 1 and "--format diffullama" in err
    code, out, err = _run(capsys, "inspect", str(tmp_path / "llama"), "--format", "diffullama")
    f = _fields(out)
    assert code == 0 and f["format"] == "diffullama  (format given by the caller)" and f["mask id"] == "811"
    assert f["shift"].startswith("yes")
    code, out, _ = _run(capsys, "inspect", str(tmp_path / "llama"), "--mask-token-id", "3")
    assert code == 0 and _fields(out)["family"] == "causal-lm" and _fields(out)["mask id"] == "3"


def test_inspect_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    code, out, err = _run(capsys, "inspect", str(tmp_path / "missing"))
    assert code == 2 and out == "" and err.startswith("difflm: error:") and err.count("\n") == 1
    write_diffugpt(tmp_path / "m", medium=True, n_embd=16)
    code, _, err = _run(capsys, "inspect", str(tmp_path / "m"))
    assert code == 2 and "weights need a config with vocab_size 50258, n_embd 8" in err


def test_convert_writes_difflm_layout_that_reloads_identically(tmp_path, capsys):
    ref = write_llada(tmp_path / "llada", dtype=torch.bfloat16)
    code, out, err = _run(capsys, "convert", str(tmp_path / "llada"), str(tmp_path / "out"), "--dtype", "float32")
    assert code == 0, err
    assert "llada" in out and "float32" in out
    assert detect_format(tmp_path / "out") == "difflm"
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model_type"] == "llama" and "auto_map" not in config
    model = DiffusionLM.from_pretrained(tmp_path / "out")
    assert model.dtype == torch.float32 and model.config.family == "llada" and not model.config.shift
    ids = torch.randint(0, LLADA["vocab"], (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(model.logits(ids), llada_reference(ids, ref), rtol=1e-4, atol=1e-4)
    # converting onto itself would delete the original: refused
    code, _, err = _run(capsys, "convert", str(tmp_path / "llada"), str(tmp_path / "llada"))
    assert code == 2 and "OUT must be a new directory" in err


def test_generate_chat_applies_the_template_and_stops_at_the_end_of_turn(tmp_path, capsys, monkeypatch):
    import difflm.sampling
    from published_layouts import DREAM, QWEN_CHAT_TEMPLATE, write_dream, write_qwen2_style_tokenizer

    from difflm.chat import chat_prompt_ids
    from difflm.sampling import Generation

    write_dream(tmp_path / "dream")
    write_qwen2_style_tokenizer(tmp_path / "dream", ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|mask|>"],
                                chat_template=QWEN_CHAT_TEMPLATE)
    code, out, err = _run(capsys, "generate", "hello", "--chat", "--model", str(tmp_path / "dream"), "--length", "6")
    assert code == 0, err  # the real sampler runs end to end

    model = DiffusionLM.from_pretrained(tmp_path / "dream")
    hello, there = model.tokenizer.encode(" hello"), model.tokenizer.encode(" there")
    reply = hello + there
    seen = {}

    def fake_fill(model, templates, **kwargs):  # a sampler that writes a reply, then <|im_end|>, then junk
        seen["templates"] = templates
        rows = [reply + [DREAM["im_end"]] + hello * 10]
        return Generation(torch.tensor(templates), torch.zeros(1, len(templates[0]), dtype=torch.bool), rows, 1)

    monkeypatch.setattr(difflm.sampling, "fill", fake_fill)
    code, out, err = _run(capsys, "generate", "hello world", "--chat", "--model", str(tmp_path / "dream"), "--length", "6", "--json")
    assert code == 0, err
    prompt = chat_prompt_ids(model, "hello world")
    assert seen["templates"] == [prompt + [DREAM["mask"]] * 6]
    result = json.loads(out)
    assert result["new_tokens"] == reply and result["text"] == model.tokenizer.decode(reply)


def test_inspect_names_a_uniform_state_process_and_its_placeholder_mask(tmp_path, capsys):
    from diffusion_gemma_layouts import write_diffusion_gemma

    write_llama(tmp_path / "ar", marker=False)
    dlm = DiffusionLM.from_causal_lm(tmp_path / "ar", mask_token=5)
    dlm.config = dlm.config.replace(extra={"process": "uniform"})
    dlm.save_pretrained(tmp_path / "uniform")
    f = _fields(_run(capsys, "inspect", str(tmp_path / "uniform"))[1])
    assert f["process"].startswith("uniform-state") and "ancestral" in f["process"]
    assert f["mask id"].endswith("(a placeholder: no [MASK] is ever written)")
    write_diffusion_gemma(tmp_path / "dg")
    f = _fields(_run(capsys, "inspect", str(tmp_path / "dg"))[1])
    assert f["process"].startswith("uniform-state") and "canvas decoder" in f["process"]
