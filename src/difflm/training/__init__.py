"""Training: data packing, the accelerate training loop, checkpoints.

Importing this package loads no torch: `difflm.training.config` (the YAML and its checks) is
torch-free, so `difflm train` answers a missing file, bad YAML or an unknown key at once; the names
below are imported on first use.
"""

from __future__ import annotations

from ..registry import lazy_attributes

LAZY = {"TrainConfig": ".config", "load_train_config": ".config", "Trainer": ".trainer"}
__getattr__ = lazy_attributes(__name__, LAZY)

__all__ = ["TrainConfig", "Trainer", "load_train_config"]
