"""DiffuLLaMA (Gong et al. 2024): a plain `LlamaForCausalLM` checkpoint (vocab 32000, no new rows)
used with full bidirectional attention and shift; token 811 is reused as [MASK], pad 30399,
sep 4936.

Nothing in the published files says "diffusion": config.json, weights and tokenizer are those of
a LLaMA-2 causal LM. So detection needs a marker, and difflm never guesses from the directory name:

* a LLaMA config.json that declares ``mask_token_id`` is taken as DiffuLLaMA (with that mask id);
* otherwise the checkpoint is a plain causal LM and is refused, with a message that says to pass
  ``format="diffullama"`` (CLI ``--format diffullama``) if it is DiffuLLaMA.

`difflm convert` writes difflm's own layout (difflm_config.json), which needs no guessing after.
"""

from __future__ import annotations

from typing import Any

from ..errors import ModelLoadError
from .checkpoint import Checkpoint
from .conventions import diffusion_config, first_id, pick_mask_id, special_ids
from .loading import LoadPlan, stock_config

MASK_ID, PAD_ID, SEP_ID = 811, 30399, 4936


def detect(ckpt: Checkpoint) -> str | None:
    if ckpt.model_type == "llama" and "mask_token_id" in ckpt.hf_config:
        return f"LLaMA weights with mask_token_id {ckpt.hf_config['mask_token_id']} in config.json (DiffuLLaMA conventions)"
    return None


def plan(ckpt: Checkpoint, tokenizer: Any, overrides: dict[str, Any]) -> LoadPlan:
    if ckpt.model_type != "llama":
        raise ModelLoadError(
            f"{ckpt.path}: format 'diffullama' needs a LLaMA checkpoint (config.json model_type 'llama'), "
            f"found {ckpt.summary()}"
        )
    hf_config = stock_config(ckpt, architectures=["LlamaForCausalLM"])
    vocab = hf_config.vocab_size
    mask_id = pick_mask_id(ckpt, vocab, overrides, ckpt.hf_config.get("mask_token_id"), MASK_ID)
    fields: dict[str, Any] = {
        **special_ids(hf_config, tokenizer, vocab),
        "mask_token_id": mask_id, "shift": True, "attention": "bidirectional", "family": "diffullama",
    }
    # the paper's pad and sep (LLaMA-2 ships no pad token); left out on vocabularies too small for them
    pad, sep = first_id(vocab, PAD_ID), first_id(vocab, SEP_ID)
    if pad is not None:
        fields["pad_token_id"] = pad
    if sep is not None:
        fields["extra"] = {"sep_token_id": sep}
    return LoadPlan("diffullama", hf_config, diffusion_config(fields, overrides))
