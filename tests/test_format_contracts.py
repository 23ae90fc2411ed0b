"""What every entry of `difflm.registry.FORMATS` and `difflm.registry.MODEL_KINDS` must do (the spirit of
diffusers' SchedulerCommonTest): a tiny random directory written in that layout / kind is recognised as
it, loads through the one loader `difflm.formats.load`, and - saved again - reloads to identical logits.

A layout or kind registered without a writer here fails `test_every_entry_has_a_writer`: add one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from diffusion_gemma_layouts import decoder_logits, write_diffusion_gemma
from llada2_layouts import write_llada2
from mdlm_layouts import write_mdlm
from published_layouts import write_diffugpt, write_dream, write_llada, write_llama, write_sdar

from difflm import formats
from difflm.io import directory_kind
from difflm.model import DiffusionLM
from difflm.registry import FORMATS, MODEL_KINDS

from conftest import tiny_backbone, tiny_dlm

IDS = torch.randint(0, 60, (2, 12), generator=torch.Generator().manual_seed(3))  # fits every tiny vocabulary


def _logits(model: Any) -> torch.Tensor:
    """[B, L, V] logits of ``model`` on IDS, whatever kind of model it is."""
    with torch.no_grad():
        if hasattr(model, "denoise"):  # a continuous DLM: a fixed noisy input
            gen = torch.Generator().manual_seed(0)
            z = torch.randn(*IDS.shape, model.config.embed_dim, generator=gen)
            clean = torch.zeros_like(IDS, dtype=torch.bool)
            clean[:, :3] = True
            return model.denoise(z, torch.full((IDS.shape[0],), 0.5), clean, IDS % model.config.vocab_size).float()
        if (getattr(getattr(model, "config", None), "extra", None) or {}).get("denoiser") == "encoder-decoder":
            return decoder_logits(model, IDS)  # DiffusionGemma: the decoder's logits over a canvas
        if hasattr(model, "logits"):  # a DiffusionLM: aligned logits
            return model.logits(IDS).float()
        return model(input_ids=IDS).logits.float()  # a transformers causal LM


# -- one writer per layout of registry.FORMATS --------------------------------------------------------
def _causal_lm(path: Path) -> None:
    tiny_backbone("gpt2").save_pretrained(path)


def _difflm(path: Path) -> None:
    tiny_dlm("qwen2").save_pretrained(path)


FORMAT_WRITERS: dict[str, Callable[[Path], Any]] = {
    "difflm": _difflm,
    "diffugpt": write_diffugpt,
    "llada": write_llada,
    "dream": write_dream,
    "sdar": write_sdar,
    "diffullama": lambda path: write_llama(path, marker=True),
    "mdlm": write_mdlm,
    "diffusion-gemma": write_diffusion_gemma,
    "llada2": write_llada2,
    "causal-lm": _causal_lm,
}


# -- one writer per kind of registry.MODEL_KINDS ------------------------------------------------------
LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}


def _adapter(path: Path, loss: str = "diffusion") -> None:
    """A LoRA adapter directory on a tiny base, its B matrices made non-zero (else it is the base)."""
    from difflm.training.lora import attach_lora, save_adapter

    base = path.parent / f"{path.name}-base"
    if loss == "diffusion":
        tiny_dlm("llama").save_pretrained(base)
        backbone = formats.load(base).model.model
    else:
        tiny_backbone("llama").save_pretrained(base)
        backbone = formats.load(base).model
    peft_model = attach_lora(backbone, LORA)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    save_adapter(peft_model, path, base=str(base.resolve()), loss=loss, tokenizer=None, diffusion=None, settings=LORA)


def _continuous(path: Path) -> None:
    from difflm.continuous.config import ContinuousConfig
    from difflm.continuous.model import ContinuousDLM, backbone_config

    torch.manual_seed(0)
    arch = dict(model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=2, max_position_embeddings=32)
    ContinuousDLM(backbone_config(arch), ContinuousConfig(vocab_size=64, embed_dim=8, bos_token_id=1)).save_pretrained(path)


KIND_WRITERS: dict[str, Callable[[Path], Any]] = {
    "adapter": _adapter,
    "continuous": _continuous,
    "checkpoint": _difflm,
}


def test_every_entry_has_a_writer():
    assert set(FORMAT_WRITERS) == set(FORMATS.names()), "a layout of registry.FORMATS needs a writer here"
    assert set(KIND_WRITERS) == set(MODEL_KINDS.names()), "a kind of registry.MODEL_KINDS needs a writer here"


@pytest.mark.parametrize("name", FORMATS.names())
def test_every_layout_is_detected_loads_and_round_trips(tmp_path, name):
    """Detected as itself (and nothing earlier in the table claims it); `formats.load` gives a DLM (a plain
    causal LM for causal-lm) with the detection's reason; saved again (difflm's own layout for a DLM, the
    transformers layout for an AR model) it reloads to identical logits."""
    FORMAT_WRITERS[name](tmp_path / name)
    assert directory_kind(tmp_path / name) == "checkpoint"
    found = formats.detect(tmp_path / name)
    assert found.format == name and found.reason
    loaded = formats.load(tmp_path / name, dtype=torch.float32)
    ar = name == formats.AR_FORMAT
    assert (loaded.kind, loaded.format, loaded.reason, loaded.given, loaded.autoregressive) == (
        "causal-lm" if ar else "dlm", name, found.reason, False, ar)
    # `survey` (configs only) says what `load` then loads: the same kind, layout, reason and conventions
    seen = formats.survey(tmp_path / name)
    assert (seen.kind, seen.format, seen.reason, seen.autoregressive) == (loaded.kind, name, found.reason, ar)
    assert seen.config == (None if ar else loaded.model.config)
    assert type(loaded.model).__name__ == ("GPT2LMHeadModel" if ar else "DiffusionLM")
    expected = _logits(loaded.model)
    loaded.model.save_pretrained(tmp_path / "saved")
    again = formats.load(tmp_path / "saved", dtype=torch.float32)
    assert again.format == (name if ar else "difflm")
    assert torch.equal(_logits(again.model), expected)
    # the layout given by the caller skips detection and says so
    given = formats.load(tmp_path / name, format=name, dtype=torch.float32, **({"mask_token_id": 5} if ar else {}))
    assert given.given and given.kind == "dlm" and given.format == name


@pytest.mark.parametrize("kind", MODEL_KINDS.names())
def test_every_model_kind_is_recognised_loads_and_round_trips(tmp_path, kind):
    """Its marker tells the kind; `formats.load` loads it; saved again, it reloads to identical logits."""
    KIND_WRITERS[kind](tmp_path / kind)
    marker = MODEL_KINDS.entry(kind).meta["marker"]
    assert marker is None or (tmp_path / kind / marker).is_file()
    assert directory_kind(tmp_path / kind) == kind
    loaded = formats.load(tmp_path / kind)
    assert loaded.kind == (kind if kind != "checkpoint" else "dlm") and loaded.path == tmp_path / kind
    assert loaded.reason and not loaded.given
    seen = formats.survey(tmp_path / kind)
    assert (seen.kind, seen.path, seen.autoregressive) == (loaded.kind, loaded.path, loaded.autoregressive)
    if isinstance(loaded.model, DiffusionLM):
        assert seen.config == loaded.model.config
    expected = _logits(loaded.model)
    loaded.model.save_pretrained(tmp_path / "saved")
    again = formats.load(tmp_path / "saved")
    assert torch.equal(_logits(again.model), expected)


def test_an_adapter_is_a_format_wherever_a_model_directory_loads(tmp_path):
    """A DLM adapter: `formats.load`, `DiffusionLM.from_pretrained` and the unmerged adapter agree; an AR
    adapter loads as a causal LM and is refused as a DLM."""
    from difflm import DiffusionLM, ModelLoadError
    from difflm.formats.adapter import is_adapter_dir, load_adapter

    _adapter(tmp_path / "dlm")
    assert is_adapter_dir(tmp_path / "dlm") and not is_adapter_dir(tmp_path / "dlm-base")
    loaded = formats.load(tmp_path / "dlm")
    assert (loaded.format, loaded.autoregressive) == ("difflm", False) and "LoRA adapter (rank 4)" in loaded.reason
    unmerged = _logits(load_adapter(tmp_path / "dlm"))
    assert not torch.allclose(unmerged, _logits(formats.load(tmp_path / "dlm-base").model))  # the adapters matter
    torch.testing.assert_close(_logits(loaded.model), unmerged, rtol=1e-4, atol=1e-5)
    assert torch.equal(_logits(DiffusionLM.from_pretrained(tmp_path / "dlm")), _logits(loaded.model))
    _adapter(tmp_path / "ar", loss="ar")
    ar = formats.load(tmp_path / "ar")
    assert (ar.kind, ar.format, ar.autoregressive) == ("adapter", "causal-lm", True)
    with pytest.raises(ModelLoadError, match="AR model"):
        DiffusionLM.from_pretrained(tmp_path / "ar")


def test_bundled_names_and_missing_directories(tmp_path, monkeypatch):
    from difflm import ModelLoadError, bundled

    with pytest.raises(ModelLoadError, match="no model at"):
        formats.load(tmp_path / "nothing")
    monkeypatch.setitem(bundled.MODELS, "dlm-unbuilt", tmp_path / "unbuilt")
    with pytest.raises(ModelLoadError, match="bundled model 'dlm-unbuilt' is not built yet"):
        formats.load("dlm-unbuilt")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ModelLoadError, match="holds no weights"):
        formats.load(tmp_path / "x")


def test_inspect_shows_an_adapter_and_its_base_and_refuses_other_kinds(tmp_path, capsys):
    from difflm.cli import main

    _adapter(tmp_path / "dlm")
    assert main(["inspect", str(tmp_path / "dlm")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("adapter") and "LoRA rank 4" in out and "format        difflm" in out
    _continuous(tmp_path / "cont")
    assert main(["inspect", str(tmp_path / "cont")]) == 2
    assert "holds a continuous model (continuous_config.json)" in capsys.readouterr().err
