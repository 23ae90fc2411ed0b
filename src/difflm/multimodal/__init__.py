"""Multimodal diffusion LMs (MMaDA / UniDisc style): one masked-diffusion process over text tokens and
image codes, so one model and one sampler do image -> text and text -> image (docs/multimodal.md).

- `vqvae`: the image tokenizer (a small VQ-VAE: image <-> grid of codes), saved beside the model.
- `vocab`: image codes as new tokens of the text tokenizer; interleaved text/image sequences.
- `datasets`: bundled digits or a folder of PNGs -> captions -> SFT records; seeded disjoint splits.
- `prepare`: `difflm data images`: train the image tokenizer, extend the tokenizer, write the SFT data.
- `generation`: `MultimodalModel` - both directions through `difflm.sampling.fill`.
- `imageio`: PNG in/out and the terminal view of an image being denoised.
"""

from .datasets import ImageSet, class_of_caption, load_digits_set, load_folder_set, split_indices
from .generation import MultimodalModel
from .vocab import BOI, EOI, ImageVocab, add_image_tokens, image_text
from .vqvae import ImageTokenizerConfig, VQVAE, has_image_tokenizer, load_image_tokenizer, train_vqvae

__all__ = [
    "BOI", "EOI", "ImageSet", "ImageTokenizerConfig", "ImageVocab", "MultimodalModel", "VQVAE", "add_image_tokens",
    "class_of_caption", "has_image_tokenizer", "image_text", "load_digits_set", "load_folder_set",
    "load_image_tokenizer", "split_indices", "train_vqvae",
]
