"""PNG files in and out, and a live terminal view of an image being denoised.

Images are single-channel (grayscale, PNG mode "L"), bright = ink, as in scikit-learn's digits
(0 = background, 16 = full ink). In memory a pixel is a float in [0, 1]; on disk 0-255.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from rich.console import Group
from rich.panel import Panel
from rich.text import Text

from ..errors import InputError
from ..sampling import SamplerStep
from ..visualize import DenoisingView


def _pil() -> Any:
    """PIL's Image module, or a one-line `InputError` saying how to install it."""
    try:
        from PIL import Image
    except ImportError:
        raise InputError("reading and writing PNG files needs pillow: pip install 'difflm[bench]'") from None
    return Image


def read_png(path: str | Path, size: int | None = None) -> torch.Tensor:
    """A grayscale PNG as FloatTensor [H, W] in [0, 1]; `InputError` for a missing or unreadable file,
    a mode other than grayscale, or a size other than ``size`` x ``size`` (any even square if None)."""
    Image = _pil()
    from PIL import UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise InputError(f"image {p} not found")
    try:
        with Image.open(p) as image:
            image.load()
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"image {p} is not a readable image file ({type(exc).__name__})") from None
    if image.mode != "L":
        raise InputError(f"image {p} has mode {image.mode}; the model reads grayscale (mode L) images: "
                         "convert it, e.g. PIL's image.convert('L')")
    w, h = image.size
    if size is not None and (w, h) != (size, size):
        raise InputError(f"image {p} is {w}x{h} pixels; expected {size}x{size}, the size of the model's images")
    if w != h or w % 2:
        raise InputError(f"image {p} is {w}x{h} pixels; images must be square with an even side")
    return torch.tensor(list(image.getdata()), dtype=torch.float32).reshape(h, w) / 255.0


def write_png(image: torch.Tensor, path: str | Path) -> Path:
    """Write FloatTensor [H, W] in [0, 1] as a grayscale PNG (parents created)."""
    Image = _pil()
    out = Path(path)
    if out.is_dir():
        raise InputError(f"--image-out {out} is a directory; give a .png file name")
    out.parent.mkdir(parents=True, exist_ok=True)
    pixels = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    Image.frombytes("L", (pixels.shape[1], pixels.shape[0]), bytes(pixels.flatten().tolist())).save(out, format="PNG")
    return out


SHADES = " ░▒▓█"  # ink from none to full: readable in a terminal and in a file alike


def image_text(image: torch.Tensor, known: torch.Tensor | None = None) -> Text:
    """An image [H, W] in [0, 1] as terminal text: two shade characters per pixel; pixels whose code
    is not committed yet (``known`` [H, W] False) drawn as dim dots."""
    text = Text()
    for y in range(image.shape[0]):
        for x in range(image.shape[1]):
            if known is not None and not bool(known[y, x]):
                text.append("··", style="dim")
                continue
            shade = SHADES[min(len(SHADES) - 1, int(float(image[y, x]) * len(SHADES)))]
            text.append(shade * 2, style="bright_white")
        text.append("\n")
    return text


class ImageDenoisingView(DenoisingView):
    """`DenoisingView` for text -> image: each step, the image of row 0's committed codes (the
    still-masked cells shown as dots) beside the prompt text.

    Args:
        tokenizer: the model's tokenizer (for the prompt text).
        decode_span: callable(canvas LongTensor [L], masked BoolTensor [L]) -> (image [H, W], known
            [H, W]): the image of the canvas's image span so far.
        kwargs: the options of `DenoisingView` (title, delay, console, transient).
    """

    def __init__(self, tokenizer: Any, decode_span: Any, **kwargs: Any) -> None:
        super().__init__(tokenizer, **kwargs)
        self.decode_span = decode_span

    def render(self, step: SamplerStep) -> Panel:
        canvas, generated = step.canvas[0].cpu(), step.generate_mask[0].cpu()
        masked = generated & (canvas == step.mask_token_id)
        done, total = int((generated & ~masked).sum()), int(generated.sum())
        header = Text(f"step {step.step + 1}/{step.total_steps}  {done}/{total} image codes", style="bold")
        prompt = self.tokenizer.decode(canvas[~generated].tolist(), skip_special_tokens=True).strip()
        image, known = self.decode_span(canvas, masked)
        return Panel(Group(header, Text(prompt), image_text(image, known)), title=self.title, title_align="left")
