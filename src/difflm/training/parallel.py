"""How a run is spread over processes: data parallelism (DDP) or fully sharded data parallelism
(FSDP2), both through accelerate.

``distributed`` in the training config chooses:

* ``None`` (default): what the launcher says - DDP under torchrun, or whatever an
  ``accelerate launch --config_file configs/accelerate/*.yaml`` asked for (FSDP, DeepSpeed).
* ``"ddp"``: replicate the model, average gradients.
* ``"fsdp"``: FSDP2 (``torch.distributed.fsdp.fully_shard``): parameters, gradients and optimizer
  state sharded across processes. The decoder layers are wrapped one by one; their class comes from
  the backbone (transformers' ``_no_split_modules``: LlamaDecoderLayer, GPT2Block, ...), never from
  the user. Checkpoints are sharded (torch.distributed.checkpoint, one file per process), the final
  model is gathered into the usual Hugging Face layout.

accelerate enables FSDP only on accelerator devices (CUDA, XPU, ...); on CPU it silently falls back
to DDP. FSDP2 itself runs on CPU with the gloo backend, so difflm switches accelerate's process-wide
state to FSDP there (`_force_fsdp_on_cpu`): the same code path as on a GPU, testable under
``torchrun --nproc_per_node 2`` on a laptop.
"""

from __future__ import annotations

from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState, PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

DISTRIBUTED = ("ddp", "fsdp")


def fsdp_plugin() -> FullyShardedDataParallelPlugin:
    """FSDP2 with the decoder layers as units (found from the model at `prepare`), resharded after
    each forward, sharded checkpoints. Mixed precision is set by the Accelerator (off on CPU)."""
    return FullyShardedDataParallelPlugin(
        fsdp_version=2,
        auto_wrap_policy="transformer_based_wrap",  # classes: the model's _no_split_modules
        reshard_after_forward=True,
        state_dict_type="SHARDED_STATE_DICT",
        cpu_ram_efficient_loading=False,  # every process builds the (small) model itself
    )


def make_accelerator(distributed: str | None, mixed_precision: str) -> Accelerator:
    """A fresh Accelerator for one run.

    accelerate keeps its settings process-wide and refuses a second Accelerator with other ones; a
    run owns its settings, so a second run in one process (a notebook, the demo) starts from a
    clean accelerate state. The process group (PartialState) stays."""
    cpu = not torch.cuda.is_available()
    AcceleratorState._reset_state()
    GradientState._reset_state()
    if cpu and PartialState._shared_state.get("distributed_type") == DistributedType.FSDP:
        PartialState._shared_state["distributed_type"] = DistributedType.MULTI_CPU  # undo an earlier run's override
    plugin = fsdp_plugin() if distributed == "fsdp" else None
    accelerator = Accelerator(cpu=cpu, mixed_precision=mixed_precision, fsdp_plugin=plugin)
    if plugin is not None and accelerator.num_processes > 1 and accelerator.distributed_type == DistributedType.MULTI_CPU:
        _force_fsdp_on_cpu(accelerator, plugin)
    return accelerator


def _force_fsdp_on_cpu(accelerator: Accelerator, plugin: FullyShardedDataParallelPlugin) -> None:
    """accelerate turns FSDP on for accelerator devices only; on CPU its state says MULTI_CPU and
    `prepare` would wrap the model in DDP. FSDP2 works with gloo, so set the state accelerate would
    have set on a GPU: distributed type FSDP (in both of its process-wide state dicts) and the plugin."""
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = plugin


def describe(accelerator: Accelerator) -> dict[str, Any]:
    """What the run actually uses, for its log: engine, processes, mixed precision."""
    kind = accelerator.distributed_type
    engine = {DistributedType.FSDP: "fsdp", DistributedType.DEEPSPEED: "deepspeed"}.get(
        kind, "ddp" if accelerator.num_processes > 1 else "single")
    return {"engine": engine, "processes": accelerator.num_processes, "mixed_precision": accelerator.mixed_precision,
            "device": str(accelerator.device), "main_process": accelerator.is_main_process}
