#!/usr/bin/env python
"""Train difflm's bundled byte-level BPE tokenizer on the TRAIN split of the bundled corpus.

8192 tokens including four special tokens at ids 0..3: <|bos|>, <|eos|>, <|pad|>, <|mask|>.
<|mask|> is reserved for the diffusion forward process and never occurs in training text.
Encoding with add_special_tokens=True prepends <|bos|> (TemplateProcessing, as in Llama
tokenizers); the byte-level decoder makes decode(encode(x)) == x for any string.
Saved as a transformers PreTrainedTokenizerFast, so AutoTokenizer.from_pretrained(<dir>) works.
Afterwards the token counts per split and source are written into the corpus's PROVENANCE.md.

    python scripts/train_tokenizer.py [--corpus DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import sys
from pathlib import Path

# Fewer threads: the machine is shared; the result does not depend on the thread count.
os.environ.setdefault("RAYON_NUM_THREADS", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = REPO / "src" / "difflm" / "bundled" / "corpus"
DEFAULT_OUT = REPO / "src" / "difflm" / "bundled" / "tokenizer"
VOCAB_SIZE = 8192
SPECIAL_TOKENS = ["<|bos|>", "<|eos|>", "<|pad|>", "<|mask|>"]  # ids 0, 1, 2, 3
SOURCES = ("shakespeare", "kjv", "wordnet")
SPLITS = ("train", "validation", "test")
MODEL_MAX_LENGTH = 512
TOKEN_STATS_BEGIN = "<!-- token-stats:begin -->"
TOKEN_STATS_END = "<!-- token-stats:end -->"


def read_split(corpus: Path, split: str) -> list[dict]:
    path = corpus / f"{split}.jsonl.gz"
    if not path.exists():
        raise SystemExit(f"error: {path} not found; build the corpus first (scripts/build_corpus.py)")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def train(docs: list[dict]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    for d in docs:
        for t in SPECIAL_TOKENS:
            if t in d["text"]:
                raise SystemExit(f"error: special token {t} occurs in {d['title']!r}")
    tok = Tokenizer(models.BPE())
    # GPT-2 style: split on the GPT-2 regex, map bytes to printable characters, no prefix space
    # (so the text round-trips exactly).
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: nothing is unknown
        show_progress=False,
    )
    tok.train_from_iterator((d["text"] for d in docs), trainer=trainer, length=len(docs))
    bos = tok.token_to_id("<|bos|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|bos|> $A:0",
        pair="<|bos|> $A:0 <|bos|>:1 $B:1",
        special_tokens=[("<|bos|>", bos)],
    )
    return tok


def wrap(tok):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|bos|>",
        eos_token="<|eos|>",
        pad_token="<|pad|>",
        mask_token="<|mask|>",
        model_max_length=MODEL_MAX_LENGTH,
        clean_up_tokenization_spaces=False,  # would break exact round trips (" ." -> ".")
        padding_side="right",
    )


def check(hf, docs: list[dict]) -> None:
    """Fail loudly if the saved tokenizer breaks any promise the project relies on."""
    assert len(hf) == VOCAB_SIZE, f"vocabulary has {len(hf)} tokens, not {VOCAB_SIZE}"
    for i, t in enumerate(SPECIAL_TOKENS):
        assert hf.convert_tokens_to_ids(t) == i, f"{t} is not id {i}"
    samples = [
        "Hello world", " leading space", "\n\nHAM.\nTo be, or not to be:\n  indented\n",
        "tabs\tand  double  spaces ", "caf\u00e9 \u2014 \u00e6on \U0001F600", "",
    ] + [d["text"][:2000] for d in docs[:: max(1, len(docs) // 50)]]
    for s in samples:
        ids = hf(s)["input_ids"]
        assert ids[:1] == [hf.bos_token_id], "BOS is not prepended"
        assert hf.mask_token_id not in ids, "mask id produced from text"
        back = hf.decode(ids, skip_special_tokens=True)
        assert back == s, f"round trip failed: {s[:60]!r} -> {back[:60]!r}"


def count_tokens(tok, splits: dict[str, list[dict]]) -> dict:
    stats = {}
    for split, docs in splits.items():
        encs = tok.encode_batch([d["text"] for d in docs], add_special_tokens=False)
        for d, e in zip(docs, encs):
            s = stats.setdefault((split, d["source"]), {"docs": 0, "chars": 0, "tokens": 0, "mask": 0})
            s["docs"] += 1
            s["chars"] += len(d["text"])
            s["tokens"] += len(e.ids)
            s["mask"] += e.ids.count(3)
    return stats


def write_stats(corpus: Path, stats: dict) -> str:
    rows = ["| split | source | documents | characters | tokens | characters per token | share of split tokens |",
            "|---|---|---:|---:|---:|---:|---:|"]
    for split in SPLITS:
        total = sum(stats[(split, s)]["tokens"] for s in SOURCES)
        for source in SOURCES + ("all",):
            if source == "all":
                keys = [(split, s) for s in SOURCES]
            else:
                keys = [(split, source)]
            docs = sum(stats[k]["docs"] for k in keys)
            chars = sum(stats[k]["chars"] for k in keys)
            toks = sum(stats[k]["tokens"] for k in keys)
            rows.append(f"| {split} | {source} | {docs:,} | {chars:,} | {toks:,} | {chars / toks:.2f} "
                        f"| {toks / total:.1%} |")
    all_chars = sum(v["chars"] for v in stats.values())
    all_toks = sum(v["tokens"] for v in stats.values())
    body = (
        f"Tokenizer: `src/difflm/bundled/tokenizer/` (byte-level BPE, {VOCAB_SIZE} tokens, trained on the "
        "train split only by `scripts/train_tokenizer.py`). Counts exclude the `<|bos|>` the tokenizer "
        f"prepends. Overall {all_toks / all_chars:.3f} tokens per character "
        f"({all_chars / all_toks:.2f} characters per token).\n\n" + "\n".join(rows)
    )
    prov = corpus / "PROVENANCE.md"
    if prov.exists():
        text = prov.read_text("utf-8")
        pattern = re.compile(re.escape(TOKEN_STATS_BEGIN) + ".*?" + re.escape(TOKEN_STATS_END), re.DOTALL)
        if pattern.search(text):
            text = pattern.sub(lambda _: f"{TOKEN_STATS_BEGIN}\n{body}\n{TOKEN_STATS_END}", text)
            prov.write_text(text, "utf-8")
        else:
            print(f"warning: no token-stats markers in {prov}; not updated", file=sys.stderr)
    return body


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="corpus directory (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="tokenizer directory (default: %(default)s)")
    args = ap.parse_args(argv)

    splits = {s: read_split(args.corpus, s) for s in SPLITS}
    tok = train(splits["train"])
    hf = wrap(tok)
    args.out.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(str(args.out))
    # transformers 5 writes its alias "TokenizersBackend"; the classic name also loads in 4.x.
    cfg_path = args.out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text("utf-8"))
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", "utf-8")

    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the checks encode samples longer than model_max_length
    loaded = AutoTokenizer.from_pretrained(str(args.out))
    check(loaded, splits["validation"])
    stats = count_tokens(tok, splits)
    if any(v["mask"] for v in stats.values()):
        raise SystemExit("error: corpus text encodes to the mask id")
    print(write_stats(args.corpus, stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
