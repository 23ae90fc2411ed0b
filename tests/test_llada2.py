"""LLaDA 2.x loads natively (no remote code) and computes what the official modeling code computes.

The official outputs (tests/fixtures/official/llada2.*) were written by scripts/official_fixtures/llada2.py,
which ran the official LLaDA2.0 / 2.1 modeling code in its own environment on the checkpoint that
`write_llada2` rebuilds here bit for bit (seed 0).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from llada2_layouts import EOS_ID, LLADA2, MASK_ID, write_llada2
from safetensors.torch import load_file

from difflm import DiffusionLM
from difflm.backbones.llada2_moe import LLaDA2MLP
from difflm.cli import main
from difflm.errors import ModelLoadError
from difflm.formats import detect, detect_format
from difflm.formats.llada2 import PRESETS
from difflm.losses import diffusion_loss_from_logits, masked_diffusion_loss
from difflm.noise import get_schedule
from difflm.sampling import SamplerOptions

FIXTURES = Path(__file__).parent / "fixtures" / "official"
OFFICIAL = load_file(str(FIXTURES / "llada2.safetensors"))
RECORD = json.loads((FIXTURES / "llada2.json").read_text())


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("llada2") / "model"
    write_llada2(path)
    return path


def _model(path, **overrides) -> DiffusionLM:
    return DiffusionLM.from_pretrained(path, **overrides).eval()


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_logits_equal_the_official_code_on_unpadded_and_left_padded_batches(checkpoint, impl):
    model = _model(checkpoint, block_size=RECORD["block_logits"], attn_implementation=impl)
    # sdpa is what the official code ran: equal to 1e-5. Eager attention (which the official code cannot run with
    # a block mask) sums in another order: within 5e-5 of logits that reach +-30, 2e-6 of their range
    tol = {"atol": 1e-5, "rtol": 0} if impl == "sdpa" else {"atol": 5e-5, "rtol": 0}
    with torch.no_grad():
        torch.testing.assert_close(model.logits(OFFICIAL["input_ids"]), OFFICIAL["logits"], **tol)
        real = OFFICIAL["padded_attention_mask"]
        padded = model.logits(OFFICIAL["padded_input_ids"], real)
    keep = real.bool()
    torch.testing.assert_close(padded[keep], OFFICIAL["padded_logits"][keep], **tol)
    # the left-padded row (row 1 without its last tokens) predicts what it predicts alone, in every block it
    # holds whole (bidirectional inside a block: the cut block sees less)
    pad, block = int((real[1] == 0).sum()), RECORD["block_logits"]
    whole = (real.shape[1] - pad) // block * block
    torch.testing.assert_close(padded[1, pad:pad + whole], OFFICIAL["logits"][1, :whole], **tol)


def test_elbo_on_fixed_noise_equals_the_official_logits_elbo(checkpoint):
    model = _model(checkpoint, block_size=RECORD["block_logits"])
    x0, noise, t = OFFICIAL["elbo_x0"], OFFICIAL["elbo_noise"].bool(), OFFICIAL["elbo_t"]
    with torch.no_grad():
        ours = masked_diffusion_loss(model, x0, t=t, noise_mask=noise)
    cfg = model.config
    official = diffusion_loss_from_logits(OFFICIAL["elbo_logits"], x0, noise, t, x0.numel(),
                                          schedule=get_schedule(cfg.schedule, eps=cfg.eps))
    assert ours.num_masked == int(noise.sum()) > 0 and ours.num_targets == x0.numel()
    torch.testing.assert_close(ours.loss, official.loss, atol=1e-5, rtol=1e-6)


def _options(kwargs: dict) -> dict:
    """The official generate's arguments as difflm's sampler options (published block grid of 32)."""
    options = {"strategy": "threshold", "threshold": kwargs["threshold"], "temperature": 0.0, "stop_at_eos": True}
    editing = kwargs.get("editing_threshold")
    if editing is not None and editing < 1.0:  # LLaDA2.1's generate with a threshold of 1 never edits
        # the official loop caps nothing per position: every step may edit (difflm's max_edits), and once a
        # block is filled it keeps editing up to max_post_steps calls
        options.update(editing_threshold=editing, max_edits=64, post_edit_steps=kwargs["max_post_steps"])
    return options


@pytest.mark.parametrize("cache", ["none", "block"])
@pytest.mark.parametrize("name", sorted(RECORD["generate"]))
def test_greedy_generation_equals_the_official_generate_token_for_token(checkpoint, name, cache):
    case = RECORD["generate"][name]
    options = _options(case["kwargs"])
    model = _model(checkpoint)
    assert model.config.block_size == case["kwargs"]["block_length"] == 32
    prompt = OFFICIAL["prompt"][0]
    gen_length = case["kwargs"]["gen_length"]
    blocks = -(-(prompt.numel() + gen_length) // 32) - prompt.numel() // 32
    out = model.generate(prompt, max_new_tokens=gen_length, steps=32 * blocks, cache=cache, return_dict=True,
                         **options)
    want = case["tokens"]  # the official output ends at (and includes) the first EOS
    got = out.sequences[0, prompt.numel():].tolist()[:len(want)]
    assert got == want
    if "post_edit_steps" in options or "editing_threshold" not in case["kwargs"]:
        assert out.steps == case["forward_calls"]  # the same number of model calls, too


def test_the_fixture_exercises_parallel_commits_and_edits():
    calls = {name: case["forward_calls"] for name, case in RECORD["generate"].items()}
    assert calls["llada20_t07"] < calls["llada20_t095"] < 52  # several tokens per call
    assert calls["llada21_quality"] > 2 * calls["llada21_speed"]  # edits kept the blocks busy after they filled
    assert RECORD["generate"]["llada21_quality"]["tokens"] != RECORD["generate"]["llada21_speed"]["tokens"]


def test_experts_run_once_per_expert_not_per_token(checkpoint, monkeypatch):
    model = _model(checkpoint)
    calls = []
    original = LLaDA2MLP.forward
    monkeypatch.setattr(LLaDA2MLP, "forward", lambda self, x: calls.append(x.numel() // x.shape[-1]) or original(self, x))
    ids = torch.randint(0, 150, (4, 40))
    with torch.no_grad():
        model.logits(ids)
    moe_layers = LLADA2["num_hidden_layers"] - LLADA2["first_k_dense_replace"]
    per_layer = LLADA2["num_experts"] + 1  # routed experts that received tokens + the shared expert
    assert len(calls) <= LLADA2["first_k_dense_replace"] + moe_layers * per_layer < ids.numel()
    routed = sum(calls) - LLADA2["first_k_dense_replace"] * ids.numel() - moe_layers * ids.numel()
    assert routed == moe_layers * ids.numel() * LLADA2["num_experts_per_tok"]  # each token reaches k experts


def test_detection_and_inspect_name_the_family_and_say_why(checkpoint, capsys):
    found = detect(checkpoint)
    assert found.format == "llada2" and "llada2_moe" in found.reason and "LLaDA2MoeModelLM" in found.reason
    assert main(["inspect", str(checkpoint)]) == 0
    out = capsys.readouterr().out
    assert "llada2" in out and "LLaDA2MoeModelLM" in out and "LLaDA2MoeForCausalLM" in out
    assert f"{MASK_ID}" in out and "block_causal, blocks of 32" in out
    assert "LLaDA2MoeForCausalLM  (difflm's native backbone, no remote code)" in out
    model = _model(checkpoint)
    cfg = model.config
    assert (cfg.family, cfg.shift, cfg.attention, cfg.block_size) == ("llada2", False, "block_causal", 32)
    assert (cfg.mask_token_id, cfg.eos_token_id, cfg.pad_token_id) == (MASK_ID, EOS_ID, EOS_ID)


def test_weights_alone_are_recognised(tmp_path):
    write_llada2(tmp_path / "m", model_type="bailing_custom", architectures=None)
    assert detect_format(tmp_path / "m") == "llada2"


@pytest.mark.parametrize("change, words", [
    ({"score_function": "softmax"}, "score_function='softmax' is not supported"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_scaling"),
    ({"use_qk_norm": False}, "use_qk_norm=False"),
    ({"n_group": 3}, "inconsistent LLaDA 2.x routing"),
    ({"num_experts_per_tok": 5}, "inconsistent LLaDA 2.x routing"),
])
def test_unsupported_options_are_a_one_line_model_load_error(tmp_path, change, words):
    write_llada2(tmp_path / "m", **{k: v for k, v in change.items() if k != "n_group"})
    if "n_group" in change:  # the weights do not depend on it: change config.json only
        config = json.loads((tmp_path / "m" / "config.json").read_text())
        (tmp_path / "m" / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(ModelLoadError) as err:
        DiffusionLM.from_pretrained(tmp_path / "m")
    assert words in str(err.value) and "\n" not in str(err.value)


def test_convert_writes_the_difflm_layout_that_reloads_to_identical_logits(checkpoint, tmp_path, capsys):
    assert main(["convert", str(checkpoint), str(tmp_path / "out")]) == 0, capsys.readouterr().err
    assert detect_format(tmp_path / "out") == "difflm"
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model_type"] == "difflm_llada2_moe" and "auto_map" not in config
    original, converted = _model(checkpoint), _model(tmp_path / "out")
    assert converted.config == original.config
    ids = OFFICIAL["input_ids"]
    with torch.no_grad():
        assert torch.equal(converted.logits(ids), original.logits(ids))


def test_presets_are_the_authors_and_valid_sampler_options():
    assert PRESETS["quality"].options["threshold"] == 0.7 and PRESETS["quality"].options["editing_threshold"] == 0.5
    assert PRESETS["speed"].options["threshold"] == 0.5 and "editing_threshold" not in PRESETS["speed"].options
    for preset in PRESETS.values():
        SamplerOptions.merge(None, **preset.options)  # raises on a bad value


@pytest.mark.parametrize("preset, case", [(None, "llada20_t095"), ("quality", "llada21_quality")])
def test_a_published_checkpoint_decodes_as_its_authors_without_options(checkpoint, preset, case):
    """No generation_config.json: the model decodes as the published generate() does by default; a preset
    (`formats.generation_presets`, `difflm generate --preset`) as LLaDA 2.1's generate in that mode."""
    from difflm.formats import generation_presets, saved_generation_defaults

    model = _model(checkpoint)
    presets = generation_presets(checkpoint)
    assert set(presets) == set(PRESETS) and saved_generation_defaults(checkpoint).options == PRESETS["llada2.0"].options
    assert model.generation_defaults.options == PRESETS["llada2.0"].options
    if preset is not None:
        model.generation_defaults = presets[preset]
    prompt = OFFICIAL["prompt"][0]
    blocks = -(-(prompt.numel() + 52) // 32) - prompt.numel() // 32
    out = model.generate(prompt, max_new_tokens=52, steps=32 * blocks, return_dict=True)  # no decoding option
    want = RECORD["generate"][case]["tokens"]
    assert out.sequences[0, prompt.numel():].tolist()[:len(want)] == want


def test_an_unknown_preset_is_a_one_line_error(checkpoint, capsys):
    from difflm.cli.generate import saved_defaults
    from difflm.errors import InputError

    assert saved_defaults(str(checkpoint), "speed").options == PRESETS["speed"].options
    with pytest.raises(InputError, match=r"--preset 'fast': .* no such decoding preset \(its presets: quality, speed"):
        saved_defaults(str(checkpoint), "fast")
    assert main(["generate", "hi", "--preset", "quality"]) == 2  # the bundled dlm-adapted has none
    assert "has no such decoding preset (it offers none)" in capsys.readouterr().err
