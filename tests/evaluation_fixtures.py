"""Tiny random models with the bundled 8192-token tokenizer, saved the way the bundled models are:
an AR LLaMA directory (plain transformers) and a DLM adapted from it (difflm layout)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from difflm import DiffusionLM
from difflm.bundled import TOKENIZER_DIR


def bundled_tokenizer():
    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


def tiny_llama(seed: int = 0, positions: int = 256) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=8192, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=positions, bos_token_id=0, eos_token_id=1,
                      pad_token_id=2)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    """{"ar": dir, "dlm": dir}: the AR model and a bidirectional, shifted DLM made from it."""
    root = tmp_path_factory.mktemp("eval-models")
    tok = bundled_tokenizer()
    ar = tiny_llama()
    ar.save_pretrained(root / "ar")
    tok.save_pretrained(root / "ar")
    dlm = DiffusionLM.from_causal_lm(ar, mask_token=tok.mask_token_id, tokenizer=tok, attention="bidirectional")
    dlm.save_pretrained(root / "dlm")
    return {"ar": root / "ar", "dlm": root / "dlm"}
