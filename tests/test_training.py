"""The trainer: every objective learns, resume retraces the uninterrupted run, checkpoints are
atomic, two DDP processes match one, and bad configs fail with one clear line."""

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import free_port
from difflm import DiffusionLM
from difflm.bundled import corpus_file
from difflm.cli import main
from difflm.errors import ConfigError, InputError
from difflm.training import Trainer, load_train_config
from difflm.training import checkpoint as ckpt_mod

TINY = [
    "architecture.model_type=llama", "architecture.hidden_size=32", "architecture.intermediate_size=64",
    "architecture.num_hidden_layers=2", "architecture.num_attention_heads=2", "architecture.num_key_value_heads=2",
    "architecture.max_position_embeddings=64", "seq_length=32", "batch_size=4", "warmup_steps=2", "lr=3e-3",
    "eval_batches=2", "log_every=1", "mixed_precision=no", "threads=1",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A small JSONL corpus cut from the bundled validation split (fast to tokenize)."""
    root = tmp_path_factory.mktemp("data")
    os.environ["DIFFLM_CACHE"] = str(root / "cache")
    with gzip.open(corpus_file("validation"), "rt") as handle:
        docs = [json.loads(line) for line in handle][:60:3]
    train, val = root / "train.jsonl", root / "val.jsonl"
    train.write_text("".join(json.dumps(d) + "\n" for d in docs[:15]))
    val.write_text("".join(json.dumps(d) + "\n" for d in docs[15:]))
    return [f"train_files=[{train}]", f"validation_files=[{val}]"]


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _train(overrides, resume=False):
    return Trainer(load_train_config(None, overrides), resume=resume, show_progress=False).train()


def _interrupted_and_resumed(args, out: Path) -> tuple[list[dict], list[dict]]:
    """The metrics of a run of ``args`` (max_steps 6, checkpoints at 3 and 6), then of the same run
    interrupted after step 3 - the later checkpoint and the final model never written - and resumed."""
    _train(args)
    full = _records(out)
    shutil.rmtree(out / "checkpoints" / "step-0000006")
    shutil.rmtree(out / "model")
    _train(args, resume=True)
    return full, _records(out)


@pytest.mark.parametrize("objective", ["ar", "diffusion"])
def test_objectives_lower_their_validation_loss(tmp_path, data, objective):
    result = _train(TINY + data + [f"objective={objective}", f"output_dir={tmp_path}", "max_steps=40", "eval_every=40"])
    recs = [r for r in _records(tmp_path) if "val_loss" in r]
    assert recs[0]["step"] == 0 and recs[-1]["step"] == 40
    assert recs[-1]["val_loss"] < recs[0]["val_loss"] - 0.5
    assert result["tokens"] == 40 * 4 * 32


def test_adapt_turns_an_ar_checkpoint_into_a_bidirectional_dlm(tmp_path, data):
    _train(TINY + data + ["objective=ar", f"output_dir={tmp_path / 'ar'}", "max_steps=10", "eval_every=10"])
    ar_dir = tmp_path / "ar" / "model"
    _train(TINY + data + ["objective=adapt", f"init={ar_dir}", f"output_dir={tmp_path / 'dlm'}", "max_steps=30",
                          "eval_every=30", "diffusion.anneal_steps=10"])
    recs = [r for r in _records(tmp_path / "dlm") if "val_loss" in r]
    assert recs[-1]["val_loss"] < recs[0]["val_loss"]
    model = DiffusionLM.from_pretrained(tmp_path / "dlm" / "model")
    assert model.config.attention == "bidirectional" and model.config.shift and model.config.anneal_steps == 10
    assert model.mask_token_id == model.tokenizer.mask_token_id == 3


def test_resume_retraces_the_uninterrupted_run(tmp_path, data):
    args = TINY + data + ["objective=diffusion", f"output_dir={tmp_path}", "max_steps=6", "save_every=3",
                          "eval_every=3", "keep_checkpoints=3"]
    full, resumed = _interrupted_and_resumed(args, tmp_path)
    assert [r["step"] for r in resumed] == [r["step"] for r in full]
    for a, b in zip(full, resumed):
        assert a.get("train_loss") == b.get("train_loss") and a.get("val_loss") == b.get("val_loss")


def test_checkpoints_are_atomic(tmp_path, data, monkeypatch):
    args = TINY + data + ["objective=ar", f"output_dir={tmp_path}", "max_steps=4", "save_every=2", "eval_every=4"]
    real_save = ckpt_mod.save_checkpoint
    calls = []

    def crash_on_second(accelerator, output_dir, step, state, keep):
        calls.append(step)
        if step == 4:
            original = accelerator.save_state

            def half_written(path, **kw):
                (Path(path) / "model.safetensors").write_bytes(b"partial")
                raise OSError("disk full")

            monkeypatch.setattr(accelerator, "save_state", half_written)
        return real_save(accelerator, output_dir, step, state, keep)

    monkeypatch.setattr("difflm.training.trainer.save_checkpoint", crash_on_second)
    with pytest.raises(OSError, match="disk full"):
        _train(args)
    step, path = ckpt_mod.latest_checkpoint(tmp_path)
    assert step == 2 and (path / "model.safetensors").stat().st_size > 1000
    assert not (tmp_path / "checkpoints" / "step-0000004").exists()


def test_resume_without_checkpoint_is_a_clear_error(tmp_path, data, capsys):
    code = main(["train", *TINY, *data, "objective=ar", f"output_dir={tmp_path}", "max_steps=2", "--resume"])
    assert code == 2 and "no checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["nonsense_key=3"], "unknown config key"),
    (["objective=adapt"], "needs init"),
    (["train_files=[/nonexistent.jsonl]"], "not found"),
    (["batch_size=3", "grad_accum=2"], "multiple of"),
    (["objective=sideways"], "unknown objective"),
    (["lr=fast"], "lr must be a number"),
    (["betas=[0.9]"], "betas must be two numbers"),
    (["objective=diffusion", "diffusion.schedule=square"], "diffusion: unknown schedule"),
    (["objective=diffusion", "shift=false"], "diffusion.shift="),
])
def test_bad_config_one_line_error(tmp_path, data, capsys, args, message):
    code = main(["train", *TINY, *data, f"output_dir={tmp_path}", *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_block_size_is_read_as_seq_length_with_a_warning():
    """The training sequence length was called block_size, a name diffusion.block_size now owns alone:
    an old config still loads (with a FutureWarning), and giving both names is refused."""
    tiny = [a for a in TINY if not a.startswith("seq_length=")]
    with pytest.warns(FutureWarning, match="block_size is now seq_length"):
        cfg = load_train_config(None, [*tiny, "block_size=48"])
    assert cfg.seq_length == 48 and not hasattr(cfg, "block_size")
    with pytest.raises(ConfigError, match="seq_length only"):
        load_train_config(None, [*tiny, "block_size=48", "seq_length=48"])


def test_malformed_jsonl_and_empty_corpus(tmp_path, data, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"txt": oops\n')
    assert main(["train", *TINY, f"train_files=[{bad}]", data[1], f"output_dir={tmp_path}"]) == 2
    assert f"{bad}:2" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert main(["train", *TINY, f"train_files=[{empty}]", data[1], f"output_dir={tmp_path}"]) == 2
    assert "empty or too small" in capsys.readouterr().err


def test_two_ddp_processes_match_one(tmp_path, data):
    """torchrun --nproc_per_node 2 (gloo) with the same global batch gives the same losses."""
    common = TINY + data + ["objective=diffusion", "max_steps=4", "eval_every=4", "save_every=4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "-m", "difflm", "train", *common, f"output_dir={tmp_path / 'ddp'}", "--no-progress"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    single = subprocess.run([sys.executable, "-m", "difflm", "train", *common, f"output_dir={tmp_path / 'one'}",
                             "--no-progress"], env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    ddp, one = _records(tmp_path / "ddp"), _records(tmp_path / "one")
    losses = lambda recs: [r["train_loss"] for r in recs if "train_loss" in r]
    assert len(losses(ddp)) == len(losses(one)) == 4
    torch.testing.assert_close(torch.tensor(losses(ddp)), torch.tensor(losses(one)), rtol=1e-4, atol=1e-5)
    wa = DiffusionLM.from_pretrained(tmp_path / "ddp" / "model").model.state_dict()
    wb = DiffusionLM.from_pretrained(tmp_path / "one" / "model").model.state_dict()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-3, atol=1e-4)


def test_overrides_may_follow_flags(tmp_path, data, capsys):
    code = main(["train", *TINY, *data, "objective=ar", "--resume", f"output_dir={tmp_path / 'x'}"])
    assert code == 2 and f"no checkpoint in {tmp_path / 'x'}" in capsys.readouterr().err


def test_trainer_loss_is_the_losses_module_loss(tmp_path, data):
    """One loss path: the trainer's step loss is `masked_diffusion_loss` under the step's noise and
    annealing draw, through the (wrapped) model."""
    from difflm.losses import draw_noise, masked_diffusion_loss
    from difflm.training.seeding import step_generator

    cfg = load_train_config(None, TINY + data + ["objective=diffusion", f"output_dir={tmp_path}", "max_steps=1",
                                                 "diffusion.attention=annealed", "diffusion.anneal_steps=4"])
    trainer = Trainer(cfg, show_progress=False)
    x = trainer.train_batches.global_batch(0)
    (batch,) = trainer.micro_batches(0)
    xm, noise, t = batch.x, batch.noise, batch.t
    expected_noise, expected_t = draw_noise(trainer.model, x, antithetic=True, generator=step_generator(cfg.seed, 0, 0))
    assert torch.equal(noise, expected_noise) and torch.equal(t, expected_t)
    with torch.no_grad():
        got = trainer.objective.loss(trainer.wrapped, batch, step=1, generator=step_generator(cfg.seed, 1, 1))
        want = masked_diffusion_loss(trainer.model, xm, t=t, noise_mask=noise, step=1, generator=step_generator(cfg.seed, 1, 1))
    assert got.item() == want.loss.item()
    # the annealing draw is part of it: another draw gives another loss
    with torch.no_grad():
        other = masked_diffusion_loss(trainer.model, xm, t=t, noise_mask=noise, step=1, generator=step_generator(cfg.seed, 2, 1))
    assert other.loss.item() != want.loss.item()


def test_checkpoints_of_a_tied_model_do_not_warn_about_shared_tensors(tmp_path, data, caplog, capfd):
    import logging

    caplog.set_level(logging.WARNING)
    _train(TINY + data + ["objective=ar", "architecture.tie_word_embeddings=true", f"output_dir={tmp_path}",
                          "max_steps=2", "save_every=1"])
    assert (tmp_path / "checkpoints").is_dir()
    out = capfd.readouterr()
    assert "Removed shared tensor" not in caplog.text + out.err + out.out


def test_two_runs_with_different_precision_in_one_process(tmp_path, data):
    """accelerate keeps its settings process-wide; a second Trainer (a notebook, the demo) must not
    inherit the first one's or fail on them."""
    from accelerate.state import AcceleratorState

    _train(TINY + data + ["objective=ar", f"output_dir={tmp_path / 'a'}", "max_steps=1"])
    trainer = Trainer(load_train_config(None, TINY + data + ["objective=ar", f"output_dir={tmp_path / 'b'}",
                                                             "max_steps=1", "mixed_precision=bf16"]), show_progress=False)
    wanted = "bf16" if torch.cuda.is_available() or trainer_bf16() else "no"
    assert AcceleratorState().mixed_precision == wanted
    trainer.train()
    _train(TINY + data + ["objective=ar", f"output_dir={tmp_path / 'c'}", "max_steps=1"])
    assert AcceleratorState().mixed_precision == "no"


def trainer_bf16() -> bool:
    from difflm.training.trainer import _cpu_supports_bf16

    return _cpu_supports_bf16()


def test_resume_at_or_past_max_steps(tmp_path, data, capsys):
    args = TINY + data + ["objective=ar", f"output_dir={tmp_path}", "max_steps=4", "save_every=2", "eval_every=4"]
    first = _train(args)
    again = _train(args, resume=True)  # nothing left to train: the same validation, the model saved again
    assert again["step"] == 4 and again["val_loss"] == pytest.approx(first["val_loss"])
    capsys.readouterr()
    code = main(["train", *args[:-3], "max_steps=2", "save_every=2", "eval_every=2", "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and "past max_steps=2" in err and len(err.strip().splitlines()) == 1


def test_block_objective_adapts_an_ar_checkpoint_into_a_block_diffusion_model(tmp_path, data):
    _train(TINY + data + ["objective=ar", f"output_dir={tmp_path / 'ar'}", "max_steps=10", "eval_every=10"])
    _train(TINY + data + ["objective=block", f"init={tmp_path / 'ar' / 'model'}", f"output_dir={tmp_path / 'blk'}",
                          "max_steps=20", "eval_every=20", "diffusion.block_size=4", "complementary_masks=true"])
    recs = [r for r in _records(tmp_path / "blk") if "val_loss" in r]
    assert recs[-1]["val_loss"] < recs[0]["val_loss"]
    model = DiffusionLM.from_pretrained(tmp_path / "blk" / "model")
    assert (model.config.attention, model.config.block_size, model.config.shift) == ("block_causal", 4, True)


def test_block_objective_needs_a_block_size(tmp_path, data, capsys):
    code = main(["train", *TINY, *data, "objective=block", f"output_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2 and "diffusion.block_size" in err


def test_complementary_masks_make_every_maskable_token_a_target_once(tmp_path, data):
    cfg = load_train_config(None, TINY + data + ["objective=diffusion", f"output_dir={tmp_path}", "max_steps=1",
                                                 "complementary_masks=true"])
    trainer = Trainer(cfg, show_progress=False)
    (batch,) = trainer.micro_batches(0)
    x, noise, t = batch.x, batch.noise, batch.t
    half = len(x) // 2
    assert len(x) == 2 * cfg.batch_size and torch.equal(x[:half], x[half:])
    from difflm.losses import maskable_positions

    allowed = maskable_positions(trainer.model, x[:half])
    assert torch.equal(noise[:half] ^ noise[half:], allowed) and not (noise[:half] & noise[half:]).any()
    torch.testing.assert_close(t[half:], (1 - t[:half]).clamp_min(trainer.model.config.eps))
