"""The corpus side of training (difflm.training.data): source weights, the token cache, packing."""

from __future__ import annotations

import json

import numpy as np
import pytest
from transformers import AutoTokenizer

from difflm.bundled import TOKENIZER_DIR
from difflm.training.data import PackedBatches, pack_sequences, tokenize_files


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


@pytest.fixture()
def corpus(tmp_path):
    """60 documents of source "verse" and 200 of source "gloss", each a few distinct words."""
    path = tmp_path / "mixed.jsonl"
    rows = [{"text": f"In the beginning {i}", "source": "verse"} for i in range(60)]
    rows += [{"text": f"gloss number {i}", "source": "gloss"} for i in range(200)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _documents(stream: np.ndarray, eos: int) -> list[tuple[int, ...]]:
    """The documents of a token stream (each ends with EOS), as tuples of ids."""
    docs, start = [], 0
    for end in np.flatnonzero(stream == eos):
        docs.append(tuple(stream[start:end].tolist()))
        start = end + 1
    return docs


def test_source_weights_repeat_and_thin_whole_documents(tmp_path, corpus, tokenizer):
    eos = tokenizer.eos_token_id
    plain = _documents(tokenize_files([corpus], tokenizer, cache_dir=tmp_path / "c"), eos)
    assert len(plain) == 260
    verse, gloss = plain[:60], plain[60:]

    doubled = _documents(tokenize_files([corpus], tokenizer, source_weights={"verse": 2, "gloss": 0},
                                        cache_dir=tmp_path / "c"), eos)
    assert sorted(doubled) == sorted(verse * 2)  # every verse twice, no gloss at all

    half = _documents(tokenize_files([corpus], tokenizer, source_weights={"gloss": 0.5}, seed=3,
                                     cache_dir=tmp_path / "c"), eos)
    kept = [d for d in half if d in set(gloss)]
    assert [d for d in half if d in set(verse)] == verse  # an unweighted source is kept whole, in order
    assert 70 <= len(kept) <= 130 and len(set(kept)) == len(kept)  # about half of the glosses, each whole, once
    again = _documents(tokenize_files([corpus], tokenizer, source_weights={"gloss": 0.5}, seed=3,
                                      cache_dir=tmp_path / "other"), eos)
    assert again == half  # the kept half is a function of the seed, not of the cache
    other_seed = _documents(tokenize_files([corpus], tokenizer, source_weights={"gloss": 0.5}, seed=4,
                                           cache_dir=tmp_path / "c"), eos)
    assert other_seed != half


def test_packed_sequences_start_with_bos_and_cover_the_stream_in_order(tokenizer):
    stream = np.arange(100, 100 + 95, dtype=np.int32)
    rows = pack_sequences(stream, 16, tokenizer.bos_token_id)
    assert rows.shape == (6, 16)  # 95 tokens // 15 per row (the 16th is BOS)
    assert (rows[:, 0] == tokenizer.bos_token_id).all()
    assert rows[:, 1:].flatten().tolist() == list(range(100, 190))
    batches = PackedBatches(rows, batch_size=4, seed=0)
    first_epoch = [int(i) for step in range(3) for i in batches.rows(step)][:6]
    assert sorted(first_epoch) == list(range(6))  # one epoch visits every row once
