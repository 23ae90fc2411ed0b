"""A stand-in for the `deepspeed` package, so that accelerate's real DeepSpeed code path
(`Accelerator._prepare_deepspeed`, `backward`, `get_state_dict`, `save_state`) runs on a CPU in the
test suite, where DeepSpeed itself cannot (its engine needs CUDA and NCCL).

It keeps to the part of DeepSpeed's public API that accelerate calls, with the behaviour that
matters to a training loop: `initialize` takes the config as DeepSpeed would (every "auto" must be
gone, train_batch_size = micro x accumulation x processes), `DeepSpeedEngine.backward` divides the loss
by the accumulation steps, `step` updates only at the boundary it was told, and the ZeRO-3 16-bit
state dict exists only when the config asks for the gather on save. Every call is recorded in
`CALLS` for the tests to read. The tests put it on sys.path as `deepspeed` (see
`deepspeed_stand_in` in test_training_fsdp.py); nothing else imports it.
"""

from __future__ import annotations

import contextlib
import copy
import os
import types
from typing import Any

import torch

__version__ = "0.19.8"  # what accelerate's version checks read (the metadata says the same)
CALLS: dict[str, list[Any]] = {"initialize": [], "backward": [], "step": [], "save_checkpoint": []}


def _autos(config: Any, prefix: str = "") -> list[str]:
    if isinstance(config, dict):
        return [k for key, value in config.items() for k in _autos(value, f"{prefix}{key}.")]
    return [prefix.rstrip(".")] if config == "auto" else []


class DeepSpeedEngine(torch.nn.Module):
    """The module, its optimizer and the config; forward is the module's."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, config: dict[str, Any]) -> None:
        super().__init__()
        self.module, self.optimizer, self.config = model, optimizer, config
        self.boundary: bool | None = None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:  # DeepSpeedEngine forwards unknown attributes to its module
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)

    def gradient_accumulation_steps(self) -> int:
        return self.config["gradient_accumulation_steps"]

    def set_gradient_accumulation_boundary(self, is_boundary: bool) -> None:
        self.boundary = is_boundary

    def backward(self, loss: torch.Tensor, retain_graph: bool = False, scale_wrt_gas: bool = True) -> torch.Tensor:
        CALLS["backward"].append({"loss": loss.item(), "boundary": self.boundary})
        if scale_wrt_gas:
            loss = loss / self.gradient_accumulation_steps()
        loss.backward(retain_graph=retain_graph)
        return loss

    def step(self) -> None:
        CALLS["step"].append({"boundary": self.boundary})
        if self.boundary is False:
            return
        clip = self.config.get("gradient_clipping", 0.0)
        if clip:
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def get_global_grad_norm(self) -> float:
        return 0.0

    def zero_gather_16bit_weights_on_model_save(self) -> bool:
        return bool(self.config["zero_optimization"].get("stage3_gather_16bit_weights_on_model_save", False))

    def _zero3_consolidated_16bit_state_dict(self) -> dict[str, torch.Tensor]:
        assert self.zero_gather_16bit_weights_on_model_save()  # DeepSpeed refuses to gather otherwise
        return {k: v.detach().clone() for k, v in self.module.state_dict().items()}

    def save_checkpoint(self, save_dir: str, tag: str, **kwargs: Any) -> None:
        CALLS["save_checkpoint"].append(tag)
        os.makedirs(os.path.join(save_dir, tag), exist_ok=True)
        torch.save({"module": self.module.state_dict(), "optimizer": self.optimizer.state_dict()},
                   os.path.join(save_dir, tag, "state.pt"))

    def load_checkpoint(self, load_dir: str, tag: str, **kwargs: Any) -> tuple[str, dict]:
        state = torch.load(os.path.join(load_dir, tag, "state.pt"), weights_only=False)
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        return load_dir, {}


def initialize(model: torch.nn.Module, config_params: dict[str, Any], optimizer: torch.optim.Optimizer | None = None,
               **kwargs: Any) -> tuple[DeepSpeedEngine, Any, None, None]:
    """DeepSpeed's own checks of the config, then an engine."""
    config = copy.deepcopy(config_params)
    CALLS["initialize"].append(config)
    if _autos(config):
        raise ValueError(f"DeepSpeed cannot resolve 'auto' for {_autos(config)}")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    micro, gas = config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"]
    if config["train_batch_size"] != micro * gas * world:
        raise ValueError(f"train_batch_size {config['train_batch_size']} != {micro} * {gas} * {world}")
    return DeepSpeedEngine(model, optimizer, config), optimizer, None, None


# the submodules accelerate and transformers import from (the fixture puts them in sys.modules)
def _module(name: str, **attrs: Any) -> types.ModuleType:
    module = types.ModuleType(f"deepspeed.{name}")
    module.__dict__.update(attrs)
    return module


zero = _module("zero", Init=lambda *a, **k: contextlib.nullcontext(),
               GatheredParameters=lambda *a, **k: contextlib.nullcontext())
checkpoint = _module("checkpoint")
checkpoint.utils = _module("checkpoint.utils", clone_tensors_for_torch_save=lambda sd, **k: {
    key: value.detach().clone() for key, value in sd.items()})
runtime = _module("runtime")
runtime.lr_schedules = _module("runtime.lr_schedules", VALID_LR_SCHEDULES=[])
SUBMODULES = {m.__name__: m for m in (zero, checkpoint, checkpoint.utils, runtime, runtime.lr_schedules)}
