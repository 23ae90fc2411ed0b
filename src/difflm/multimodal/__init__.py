"""Multimodal diffusion LMs (MMaDA / UniDisc style): one masked-diffusion process over text tokens and
image codes, so one model and one sampler do image -> text and text -> image (docs/multimodal.md).

- `vqvae`: the image tokenizer (a small VQ-VAE: image <-> grid of codes), saved beside the model.
- `vocab`: image codes as new tokens of the text tokenizer; interleaved text/image sequences.
- `datasets`: bundled digits or a folder of PNGs -> captions -> SFT records; seeded disjoint splits.
- `prepare`: `difflm data images`: train the image tokenizer, extend the tokenizer, write the SFT data.
- `generation`: `MultimodalModel` - both directions through `difflm.sampling.fill`.
- `imageio`: PNG in/out and the terminal view of an image being denoised.
- `plugin`: the family's command-line plug-in (`difflm.registry.FAMILIES`).

Importing this package loads no torch (`difflm generate --help` imports `plugin`); the names below are
imported on first use.
"""

from __future__ import annotations

from ..registry import lazy_attributes

LAZY = {
    "ImageSet": ".datasets", "class_of_caption": ".datasets", "load_digits_set": ".datasets",
    "load_folder_set": ".datasets", "split_indices": ".datasets",
    "MultimodalModel": ".generation",
    "BOI": ".vocab", "EOI": ".vocab", "ImageVocab": ".vocab", "add_image_tokens": ".vocab", "image_text": ".vocab",
    "ImageTokenizerConfig": ".vqvae", "VQVAE": ".vqvae", "has_image_tokenizer": ".vqvae",
    "load_image_tokenizer": ".vqvae", "train_vqvae": ".vqvae",
}

__all__ = sorted(LAZY)


__getattr__ = lazy_attributes(__name__, LAZY)
