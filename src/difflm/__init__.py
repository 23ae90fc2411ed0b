"""difflm: diffusion language models on top of Hugging Face transformers."""

from .config import DiffusionConfig
from .errors import ConfigError, DiffLMError, InputError, ModelLoadError
from .model import DiffusionLM

__version__ = "0.1.0"

__all__ = ["ConfigError", "DiffLMError", "DiffusionConfig", "DiffusionLM", "InputError", "ModelLoadError", "__version__"]
