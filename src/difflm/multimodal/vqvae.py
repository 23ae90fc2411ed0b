"""The image tokenizer: a small VQ-VAE that turns an image into a short grid of discrete codes and back.

    images [N, H, W] in [0, 1] --encoder--> latents [N, D, H/2, W/2] --nearest code--> codes [N, (H/2)(W/2)]
    codes --codebook--> [N, D, H/2, W/2] --decoder--> images [N, H, W] in [0, 1]

A code stands for a 2x2 patch seen in its context (the 3x3 convolutions look across patch borders),
so an 8x8 digit is 16 codes. The codebook is learned with the usual VQ-VAE loss (reconstruction +
codebook + 0.25 x commitment, straight-through gradients); codes that no image uses are restarted on
a random encoder output, so the whole codebook stays in use (dead codes would be vocabulary the
language model can never learn). Saved as ``image_tokenizer.json`` (its `ImageTokenizerConfig`)
plus ``image_tokenizer.safetensors`` in any directory, e.g. a model's.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .. import rng
from ..errors import ModelLoadError

CONFIG_NAME = "image_tokenizer.json"
WEIGHTS_NAME = "image_tokenizer.safetensors"


@dataclass(frozen=True)
class ImageTokenizerConfig:
    """image_size: side of the square grayscale images (pixels); value_max: the pixel value that
    means full ink (16 for scikit-learn's digits; PNGs are scaled from 0-255 to this); codebook_size:
    K, the number of codes; code_dim: D, the latent width; hidden: convolution channels."""

    image_size: int = 8
    value_max: float = 16.0
    codebook_size: int = 64
    code_dim: int = 16
    hidden: int = 32

    @property
    def grid(self) -> int:
        """Side of the code grid (one code per 2x2 patch)."""
        return self.image_size // 2

    @property
    def num_codes(self) -> int:
        """Codes per image (grid * grid)."""
        return self.grid * self.grid


class VQVAE(nn.Module):
    """Encoder, codebook and decoder (see the module doc)."""

    def __init__(self, config: ImageTokenizerConfig) -> None:
        super().__init__()
        if config.image_size < 2 or config.image_size % 2:
            raise ValueError(f"image_size must be an even number >= 2, got {config.image_size}")
        self.config = config
        h, d = config.hidden, config.code_dim
        self.encoder = nn.Sequential(
            nn.Conv2d(1, h, 3, padding=1), nn.ReLU(),
            nn.Conv2d(h, h, 4, stride=2, padding=1), nn.ReLU(),  # one latent per 2x2 patch
            nn.Conv2d(h, h, 3, padding=1), nn.ReLU(),
            nn.Conv2d(h, d, 1),
        )
        self.codebook = nn.Embedding(config.codebook_size, d)
        self.decoder = nn.Sequential(
            nn.Conv2d(d, h, 3, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(h, h, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(h, 1, 3, padding=1),
        )

    def _latents(self, images: torch.Tensor) -> torch.Tensor:
        """[N, H, W] -> [N, g, g, D]."""
        return self.encoder(images[:, None].float()).permute(0, 2, 3, 1)

    def _nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code of every latent: [..., D] -> [...]."""
        flat = z.reshape(-1, z.shape[-1])
        distances = (flat.pow(2).sum(-1, keepdim=True) - 2 * flat @ self.codebook.weight.T
                     + self.codebook.weight.pow(2).sum(-1)[None])
        return distances.argmin(-1).reshape(z.shape[:-1])

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images [N, H, W] with values in [0, 1] -> codes LongTensor [N, g*g] (row-major grid)."""
        return self._nearest(self._latents(images)).flatten(1)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes LongTensor [N, g*g] -> images [N, H, W] with values in [0, 1]."""
        g = self.config.grid
        q = self.codebook(codes.reshape(-1, g, g)).permute(0, 3, 1, 2)
        return self.decoder(q)[:, 0].clamp(0.0, 1.0)

    def loss(self, images: torch.Tensor, beta: float = 0.25) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(VQ-VAE loss, reconstruction MSE, codes [N, g, g]) of images [N, H, W] in [0, 1]."""
        z = self._latents(images)
        codes = self._nearest(z.detach())
        q = self.codebook(codes)
        straight = z + (q - z).detach()  # straight-through: the decoder's gradient reaches the encoder
        recon = self.decoder(straight.permute(0, 3, 1, 2))[:, 0]
        mse = F.mse_loss(recon, images)
        return mse + F.mse_loss(q, z.detach()) + beta * F.mse_loss(z, q.detach()), mse, codes

    # -- files ----------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write image_tokenizer.json and image_tokenizer.safetensors into ``directory``."""
        from safetensors.torch import save_file

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        (out / CONFIG_NAME).write_text(json.dumps(asdict(self.config), indent=2) + "\n")
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, str(out / WEIGHTS_NAME))
        return out


