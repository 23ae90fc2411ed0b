"""The bundled corpus and tokenizer (built by scripts/build_corpus.py, scripts/train_tokenizer.py)."""

import gzip
import json
from functools import lru_cache
from pathlib import Path

import pytest

BUNDLED = Path(__file__).resolve().parent.parent / "src" / "difflm" / "bundled"
CORPUS = BUNDLED / "corpus"
TOKENIZER = BUNDLED / "tokenizer"
SPLITS = ("train", "validation", "test")
SOURCES = {"shakespeare", "kjv", "wordnet"}
SPECIALS = {"<|bos|>": 0, "<|eos|>": 1, "<|pad|>": 2, "<|mask|>": 3}


@lru_cache(maxsize=None)
def load(split):
    with gzip.open(CORPUS / f"{split}.jsonl.gz", "rt", encoding="utf-8") as f:
        return tuple(json.loads(line) for line in f)


@lru_cache(maxsize=None)
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TOKENIZER))


def test_splits_exist_and_have_the_schema():
    for split in SPLITS:
        docs = load(split)
        assert docs, split
        for d in docs:
            assert set(d) == {"source", "title", "text"}
            assert d["source"] in SOURCES and d["title"] and d["text"].strip()
    assert (CORPUS / "PROVENANCE.md").exists()


def test_splits_are_disjoint_by_title_and_roughly_90_5_5():
    titles = {s: [d["title"] for d in load(s)] for s in SPLITS}
    for s in SPLITS:
        assert len(set(titles[s])) == len(titles[s]), f"duplicate titles in {s}"
    assert not set(titles["train"]) & set(titles["validation"])
    assert not set(titles["train"]) & set(titles["test"])
    assert not set(titles["validation"]) & set(titles["test"])
    n = {s: len(titles[s]) for s in SPLITS}
    total = sum(n.values())
    assert 0.85 < n["train"] / total < 0.95
    # no text shared between splits either (e.g. the same play under two titles)
    train_texts = {d["text"] for d in load("train")}
    assert not any(d["text"] in train_texts for s in ("validation", "test") for d in load(s))


def test_every_source_in_every_split():
    for split in SPLITS:
        assert {d["source"] for d in load(split)} == SOURCES, split


def test_no_gutenberg_boilerplate():
    for split in SPLITS:
        for d in load(split):
            for s in ("Project Gutenberg", "ELECTRONIC VERSION"):
                assert s.lower() not in d["text"].lower(), (split, d["title"], s)
            # WordNet glosses may mention Gutenberg the printer or "the small print"; plays may not
            if d["source"] == "shakespeare":
                for s in ("gutenberg", "small print"):
                    assert s not in d["text"].lower(), (split, d["title"], s)


def test_play_format_is_kept():
    plays = [d for s in SPLITS for d in load(s) if d["source"] == "shakespeare"]
    hamlet = next(d for d in plays if "Hamlet" in d["title"])
    assert "\nHam.\n" in hamlet["text"] and "[Enter" in hamlet["text"]
    kjv = next(d for d in load("train") if d["source"] == "kjv")
    assert kjv["text"].count("\n") > 5
    wn = next(d for d in load("train") if d["source"] == "wordnet")
    assert all(": " in line for line in wn["text"].split("\n"))


def test_tokenizer_loads_with_specials():
    tok = tokenizer()
    assert len(tok) == 8192
    for t, i in SPECIALS.items():
        assert tok.convert_tokens_to_ids(t) == i
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.mask_token_id) == (0, 1, 2, 3)
    assert tok.model_max_length == 512


def test_tokenizer_prepends_bos_and_round_trips():
    tok = tokenizer()
    samples = [
        "Hello world", " leading space", "\n\nHam.\nTo be, or not to be:\n  indented line\n",
        "two  spaces\tand a tab ", "caf\u00e9 \u2014 \U0001F600", "end .",
    ]
    samples += [d["text"][:1500] for s in ("validation", "test") for d in load(s)[::20]]
    for text in samples:
        ids = tok(text)["input_ids"]
        assert ids[0] == 0 and 0 not in ids[1:]
        assert tok(text, add_special_tokens=False)["input_ids"] == ids[1:]
        assert tok.decode(ids, skip_special_tokens=True) == text
        assert tok.decode(ids[1:]) == text


def test_corpus_never_encodes_to_mask():
    tok = tokenizer()
    texts = [d["text"] for s in ("validation", "test") for d in load(s)[::2]]
    texts += [d["text"] for d in load("train")[::50]]
    assert not any("<|" in text for text in texts)
    for ids in tok(texts, add_special_tokens=False, verbose=False)["input_ids"]:
        assert 3 not in ids and min(ids) > 3


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__, "-q"]))
