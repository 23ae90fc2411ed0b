"""``objective: uniform``: a uniform-state DLM trained in the shared loop - what its draws are, what it
learns, what it saves and how the rest of difflm then treats the saved model. (Exact resume and config
refusals of every objective: tests/test_objective_contracts.py.)"""

from __future__ import annotations

import pytest
import torch
from test_training import TINY, _records, _train, data  # noqa: F401 (data: the corpus fixture)

from difflm import DiffusionLM
from difflm.config import is_uniform_state
from difflm.errors import ConfigError
from difflm.evaluation.loading import load_eval_lm
from difflm.losses.uniform import uniform_times
from difflm.training import Trainer, load_train_config


def _objective(tmp_path, data, *extra):  # noqa: F811
    cfg = load_train_config(None, TINY + data + ["objective=uniform", f"output_dir={tmp_path}", "max_steps=1", *extra])
    trainer = Trainer(cfg, show_progress=False)
    return trainer, trainer.objective


def test_draws_replace_the_scheduled_share_and_never_the_first_token(tmp_path, data):  # noqa: F811
    _, objective = _objective(tmp_path, data)
    rows = replaced = 0
    expected = 0.0
    for step in range(40):
        batch = objective.global_batch(step)
        assert batch.x.shape == batch.replace.shape == batch.noise_tokens.shape
        assert batch.noise_tokens.min() >= 0 and batch.noise_tokens.max() < objective.model.vocab_size
        prob = uniform_times(batch.t).replace_prob
        expected += float((prob[:, None] * torch.ones_like(batch.x[:, 1:], dtype=torch.float)).sum())
        replaced += int(batch.replace[:, 1:].sum())
        rows += batch.x.shape[0]
    # 40 steps x 4 rows x 31 tokens: the replaced share is the schedule's 1 - alpha_t (binomial, 5 sigma)
    n = rows * (batch.x.shape[1] - 1)
    assert abs(replaced - expected) < 5 * (n * 0.25) ** 0.5
    # the same step draws the same noise (resume), another step other noise
    a, b, c = objective.global_batch(3), objective.global_batch(3), objective.global_batch(4)
    assert torch.equal(a.replace, b.replace) and torch.equal(a.noise_tokens, b.noise_tokens)
    assert not torch.equal(a.noise_tokens, c.noise_tokens)


def test_the_loss_scores_what_was_drawn_and_ignores_the_unpredictable_first_token(tmp_path, data):  # noqa: F811
    _, objective = _objective(tmp_path, data)
    batch = objective.global_batch(0)
    base = objective.batch_loss(objective.model, batch).item()
    # a different token at position 0 would change the loss only through attention, never as a target:
    # noise placed at position 0 is not applied (the first token of a shifted model is context)
    forced = type(batch)(batch.x, batch.t, batch.replace.clone(), batch.noise_tokens.clone())
    forced.replace[:, 0] = True
    forced.noise_tokens[:, 0] = (batch.x[:, 0] + 7) % objective.model.vocab_size
    assert objective.batch_loss(objective.model, forced).item() == pytest.approx(base, rel=1e-6)
    # while noise at a scored position does change it
    other = type(batch)(batch.x, batch.t, batch.replace.clone(), batch.noise_tokens.clone())
    other.replace[:, 5] = True
    other.noise_tokens[:, 5] = (batch.x[:, 5] + 7) % objective.model.vocab_size
    assert objective.batch_loss(objective.model, other).item() != pytest.approx(base, rel=1e-6)


def test_a_short_run_lowers_the_bound_and_saves_a_uniform_state_model(tmp_path, data):  # noqa: F811
    out = tmp_path / "run"
    _train(TINY + data + ["objective=uniform", f"output_dir={out}", "max_steps=30", "eval_every=30",
                          "save_every=30"])
    vals = [r["val_loss"] for r in _records(out) if "val_loss" in r]
    assert vals[-1] < vals[0] - 0.5, vals  # from ~log V towards the corpus
    model = DiffusionLM.from_pretrained(out / "model")
    assert is_uniform_state(model) and model.config.attention == "bidirectional" and not model.takes_time
    # difflm eval scores it with the uniform-state bound, and generate decodes it without a mask token
    lm = load_eval_lm(str(out / "model"))
    assert type(lm).__name__ == "UniformEvalLM"
    prompt = torch.tensor([[0, 10, 11, 12]])
    new = model.generate(prompt, max_new_tokens=6, steps=3, generator=torch.Generator().manual_seed(0))
    assert new.shape == (1, 10) and torch.equal(new[:, :4], prompt)
    assert not (new[0, 4:] == model.config.mask_token_id).any()


def test_a_time_free_backbone_ignores_the_noise_level(tmp_path, data):  # noqa: F811
    _, objective = _objective(tmp_path, data)
    model = objective.model.eval()
    x = torch.randint(4, 100, (2, 12))
    a = model.logits(x, timesteps=torch.tensor([0.1, 0.2]))
    b = model.logits(x, timesteps=torch.tensor([3.0, 5.0]))
    assert torch.equal(a, b) and torch.equal(a, model.logits(x))


def test_config_refusals(tmp_path, data):  # noqa: F811
    for extra, words in ((["diffusion.extra={process: masked}"], "process"),
                         (["complementary_masks=true"], "complementary_masks")):
        with pytest.raises(ConfigError, match=words):
            load_train_config(None, TINY + data + ["objective=uniform", f"output_dir={tmp_path}", *extra])


def test_a_block_uniform_model_draws_a_level_per_block_and_sees_only_clean_earlier_blocks(tmp_path, data):  # noqa: F811
    _, objective = _objective(tmp_path, data, "diffusion.block_size=4")
    model = objective.model
    assert model.config.attention == "block_causal" and model.config.block_size == 4
    batch = objective.global_batch(0)
    groups = model.block_groups(batch.x)
    assert batch.t.shape == batch.x.shape
    for row in range(batch.x.shape[0]):  # one level per block, several levels per row
        for g in groups[row].unique():
            assert batch.t[row][groups[row] == g].unique().numel() == 1
        assert batch.t[row].unique().numel() > 1
    base = objective.batch_loss(model, batch)
    assert torch.isfinite(base)
    # the loss of block k does not depend on the noise drawn in a later block: change the noise of the last
    # block only and the per-token bound of the first blocks stays the same
    from difflm.losses.uniform import uniform_diffusion_loss
    x = batch.x
    a = uniform_diffusion_loss(model, x, t=batch.t, replace=batch.replace, noise_tokens=batch.noise_tokens)
    last = groups == groups.max()
    replace = batch.replace | last
    noise = torch.where(last, (x + 11) % model.vocab_size, batch.noise_tokens)
    b = uniform_diffusion_loss(model, x, t=batch.t, replace=replace, noise_tokens=noise)
    early = groups < groups.max() - 1  # before the last block (and its predicting position under shift)
    assert torch.allclose(a.token_nll[early], b.token_nll[early], atol=1e-5)
    assert not torch.allclose(a.token_nll[last], b.token_nll[last], atol=1e-5)
