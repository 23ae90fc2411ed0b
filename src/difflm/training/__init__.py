"""Training: data packing, the accelerate training loop, checkpoints."""

from .config import TrainConfig, load_train_config
from .trainer import Trainer

__all__ = ["TrainConfig", "Trainer", "load_train_config"]
