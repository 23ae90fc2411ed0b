"""Image sets with class labels -> captions -> interleaved image/text SFT records.

Two sources, both without a download: scikit-learn's bundled handwritten digits (1,797 8x8 images,
values 0-16, 10 classes) and a folder of the user's own grayscale PNGs, one sub-folder per class
(``DIR/<class name>/*.png``). Splits are seeded and disjoint (a fixed permutation of the images).

Text is generated from the class, in several phrasings so that both directions have varied text to
learn from: captions for text -> image prompts ("draw a handwritten seven", "the digit 7", ...) and
answers for image -> text ("seven", "7", "seven, handwritten", ...). An answer names the class
first: with the name's position fixed, every noised answer teaches the model to read the image
(with "a handwritten seven" / "the digit 7" / ... the fully masked answer's positions hold template
words as often as the class, and a small model trained for minutes never learned to caption).
`class_of_caption` reads a class back out of generated text (the first name or alias it mentions).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import rng
from ..errors import InputError
from .imageio import read_png
from .vocab import image_to_text_pair, text_to_image_pair

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_CAPTIONS = ("a handwritten {word}", "the digit {n}", "a {word}", "the number {word}", "a picture of a {word}",
                  "handwritten digit {n}", "an image of the digit {word}")
DIGIT_ANSWERS = ("{word}", "{n}", "{word}, handwritten", "{word} ({n})", "{n}, a handwritten {word}")
FOLDER_CAPTIONS = ("a {word}", "an image of a {word}", "a picture of a {word}", "{word}")
FOLDER_ANSWERS = ("{word}", "{word}, a picture", "{word}, an image")
REQUESTS = ("", "draw ", "write ", "show me ")  # text -> image prompts: a request, then a caption
QUESTIONS = ("", "what digit is this?")  # image -> text prompts
SPLIT_FRACTIONS = {"test": 0.2, "validation": 0.1}  # the rest is train


@dataclass
class ImageSet:
    """images: FloatTensor [N, H, W] in [0, 1]; labels: LongTensor [N]; names: class names;
    aliases: per class, the words that name it in a caption (its name first); captions (text ->
    image prompts) and answers (image -> text responses): templates with {word} (the name) and {n}
    (the class index); value_max: the raw value of full ink."""

    images: torch.Tensor
    labels: torch.Tensor
    names: list[str]
    aliases: list[list[str]]
    captions: tuple[str, ...]
    answers: tuple[str, ...]
    value_max: float

    def subset(self, index: torch.Tensor) -> ImageSet:
        return ImageSet(self.images[index], self.labels[index], self.names, self.aliases, self.captions,
                        self.answers, self.value_max)


def load_digits_set() -> ImageSet:
    """scikit-learn's handwritten digits (bundled with scikit-learn, no download)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise InputError("the digits image set needs scikit-learn: pip install 'difflm[bench]'") from None
    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32) / 16.0
    aliases = [[word, str(n)] for n, word in enumerate(DIGIT_WORDS)]
    return ImageSet(images, torch.tensor(data.target, dtype=torch.long), list(DIGIT_WORDS), aliases, DIGIT_CAPTIONS,
                    DIGIT_ANSWERS, 16.0)


def load_folder_set(directory: str | Path) -> ImageSet:
    """Grayscale PNGs in ``directory/<class name>/*.png``, all of one even size (pixel 255 = full ink)."""
    root = Path(directory)
    classes = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if len(classes) < 2:
        raise InputError(f"--images {directory}: expected one sub-folder of PNGs per class (at least two classes)")
    images, labels, size = [], [], None
    for label, folder in enumerate(classes):
        files = sorted(folder.glob("*.png"))
        if not files:
            raise InputError(f"--images: class folder {folder} holds no .png file")
        for file in files:
            image = read_png(file, size)
            size = image.shape[0]
            images.append(image)
            labels.append(label)
    names = [c.name.replace("_", " ") for c in classes]
    return ImageSet(torch.stack(images), torch.tensor(labels), names, [[n] for n in names], FOLDER_CAPTIONS,
                    FOLDER_ANSWERS, 255.0)


def split_indices(n: int, split: str, seed: int = 0) -> torch.Tensor:
    """Indices of ``split`` ("train" | "validation" | "test") among n images: disjoint, seeded."""
    order = rng.permutation(n, generator=rng.seeded_generator(seed))
    n_test, n_val = int(n * SPLIT_FRACTIONS["test"]), int(n * SPLIT_FRACTIONS["validation"])
    bounds = {"test": (0, n_test), "validation": (n_test, n_test + n_val), "train": (n_test + n_val, n)}
    if split not in bounds:
        raise InputError(f"unknown split {split!r}; choose train, validation or test")
    lo, hi = bounds[split]
    return order[lo:hi].sort().values


def caption(templates: tuple[str, ...], images: ImageSet, label: int, rng: random.Random) -> str:
    """Text about class ``label`` from one of ``templates`` (the set's captions or answers)."""
    return rng.choice(templates).format(word=images.names[label], n=label)


def sft_records(codes: torch.Tensor, images: ImageSet, *, per_image: int = 2, seed: int = 0) -> list[dict[str, str]]:
    """``per_image`` text->image and ``per_image + 1`` image->text records per image (shuffled, seeded):
    reading an image is the slower direction to learn (one informative token per answer against 16).

    codes: LongTensor [N, n], the image tokenizer's codes of ``images``."""
    rng = random.Random(seed)
    records = []
    for row, label in zip(codes.tolist(), images.labels.tolist()):
        for _ in range(per_image):
            records.append(text_to_image_pair(rng.choice(REQUESTS) + caption(images.captions, images, label, rng), row))
        for _ in range(per_image + 1):
            records.append(image_to_text_pair(row, rng.choice(QUESTIONS), caption(images.answers, images, label, rng)))
    rng.shuffle(records)
    return records


def class_of_caption(text: str, aliases: list[list[str]]) -> int | None:
    """The class whose name or alias appears first in ``text`` (whole words), or None."""
    best: tuple[int, int] | None = None
    for label, words in enumerate(aliases):
        for word in words:
            match = re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text.lower())
            if match and (best is None or match.start() < best[0]):
                best = (match.start(), label)
    return None if best is None else best[1]
