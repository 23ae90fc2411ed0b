"""A small byte-level BPE tokenizer trained on the texts of one task's SFT files.

The bundled tokenizer has 8192 tokens; a task model that only ever reads sudoku grids or templated
word problems spends most of its parameters and most of its compute (the output layer over 8192
tokens at every position) on tokens it never sees. A task tokenizer keeps the bundled tokenizer's
promises - the same four special tokens at ids 0..3 (``<|bos|>``, ``<|eos|>``, ``<|pad|>``,
``<|mask|>``), BOS prepended on encoding, byte-level so that ``decode(encode(x)) == x`` for any
string and nothing is unknown - with a vocabulary of a few hundred tokens learnt from the task's
own prompts and responses (`difflm.tasks.formatting.sft_texts`, exactly what SFT trains on).

``split_digits`` writes every digit as its own token (as LLaMA's tokenizer does): arithmetic then
works digit by digit instead of on a vocabulary of whole numbers. Sudoku keeps one token per cell
(`" 5"`, `" X"`) without it, so the grid's cells sit at fixed offsets.

    difflm data tokenizer data/gsm/train.jsonl --vocab-size 384 --split-digits --out data/gsm/tokenizer
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from ..errors import InputError
from ..io import read_jsonl
from .formatting import layout_of, sft_texts

SPECIAL_TOKENS = ("<|bos|>", "<|eos|>", "<|pad|>", "<|mask|>")  # ids 0..3, as the bundled tokenizer
MIN_VOCAB = 256 + len(SPECIAL_TOKENS)  # every byte, then the specials


def train_task_tokenizer(texts: Iterable[str], vocab_size: int, *, split_digits: bool = False,
                         model_max_length: int = 512) -> Any:
    """A `transformers.PreTrainedTokenizerFast` (byte-level BPE, ``vocab_size`` tokens at most)
    trained on ``texts``; special tokens at ids 0..3, BOS prepended by ``tokenizer(text)``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < MIN_VOCAB:
        raise InputError(f"--vocab-size {vocab_size} is too small: a byte-level tokenizer needs at least "
                         f"{MIN_VOCAB} tokens (256 bytes and {len(SPECIAL_TOKENS)} special tokens)")
    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    # Digits first, so that a number's digits never merge (not even with the space before them).
    tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                         if split_digits else byte_level)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<|bos|> $A:0", pair="<|bos|> $A:0 <|bos|>:1 $B:1",
        special_tokens=[("<|bos|>", tok.token_to_id("<|bos|>"))])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>",
        mask_token="<|mask|>", model_max_length=model_max_length, clean_up_tokenization_spaces=False,
        padding_side="right")


def sft_file_texts(paths: Iterable[str | os.PathLike]) -> list[str]:
    """Prompt + response text of every record of the SFT files ``paths`` (chat records excepted:
    their template needs a tokenizer)."""
    texts = []
    for path in paths:
        for line, record in read_jsonl(path):
            where = f"{path}:{line}"
            if layout_of(record) == "chat":
                raise InputError(f"{where}: chat records need a tokenizer's chat template; train a task tokenizer "
                                 "on prompt/response or task records")
            prompt, response = sft_texts(record, where=where)
            texts.append(prompt + response)
    if not texts:
        raise InputError(f"no examples in {', '.join(map(str, paths))}")
    return texts


def save_task_tokenizer(tokenizer: Any, out: str | os.PathLike) -> Path:
    """Save as a directory `AutoTokenizer.from_pretrained` reads (tokenizer_class PreTrainedTokenizerFast,
    which transformers 4.x also knows)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out))
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text("utf-8"))
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", "utf-8")
    return out
