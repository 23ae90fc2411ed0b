"""Files shipped with difflm: the corpus, the tokenizer and the small models trained on it."""

from __future__ import annotations

from pathlib import Path

BUNDLED_DIR = Path(__file__).resolve().parent
CORPUS_DIR = BUNDLED_DIR / "corpus"
TOKENIZER_DIR = BUNDLED_DIR / "tokenizer"
MODELS_DIR = BUNDLED_DIR / "models"

# name -> directory; `difflm ... --model NAME` accepts these names as well as paths.
MODELS = {
    "ar-base": MODELS_DIR / "ar-base",  # a 6.8M LLaMA AR base trained on the corpus (10.6M tokens, bf16 weights)
    "dlm-adapted": MODELS_DIR / "dlm-adapted",  # the DLM adapted from ar-base (DiffuLLaMA recipe)
    "dlm-scratch": MODELS_DIR / "dlm-scratch",  # a DLM trained from scratch on the same token budget
    "dlm-block": MODELS_DIR / "dlm-block",  # a block diffusion model (blocks of 8) adapted from ar-base, same compute
    "dlm-uniform": MODELS_DIR / "dlm-uniform",  # a uniform-state DLM (no [MASK]): dlm-scratch's backbone, data and steps
    "dlm-continuous": MODELS_DIR / "dlm-continuous",  # an embedding-space (continuous) DLM, dlm-scratch's size and budget
    "dlm-digits": MODELS_DIR / "dlm-digits",  # multimodal: text + image codes, scikit-learn's digits (docs/multimodal.md)
    # task models (docs/tasks.md): an AR model trained by SFT, then adapted into a DLM or kept AR at equal compute
    "dlm-sudoku": MODELS_DIR / "dlm-sudoku",
    "ar-sudoku": MODELS_DIR / "ar-sudoku",
    "dlm-gsm": MODELS_DIR / "dlm-gsm",
    "ar-gsm": MODELS_DIR / "ar-gsm",
}
DEFAULT_DLM = "dlm-adapted"


def corpus_file(split: str) -> Path:
    """Path of a corpus split ("train" | "validation" | "test"): JSONL.gz with source/title/text."""
    return CORPUS_DIR / f"{split}.jsonl.gz"


def resolve_model(name_or_path: str | Path) -> Path:
    """A bundled model name, or a path, as a Path."""
    return MODELS.get(str(name_or_path), Path(name_or_path))
