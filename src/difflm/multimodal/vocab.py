"""Image codes as tokens of the text vocabulary, and the interleaved text/image sequences built of them.

The image tokenizer's codes become new tokens of the text tokenizer, with ``<boi>`` / ``<eoi>``
around every image span (MMaDA / UniDisc style: one vocabulary, one masked-diffusion process)::

    [BOS] draw a handwritten seven <boi> <img_0_12> <img_1_3> ... <img_15_30> <eoi> [EOS] ...   (text -> image)
    [BOS] <boi> <img_0_12> <img_1_3> ... <img_15_30> <eoi> what digit is this? a handwritten seven [EOS] ...

A token names a grid cell and a code: ``<img_{cell}_{code}>``, cells x K tokens in all. Why not K
tokens shared by every cell: a RoPE Transformer sees positions only through attention, so with
shared tokens an image is, to a caption position, nearly a bag of codes (a linear classifier on the
bag of codes gets 42% of the held-out digits right, on codes by cell 94%), and reading the layout
needs a two-step attention circuit that a small model trained for minutes learns slowly. With cell
tokens one attention layer reads the whole layout (docs/multimodal.md has the measurements).

Sequences are plain strings, so SFT data is ordinary ``{"prompt", "response"}`` JSONL and the
trainer, losses and sampler need nothing new.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..errors import InputError, ModelLoadError

BOI, EOI = "<boi>", "<eoi>"
_CODE = re.compile(r"<img_(\d+)_(\d+)>")


def image_token(cell: int, code: int) -> str:
    """The token text of code ``code`` in grid cell ``cell``."""
    return f"<img_{cell}_{code}>"


def add_image_tokens(tokenizer: Any, codebook_size: int, cells: int) -> Any:
    """``tokenizer`` (a transformers fast tokenizer) with ``<boi>``, ``<eoi>`` and ``cells`` x
    ``codebook_size`` image tokens appended as new ids (special tokens: decoding text skips them)."""
    new = [BOI, EOI] + [image_token(j, k) for j in range(cells) for k in range(codebook_size)]
    present = [t for t in new if t in tokenizer.get_vocab()]
    if present:
        raise InputError(f"the tokenizer already has image tokens ({present[0]} ...); start from a text-only one")
    tokenizer.add_special_tokens({"additional_special_tokens": new}, replace_extra_special_tokens=False)
    return tokenizer


@dataclass(frozen=True)
class ImageVocab:
    """Where the image tokens sit in a tokenizer's vocabulary: ``boi``, ``eoi`` and ``codes``
    (LongTensor [cells, K]: the id of code k in grid cell j at [j, k])."""

    boi: int
    eoi: int
    codes: torch.Tensor

    @classmethod
    def of(cls, tokenizer: Any) -> ImageVocab:
        """The image tokens of ``tokenizer``; `ModelLoadError` for a text-only tokenizer."""
        vocab = tokenizer.get_vocab()
        if BOI not in vocab or EOI not in vocab:
            raise ModelLoadError(f"the tokenizer has no {BOI}/{EOI} tokens: it belongs to a text-only model")
        found = {(int(m.group(1)), int(m.group(2))): i for tok, i in vocab.items() if (m := _CODE.fullmatch(tok))}
        cells, k = (1 + max(j for j, _ in found), 1 + max(c for _, c in found)) if found else (0, 0)
        if not found or len(found) != cells * k:
            raise ModelLoadError("the tokenizer's image tokens are not <img_j_k> for every grid cell j and code k")
        ids = torch.tensor([[found[j, c] for c in range(k)] for j in range(cells)], dtype=torch.long)
        return cls(vocab[BOI], vocab[EOI], ids)

    @property
    def codebook_size(self) -> int:
        return self.codes.shape[1]

    @property
    def cells(self) -> int:
        return self.codes.shape[0]

    def span(self, codes: Sequence[int] | torch.Tensor) -> list[int]:
        """Token ids of one image span: [boi, code ids of cells 0..n-1, eoi]."""
        codes = torch.as_tensor(codes, dtype=torch.long)
        return [self.boi, *self.codes[torch.arange(len(codes)), codes].tolist(), self.eoi]

    def to_codes(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids [..., n] of image codes -> codes [..., n]; `InputError` if one is no image code.
        (The code is read from the token whatever its cell: the sampler keeps cells in place.)"""
        lookup = torch.full((int(max(self.codes.max(), ids.max())) + 1,), -1, dtype=torch.long)
        lookup[self.codes.flatten()] = torch.arange(self.codebook_size).repeat(self.cells)
        codes = lookup[ids.clamp(min=0).cpu()]
        if bool((codes < 0).any()):
            raise InputError("an image span holds a token that is not an image code")
        return codes

    def is_image_token(self, ids: torch.Tensor) -> torch.Tensor:
        """BoolTensor like ``ids``: which are image codes or image markers."""
        markers = torch.tensor([self.boi, self.eoi])
        return torch.isin(ids, torch.cat([self.codes.flatten(), markers]).to(ids.device))


def image_text(codes: Sequence[int] | torch.Tensor) -> str:
    """One image span as text: ``<boi><img_0_a><img_1_b>...<eoi>`` (codes [n], one per cell)."""
    return BOI + "".join(image_token(j, int(c)) for j, c in enumerate(codes)) + EOI


def text_to_image_pair(caption: str, codes: Sequence[int] | torch.Tensor) -> dict[str, str]:
    """The SFT record of a text -> image example: the caption is the prompt, the image span the response."""
    return {"prompt": caption, "response": image_text(codes)}  # no space: it would be a token of its own


def image_to_text_pair(codes: Sequence[int] | torch.Tensor, question: str, caption: str) -> dict[str, str]:
    """The SFT record of an image -> text example: the image (and a question) prompt, the caption response."""
    return {"prompt": image_to_text_prompt(codes, question), "response": " " + caption}


def image_to_text_prompt(codes: Sequence[int] | torch.Tensor, question: str = "") -> str:
    """The prompt text of image -> text: the image span, then the question (if any)."""
    return image_text(codes) + (" " + question.strip() if question.strip() else "")
