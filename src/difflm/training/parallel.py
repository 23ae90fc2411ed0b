"""How a run is spread over processes: data parallelism (DDP), fully sharded data parallelism
(FSDP2) or DeepSpeed ZeRO, all through accelerate.

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

DeepSpeed comes only from the launcher (``accelerate launch --config_file
configs/accelerate/deepspeed.yaml``). The trainer hands accelerate no DataLoader, so the batch numbers
DeepSpeed insists on are filled from the run's config before `prepare` (`deepspeed_config`), and its
engine, which divides the loss by its accumulation steps and steps the optimizer at the boundary it is
told, is driven by `backward`.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState, PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

from ..errors import ConfigError

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


# DeepSpeed's bucket sizes that accelerate derives from ``model.config.hidden_size`` when they are "auto"
_HIDDEN_SIZE_KEYS = {"reduce_bucket_size": lambda h: h * h, "stage3_prefetch_bucket_size": lambda h: int(0.9 * h * h),
                     "stage3_param_persistence_threshold": lambda h: 10 * h}


def deepspeed_config(config: dict[str, Any], *, micro_batch_size: int, grad_accum: int, processes: int,
                     grad_clip: float | None, hidden_size: int | None = None) -> dict[str, Any]:
    """``config`` (a DeepSpeed config as accelerate's plugin holds it) with the run's numbers in place of
    "auto"; a copy. What the run decides - the micro-batch per process, the accumulation steps, the
    global batch, gradient clipping - must be "auto" or absent there, or agree (`ConfigError`).

    accelerate reads the micro-batch from a DataLoader passed to `prepare`; the trainer draws its own
    batches, so without this accelerate raises on "auto". ZeRO-3 keeps every weight sharded, and the
    run ends by saving a loadable model: its 16-bit gather on save is switched on (accelerate's
    default is off, and `get_state_dict` then raises). Bucket sizes left "auto" are derived from the
    backbone's ``hidden_size`` here, as accelerate would, because a `DiffusionLM`'s own config has none."""
    out = copy.deepcopy(config)
    decided = {"train_micro_batch_size_per_gpu": micro_batch_size, "gradient_accumulation_steps": grad_accum,
               "train_batch_size": micro_batch_size * grad_accum * processes,
               "gradient_clipping": float(grad_clip or 0.0)}
    for key, value in decided.items():
        given = out.get(key, "auto")
        if given not in ("auto", None) and given != value:
            raise ConfigError(f"the DeepSpeed config sets {key}={given}, the run needs {value} (batch_size, grad_accum "
                              f"and grad_clip of the training config decide it): set {key} to auto or leave it out")
        out[key] = value
    zero = out.setdefault("zero_optimization", {})
    if zero.get("stage") == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    for key, derive in _HIDDEN_SIZE_KEYS.items():
        if zero.get(key) == "auto" and hidden_size:
            zero[key] = derive(hidden_size)
    return out


def prepare_deepspeed(accelerator: Accelerator, model: torch.nn.Module, *, micro_batch_size: int, grad_accum: int,
                      grad_clip: float | None) -> None:
    """Under DeepSpeed, write the run's numbers into accelerate's DeepSpeed config (`deepspeed_config`)
    before `prepare`; nothing under other engines."""
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return
    plugin = accelerator.state.deepspeed_plugin
    filled = deepspeed_config(plugin.deepspeed_config, micro_batch_size=micro_batch_size, grad_accum=grad_accum,
                              processes=accelerator.num_processes, grad_clip=grad_clip, hidden_size=_hidden_size(model))
    plugin.deepspeed_config.clear()  # in place: the plugin's HfDeepSpeedConfig holds the same dict
    plugin.deepspeed_config.update(filled)
    accelerator.gradient_accumulation_steps = grad_accum  # else accelerate warns of a mismatch and adopts DeepSpeed's


def backward(accelerator: Accelerator, loss: torch.Tensor, *, grad_accum: int, boundary: bool) -> None:
    """Backpropagate one micro-batch's ``loss`` (already divided by ``grad_accum``).

    DeepSpeed's engine divides by its accumulation steps itself and steps the optimizer inside
    backward whenever accelerate says gradients are to be synchronised: it is told that only at the
    step's last micro-batch (``boundary``), and gets the undivided loss. Other engines: plain
    `accelerator.backward`."""
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        accelerator.sync_gradients = boundary
        loss = loss * grad_accum
    accelerator.backward(loss)


def _hidden_size(model: torch.nn.Module) -> int | None:
    """The backbone's hidden size: the model's own config, or its inner model's (a `DiffusionLM`)."""
    for owner in (model, getattr(model, "model", None)):
        size = getattr(getattr(owner, "config", None), "hidden_size", None)
        if isinstance(size, int):
            return size
    return None


def describe(accelerator: Accelerator) -> dict[str, Any]:
    """What the run actually uses, for its log: engine, processes, mixed precision."""
    kind = accelerator.distributed_type
    engine = {DistributedType.FSDP: "fsdp", DistributedType.DEEPSPEED: "deepspeed"}.get(
        kind, "ddp" if accelerator.num_processes > 1 else "single")
    return {"engine": engine, "processes": accelerator.num_processes, "mixed_precision": accelerator.mixed_precision,
            "device": str(accelerator.device), "main_process": accelerator.is_main_process}
