"""The image side of `difflm generate` (``--image-out PATH``: text -> image; ``--image PATH``: image -> text).

    difflm generate --model dlm-digits "draw a handwritten seven" --image-out seven.png --show-steps
    difflm generate --model dlm-digits --image seven.png "what digit is this?"

The runner of the multimodal family's plug-in (`difflm.multimodal.plugin`, which defines the two flags:
building the parser must not import torch); `check_image_args` runs before the model loads (a text-only model, a PNG of the wrong size or mode:
one line, exit status 2); `run_image` samples with the command's `SamplerOptions`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch

from ..bundled import resolve_model
from ..errors import InputError
from ..visualize import DenoisingView
from .generation import MultimodalModel
from .imageio import ImageDenoisingView, read_png, write_png
from .vqvae import CONFIG_NAME, has_image_tokenizer


def check_image_args(args: argparse.Namespace) -> torch.Tensor | None:
    """Before the model loads: the image flags make sense for ``args.model``. Returns the ``--image``
    as FloatTensor [H, W] in [0, 1] (None without one)."""
    if args.image and args.image_out:
        raise InputError("give --image (image -> text) or --image-out (text -> image), not both")
    if args.chat:
        raise InputError("--chat does not apply to images; pass the caption or question as PROMPT")
    directory = resolve_model(args.model)
    if not has_image_tokenizer(directory):
        flag = "--image" if args.image else "--image-out"
        raise InputError(f"{flag}: model {args.model} is text-only (no image tokenizer); it cannot "
                         f"{'read' if args.image else 'write'} images - use a multimodal model such as dlm-digits")
    if args.image_out and not str(args.image_out).lower().endswith(".png"):
        raise InputError(f"--image-out {args.image_out}: give a .png file name")
    if not args.image:
        return None
    size = json.loads((Path(directory) / CONFIG_NAME).read_text()).get("image_size", 8)
    return read_png(args.image, size)


def image_out_paths(path: str, count: int) -> list[Path]:
    """Where the images of ``count`` prompts go: PATH itself for one, PATH-1.png ... for several."""
    p = Path(path)
    return [p] if count == 1 else [p.with_name(f"{p.stem}-{i + 1}{p.suffix}") for i in range(count)]


def run_image(args: argparse.Namespace, options: Any, dlm: Any, image: torch.Tensor | None) -> int:
    """Sample images (``--image-out``) or captions (``--image``) and print or write them."""
    model = MultimodalModel.wrap(dlm, resolve_model(args.model))
    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    start = time.perf_counter()
    if image is None:
        with _view(args, lambda: ImageDenoisingView(dlm.tokenizer, model.span_image, delay=args.delay,
                                                    title="difflm generate: text -> image")) as view:
            images, codes = model.text_to_image(args.prompt, options=options, generator=generator, callback=view)
        for prompt, path, picture, row in zip(args.prompt, image_out_paths(args.image_out, len(args.prompt)),
                                              images, codes):
            write_png(picture, path)
            record = {"prompt": prompt, "image": str(path), "codes": row.tolist()}
            print(json.dumps({**record, "seconds": round(time.perf_counter() - start, 4),
                              "options": dataclasses.asdict(options)}) if args.json else f"wrote {path}")
        return 0
    context = getattr(dlm.model.config, "max_position_embeddings", None) or 1 << 30
    texts = []
    for question in args.prompt:
        room = context - len(model.image_to_text_template(image, question, length=0))
        if room < 1:
            raise InputError(f"the question {question!r} leaves no room for an answer in the model's context "
                             f"of {context} tokens")
        with _view(args, lambda: DenoisingView(dlm.tokenizer, title="difflm generate: image -> text",
                                               delay=args.delay)) as view:
            texts += model.image_to_text(image[None], question, length=min(args.length, room), options=options,
                                         generator=generator, callback=view)
    for question, text in zip(args.prompt, texts):
        print(json.dumps({"prompt": question, "image": args.image, "text": text,
                          "seconds": round(time.perf_counter() - start, 4)}) if args.json else text)
    return 0


def _view(args: argparse.Namespace, make: Any) -> Any:
    """The live view ``make()`` with ``--show-steps`` (a context manager that is the callback), else
    a context that gives None."""
    return make() if args.show_steps else contextlib.nullcontext(None)
