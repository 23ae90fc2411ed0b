"""The multimodal family on the command line: ``difflm generate --image-out PATH`` (text -> image) and
``--image PATH`` (image -> text) hand the run to it; `difflm.registry.FAMILIES` points here. Torch-free:
the parser is built from this module (``difflm generate --help``).

A multimodal model is a masked DLM, so the masked sampler's flags apply (``--chat`` excepted: it is
refused, `difflm.multimodal.cli.check_image_args`).

    difflm generate --model dlm-digits "draw a handwritten seven" --image-out seven.png --show-steps
    difflm generate --model dlm-digits --image seven.png "what digit is this?"
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["MultimodalPlugin", "PLUGIN"]


class MultimodalPlugin:
    """`difflm.cli.family.FamilyPlugin` of text + image models (`difflm generate` only)."""

    name = "multimodal"

    def add_arguments(self, parser: argparse.ArgumentParser, command: str) -> None:
        if command != "generate":
            return
        group = parser.add_argument_group(
            "multimodal models", "text <-> image with a model that has an image tokenizer (e.g. dlm-digits)")
        group.add_argument("--image-out", metavar="PATH", help="multimodal models: draw an image of each PROMPT "
                           "and write it as a PNG (several prompts: PATH-1.png, ...); --length does not apply")
        group.add_argument("--image", metavar="PATH", help="multimodal models: a grayscale PNG to describe; "
                           "PROMPT is the question (\"\" for none) and --length caps the answer")

    def claims(self, args: argparse.Namespace) -> bool:
        """One of the image flags was given (whatever the model: a text-only one is refused in `run`)."""
        return bool(getattr(args, "image", None) or getattr(args, "image_out", None))

    def run(self, args: argparse.Namespace, job: Any) -> int:
        from .cli import check_image_args, run_image  # torch: only once the run is this family's

        image = check_image_args(args)  # before the model loads
        return run_image(args, job.options, job.load_model(), image)


PLUGIN = MultimodalPlugin()
