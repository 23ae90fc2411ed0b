"""`difflm data images`: everything a multimodal SFT run needs, from an image set with class labels.

    OUT/tokenizer/      the bundled text tokenizer + <boi>, <eoi>, <img_j_k> (cell j, code k), and the image
                        tokenizer (image_tokenizer.json + .safetensors) beside it
    OUT/train.jsonl, OUT/validation.jsonl, OUT/test.jsonl
                        {"prompt", "response"} records, both directions (seeded, disjoint images)
    OUT/image_tokenizer_report.json
                        reconstruction error of the image tokenizer per split

Then ``difflm train`` with ``tokenizer: OUT/tokenizer`` and the JSONL files (configs/multimodal-digits.yaml),
and copy the image tokenizer into the trained model's directory (`attach_image_tokenizer`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

from ..bundled import TOKENIZER_DIR
from ..errors import InputError
from ..tasks import write_jsonl
from .datasets import ImageSet, sft_records, split_indices
from .vocab import add_image_tokens
from .vqvae import CONFIG_NAME, WEIGHTS_NAME, ImageTokenizerConfig, reconstruction_mse, train_vqvae

SPLITS = ("train", "validation", "test")


def prepare_image_sft(images: ImageSet, out: str | Path, *, codebook_size: int = 32, vq_steps: int = 1500,
                      per_image: int = 2, seed: int = 0, tokenizer: str | Path | None = None) -> dict[str, Any]:
    """Train the image tokenizer on the train split of ``images``, extend the text tokenizer and
    write the SFT files into ``out`` (layout in the module doc). Returns the report it writes."""
    if codebook_size < 2:
        raise InputError(f"--codebook must be >= 2, got {codebook_size}")
    if vq_steps < 1 or per_image < 1:
        raise InputError(f"--vq-steps and --per-image must be >= 1, got {vq_steps} and {per_image}")
    out = Path(out)
    torch.set_num_threads(1)  # a small job: leave the other cores alone
    parts = {split: images.subset(split_indices(len(images.labels), split, seed=0)) for split in SPLITS}
    config = ImageTokenizerConfig(image_size=images.images.shape[-1], value_max=images.value_max,
                                  codebook_size=codebook_size)
    vq = train_vqvae(parts["train"].images, config, steps=vq_steps, seed=seed)
    text_tokenizer = AutoTokenizer.from_pretrained(tokenizer or TOKENIZER_DIR)
    tok_dir = out / "tokenizer"
    add_image_tokens(text_tokenizer, codebook_size, config.num_codes).save_pretrained(tok_dir)
    vq.save(tok_dir)
    report: dict[str, Any] = {"codebook_size": codebook_size, "codes_per_image": config.num_codes,
                              "image_size": config.image_size, "vq_steps": vq_steps, "seed": seed}
    used = set()
    for split, part in parts.items():
        codes = vq.encode(part.images)
        used |= set(codes.flatten().tolist())
        records = sft_records(codes, part, per_image=per_image, seed=seed + SPLITS.index(split))
        write_jsonl(records, out / f"{split}.jsonl")
        report[split] = {"images": len(part.labels), "records": len(records),
                         "reconstruction_mse": round(reconstruction_mse(vq, part.images), 5)}
    report["codes_used"] = len(used)
    (out / "image_tokenizer_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def attach_image_tokenizer(tokenizer_dir: str | Path, model_dir: str | Path) -> Path:
    """Copy the image tokenizer of ``tokenizer_dir`` into a trained model's directory, which makes it
    a model `difflm generate --image/--image-out` can use."""
    source, target = Path(tokenizer_dir), Path(model_dir)
    if not (source / CONFIG_NAME).is_file():
        raise InputError(f"{source} holds no image tokenizer ({CONFIG_NAME})")
    if not (target / "config.json").is_file():
        raise InputError(f"{target} is not a model directory (no config.json)")
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        shutil.copy2(source / name, target / name)
    return target
