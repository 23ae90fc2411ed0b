"""difflm: diffusion language models on top of Hugging Face transformers.

``import difflm`` loads neither torch nor transformers: `DiffusionLM`, `DiffusionConfig` and the
subpackages (``difflm.sampling``, ``difflm.losses``, ...) are imported on first use (PEP 562), so
that ``difflm --help`` answers at once.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, DiffLMError, InputError, ModelLoadError

__version__ = "0.1.0"

if TYPE_CHECKING:  # for type checkers and IDEs; at run time these come from __getattr__
    from .config import DiffusionConfig
    from .model import DiffusionLM

# public name -> module that defines it, imported on first access
LAZY_ATTRIBUTES = {"DiffusionConfig": ".config", "DiffusionLM": ".model"}
# submodules reachable as attributes after a bare ``import difflm`` (``difflm.losses.masked_diffusion_loss``)
LAZY_SUBMODULES = (
    "atomic", "attention", "bundled", "chat", "cli", "config", "evaluation", "formats", "losses", "model", "noise",
    "rng", "sampling", "serve", "tasks", "training", "visualize",
)

__all__ = ["ConfigError", "DiffLMError", "DiffusionConfig", "DiffusionLM", "InputError", "ModelLoadError", "__version__"]


def __getattr__(name: str) -> Any:
    if name in LAZY_ATTRIBUTES:
        value = getattr(importlib.import_module(LAZY_ATTRIBUTES[name], __name__), name)
    elif name in LAZY_SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *LAZY_ATTRIBUTES, *LAZY_SUBMODULES})