def has_image_tokenizer(directory: str | Path) -> bool:
    """Whether ``directory`` holds an image tokenizer (a multimodal model's does)."""
    return (Path(directory) / CONFIG_NAME).is_file()


def load_image_tokenizer(directory: str | Path) -> VQVAE:
    """The `VQVAE` saved in ``directory``; `ModelLoadError` when there is none or it does not load."""
    from safetensors.torch import load_file

    path = Path(directory)
    if not has_image_tokenizer(path):
        raise ModelLoadError(f"{path} holds no image tokenizer ({CONFIG_NAME}); it is a text-only model")
    try:
        raw = json.loads((path / CONFIG_NAME).read_text())
        known = {f.name for f in fields(ImageTokenizerConfig)}
        model = VQVAE(ImageTokenizerConfig(**{k: v for k, v in raw.items() if k in known}))
        model.load_state_dict(load_file(str(path / WEIGHTS_NAME)))
    except (OSError, ValueError, RuntimeError, TypeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelLoadError(f"{path}: the image tokenizer does not load ({reason})") from None
    return model.eval()


def train_vqvae(images: torch.Tensor, config: ImageTokenizerConfig, *, steps: int = 2000, batch_size: int = 128,
                lr: float = 2e-3, seed: int = 0, progress: bool = True) -> VQVAE:
    """A `VQVAE` trained on images [N, H, W] in [0, 1] (seeded: the same call gives the same model).

    Every 100 steps, codes unused over those steps restart on encoder outputs of the current batch."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = VQVAE(config)
    with torch.no_grad():  # start the codebook on encoder outputs, where the latents are
        z = model._latents(images[rng.permutation(len(images), generator=generator)[:512]]).reshape(-1, config.code_dim)
        model.codebook.weight.copy_(z[rng.integers(len(z), (config.codebook_size,), generator=generator)])
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    used = torch.zeros(config.codebook_size, dtype=torch.bool)
    from tqdm import tqdm

    bar = tqdm(range(steps), desc="image tokenizer (VQ-VAE)", disable=not progress, leave=False)
    for step in bar:
        batch = images[rng.integers(len(images), (batch_size,), generator=generator)]
        loss, mse, codes = model.loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        used[codes.flatten()] = True
        if (step + 1) % 100 == 0 and step + 1 < steps * 0.8:
            _restart_dead_codes(model, batch, ~used, generator)
            used[:] = False
        if step % 50 == 0:
            bar.set_postfix(mse=f"{mse.item():.4f}")
    return model.eval()


@torch.no_grad()
def _restart_dead_codes(model: VQVAE, batch: torch.Tensor, dead: torch.Tensor, generator: torch.Generator) -> None:
    """Move every code in ``dead`` [K] onto a random latent of ``batch``."""
    if not dead.any():
        return
    z = model._latents(batch).reshape(-1, model.config.code_dim)
    picks = torch.randint(len(z), (int(dead.sum()),), generator=generator)
    model.codebook.weight[dead] = z[picks]


def reconstruction_mse(model: VQVAE, images: torch.Tensor) -> float:
    """Mean squared error (pixels in [0, 1]) of images [N, H, W] after encode -> decode."""
    return float(F.mse_loss(model.decode(model.encode(images)), images))
