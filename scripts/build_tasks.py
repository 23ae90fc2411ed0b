#!/usr/bin/env python
"""Build the bundled held-out evaluation sets from the corpus's TEST split (deterministic).

Every set draws equally from the three sources (shakespeare, kjv, wordnet). A "line" is one line of a
document; a content line is split into a head and a body: a KJV verse "17 And God ..." into "17" and
" And God ...", a WordNet gloss "ballet: music written ..." into "ballet:" and " music written ...", a
Shakespeare verse or prose line into "" and the whole line (speaker tags, stage directions and short
lines are not content lines).

  perplexity.jsonl       {"source", "text"}: passages of consecutive lines (<= 200 tokens)
  last-word.jsonl        {"source", "context", "target"}: a passage (>= 60 words) ending at a sentence
                         end (for WordNet: the end of a gloss); the target is its final word (letters
                         only, >= 3 characters), final punctuation and quotes dropped
  multiple-choice.jsonl  {"source", "context", "choices", "label"}: four lines, then the head and the
                         start of a content line (>= 8 words); choices are its last four words and the
                         last four words of three content lines from other passages (other
                         documents; for Shakespeare, >= 200 lines away) of about the same token length,
                         the same capitalisation and about the same mean unigram surprisal (token
                         frequencies of the validation split) - HellaSwag-style endings; the label
                         position is drawn at random
  infilling.jsonl        {"source", "prefix", "middle", "suffix"}: five consecutive content lines,
                         the third line's body to fill (ROCStories protocol)

Randomness comes from random.Random(f"{seed}-{task}-{source}"), so the files are byte-identical on
every run; tests/test_evaluation_tasks.py rebuilds them and compares. Usage:
  python scripts/build_tasks.py [--seed 1234] [--out src/difflm/bundled/tasks]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
import random
import re
from collections import Counter
from pathlib import Path

from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "src" / "difflm" / "bundled"
SOURCES = ("shakespeare", "kjv", "wordnet")
COUNTS = {"perplexity": 20, "last-word": 50, "multiple-choice": 50, "infilling": 40}  # per source
MAX_TOKENS = 200  # every example (context + target) fits a 256-token model with room to spare
_SPEAKER = re.compile(r"^[A-Z][A-Z ,'.&-]*\.$")
_WORD = re.compile(r"^[A-Za-z']{3,}$")


def split_line(source: str, line: str) -> tuple[str, str] | None:
    """(head, body) of a content line, or None for anything else."""
    line = line.rstrip()
    if source == "kjv":
        number, sep, rest = line.partition(" ")
        return (number, " " + rest) if number.isdigit() and sep and len(rest.split()) >= 4 else None
    if source == "wordnet":
        head, sep, rest = line.partition(":")
        return (head + ":", rest) if sep and rest.startswith(" ") and len(rest.split()) >= 4 else None
    text = line.strip()
    if (line != text or _SPEAKER.match(text) or text.startswith(("[", "Enter", "Exit", "Exeunt", "ACT", "SCENE"))
            or len(text.split()) < 4):
        return None
    return "", text


def halves(body: str) -> tuple[str, str] | None:
    """A line body of >= 8 words cut before its last four words: (the start, " " + the ending), or None.
    (Short endings: a small model's context gain is mostly in the first tokens, while the spread of the
    options' own likelihoods grows with their length.)"""
    words = list(re.finditer(r"\S+", body))
    if len(words) < 8:
        return None
    cut = words[len(words) - 4].start()
    if body[cut - 2 : cut] != body[cut - 2 : cut - 1] + " " or body[cut - 2] == " ":
        return None  # only a single space between the halves, so that first + ending is the line
    return body[: cut - 1], " " + body[cut:]


class Builder:
    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.tok = Tokenizer.from_file(str(BUNDLED / "tokenizer" / "tokenizer.json"))
        with gzip.open(BUNDLED / "corpus" / "test.jsonl.gz", "rt", encoding="utf-8") as handle:
            docs = [json.loads(line) for line in handle]
        self.lines = {s: [d["text"].splitlines() for d in docs if d["source"] == s] for s in SOURCES}
        with gzip.open(BUNDLED / "corpus" / "validation.jsonl.gz", "rt", encoding="utf-8") as handle:
            counts = Counter(i for e in self.tok.encode_batch([json.loads(line)["text"] for line in handle],
                                                              add_special_tokens=False) for i in e.ids)
        total = sum(counts.values())
        self.unigram_nats = {i: math.log(total / c) for i, c in counts.items()}
        self.unseen_nats = math.log(total)

    def surprisal(self, text: str) -> float:
        """Mean unigram surprisal (nats per token) under the validation split's token frequencies."""
        ids = self.tok.encode(text, add_special_tokens=False).ids
        return sum(self.unigram_nats.get(i, self.unseen_nats) for i in ids) / max(1, len(ids))

    def ntokens(self, text: str) -> int:
        return len(self.tok.encode(text, add_special_tokens=False).ids)

    def rng(self, task: str, source: str) -> random.Random:
        return random.Random(f"{self.seed}-{task}-{source}")

    def positions(self, task: str, source: str) -> list[tuple[int, int]]:
        """Every (document, line) of a source, in a seeded random order."""
        pos = [(d, i) for d, lines in enumerate(self.lines[source]) for i in range(len(lines))]
        self.rng(task, source).shuffle(pos)
        return pos

    def content(self, source: str, d: int, i: int) -> tuple[str, str] | None:
        lines = self.lines[source][d]
        return split_line(source, lines[i]) if 0 <= i < len(lines) else None

    # -- the four sets ----------------------------------------------------------------------
    def perplexity(self, source: str) -> list[dict]:
        out, used = [], set()
        for d, i in self.positions("perplexity", source):
            if (d, i // 40) in used or self.content(source, d, i) is None:
                continue  # at most one passage per 40-line stretch: no overlapping passages
            lines = self.lines[source][d]
            text, j = lines[i], i + 1
            while j < len(lines) and self.ntokens(text + "\n" + lines[j]) <= MAX_TOKENS and len(text) < 700:
                text, j = text + "\n" + lines[j], j + 1
            if self.ntokens(text) >= 100:
                used.add((d, i // 40))
                out.append({"source": source, "text": text})
            if len(out) == COUNTS["perplexity"]:
                break
        return out

    def last_word(self, source: str) -> list[dict]:
        out = []
        for d, i in self.positions("last-word", source):
            line = self.content(source, d, i)
            # A sentence end (WordNet glosses have no final full stop: any gloss ends a definition).
            if line is None or not (source == "wordnet" or line[1].rstrip().endswith((".", "!", "?", ";"))):
                continue
            words = line[1].rstrip().rstrip(".!?;,:'\"").split(" ")
            if not _WORD.match(words[-1]) or len(words) < 5:
                continue
            start = i
            while start > 0 and len("\n".join(self.lines[source][d][start:i + 1]).split()) < 60:
                start -= 1
            passage = "\n".join(self.lines[source][d][start:i] + [line[0] + " ".join(words[:-1])])
            if self.ntokens(passage) + 8 <= MAX_TOKENS:
                out.append({"source": source, "context": passage, "target": words[-1]})
            if len(out) == COUNTS["last-word"]:
                break
        return out

    def multiple_choice(self, source: str) -> list[dict]:
        rng = self.rng("multiple-choice-distractors", source)
        pool = [(d, i, h[1]) for d, lines in enumerate(self.lines[source]) for i in range(len(lines))
                if (c := self.content(source, d, i)) is not None and (h := halves(c[1])) is not None]
        lengths = {(d, i): self.ntokens(ending) for d, i, ending in pool}
        out = []
        for d, i in self.positions("multiple-choice", source):
            line = self.content(source, d, i)
            parts = halves(line[1]) if line is not None and i >= 4 else None
            if parts is None or lengths[(d, i)] > 24:
                continue
            first, ending = parts
            n = lengths[(d, i)]

            def far(e: int, j: int) -> bool:
                return e != d or (source == "shakespeare" and abs(j - i) >= 200)

            def alike(other: str, m: int) -> bool:  # same length and capitalisation: neither gives the answer away
                return abs(m - n) <= max(2, n // 4) and other.lstrip()[:1].isupper() == ending.lstrip()[:1].isupper()

            candidates = [b for e, j, b in pool if far(e, j) and b != ending and alike(b, lengths[(e, j)])]
            if len(candidates) < 3:
                continue
            # Of those, the 12 whose words are about as rare as the answer's: otherwise the options'
            # own (context-free) likelihoods decide, and a small model scores at chance however well it
            # reads the context.
            target = self.surprisal(ending)
            candidates.sort(key=lambda b: (abs(self.surprisal(b) - target), b))
            choices = rng.sample(candidates[:12], 3)
            label = rng.randrange(4)
            choices.insert(label, ending)
            context = "\n".join(self.lines[source][d][i - 4 : i] + [line[0] + first])
            if self.ntokens(context) + max(self.ntokens(c) for c in choices) <= MAX_TOKENS:
                out.append({"source": source, "context": context, "choices": choices, "label": label})
            if len(out) == COUNTS["multiple-choice"]:
                break
        return out

    def infilling(self, source: str) -> list[dict]:
        out, used = [], set()
        for d, i in self.positions("infilling", source):
            window = [self.content(source, d, j) for j in range(i - 2, i + 3)]
            if any(w is None for w in window) or (d, i) in used or self.ntokens(window[2][1]) > 32:
                continue
            used.update((d, j) for j in range(i - 4, i + 5))  # five-line windows never overlap
            lines = self.lines[source][d]
            example = {"source": source, "prefix": "\n".join(lines[i - 2 : i] + [window[2][0]]), "middle": window[2][1],
                       "suffix": "\n" + "\n".join(lines[i + 1 : i + 3])}
            if self.ntokens(example["prefix"] + example["middle"] + example["suffix"]) <= MAX_TOKENS:
                out.append(example)
            if len(out) == COUNTS["infilling"]:
                break
        return out


def build(out_dir: Path, seed: int = 1234) -> dict[str, Path]:
    """Write the four JSONL files and a README with counts and checksums; return the paths."""
    builder = Builder(seed)
    makers = {"perplexity": builder.perplexity, "last-word": builder.last_word,
              "multiple-choice": builder.multiple_choice, "infilling": builder.infilling}
    out_dir.mkdir(parents=True, exist_ok=True)
    paths, rows = {}, []
    for name, make in makers.items():
        examples = [ex for source in SOURCES for ex in make(source)]
        path = out_dir / f"{name}.jsonl"
        path.write_text("".join(json.dumps(ex, ensure_ascii=False) + "\n" for ex in examples), encoding="utf-8")
        paths[name] = path
        per_source = ", ".join(f"{s} {sum(ex['source'] == s for ex in examples)}" for s in SOURCES)
        rows.append(f"| {name} | {len(examples)} | {per_source} | `{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}` |")
    readme = (
        "# Bundled evaluation sets\n\nBuilt from the corpus's test split by `python scripts/build_tasks.py "
        f"--seed {seed}` (see the script's docstring for the construction). Do not edit by hand.\n\n"
        "| task | examples | per source | sha256 (first 16) |\n|---|---:|---|---|\n" + "\n".join(rows) + "\n"
    )
    (out_dir / "README.md").write_text(readme, encoding="utf-8")
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--out", type=Path, default=BUNDLED / "tasks")
    args = parser.parse_args()
    for name, path in build(args.out, args.seed).items():
        print(f"{name}: {sum(1 for _ in path.open())} examples -> {path}")


if __name__ == "__main__":
    main()
