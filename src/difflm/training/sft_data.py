"""SFT data: JSONL files whose lines are chat messages, ``{"prompt", "response"}`` pairs or a task's
records (`difflm.tasks.formatting`), each example one row of ``seq_length`` tokens::

    [BOS] prompt | response EOS | tail (EOS, or PAD with sft.pad_with: pad) ... up to seq_length

Used by the sft objective (`difflm.training.objectives.sft`), continuous seq2seq training, the data
tools (`difflm data check`) and the task tokenizers.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import torch

from ..errors import ConfigError, InputError
from ..formats import load_tokenizer as load_checkpoint_tokenizer
from ..io import read_jsonl, resolve_model, tokenizer_dir
from ..tasks.formatting import layout_of, sft_texts
from .data import PackedBatches
from .models import load_tokenizer

__all__ = [
    "SFTBatches", "SFTData", "SFTExample", "SFTRows", "SFT_SUFFIXES", "build_sft_data", "describe_sft_file",
    "encode_sft_file", "read_sft_records", "sft_diffusion_settings", "sft_tokenizer",
]

SFT_SUFFIXES = (".jsonl", ".jsonl.gz", ".json")


def read_sft_records(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of every non-blank line; `InputError` naming the file and line of a bad one."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"SFT data file {p} not found")
    if not str(p).endswith(SFT_SUFFIXES):
        raise InputError(f"SFT data file {p}: use JSONL (.jsonl, .jsonl.gz), one example per line")
    yield from read_jsonl(p)


@dataclass
class SFTExample:
    """One tokenized example: ``ids`` = [BOS] + prompt + response + EOS (unpadded); the first
    ``prompt_len`` ids are the prompt (BOS included)."""

    ids: list[int]
    prompt_len: int
    where: str
    layout: str


def encode_sft_file(path: str | os.PathLike, tokenizer: Any, *, seq_length: int | None = None) -> list[SFTExample]:
    """Every example of an SFT file, tokenized; with ``seq_length``, `InputError` (file:line) for one
    that does not fit a row."""
    records = [(f"{path}:{lineno}", obj) for lineno, obj in read_sft_records(path)]
    if not records:
        raise InputError(f"SFT data file {path} holds no examples")
    texts = [sft_texts(obj, tokenizer=tokenizer, where=where) for where, obj in records]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if eos is None:
        raise ConfigError("the tokenizer has no EOS token; SFT needs one to end every response")
    out = []
    for start in range(0, len(texts), 512):
        chunk = texts[start : start + 512]
        prompts = tokenizer([p for p, _ in chunk], add_special_tokens=False)["input_ids"]
        responses = tokenizer([r for _, r in chunk], add_special_tokens=False)["input_ids"]
        for (where, obj), prompt, response in zip(records[start : start + 512], prompts, responses):
            prompt, response = list(prompt), list(response)
            if bos is not None and prompt[:1] != [bos]:
                prompt = [bos] + prompt
            if response[-1:] != [eos]:
                response = response + [eos]
            if len(response) < 2:
                raise InputError(f"{where}: the response is empty")
            example = SFTExample(prompt + response, len(prompt), where, layout_of(obj) or "")
            if seq_length is not None and len(example.ids) > seq_length:
                raise InputError(
                    f"{where}: the example is {len(example.ids)} tokens (prompt {len(prompt)} with BOS, response "
                    f"{len(response)} with EOS), longer than seq_length {seq_length}; raise seq_length (up to the "
                    "model's context) or shorten it")
            out.append(example)
    return out


@dataclass
class SFTData:
    """Padded rows: ``ids`` [N, seq_length], ``prompt_lens`` [N] (BOS included), ``lengths`` [N]
    (prompt + response + EOS, before the tail)."""

    ids: torch.Tensor
    prompt_lens: torch.Tensor
    lengths: torch.Tensor
    layouts: frozenset[str] = frozenset()  # the record layouts seen (chat, pair, gsm, sudoku, countdown)


def build_sft_data(paths: list[str], tokenizer: Any, seq_length: int, tail_id: int) -> SFTData:
    """Every example of ``paths`` in a row of ``seq_length`` tokens, the tail filled with ``tail_id``."""
    examples = [e for p in paths for e in encode_sft_file(p, tokenizer, seq_length=seq_length)]
    ids = torch.full((len(examples), seq_length), tail_id, dtype=torch.long)
    for row, example in enumerate(examples):
        ids[row, : len(example.ids)] = torch.tensor(example.ids, dtype=torch.long)
    return SFTData(ids, torch.tensor([e.prompt_len for e in examples]), torch.tensor([len(e.ids) for e in examples]),
                   frozenset(e.layout for e in examples))


class SFTRows(NamedTuple):
    """A batch of SFT rows: x [B, L] (padded rows), src [B, L] (BoolTensor: the prompt positions, BOS
    included), lengths [B] (prompt + response + EOS: where each row's tail starts)."""

    x: torch.Tensor
    src: torch.Tensor
    lengths: torch.Tensor


class SFTBatches(PackedBatches):
    """Deterministic batches of SFT rows (the global batch of step k is a function of (seed, k))."""

    def __init__(self, data: SFTData, batch_size: int, seed: int, shuffle: bool = True) -> None:
        super().__init__(data.ids, batch_size, seed, shuffle)
        self.data = data

    def global_batch(self, step: int) -> SFTRows:  # type: ignore[override]
        """The `SFTRows` of step ``step``."""
        rows = self.rows(step)
        x, prompt_lens = self.data.ids[rows], self.data.prompt_lens[rows]
        src = torch.arange(x.shape[1])[None, :] < prompt_lens[:, None]
        return SFTRows(x, src, self.data.lengths[rows])


def sft_diffusion_settings(diffusion: dict[str, Any], block_size: int | None) -> dict[str, Any]:
    """The DiffusionConfig fields of a DLM trained by SFT: ``diffusion`` with full attention from the
    first step (DiffuLLaMA's SFT: anneal_steps 1), or block-causal attention for a block diffusion
    model (``block_size``)."""
    attention = {"attention": "bidirectional"} if block_size is None else {"attention": "block_causal",
                                                                           "block_size": block_size}
    return {"anneal_steps": 1, **diffusion, **attention}


def sft_tokenizer(cfg: Any) -> Any:
    """The tokenizer of an SFT run: the ``init`` checkpoint's own, unless ``tokenizer`` names one."""
    if cfg.init and cfg.tokenizer == "bundled":
        init = resolve_model(cfg.init)
        if any((init / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
            tokenizer = load_checkpoint_tokenizer(init)
            if tokenizer is not None:
                return tokenizer
    return load_tokenizer(cfg.tokenizer)


def describe_sft_file(path: str, *, tokenizer: str = "bundled", seq_length: int | None = None, show: int = 1) -> str:
    """What `difflm data check` prints: layouts, token counts, the first ``show`` examples as trained."""
    directory = tokenizer_dir(tokenizer)
    tok = load_checkpoint_tokenizer(directory)
    if tok is None:
        raise InputError(f"{directory} holds no tokenizer")
    examples = encode_sft_file(path, tok, seq_length=seq_length)
    lengths = [len(e.ids) for e in examples]
    prompts = [e.prompt_len for e in examples]
    layouts = Counter(e.layout for e in examples)
    lines = [f"{path}: {len(examples)} examples ({', '.join(f'{n} {k}' for k, n in layouts.items())})",
             f"tokens per example (BOS + prompt + response + EOS): min {min(lengths)}, max {max(lengths)}, "
             f"mean {sum(lengths) / len(lengths):.1f}; prompt max {max(prompts)}, "
             f"response max {max(n - p for n, p in zip(lengths, prompts))}"]
    if seq_length is not None:
        lines.append(f"every example fits seq_length {seq_length} (tail of at least {seq_length - max(lengths)} tokens)")
    else:
        lines.append(f"the smallest seq_length that fits every example: {max(lengths)}")
    for e in examples[:show]:
        lines += [f"--- {e.where} ({e.layout}): prompt {e.prompt_len} tokens, response {len(e.ids) - e.prompt_len} tokens",
                  "PROMPT:   " + repr(tok.decode(e.ids[: e.prompt_len])),
                  "RESPONSE: " + repr(tok.decode(e.ids[e.prompt_len :]))]
    return "\n".join(lines)
