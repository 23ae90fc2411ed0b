"""A small conditional task for sequence-to-sequence diffusion (DiffuSeq): verse -> next verse of the
King James Bible chapters of the bundled corpus, with BLEU / ROUGE-L, diversity, and minimum Bayes
risk (MBR) decoding over several samples, as DiffuSeq reports them.

    python -m difflm.continuous.seq2seq --out data/verses      # train/validation/test JSONL pairs

A pair is ``{"prompt": "5 And Bilhah conceived, ...", "response": "6 And Rachel said, ..."}``: the
layout `difflm train` reads for SFT and for ``objective: continuous`` with ``continuous.seq2seq: true``
(the source clean, the target and its padding tail noised).
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import re
from collections import Counter
from pathlib import Path
from typing import Sequence

from ..bundled import corpus_file
from .. import errors

_VERSE = re.compile(r"^\d+ \S")


def verse_pairs(split: str, *, max_chars: int = 240) -> list[dict[str, str]]:
    """Consecutive verse pairs of every KJV chapter of a corpus split (both verses at most ``max_chars``)."""
    with gzip.open(corpus_file(split), "rt", encoding="utf-8") as handle:
        docs = [json.loads(line) for line in handle]
    pairs = []
    for doc in docs:
        if doc.get("source") != "kjv":
            continue
        verses = [line.strip() for line in doc["text"].splitlines() if _VERSE.match(line.strip())]
        for a, b in zip(verses, verses[1:]):
            if len(a) <= max_chars and len(b) <= max_chars:
                pairs.append({"prompt": a, "response": b})
    return pairs


def bleu(hypothesis: str, references: Sequence[str], max_n: int = 4) -> float:
    """Sentence BLEU-4 in [0, 1] (lower-cased words, add-one smoothing of the higher orders, Lin & Och),
    against one or more references; the brevity penalty uses the closest reference length."""
    hyp = hypothesis.lower().split()
    refs = [r.lower().split() for r in references]
    if not hyp or not any(refs):
        return 0.0
    log_precision = 0.0
    for n in range(1, max_n + 1):
        grams = Counter(tuple(hyp[i : i + n]) for i in range(len(hyp) - n + 1))
        best: Counter = Counter()
        for ref in refs:
            best |= Counter(tuple(ref[i : i + n]) for i in range(len(ref) - n + 1))
        overlap, total = sum((grams & best).values()), max(1, sum(grams.values()))
        smooth = 0 if n == 1 else 1
        if overlap + smooth == 0:
            return 0.0
        log_precision += math.log((overlap + smooth) / (total + smooth)) / max_n
    closest = min((abs(len(r) - len(hyp)), len(r)) for r in refs)[1]
    penalty = 1.0 if len(hyp) >= closest else math.exp(1 - closest / len(hyp))
    return penalty * math.exp(log_precision)


def mbr_select(candidates: Sequence[str]) -> int:
    """Minimum Bayes risk decoding (DiffuSeq): the index of the candidate with the highest mean BLEU
    against the other candidates."""
    if not candidates:
        raise errors.InputError("MBR needs at least one candidate")
    if len(candidates) == 1:
        return 0
    scores = [sum(bleu(c, [o]) for j, o in enumerate(candidates) if j != i) for i, c in enumerate(candidates)]
    return max(range(len(candidates)), key=scores.__getitem__)


def self_bleu(samples: Sequence[str]) -> float:
    """Mean BLEU of each sample against the others (lower = more diverse; DiffuSeq's inter-sample diversity)."""
    if len(samples) < 2:
        return math.nan
    return sum(bleu(s, [o for j, o in enumerate(samples) if j != i]) for i, s in enumerate(samples)) / len(samples)


def distinct_words(samples: Sequence[str], n: int) -> float:
    """Unique word n-grams / word n-grams over all samples together (distinct-n)."""
    grams = [tuple(w[i : i + n]) for s in samples for w in [s.lower().split()] for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="write verse -> next verse pairs (JSONL) from the bundled corpus")
    parser.add_argument("--out", default="data/verses", help="output directory (default: %(default)s)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "validation", "test"):
        pairs = verse_pairs(split)
        (out / f"{split}.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
        print(f"{out / f'{split}.jsonl'}: {len(pairs)} pairs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
