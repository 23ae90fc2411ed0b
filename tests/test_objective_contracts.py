"""The contract every registered training objective keeps (in the spirit of diffusers' SchedulerCommonTest):
it trains in the shared loop from a tiny config, a run interrupted half-way and resumed ends with the
same weights and the same logged losses as the uninterrupted run, its batches are typed dataclasses,
and its config check refuses what does not belong to it with one `ConfigError`.

A new objective is one file, one line in `difflm.registry.OBJECTIVES` and one recipe below (the
overrides of its tiny run); `test_every_objective_has_a_recipe` fails until it has one."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_training import TINY, _records, data  # noqa: F401 (data: the corpus fixture)

from difflm.errors import ConfigError
from difflm.registry import OBJECTIVES
from difflm.training import Trainer, load_train_config
from difflm.training.models import build_model, load_tokenizer
from difflm.training.objectives import Batch, Objective

STEPS = 4  # uninterrupted; the interrupted run stops after STEPS // 2 and resumes


@pytest.fixture(scope="module")
def ar_init(tmp_path_factory):
    """A tiny random AR checkpoint with the bundled tokenizer (what adapt and LoRA start from)."""
    out = tmp_path_factory.mktemp("ar-init")
    tokenizer = load_tokenizer("bundled")
    arch = {o.split("=")[0].removeprefix("architecture."): o.split("=")[1] for o in TINY if o.startswith("architecture.")}
    arch = {k: v if k == "model_type" else int(v) for k, v in arch.items()}
    model = build_model(tokenizer, seed=0, architecture=arch)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory):
    """Short prompt/response JSONL files."""
    root = tmp_path_factory.mktemp("sft")
    words = ["the king", "a rose", "my lord", "fair wind", "good night", "the sea", "old man", "sweet love"]
    rows = [{"prompt": f"Say {a}.", "response": f"{a}, {b}"} for a in words for b in words[:3]]
    for name, part in (("train", rows[:16]), ("val", rows[16:])):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    return [f"train_files=[{root / 'train.jsonl'}]", f"validation_files=[{root / 'val.jsonl'}]"]


def recipe(name: str, corpus: list[str], sft: list[str], ar_init: Path) -> list[str]:
    """The overrides of a tiny run of objective ``name`` (on top of test_training's TINY)."""
    return {
        "ar": corpus,
        "diffusion": corpus + ["diffusion.attention=annealed", "diffusion.anneal_steps=3"],
        "adapt": corpus + [f"init={ar_init}", "diffusion.anneal_steps=3"],
        "block": corpus + ["diffusion.block_size=4", "diffusion.block_context=causal", "ar_loss_weight=0.5"],
        "sft": sft + ["noised_blocks=2", "diffusion.block_size=4", "grad_accum=2"],
        "continuous": corpus + ["continuous.embed_dim=8"],
        "uniform": corpus + [f"init={ar_init}", "diffusion.anneal_steps=3"],
    }[name]


RECIPES = ("ar", "diffusion", "adapt", "block", "sft", "continuous", "uniform")


def test_every_objective_has_a_recipe():
    assert set(OBJECTIVES.names()) <= set(RECIPES), "add a tiny run of the new objective to recipe()"


def _config(name, data, sft_data, ar_init, out, extra=()):  # noqa: F811
    return load_train_config(None, TINY + recipe(name, data, sft_data, ar_init) + [
        f"objective={name}", f"output_dir={out}", f"max_steps={STEPS}", f"save_every={STEPS // 2}",
        f"eval_every={STEPS // 2}", "keep_checkpoints=3", *extra])


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return {k: v for f in sorted(checkpoint.glob("*.safetensors")) for k, v in load_file(f).items()}


@pytest.mark.parametrize("name", OBJECTIVES.names())
def test_objective_resumes_exactly(tmp_path, data, sft_data, ar_init, name):  # noqa: F811
    cfg = _config(name, data, sft_data, ar_init, tmp_path)
    trainer = Trainer(cfg, show_progress=False)
    objective = trainer.objective
    assert isinstance(objective, Objective) and type(objective) is OBJECTIVES.get(name) and objective.name == name
    for batch in [*trainer.micro_batches(0), objective.validation_batch(0)]:
        assert isinstance(batch, Batch) and dataclasses.is_dataclass(batch)  # typed, not an anonymous tuple
    trainer.train()
    full, last = _records(tmp_path), tmp_path / "checkpoints" / f"step-{STEPS:07d}"
    uninterrupted = _weights(last)
    assert uninterrupted and all(torch.isfinite(v).all() for v in uninterrupted.values())
    # interrupted after STEPS // 2: the later checkpoint and the final model never written
    shutil.rmtree(last)
    shutil.rmtree(tmp_path / "model")
    Trainer(_config(name, data, sft_data, ar_init, tmp_path), resume=True, show_progress=False).train()
    resumed = _records(tmp_path)
    assert [r["step"] for r in resumed] == [r["step"] for r in full]
    for a, b in zip(full, resumed):
        assert (a.get("train_loss"), a.get("val_loss")) == (b.get("train_loss"), b.get("val_loss")), a["step"]
    again = _weights(last)
    assert again.keys() == uninterrupted.keys()
    for key, value in uninterrupted.items():
        assert torch.equal(again[key], value), key
    assert (tmp_path / "model").is_dir()


@pytest.mark.parametrize("name", OBJECTIVES.names())
def test_objective_refuses_a_wrong_section(tmp_path, data, sft_data, ar_init, name):  # noqa: F811
    owned = {s: owner for owner in OBJECTIVES for s in OBJECTIVES.entry(owner).meta.get("sections", ())}
    foreign = [s for s, owner in owned.items() if owner != name]
    assert foreign
    for section in foreign:  # another objective's section: refused, with one line naming its owner
        with pytest.raises(ConfigError, match=f"need objective {owned[section]}") as err:
            _config(name, data, sft_data, ar_init, tmp_path, [f"{section}.bogus=1"])
        assert len(str(err.value).splitlines()) == 1
    for section in (s for s, owner in owned.items() if owner == name):  # its own, malformed
        with pytest.raises(ConfigError):
            _config(name, data, sft_data, ar_init, tmp_path, [f"{section}.bogus=1"])
    with pytest.raises(ConfigError, match="unknown objective"):
        _config(name, data, sft_data, ar_init, tmp_path, ["objective=sideways"])
