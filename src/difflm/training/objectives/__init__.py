"""Training objectives: what `difflm.training.Trainer` trains, as registered plug-ins.

The loop (training/trainer.py) owns what every run shares - accelerate, processes, gradient
accumulation, checkpoints, exact resume, logs, the progress bar - and names no objective: it looks up
``cfg.objective`` in `difflm.registry.OBJECTIVES` and asks the `Objective` it finds, in this order:

1. ``check_config(cfg)`` (a classmethod, at `TrainConfig` construction): validate and complete the
   objective's own config section(s); `ConfigError` with one line on bad input.
2. ``load_tokenizer()``, ``build_data(tokenizer)`` -> (train batches, validation batches),
   ``build_model(tokenizer)`` -> the module to train.
3. every step: ``micro_batches(step, rows)`` -> this process's micro-batches (typed `Batch`es), and
   ``loss(forward, batch, step=, generator=)`` -> the loss of one micro-batch through ``forward`` (the
   DDP/FSDP-wrapped model). The draws of step k must be functions of (seed, k) alone
   (`difflm.training.seeding.step_generator`): that is what makes resume exact.
4. validation: ``validation_batch(i)`` and ``validation_loss(model, batch)`` per batch,
   ``validation_result(terms)`` over them; ``reports_bound``: whether that is a likelihood bound.
5. ``save_model(wrapped, directory)``: the trained model in a loadable layout.

One file per objective: pretrain.py (ar, diffusion, adapt), block.py, sft.py, and the families' own
(difflm.continuous.training). Adding one is a new file, a line in `difflm.registry.OBJECTIVES` and
the contract test (tests/test_objective_contracts.py); docs/training.md shows a worked example.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Sequence, TypeVar

import torch

from ...atomic import atomic_directory
from ...errors import ConfigError
from ...losses import check_ar_loss_weight
from ...model import DiffusionLM
from ..models import load_tokenizer

if TYPE_CHECKING:
    from accelerate import Accelerator

    from ..config import TrainConfig

__all__ = ["Batch", "Objective", "check_diffusion_model", "save_trained_model"]

B = TypeVar("B", bound="Batch")


@dataclass
class Batch:
    """Base of the objectives' batches: a dataclass whose tensor fields have the batch's rows first
    ([B, ...]); other fields (a float scale, None) belong to the batch as a whole, and a field with a
    ``rows(index)`` method of its own (a draws object) slices itself."""

    def rows(self: B, index: slice) -> B:
        """The batch of rows ``index`` (how the loop cuts a global batch into micro-batches)."""
        def cut(value: Any) -> Any:
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                return value[index]
            return value.rows(index) if hasattr(value, "rows") else value

        return dataclasses.replace(self, **{f.name: cut(getattr(self, f.name)) for f in dataclasses.fields(self)})


class Objective:
    """What a training run optimises: its config section, data, model, loss, validation and saved model.

    Subclasses set ``name`` (the registry name) and implement `global_batch`, `loss`, `validation_batch`
    and `validation_loss`; the defaults below read the packed corpus's tokenizer, save a `DiffusionLM`
    or a transformers model, and average the validation terms. An instance lives for one run and keeps
    what it built (``tokenizer``, ``train_batches`` / ``val_batches``, ``model``)."""

    name: ClassVar[str] = ""
    validation_autocast: ClassVar[bool] = True  # run validation under the run's mixed precision

    # -- configuration (classmethods: no model, no data yet) ---------------------------------------------
    @classmethod
    def check_config(cls, cfg: "TrainConfig") -> None:
        """Validate and complete ``cfg``'s settings of this objective (`ConfigError`, one line). The
        sections other objectives own are refused before this runs (`TrainConfig`)."""

    @classmethod
    def trains_masked_diffusion(cls, cfg: "TrainConfig") -> bool:
        """Whether ``cfg`` trains a masked-diffusion loss (what token_reweighting and ar_loss_weight need)."""
        return False

    @classmethod
    def diffusion_defaults(cls, cfg: "TrainConfig") -> dict[str, Any]:
        """`DiffusionConfig` fields this objective sets unless ``cfg.diffusion`` gives them (its attention)."""
        return {}

    # -- one run -----------------------------------------------------------------------------------------
    def __init__(self, cfg: "TrainConfig", accelerator: "Accelerator") -> None:
        self.cfg, self.accelerator = cfg, accelerator
        self.tokenizer: Any = None
        self.train_batches: Any = None
        self.val_batches: Any = None
        self.model: torch.nn.Module | None = None

    def load_tokenizer(self) -> Any:
        self.tokenizer = load_tokenizer(self.cfg.tokenizer)
        return self.tokenizer

    def build_data(self, tokenizer: Any) -> tuple[Any, Any]:
        """(train batches, validation batches): objects with ``global_batch(i)``, ``batch_size``,
        ``sequences`` (the rows) and ``epoch_of(step)`` (`difflm.training.data.PackedBatches`)."""
        raise NotImplementedError

    def build_model(self, tokenizer: Any) -> torch.nn.Module:
        raise NotImplementedError

    @property
    def reports_bound(self) -> bool:
        """Whether validation is a likelihood bound (a DLM's), not an exact NLL."""
        return isinstance(self.model, DiffusionLM)

    # -- one step ----------------------------------------------------------------------------------------
    def global_batch(self, step: int) -> Batch:
        """The whole step's batch (every process's rows) with its draws: a function of (seed, step)."""
        raise NotImplementedError

    def micro_batches(self, step: int, rows: Sequence[slice]) -> list[Batch]:
        """This process's micro-batches of step ``step``: the ``rows`` of the global batch, one slice each.
        The draws are made for the whole global batch, so they do not depend on the number of processes."""
        batch = self.global_batch(step)
        return [batch.rows(r) for r in rows]

    def loss(self, forward: torch.nn.Module, batch: Batch, *, step: int,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """The training loss of one micro-batch through ``forward`` (the wrapped model), as its share of
        the step's loss times the number of micro-batches per process (the loop divides by grad_accum).
        ``generator``: the step's annealing draw, the same for every micro-batch."""
        raise NotImplementedError

    # -- validation --------------------------------------------------------------------------------------
    def validation_batch(self, index: int) -> Batch:
        """Validation batch ``index`` with fixed draws (the same at every evaluation)."""
        raise NotImplementedError

    def validation_loss(self, model: torch.nn.Module, batch: Batch) -> Any:
        """The term of one validation batch (a float by default) through the unwrapped ``model``."""
        raise NotImplementedError

    def validation_result(self, terms: list[Any]) -> float:
        """The validation loss (nats per token) from the terms of the batches: their mean by default."""
        return sum(terms) / len(terms)

    # -- the end -----------------------------------------------------------------------------------------
    def save_model(self, wrapped: torch.nn.Module, directory: Path) -> Path:
        """The trained model in a loadable layout. Called on every process (FSDP gathers first)."""
        return save_trained_model(self.accelerator, wrapped, self.tokenizer, directory)


def save_trained_model(accelerator: "Accelerator", wrapped: torch.nn.Module, tokenizer: Any, directory: Path) -> Path:
    """The model in a loadable layout: difflm's for a `DiffusionLM` (annealing over: bidirectional),
    transformers' (with ``tokenizer``) for an AR model. Call on every process: under FSDP / DeepSpeed the
    full state dict is gathered first."""
    state = accelerator.get_state_dict(wrapped)
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(wrapped)
        if isinstance(model, DiffusionLM):
            # annealing is over once training ends: ship the bidirectional model
            if model.config.attention == "annealed":
                model.config = model.config.replace(attention="bidirectional")
            backbone = {k.removeprefix("model."): v for k, v in state.items()}
            model.save_pretrained(directory, state_dict=backbone)
        else:
            with atomic_directory(directory) as tmp:
                model.save_pretrained(tmp, state_dict=state)
                tokenizer.save_pretrained(tmp)
    accelerator.wait_for_everyone()
    return directory


def check_diffusion_model(model: torch.nn.Module, cfg: "TrainConfig") -> None:
    """What a run asks of a `DiffusionLM` it trains: rows that fit its context, and a block context that
    suits ``ar_loss_weight`` (`ConfigError`). Nothing for other models."""
    if not isinstance(model, DiffusionLM):
        return
    if cfg.seq_length > (model.max_length or cfg.seq_length):
        raise ConfigError(f"seq_length {cfg.seq_length} exceeds the model's context of {model.max_length}")
    check_ar_loss_weight(model.config, cfg.ar_loss_weight)
