"""DiffusionGemma's class, transformers' own ``DiffusionGemmaForBlockDiffusion``, registered for the causal-LM
auto class: difflm builds every backbone with ``AutoModelForCausalLM.from_config`` (`difflm.formats.loading`),
and transformers files this one under image-text-to-text only. Nothing of the model is redefined here."""

from transformers import AutoModelForCausalLM, DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion

AutoModelForCausalLM.register(DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion, exist_ok=True)
