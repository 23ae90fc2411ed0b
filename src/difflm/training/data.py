"""Corpus files -> token stream -> packed sequences -> deterministic batches.

Sequences are ``[BOS] + seq_length - 1`` tokens cut from the concatenation of all documents (each
document followed by EOS). Batch ``k`` is a pure function of (seed, step), so a resumed run sees
exactly the batches an uninterrupted one would, and every process can take its own rows of it.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from ..bundled import corpus_file
from ..errors import ConfigError, InputError
from ..rng import permutation, seeded_generator

SUFFIXES = (".txt", ".jsonl", ".jsonl.gz", ".json", ".parquet")


@dataclass
class Document:
    text: str
    source: str = ""


def resolve_files(files: list[str], split: str) -> list[Path]:
    """Paths of data files; "bundled" stands for the bundled corpus split."""
    paths = [corpus_file(split) if f == "bundled" else Path(f) for f in files]
    for p in paths:
        if not p.is_file():
            raise InputError(f"data file {p} not found")
        if not str(p).endswith(SUFFIXES):
            raise InputError(f"data file {p}: unsupported type; use one of {', '.join(SUFFIXES)}")
        if not os.access(p, os.R_OK):
            raise InputError(f"data file {p} is not readable")
    return paths


def read_documents(path: Path) -> Iterator[Document]:
    """Documents of one file: a .txt file is one document; JSONL lines need a "text" field
    (and may have "source"); parquet files need a "text" column."""
    name = str(path)
    if name.endswith(".txt"):
        yield Document(path.read_text(encoding="utf-8", errors="replace"))
    elif name.endswith(".parquet"):
        try:
            import datasets
        except ImportError:
            raise InputError("reading .parquet needs the datasets package: pip install datasets") from None
        table = datasets.load_dataset("parquet", data_files=name, split="train")
        if "text" not in table.column_names:
            raise InputError(f"{path} has no 'text' column (columns: {', '.join(table.column_names)})")
        for row in table:
            yield Document(row["text"], str(row.get("source", "")))
    else:
        opener = gzip.open if name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    text = row["text"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise InputError(f"{path}:{number}: expected a JSON object with a \"text\" field") from None
                yield Document(str(text), str(row.get("source", "")))


def _weighted(docs: list[Document], weights: dict[str, float], seed: int) -> list[Document]:
    """Repeat or thin documents by source weight; the kept fraction is chosen deterministically."""
    if not weights:
        return docs
    rng = np.random.default_rng(seed)
    out = []
    for doc in docs:
        w = float(weights.get(doc.source, 1.0))
        copies = int(w) + (1 if rng.random() < w - int(w) else 0)
        out.extend([doc] * copies)
    return out


def tokenize_files(paths: list[Path], tokenizer: Any, *, source_weights: dict[str, float] | None = None,
                   seed: int = 0, cache_dir: Path | None = None) -> np.ndarray:
    """One int32 stream of all documents, each followed by EOS. Cached on disk by content."""
    key = hashlib.sha256()
    for p in paths:
        st = p.stat()
        key.update(f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    key.update(json.dumps([sorted((source_weights or {}).items()), seed, len(tokenizer),
                           tokenizer.eos_token_id, tokenizer.name_or_path]).encode())
    cache_dir = cache_dir or Path(os.environ.get("DIFFLM_CACHE", Path.home() / ".cache" / "difflm"))
    cached = cache_dir / f"tokens-{key.hexdigest()[:20]}.npy"
    if cached.is_file():
        return np.load(cached)
    docs = [d for p in paths for d in read_documents(p)]
    docs = _weighted(docs, source_weights or {}, seed)
    if tokenizer.eos_token_id is None:
        raise ConfigError("the tokenizer has no EOS token; training data needs one between documents")
    pieces = []
    for start in range(0, len(docs), 256):
        texts = [d.text for d in docs[start : start + 256]]
        for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
            pieces.append(np.asarray(ids + [tokenizer.eos_token_id], dtype=np.int32))
    stream = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int32)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".tmp{os.getpid()}.npy")
    np.save(tmp, stream)
    os.replace(tmp, cached)
    return stream


def pack_sequences(stream: np.ndarray, seq_length: int, bos_token_id: int) -> torch.Tensor:
    """LongTensor [N, seq_length]: ``[BOS] + seq_length - 1`` consecutive stream tokens per row."""
    body = seq_length - 1
    n = len(stream) // body
    if n == 0:
        raise InputError(
            f"the data holds {len(stream)} tokens, fewer than one sequence of {seq_length}: "
            "the corpus is empty or too small"
        )
    rows = torch.from_numpy(stream[: n * body].astype(np.int64)).view(n, body)
    return torch.cat([torch.full((n, 1), bos_token_id, dtype=torch.long), rows], dim=1)


class PackedBatches:
    """Deterministic batches over packed sequences [N, seq_length]: the global batch of step k is the
    k-th slice of an endless sequence of seeded per-epoch permutations."""

    def __init__(self, sequences: torch.Tensor, batch_size: int, seed: int, shuffle: bool = True) -> None:
        self.sequences, self.batch_size, self.seed, self.shuffle = sequences, batch_size, seed, shuffle
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            n = len(self.sequences)
            g = seeded_generator(self.seed * 1_000_003 + epoch)
            self._perms = {epoch: permutation(n, generator=g) if self.shuffle else torch.arange(n)}
        return self._perms[epoch]

    def rows(self, step: int) -> torch.Tensor:
        """Indices [batch_size] of the sequences of step ``step``."""
        n = len(self.sequences)
        pos = step * self.batch_size + torch.arange(self.batch_size)
        return torch.stack([self._perm(int(p) // n)[int(p) % n] for p in pos])

    def global_batch(self, step: int) -> torch.Tensor:
        """LongTensor [batch_size, seq_length] of step ``step``."""
        return self.sequences[self.rows(step)]

    def epoch_of(self, step: int) -> float:
        return step * self.batch_size / len(self.sequences)
