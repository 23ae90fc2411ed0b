"""DiffusionGemma (transformers' DiffusionGemmaForBlockDiffusion): detected, described, loaded onto transformers'
own class, and decoded by difflm's renoising sampler token for token as transformers' ``generate()`` decodes it,
under the generation_config.json saved beside the weights - alone and in left-padded batches, over several
canvases, with EOS inside a canvas and with adaptive stopping that triggers.

The checkpoints are tiny random models written by transformers itself (tests/diffusion_gemma_layouts.py)."""

from __future__ import annotations

import json

import pytest
import torch
from diffusion_gemma_layouts import EOS, PAD, decoder_logits, write_diffusion_gemma

from difflm import DiffusionLM, formats
from difflm.errors import InputError
from difflm.rng import seeded_generator

PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]


def left_padded(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, prompts))
    ids = torch.tensor([[PAD] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def both(path, reference, prompts, seed, **generate):
    """(transformers' generate() output, difflm's Generation) with the same seed, each under the saved config."""
    ids, mask = left_padded(prompts)
    torch.manual_seed(seed)
    expected = reference.generate(ids, attention_mask=mask, **generate)
    dlm = formats.load(path, dtype=torch.float32).model
    torch.manual_seed(seed)
    got = dlm.generate(prompts, return_dict=True, random_stream="transformers", **generate)
    return expected, got


def assert_same(expected, got) -> None:
    """difflm's canvas starts with transformers' sequences (which end early once every row ended at EOS;
    difflm pads the rest), and the calls each row took part in match transformers' tokens per forward."""
    n = expected.sequences.shape[1]
    assert torch.equal(got.sequences[:, :n], expected.sequences), (got.sequences, expected.sequences)
    assert (got.sequences[:, n:] == PAD).all()
    prompt = got.sequences.shape[1] - int(got.generate_mask.sum(-1)[0])
    valid = (expected.sequences[:, prompt:] != PAD).sum(-1)  # transformers counts the EOS, not the pad after it
    assert torch.allclose(valid / torch.tensor(got.row_calls), expected.tokens_per_forward.float())


@pytest.mark.parametrize("prompts", [PROMPTS[:1], PROMPTS], ids=["alone", "left-padded-batch"])
@pytest.mark.parametrize("canvas", [4, 8])
def test_token_for_token_as_transformers_generate(tmp_path, prompts, canvas):
    """Three canvases of 4 (or two of 8) under the saved config; every seed equal."""
    reference = write_diffusion_gemma(tmp_path / "dg", canvas=canvas, max_new_tokens=12 if canvas == 4 else 16)
    for seed in range(3):
        expected, got = both(tmp_path / "dg", reference, prompts, seed)
        assert_same(expected, got)
        assert got.steps == 6 * (got.generate_mask.sum(-1)[0].item() // canvas)  # no early stop under this config


def test_eos_inside_a_canvas_pads_the_row_and_ends_it(tmp_path):
    """An EOS-heavy model: rows end at an EOS inside a canvas; what follows it is pad, in that canvas and in
    every later one (which the row still runs through while others go on); all rows ended: the run ends."""
    reference = write_diffusion_gemma(tmp_path / "dg", eos_boost=2.2)
    seen_mid, seen_early_end = False, False
    for seed in range(6):
        expected, got = both(tmp_path / "dg", reference, PROMPTS, seed)
        assert_same(expected, got)
        for row in got.sequences.tolist():
            new = row[5:]
            if EOS in new:
                at = new.index(EOS)
                assert all(t == PAD for t in new[at + 1:])
                seen_mid |= at % 4 != 3 and any(EOS not in r[5:] or r[5:].index(EOS) > at for r in got.sequences.tolist())
        seen_early_end |= expected.sequences.shape[1] < got.sequences.shape[1]
        assert [len(t) for t in got.new_tokens] == [row[5:].index(EOS) if EOS in row[5:] else 12
                                                    for row in got.sequences.tolist()]
    assert seen_mid and seen_early_end


def test_adaptive_stopping_triggers_as_in_transformers(tmp_path):
    """A loose confidence threshold: rows stop before the step budget, at different steps, exactly as
    transformers' StableAndConfidentStoppingCriteria stops them (same tokens, same tokens per forward)."""
    reference = write_diffusion_gemma(tmp_path / "dg", confidence_threshold=2.0, stability_threshold=1,
                                      max_denoising_steps=10)
    stopped_early = False
    for seed in range(3):
        expected, got = both(tmp_path / "dg", reference, PROMPTS, seed)
        assert_same(expected, got)
        stopped_early |= min(got.row_calls) < 30 and len(set(got.row_calls)) > 1
    assert stopped_early


def test_a_length_that_is_not_a_whole_canvas_keeps_the_first_tokens(tmp_path):
    reference = write_diffusion_gemma(tmp_path / "dg")
    expected, got = both(tmp_path / "dg", reference, PROMPTS, 0, max_new_tokens=6)
    assert expected.sequences.shape[1] == 5 + 8 and got.sequences.shape[1] == 5 + 6  # two canvases of 4, cut to 6
    assert torch.equal(got.sequences, expected.sequences[:, :11])


def test_without_a_generation_config_transformers_defaults_apply(tmp_path):
    reference = write_diffusion_gemma(tmp_path / "dg")
    (tmp_path / "dg" / "generation_config.json").unlink()
    reference.generation_config = type(reference.generation_config)()
    dlm = formats.load(tmp_path / "dg").model
    assert dlm.generation_defaults.options["steps"] == 48 and dlm.generation_defaults.max_new_tokens == 256
    expected, got = both(tmp_path / "dg", reference, PROMPTS[:2], 1, max_new_tokens=8)
    assert_same(expected, got)


def test_detected_described_and_loaded_onto_transformers_own_class(tmp_path):
    reference = write_diffusion_gemma(tmp_path / "dg")
    found = formats.detect(tmp_path / "dg")
    assert found.format == "diffusion-gemma" and "DiffusionGemma" in found.reason
    info = formats.describe_checkpoint(tmp_path / "dg")
    assert info["architecture"] == "DiffusionGemmaForBlockDiffusion" and not info["native_backbone"]
    assert info["parameters"] == sum(p.numel() for p in reference.parameters())
    loaded = formats.load(tmp_path / "dg")
    assert (loaded.kind, loaded.format, loaded.autoregressive) == ("dlm", "diffusion-gemma", False)
    dlm = loaded.model
    assert type(dlm.model) is type(reference)
    for name, tensor in reference.state_dict().items():
        assert torch.equal(dlm.model.state_dict()[name], tensor), name
    assert dlm.config.extra["process"] == "uniform" and dlm.config.extra["denoiser"] == "encoder-decoder"
    assert (dlm.config.eos_token_id, dlm.config.pad_token_id, dlm.config.shift) == (EOS, PAD, False)
    assert dlm.generation_defaults.options == {"steps": 6, "entropy_bound": 1.0, "t_min": 0.4, "t_max": 0.8,
                                               "stability_threshold": 1, "confidence_threshold": 0.5,
                                               "stop_at_eos": True}


def test_from_pretrained_with_a_mask_id_works_and_logits_are_refused(tmp_path):
    """The placeholder mask id may be given (it names no token DiffusionGemma uses); the model has no
    single-sequence forward, so `logits` (and with it any ELBO) is a one-line error."""
    reference = write_diffusion_gemma(tmp_path / "dg")
    dlm = DiffusionLM.from_pretrained(tmp_path / "dg", mask_token_id=5)
    assert dlm.config.mask_token_id == 5
    with pytest.raises(InputError, match="no forward over one sequence"):
        dlm.logits(torch.tensor([[3, 4, 6]]))
    torch.manual_seed(0)
    expected = reference.generate(torch.tensor(PROMPTS[2:]))
    torch.manual_seed(0)
    assert torch.equal(dlm.generate(PROMPTS[2:], random_stream="transformers"), expected.sequences)
    with pytest.raises(InputError, match="mask token"):  # the placeholder is refused in a prompt
        dlm.generate([5, 6], max_new_tokens=4)


def test_saved_by_difflm_it_reloads_and_decodes_the_same(tmp_path):
    reference = write_diffusion_gemma(tmp_path / "dg")
    dlm = formats.load(tmp_path / "dg").model
    dlm.save_pretrained(tmp_path / "saved")
    again = formats.load(tmp_path / "saved")
    assert again.format == "difflm" and again.model.config == dlm.config
    assert again.model.generation_defaults.options == dlm.generation_defaults.options
    ids = torch.randint(3, 90, (2, 12), generator=torch.Generator().manual_seed(0))
    assert torch.equal(decoder_logits(again.model, ids), decoder_logits(dlm, ids))
    expected, _ = both(tmp_path / "dg", reference, PROMPTS, 2)
    torch.manual_seed(2)
    got = again.model.generate(PROMPTS, return_dict=True, random_stream="transformers")
    assert torch.equal(got.sequences[:, : expected.sequences.shape[1]], expected.sequences)
    # transformers reads what difflm saved: its own class, its generation config, the same tokens
    from transformers import DiffusionGemmaForBlockDiffusion

    theirs = DiffusionGemmaForBlockDiffusion.from_pretrained(tmp_path / "saved").eval()
    ids, mask = left_padded(PROMPTS)
    torch.manual_seed(2)
    assert torch.equal(theirs.generate(ids, attention_mask=mask).sequences, expected.sequences)


def test_difflm_stream_is_seeded_and_draws_the_canvas_live(tmp_path):
    write_diffusion_gemma(tmp_path / "dg")
    dlm = formats.load(tmp_path / "dg").model
    seen = []
    a = dlm.generate(PROMPTS, generator=[seeded_generator(i) for i in range(3)], return_dict=True, callback=seen.append)
    b = dlm.generate(PROMPTS, generator=[seeded_generator(i) for i in range(3)], return_dict=True)
    assert torch.equal(a.sequences, b.sequences) and len(seen) == a.steps
    assert [s.block for s in seen] == sorted(s.block for s in seen)
    assert all(s.committed[:, :5].sum() == 0 and torch.equal(s.canvas[:, :5], a.sequences[:, :5]) for s in seen)


@pytest.mark.parametrize("call, message", [
    (lambda m: m.infill([5, 6], [7], middle_length=4), "continues a prompt"),
    (lambda m: m.generate([5, 6], max_new_tokens=4, block_length=3), "canvases of 4"),
    (lambda m: m.generate([5, 6], max_new_tokens=4, random_stream="transformers",
                          generator=[seeded_generator(0)]), "one torch.Generator"),
    (lambda m: m.generate([5, 6], max_new_tokens=4, cache="prefix"), "do not apply to the renoising sampler"),
    (lambda m: m.generate([5, 95], max_new_tokens=4), "mask token"),
])
def test_what_does_not_apply_is_a_one_line_error(tmp_path, call, message):
    write_diffusion_gemma(tmp_path / "dg")
    with pytest.raises(InputError, match=message):
        call(formats.load(tmp_path / "dg").model)


def test_the_saved_generation_config_is_read_as_transformers_writes_it(tmp_path):
    write_diffusion_gemma(tmp_path / "dg", entropy_bound=0.25, t_min=0.1, t_max=0.9)
    raw = json.loads((tmp_path / "dg" / "generation_config.json").read_text())
    assert raw["sampler_config"]["entropy_bound"] == 0.25  # transformers nests the bound in sampler_config
    options = formats.load(tmp_path / "dg").model.generation_defaults.options
    assert (options["entropy_bound"], options["t_min"], options["t_max"]) == (0.25, 0.1, 0.9)


def test_difflm_generate_decodes_it_with_its_saved_config(tmp_path, capsys, monkeypatch):
    """`difflm generate --model DIR --random-stream transformers --seed S` prints transformers' tokens for
    torch.manual_seed(S); --show-steps draws every model call; renoising flags of a masked model are refused."""
    from conftest import tiny_tokenizer

    from difflm.cli import main

    reference = write_diffusion_gemma(tmp_path / "dg")
    tok = tiny_tokenizer()
    tok.save_pretrained(tmp_path / "dg")
    argv = ["generate", "w1 w2 w3", "--model", str(tmp_path / "dg"), "--seed", "3", "--random-stream", "transformers"]
    assert main(argv + ["--json"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    torch.manual_seed(3)
    expected = reference.generate(torch.tensor([tok.encode("w1 w2 w3", add_special_tokens=False)]))
    new = expected.sequences[0, 3:].tolist()
    assert row["new_tokens"] == (new[: new.index(EOS)] if EOS in new else new)
    assert row["options"]["entropy_bound"] == 1.0 and row["steps"] <= 18
    monkeypatch.setenv("COLUMNS", "200")
    assert main(argv + ["--show-steps"]) == 0
    assert capsys.readouterr().out.count("step ") == row["steps"]
    assert main(["generate", "w1", "--model", str(tmp_path / "dg"), "--t-min", "0.9"]) == 2  # t_min >= saved t_max
    assert "t_min < t_max" in capsys.readouterr().err


def test_eval_says_it_scores_no_likelihood_and_refuses_likelihood_tasks_in_one_line(tmp_path):
    from difflm.evaluation.likelihood import ScoreRequest
    from difflm.evaluation.loading import eval_lm

    write_diffusion_gemma(tmp_path / "dg")
    loaded = formats.load(tmp_path / "dg", dtype=torch.float32)
    loaded.tokenizer = object()  # the tiny layout ships no tokenizer; scoring never reads one
    lm = eval_lm(loaded)
    assert lm.scoring.startswith("none") and "generation tasks only" in lm.scoring
    with pytest.raises(InputError, match="no ELBO"):
        lm.nll([ScoreRequest.continuation([5, 6], [7, 8])])
