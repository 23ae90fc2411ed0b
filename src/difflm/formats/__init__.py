"""Model directories: what is in one, and loading it onto stock transformers classes.

`load(path_or_name)` is the one loader: it resolves a bundled name, asks the directory its kind
(`registry.MODEL_KINDS`, told by a marker file: a LoRA adapter, a family's model, else a checkpoint) and
returns a `LoadedModel` (kind, model, tokenizer, layout and why). A checkpoint's layout is one of
`registry.FORMATS`, each a small module with

* ``detect(ckpt) -> str | None``: why the checkpoint is in this layout (one line), or None;
* ``plan(ckpt, tokenizer, overrides) -> LoadPlan``: the stock config, key mapping and diffusion
  conventions, decided from config.json and the safetensors headers alone.

Detection looks at config.json and the weight names, never at the directory name. The first layout of
`registry.FORMATS` whose ``detect`` answers wins; a plain causal LM comes last and is loaded as a
transformers causal LM (or, given a mask id, used as a DLM as it is). Loading itself is shared by all
layouts (`loading.load_backbone`: meta device, shard by shard). No checkpoint code is ever run.
"""

from __future__ import annotations

from ..registry import FORMATS
from .adapter import (
    generation_presets, is_adapter_dir, load_adapter, load_adapter_as_dlm, load_adapter_dir, read_adapter,
    saved_generation_defaults,
)
from .checkpoint import (
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
    Checkpoint,
    TensorInfo,
    inspect_checkpoint,
    iter_tensors,
    load_tokenizer,
    require_model_dir,
    weight_files,
)
from .describe import describe_checkpoint
from .detection import AR_FORMAT, Detection, Format, detect, detect_format, layout, plan_checkpoint, register_format
from .generation import GENERATION_CONFIG, GenerationDefaults, read_generation_defaults, write_generation_defaults
from .directory import Survey, load, load_checkpoint, load_diffusion_lm, survey
from .loaders import LoadedModel, dlm_class, load_causal_lm, load_checkpoint_dir, load_dlm
from .loading import LoadPlan

__all__ = [
    "AR_FORMAT", "FORMATS", "GENERATION_CONFIG", "GenerationDefaults", "WEIGHTS_INDEX_NAME", "WEIGHTS_NAME", "Checkpoint", "Detection", "Format", "LoadPlan",
    "LoadedModel", "Survey", "TensorInfo", "describe_checkpoint", "detect", "detect_format", "dlm_class", "inspect_checkpoint",
    "generation_presets", "is_adapter_dir", "iter_tensors", "layout", "load", "load_adapter", "load_adapter_as_dlm", "load_adapter_dir",
    "load_causal_lm", "load_checkpoint", "load_checkpoint_dir", "load_diffusion_lm", "load_dlm", "load_tokenizer", "plan_checkpoint",
    "read_adapter", "read_generation_defaults", "register_format", "require_model_dir", "saved_generation_defaults", "survey", "weight_files", "write_generation_defaults",
]
