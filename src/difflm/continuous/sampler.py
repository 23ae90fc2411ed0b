"""Sampling from a continuous DLM: DDPM / DDIM on a grid of ``steps`` times, Diffusion-LM's clamping,
classifier-free guidance, and infilling by clamping the known tokens' embeddings.

One step from t to s < t (Song et al., DDIM, with x0 predicted by the denoiser):

    x0_hat = softmax(logits) @ e                 (clamp: snapped to the nearest embedding, Diffusion-LM)
    eps_hat = (z_t - alpha_t x0_hat) / sigma_t
    z_s = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps_hat + c eps,   c = eta sigma_s / sigma_t sqrt(1 - abar_t / abar_s)

eta = 1 is DDPM's ancestral sampler, eta = 0 the deterministic DDIM (the seed then only sets z_1).
Known positions (the prompt, infilling's prefix and suffix, BOS) are given clean at every step and
come back unchanged; the tokens of the others are the argmax of the last step's logits.
Classifier-free guidance: logits = u + (s + 1)(c - u), where the unconditional pass treats the known
positions (BOS excepted) as noise like the rest (the model is trained on such rows), as
`difflm.sampling` does for masked DLMs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import InputError
from .schedule import standard_normal

StepCallback = Callable[[int, torch.Tensor], None]  # (steps done, current argmax tokens [B, L])


@dataclass(frozen=True)
class ContinuousSamplerOptions:
    """steps: denoiser calls (twice that with guidance). eta: 0 = DDIM, 1 = DDPM. clamp: snap x0_hat to
    the nearest embedding at every step (Diffusion-LM's clamping trick). cfg_scale: guidance s >= 0
    (0 = off). self_condition: feed each step's x0_hat to the next (if the model was trained with it)."""

    steps: int = 64
    eta: float = 0.0
    clamp: bool = False
    cfg_scale: float = 0.0
    self_condition: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise InputError(f"steps must be an integer >= 1, got {self.steps!r}")
        if not 0.0 <= float(self.eta) <= 1.0:
            raise InputError(f"eta must be in [0, 1] (0 = DDIM, 1 = DDPM), got {self.eta!r}")
        if not 0.0 <= float(self.cfg_scale) < float("inf"):
            raise InputError(f"cfg_scale must be a number >= 0, got {self.cfg_scale!r}")


def nearest_embedding(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Each vector of ``x`` [..., d] replaced by its nearest row of ``table`` [V, d] (L2): clamping."""
    # ||x - e||^2 = ||x||^2 - 2 <x, e> + ||e||^2, and every row of the normalised table has the same norm
    scores = x @ table.T - 0.5 * (table**2).sum(-1)
    return table[scores.argmax(-1)]


@torch.no_grad()
def sample(model, ids: torch.Tensor, known: torch.Tensor, *, options: ContinuousSamplerOptions | None = None,
           generator: torch.Generator | None = None, attention_mask: torch.Tensor | None = None,
           callback: StepCallback | None = None) -> torch.Tensor:
    """Fill the unknown positions of ``ids`` [B, L] (LongTensor; values there are ignored) given the
    ``known`` [B, L] (bool) ones. Returns LongTensor [B, L]: known tokens as given, the others sampled.

    ``generator``: a CPU generator (`difflm.rng`): the same seed gives the same tokens on every device."""
    options = options or ContinuousSamplerOptions()
    if ids.shape != known.shape or ids.dim() != 2:
        raise InputError(f"ids and known must both be [batch, length], got {tuple(ids.shape)} and {tuple(known.shape)}")
    schedule, device = model.schedule, model.device
    ids, known = ids.to(device), known.to(device).bool()
    b, length = ids.shape
    table = model.embedding_table()
    z = standard_normal((b, length, model.config.embed_dim), generator=generator).to(device)
    guided = options.cfg_scale > 0
    # the unconditional pass keeps padding and the first real token (BOS: every training row has it)
    real = torch.ones_like(known) if attention_mask is None else attention_mask.to(device).bool()
    uncond_known = known & (~real | (real.long().cumsum(-1) == 1))
    sc = sc_u = None
    use_sc = options.self_condition and model.config.self_condition
    logits = None
    for k in range(options.steps, 0, -1):
        t, s = torch.full((b,), k / options.steps), torch.full((b,), (k - 1) / options.steps)
        logits = model.denoise(z, t.to(device), known, ids, sc, attention_mask).float()
        if guided:
            uncond = model.denoise(z, t.to(device), uncond_known, ids, sc_u, attention_mask).float()
            x0_u = model.x0_estimate(uncond)
            sc_u = x0_u if use_sc else None
            logits = uncond + (options.cfg_scale + 1.0) * (logits - uncond)
        x0_hat = model.x0_estimate(logits)
        sc = x0_hat if use_sc else None
        if options.clamp:
            x0_hat = nearest_embedding(x0_hat, table)
        if guided:  # positions known to the conditional pass evolve with the unconditional estimate
            x0_hat = torch.where(known[..., None] & ~uncond_known[..., None], x0_u, x0_hat)
        z = _ddim_step(schedule, z, x0_hat, t, s, options.eta, generator)
        if callback is not None:
            callback(options.steps - k + 1, torch.where(known, ids, logits.argmax(-1)))
    return torch.where(known, ids, logits.argmax(-1))


def _ddim_step(schedule, z: torch.Tensor, x0_hat: torch.Tensor, t: torch.Tensor, s: torch.Tensor, eta: float,
               generator: torch.Generator | None) -> torch.Tensor:
    """z_s from z_t [B, L, d] and the x0 estimate (see the module doc)."""
    device = z.device
    abar_t, abar_s = schedule.alpha_bar(t).to(device), schedule.alpha_bar(s).to(device)
    a_t, sig_t = abar_t.sqrt()[:, None, None], (1 - abar_t).clamp_min(1e-12).sqrt()[:, None, None]
    a_s, sig_s = abar_s.sqrt()[:, None, None], (1 - abar_s).clamp_min(0).sqrt()[:, None, None]
    eps_hat = (z - a_t * x0_hat) / sig_t
    ratio = (abar_t / abar_s.clamp_min(1e-12)).clamp(max=1.0)[:, None, None]
    c = eta * sig_s / sig_t * (1 - ratio).sqrt()
    out = a_s * x0_hat + (sig_s**2 - c**2).clamp_min(0).sqrt() * eps_hat
    if eta > 0:
        out = out + c * standard_normal(z.shape, generator=generator).to(device)
    return out


UNKNOWN = -1  # the id of a position to generate in a template


def fill_templates(model, templates: list[list[int]], **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample the `UNKNOWN` positions of each template (token ids, several gaps allowed), rows left-padded
    to the widest one (padding hidden from attention). Returns (LongTensor [B, W], BoolTensor [B, W]: the
    generated positions). ``kwargs``: those of `sample`."""
    if not templates or not all(templates):
        raise InputError("every template needs at least one token")
    width = max(len(t) for t in templates)
    ids = torch.zeros(len(templates), width, dtype=torch.long)
    real = torch.zeros(len(templates), width, dtype=torch.long)
    for b, row in enumerate(templates):
        ids[b, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        real[b, width - len(row) :] = 1
    generated = ids == UNKNOWN
    if not bool(generated.any(-1).all()):
        raise InputError("every template needs at least one position to generate")
    out = sample(model, ids.clamp_min(0), ~generated, attention_mask=None if bool(real.all()) else real, **kwargs)
    return out.cpu(), generated


def generate(model, prompts: list[list[int]], length: int, **kwargs) -> torch.Tensor:
    """Continue each prompt (ids, BOS included if wanted) by ``length`` tokens: LongTensor [B, P + length],
    left-padded to the longest prompt. ``kwargs``: those of `sample`."""
    return infill(model, prompts, [[] for _ in prompts], length, **kwargs)


def infill(model, prefixes: list[list[int]], suffixes: list[list[int]], length: int, **kwargs) -> torch.Tensor:
    """``length`` tokens between each prefix and suffix: LongTensor [B, W] rows [pad | prefix | middle | suffix],
    left-padded to the widest row."""
    if length < 1:
        raise InputError(f"length must be >= 1, got {length}")
    templates = [list(p) + [UNKNOWN] * length + list(s) for p, s in zip(prefixes, suffixes)]
    return fill_templates(model, templates, **kwargs)[0]
