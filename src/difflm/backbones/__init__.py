"""Native backbones for published architectures that have no stock transformers class.

Each module here is a transformers `PreTrainedModel` (config class registered with the Auto classes
under a difflm-owned model_type) whose parameter names follow the published checkpoint, so a format's
`LoadPlan` maps weights name for name and loads them shard by shard like any stock backbone. They take
the causal-LM calling convention every difflm backbone takes (``input_ids``, an explicit 4-D
``attention_mask``, ``position_ids``) and return ``.logits``; no checkpoint code is ever run.
"""

# importing the package registers every native backbone with the Auto classes, so a directory
# difflm wrote with one of them (model_type "difflm_*") loads like any stock checkpoint
from . import dit  # noqa: F401,E402
from . import llada2_moe  # noqa: F401,E402
from . import diffusion_gemma  # noqa: F401,E402  (transformers' own class, registered for AutoModelForCausalLM)
