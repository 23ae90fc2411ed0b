"""Both directions of a multimodal DLM with the one sampler (`difflm.sampling.fill`).

    text -> image   [BOS] caption <boi> [MASK] x g*g <eoi> [EOS]       the codes are generated
    image -> text   [BOS] <boi> codes <eoi> question [MASK] x length    the caption is generated

The prompt (caption, or image and question) is never written by the sampler; the generated positions
are constrained to their modality through the sampler's ``logits_processor`` hook: in an image span,
the tokens of each position's own grid cell; elsewhere text (anything but image tokens); so every
output decodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import InputError
from ..sampling import SamplerOptions, fill, stop_token_ids, trim_at_stop
from .vocab import ImageVocab, image_to_text_prompt
from .vqvae import VQVAE, has_image_tokenizer, load_image_tokenizer


@dataclass
class MultimodalModel:
    """A `DiffusionLM` whose vocabulary holds image codes, with its image tokenizer."""

    dlm: Any
    vq: VQVAE
    vocab: ImageVocab

    @classmethod
    def wrap(cls, dlm: Any, directory: str | Path) -> MultimodalModel:
        """``dlm`` (loaded from ``directory``) with the image tokenizer saved in ``directory``;
        `InputError` for a text-only model."""
        if not has_image_tokenizer(directory):
            raise InputError(f"model {directory} is text-only (no image tokenizer): it cannot read or write "
                             "images; use a multimodal model such as dlm-digits")
        vq = load_image_tokenizer(directory)
        vocab = ImageVocab.of(dlm.tokenizer)
        if (vocab.cells, vocab.codebook_size) != (vq.config.num_codes, vq.config.codebook_size):
            raise InputError(f"model {directory}: the tokenizer has {vocab.cells} x {vocab.codebook_size} image tokens, "
                             f"the image tokenizer {vq.config.num_codes} cells x {vq.config.codebook_size} codes")
        return cls(dlm, vq, vocab)

    @property
    def image_size(self) -> int:
        return self.vq.config.image_size

    def _text_ids(self, text: str) -> list[int]:
        return self.dlm.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _bos(self) -> list[int]:
        bos = self.dlm.tokenizer.bos_token_id
        return [] if bos is None else [bos]

    # -- templates ------------------------------------------------------------------------------
    def text_to_image_template(self, caption: str) -> list[int]:
        """[BOS] caption <boi> [MASK] x g*g <eoi> [EOS]: the layout of the training rows."""
        mask, eos = self.dlm.config.mask_token_id, self.dlm.tokenizer.eos_token_id
        n = self.vq.config.num_codes
        return self._bos() + self._text_ids(caption) + [self.vocab.boi] + [mask] * n + [self.vocab.eoi, eos]

    def image_to_text_template(self, image: torch.Tensor, question: str = "", length: int = 12) -> list[int]:
        """[BOS] <boi> codes <eoi> question [MASK] x length, for image [H, W] in [0, 1]."""
        codes = self.vq.encode(image[None].float())[0]
        prompt = self._bos() + self._text_ids(image_to_text_prompt(codes, question))
        return prompt + [self.dlm.config.mask_token_id] * length

    # -- constraints ----------------------------------------------------------------------------
    def only_image_codes(self, templates: list[list[int]]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """Logits processor for text -> image templates: the position of grid cell j may only take
        the tokens of cell j (the canvas is the templates, left-padded to one length)."""
        width, n = max(len(t) for t in templates), self.vq.config.num_codes
        cell = torch.full((len(templates), width), -1, dtype=torch.long)  # grid cell of each canvas position
        for b, template in enumerate(templates):
            start = width - len(template) + template.index(self.vocab.boi) + 1
            cell[b, start : start + n] = torch.arange(n)

        def keep_cell_codes(logits: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
            cells = cell.to(positions.device)[positions]  # [N], in the row-major order of the logits
            if bool((cells < 0).any()):
                raise InputError("a position outside the image span is being generated")
            allowed = torch.zeros_like(logits, dtype=torch.bool)
            allowed.scatter_(1, self.vocab.codes.to(logits.device)[cells], True)
            return logits.masked_fill(~allowed, float("-inf"))
        return keep_cell_codes

    def only_text(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """Logits processor: no decided position is an image code or marker."""
        banned = torch.cat([self.vocab.codes.flatten(), torch.tensor([self.vocab.boi, self.vocab.eoi])])

        def drop_image_tokens(logits: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
            logits = logits.clone()
            logits[:, banned.to(logits.device)] = float("-inf")
            return logits
        return drop_image_tokens

    # -- the two directions ---------------------------------------------------------------------
    def text_to_image(self, captions: list[str], *, options: SamplerOptions | None = None,
                      generator: Any = None, callback: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(images FloatTensor [B, H, W] in [0, 1], codes LongTensor [B, g*g]) for B captions."""
        templates = [self.text_to_image_template(c) for c in captions]
        result = fill(self.dlm, templates, options=options, generator=generator, callback=callback,
                      return_dict=True, logits_processor=self.only_image_codes(templates))
        codes = self.vocab.to_codes(torch.tensor(result.new_tokens, dtype=torch.long))
        return self.vq.decode(codes), codes

    def image_to_text(self, images: torch.Tensor, question: str = "", *, length: int = 12,
                      options: SamplerOptions | None = None, generator: Any = None, callback: Any = None) -> list[str]:
        """The generated caption of each image [B, H, W] in [0, 1] (cut at the first EOS/pad)."""
        templates = [self.image_to_text_template(image, question, length) for image in images]
        result = fill(self.dlm, templates, options=options, generator=generator, callback=callback,
                      return_dict=True, logits_processor=self.only_text())
        stops = stop_token_ids(self.dlm)
        return [self.dlm.tokenizer.decode(trim_at_stop(row, stops), skip_special_tokens=True).strip()
                for row in result.new_tokens]

    def span_image(self, canvas: torch.Tensor, masked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The image so far of the first image span after the prompt in canvas [L] (masked [L]: still
        masked positions): (image [H, W], known [H, W]); masked codes are drawn as code 0 and
        reported unknown. For `ImageDenoisingView`."""
        n, g = self.vq.config.num_codes, self.vq.config.grid
        start = int((canvas == self.vocab.boi).nonzero().flatten()[-1]) + 1
        ids, hidden = canvas[start : start + n], masked[start : start + n]
        codes = self.vocab.to_codes(torch.where(hidden, self.vocab.codes[0, 0], ids))
        image = self.vq.decode(codes[None])[0]
        scale = self.image_size // g
        known = (~hidden).reshape(g, g).repeat_interleave(scale, 0).repeat_interleave(scale, 1)
        return image, known
