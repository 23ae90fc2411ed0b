"""FSDP2 through accelerate on two CPU processes (gloo): every objective follows the one-process
loss curve, sharded checkpoints survive kill -9 and resume exactly, and the gathered model loads
on one process.

DeepSpeed: its engine needs CUDA, so on a CPU accelerate's real DeepSpeed path runs against a
stand-in engine (tests/deepspeed_stand_in.py) under the environment the shipped
configs/accelerate/deepspeed.yaml gives: the config DeepSpeed receives, the batch numbers, the
accumulation boundary, the loss scaling and the save path are checked here; the real engine on a GPU
(`make test-gpu`)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
import accelerate.accelerator
import accelerate.utils.deepspeed
from accelerate.utils import DeepSpeedPlugin

import deepspeed_stand_in
from conftest import free_port
from difflm import DiffusionLM
from difflm.errors import ConfigError
from difflm.training import Trainer, load_train_config, parallel
from difflm.training import trainer as trainer_module
from test_training import TINY, _records, _train, data  # noqa: F401 (fixture)

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _torchrun(args: list[str], port: int, **kw) -> subprocess.Popen | subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "difflm", "train", *args, "--no-progress"]
    if kw.pop("background", False):
        return subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _losses(out: Path) -> list[float]:
    return [r["train_loss"] for r in _records(out) if "train_loss" in r]


@pytest.fixture(scope="module")
def ar_init(tmp_path_factory, data):  # noqa: F811
    out = tmp_path_factory.mktemp("ar-init")
    _train(TINY + data + ["objective=ar", f"output_dir={out}", "max_steps=4", "eval_every=4"])
    return out / "model"


@pytest.mark.parametrize("objective", ["ar", "diffusion", "adapt", "block"])
def test_fsdp_follows_the_one_process_loss_curve(tmp_path, data, ar_init, objective):  # noqa: F811
    extra = {"adapt": [f"init={ar_init}", "diffusion.anneal_steps=3"],
             "block": [f"init={ar_init}", "diffusion.block_size=4"]}.get(objective, [])
    common = TINY + data + extra + [f"objective={objective}", "max_steps=4", "eval_every=4", "save_every=4"]
    done = _torchrun(common + ["distributed=fsdp", f"output_dir={tmp_path / 'fsdp'}"], port=free_port())
    assert "fsdp on 2 process(es)" in done.stdout
    _train(common + [f"output_dir={tmp_path / 'one'}"])
    fsdp, one = _losses(tmp_path / "fsdp"), _losses(tmp_path / "one")
    assert len(fsdp) == len(one) == 4
    torch.testing.assert_close(torch.tensor(fsdp), torch.tensor(one), rtol=1e-4, atol=1e-5)
    # the checkpoint is sharded: one torch.distributed.checkpoint file per process
    step = tmp_path / "fsdp" / "checkpoints" / "step-0000004"
    assert sorted(p.name for p in (step / "pytorch_model_fsdp_0").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    # the gathered final model loads on one process, in the usual layout, to the same logits
    if objective == "ar":
        from transformers import AutoModelForCausalLM

        a = AutoModelForCausalLM.from_pretrained(tmp_path / "fsdp" / "model")
        b = AutoModelForCausalLM.from_pretrained(tmp_path / "one" / "model")
        ids = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            torch.testing.assert_close(a(ids).logits, b(ids).logits, rtol=1e-3, atol=1e-4)
    else:
        a = DiffusionLM.from_pretrained(tmp_path / "fsdp" / "model")
        b = DiffusionLM.from_pretrained(tmp_path / "one" / "model")
        assert a.config == b.config
        ids = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            torch.testing.assert_close(a.logits(ids), b.logits(ids), rtol=1e-3, atol=1e-4)


def test_fsdp_run_killed_with_sigkill_resumes_exactly(tmp_path, data):  # noqa: F811
    args = TINY + data + ["objective=diffusion", "distributed=fsdp", "max_steps=40", "save_every=2", "eval_every=10",
                          "keep_checkpoints=3"]
    _torchrun(args + [f"output_dir={tmp_path / 'full'}"], port=free_port())
    killed = tmp_path / "killed"
    proc = _torchrun(args + [f"output_dir={killed}"], port=free_port(), background=True)
    try:
        deadline = time.time() + 240
        while not (killed / "checkpoints" / "step-0000004" / "trainer_state.json").exists():
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.time() < deadline, "no checkpoint at step 4 within 4 minutes"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole torchrun group, mid-step
        proc.wait()
    assert not (killed / "model").exists(), "the run finished before it was killed; make it longer"
    # the interrupted run may have gone on past its last checkpoint; what it logged after it is discarded
    _torchrun(args + [f"output_dir={killed}", "--resume"], port=free_port())
    full, resumed = _records(tmp_path / "full"), _records(killed)
    assert [r["step"] for r in resumed] == [r["step"] for r in full]
    for key in ("train_loss", "val_loss"):
        assert [key in r for r in resumed] == [key in r for r in full]
        values = lambda recs: [r[key] for r in recs if key in r]  # noqa: E731
        assert values(resumed) == pytest.approx(values(full), rel=1e-5)
    wa = DiffusionLM.from_pretrained(tmp_path / "full" / "model").model.state_dict()
    wb = DiffusionLM.from_pretrained(killed / "model").model.state_dict()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)


DEEPSPEED_YAML = Path(__file__).parents[1] / "configs" / "accelerate" / "deepspeed.yaml"
# what `accelerate launch` exports for each deepspeed_config key of a config file
LAUNCH_ENV = {"zero_stage": "ACCELERATE_DEEPSPEED_ZERO_STAGE", "gradient_accumulation_steps": "ACCELERATE_GRADIENT_ACCUMULATION_STEPS",
              "gradient_clipping": "ACCELERATE_GRADIENT_CLIPPING", "offload_optimizer_device":
              "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "offload_param_device": "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE",
              "zero3_init_flag": "ACCELERATE_DEEPSPEED_ZERO3_INIT", "zero3_save_16bit_model": "ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL"}


def test_deepspeed_config_takes_the_runs_numbers():
    base = {"train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
            "gradient_clipping": "auto", "zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": False,
                                                               "reduce_bucket_size": "auto"}}
    out = parallel.deepspeed_config(base, micro_batch_size=3, grad_accum=2, processes=4, grad_clip=1.0, hidden_size=8)
    assert out["train_micro_batch_size_per_gpu"] == 3 and out["gradient_accumulation_steps"] == 2
    assert out["train_batch_size"] == 24 and out["gradient_clipping"] == 1.0
    assert out["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True  # else no model at the end
    assert out["zero_optimization"]["reduce_bucket_size"] == 64
    assert base["train_batch_size"] == "auto"  # a copy
    stage2 = parallel.deepspeed_config({**base, "zero_optimization": {"stage": 2}, "gradient_accumulation_steps": 2},
                                       micro_batch_size=1, grad_accum=2, processes=1, grad_clip=None)
    assert stage2["gradient_clipping"] == 0.0 and "stage3_gather_16bit_weights_on_model_save" not in stage2["zero_optimization"]
    with pytest.raises(ConfigError, match="gradient_accumulation_steps=1, the run needs 4"):
        parallel.deepspeed_config({**base, "gradient_accumulation_steps": 1}, micro_batch_size=1, grad_accum=4, processes=1,
                                  grad_clip=1.0)


@pytest.fixture
def deepspeed_stand_in_launch(tmp_path, monkeypatch):
    """The process `accelerate launch --config_file configs/accelerate/deepspeed.yaml` starts, on one
    process, with the stand-in as `deepspeed` and accelerate's CPU switch off (it enables DeepSpeed
    only then). Yields the stand-in's call log; ``ZERO_STAGE`` in the environment picks the stage."""
    shipped = yaml.safe_load(DEEPSPEED_YAML.read_text())
    assert shipped["distributed_type"] == "DEEPSPEED"
    for key, value in shipped["deepspeed_config"].items():
        monkeypatch.setenv(LAUNCH_ENV[key], str(value).lower())
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    # accelerate asks importlib for the package and its version
    meta = tmp_path / "site" / "deepspeed-0.19.8.dist-info"
    meta.mkdir(parents=True)
    (meta / "METADATA").write_text("Metadata-Version: 2.1\nName: deepspeed\nVersion: 0.19.8\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setitem(sys.modules, "deepspeed", deepspeed_stand_in)
    for name, module in deepspeed_stand_in.SUBMODULES.items():
        monkeypatch.setitem(sys.modules, name, module)
    real = parallel.Accelerator
    monkeypatch.setattr(parallel, "Accelerator", lambda **kw: real(**{**kw, "cpu": False}))
    # accelerate imports its DeepSpeed wrappers at import time, where deepspeed is installed
    for name in ("DeepSpeedEngineWrapper", "DeepSpeedOptimizerWrapper", "DeepSpeedSchedulerWrapper", "DummyOptim",
                 "DummyScheduler", "map_pytorch_optim_to_deepspeed"):
        monkeypatch.setattr(accelerate.accelerator, name, getattr(accelerate.utils.deepspeed, name), raising=False)
    # transformers decided at import that there is no deepspeed; the config it would be handed only
    # makes it build models under deepspeed.zero.Init, which needs the real package
    monkeypatch.setattr(DeepSpeedPlugin, "set_deepspeed_weakref", lambda self: None)
    for calls in deepspeed_stand_in.CALLS.values():
        calls.clear()
    # deepspeed.initialize joins a process group even on one GPU; accelerate's barriers expect one
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        yield deepspeed_stand_in.CALLS
    finally:
        torch.distributed.destroy_process_group()
        # accelerate keeps its process state process-wide: leave none of the stand-in launch's (DeepSpeed on a
        # process group) to the tests after this one
        from accelerate.state import AcceleratorState, GradientState, PartialState

        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
        PartialState._reset_state()


DS_RUN = ["objective=diffusion", "max_steps=3", "eval_every=3", "save_every=3", "batch_size=4", "grad_accum=2",
          "grad_clip=0.5"]


@pytest.fixture(scope="module")
def one_process_curve(tmp_path_factory, data) -> list[float]:  # noqa: F811
    """The loss curve of the DeepSpeed test's run without DeepSpeed."""
    out = tmp_path_factory.mktemp("one-process")
    _train(TINY + data + DS_RUN + [f"output_dir={out}"])
    return _losses(out)


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_path_of_accelerate_with_a_stand_in_engine(tmp_path, data, one_process_curve, deepspeed_stand_in_launch,
                                                             stage, monkeypatch):  # noqa: F811
    """What broke on the first GPU is caught here: accelerate's "auto" micro-batch with no DataLoader,
    an optimizer step per micro-batch, the loss divided twice, ZeRO-3's save without the 16-bit gather."""
    calls = deepspeed_stand_in_launch
    monkeypatch.setenv(LAUNCH_ENV["zero_stage"], str(stage))
    common = TINY + data + DS_RUN
    cfg = load_train_config(None, common + [f"output_dir={tmp_path / 'ds'}"])
    trainer = Trainer(cfg, show_progress=False)
    assert parallel.describe(trainer.accelerator)["engine"] == "deepspeed"
    (config,) = calls["initialize"]
    assert config["train_micro_batch_size_per_gpu"] == 2 and config["gradient_accumulation_steps"] == 2
    assert config["train_batch_size"] == 4 and config["gradient_clipping"] == 0.5
    assert config["zero_optimization"]["stage"] == stage
    if stage == 3:  # else get_state_dict raises at the end of the run
        assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    result = trainer.train()
    # one optimizer step per training step, at the last micro-batch; the engine got undivided losses
    assert [c["boundary"] for c in calls["backward"]] == [False, True] * 3
    assert [c["boundary"] for c in calls["step"]] == [True] * 3
    ds_losses = _losses(tmp_path / "ds")
    engine_losses = [c["loss"] for c in calls["backward"]]
    for step, loss in enumerate(ds_losses):  # the engine divides by its 2 accumulation steps
        assert loss == pytest.approx((engine_losses[2 * step] + engine_losses[2 * step + 1]) / 2, rel=1e-6)
    assert calls["save_checkpoint"] == ["pytorch_model"]
    # the saved model is the trained one, and it loads
    saved = DiffusionLM.from_pretrained(result["model_dir"])
    trained = trainer.accelerator.unwrap_model(trainer.wrapped)
    ids = torch.randint(0, 100, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(saved.logits(ids), trained.logits(ids), rtol=1e-4, atol=1e-5)
    # and the run follows the curve of the same run without DeepSpeed
    torch.testing.assert_close(torch.tensor(ds_losses), torch.tensor(one_process_curve), rtol=1e-5, atol=1e-6)


def test_without_the_runs_numbers_accelerate_cannot_prepare_deepspeed(tmp_path, data, deepspeed_stand_in_launch,
                                                                      monkeypatch):  # noqa: F811
    """The test above can fail: without `prepare_deepspeed` accelerate 1.15 raises on the "auto" micro-batch."""
    monkeypatch.setattr(trainer_module, "prepare_deepspeed", lambda *a, **k: None)
    cfg = load_train_config(None, TINY + data + ["objective=diffusion", f"output_dir={tmp_path}"])
    with pytest.raises(ValueError, match="train_micro_batch_size_per_gpu"):
        Trainer(cfg, show_progress=False)


def _deepspeed_unavailable() -> str | None:
    if not torch.cuda.is_available():
        return ("DeepSpeed ZeRO needs a CUDA device: accelerate enables DeepSpeed only on GPUs "
                "(ACCELERATE_USE_DEEPSPEED is ignored with cpu=True) and ZeRO's collectives use NCCL")
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        return "deepspeed is not installed (pip install deepspeed on the GPU machine)"
    return None


@pytest.mark.gpu
@pytest.mark.skipif(_deepspeed_unavailable() is not None, reason=str(_deepspeed_unavailable()))
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_through_the_shipped_config(tmp_path, data, stage):  # noqa: F811
    config = Path(__file__).parents[1] / "configs" / "accelerate" / "deepspeed.yaml"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "--num_processes",
           str(min(2, torch.cuda.device_count())), "--zero_stage", str(stage), "-m", "difflm", "train",
           *TINY, *data, "objective=diffusion", "max_steps=4", "eval_every=4", "save_every=4", "mixed_precision=bf16",
           "grad_accum=2",
           f"output_dir={tmp_path}", "--no-progress"]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "deepspeed" in done.stdout
    losses = _losses(tmp_path)
    assert len(losses) == 4 and all(map(lambda x: x == x, losses))
    DiffusionLM.from_pretrained(tmp_path / "model")
