"""FSDP2 through accelerate on two CPU processes (gloo): every objective follows the one-process
loss curve, sharded checkpoints survive kill -9 and resume exactly, and the gathered model loads
on one process. DeepSpeed needs a GPU and says so."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import free_port
from difflm import DiffusionLM
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
           f"output_dir={tmp_path}", "--no-progress"]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "deepspeed" in done.stdout
    losses = _losses(tmp_path)
    assert len(losses) == 4 and all(map(lambda x: x == x, losses))
    DiffusionLM.from_pretrained(tmp_path / "model")
