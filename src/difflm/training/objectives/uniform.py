"""``objective: uniform``: a uniform-state diffusion LM (UDLM / Duo's process) on the packed corpus.

No [MASK] token: each token of a row is kept with probability alpha_t and otherwise replaced by a token
drawn uniformly from the vocabulary (`difflm.losses.uniform.draw_uniform_noise`), and the model is trained
on the continuous-time uniform-state ELBO (`difflm.losses.uniform.uniform_diffusion_loss`, Duo's
convention). From scratch (``architecture``, bidirectional from step 0), or adapted from the AR checkpoint
``init`` (attention annealed from causal to bidirectional, shift kept - the DiffuGPT recipe with the
uniform process). With ``diffusion.block_size`` it is a block diffusion model (BD3-LM's recipe with
the uniform process: block-causal attention, one noise level per block, each block denoised seeing the
clean blocks before it through the two-copy forward). The backbone takes no time input, as in DiffuGPT: the model reads the noise level off
x_t (a backbone with a ``timesteps`` input, difflm's DiT, gets sigma_t). The saved model says
``extra.process = "uniform"``, so `difflm eval` scores it with the uniform bound and `difflm generate`
decodes it with the uniform-state samplers.

The step's draws (t per row, which positions are replaced, the replacement tokens) are functions of
(seed, step) alone, drawn on the CPU for the whole global batch: resume is exact and the draws do not
depend on the number of processes. Validation: the bound on fixed draws, in nats per token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ...errors import ConfigError
from ...losses.uniform import draw_uniform_noise, uniform_block_times, uniform_diffusion_loss, uniform_times
from ...noise import sample_t
from ..seeding import NOISE, VALIDATION_SEED, step_generator
from . import Batch
from .pretrain import PretrainObjective

__all__ = ["UniformBatch", "UniformObjective"]


@dataclass
class UniformBatch(Batch):
    """Packed rows and one draw of the uniform forward process. x: LongTensor [B, L]; t: FloatTensor [B]
    ([B, L] per token for a block diffusion model);
    replace: BoolTensor [B, L] (the positions resampled); noise_tokens: LongTensor [B, L] (their draws)."""

    x: torch.Tensor
    t: torch.Tensor
    replace: torch.Tensor
    noise_tokens: torch.Tensor


class UniformObjective(PretrainObjective):
    """Uniform-state diffusion pretraining (module doc); ``init`` (optional) is an AR checkpoint to adapt."""

    name = "uniform"
    from_ar = True  # an ``init`` is an AR checkpoint continued as a uniform-state DLM

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        extra = (cfg.diffusion or {}).get("extra") or {}
        if not isinstance(extra, dict):
            raise ConfigError("diffusion.extra must be a mapping")
        if extra.get("process", "uniform") != "uniform":
            raise ConfigError(f"objective 'uniform' trains extra.process 'uniform', not {extra['process']!r}")
        if cfg.complementary_masks:
            raise ConfigError("complementary_masks pairs masks of masked diffusion; objective 'uniform' has none")
        if cfg.ar_loss_weight:
            raise ConfigError("ar_loss_weight needs a block model with a causal context; objective 'uniform' has none")

    @classmethod
    def trains_masked_diffusion(cls, cfg: Any) -> bool:
        return False

    @classmethod
    def diffusion_defaults(cls, cfg: Any) -> dict[str, Any]:
        extra = {**((cfg.diffusion or {}).get("extra") or {}), "process": "uniform"}
        if (cfg.diffusion or {}).get("block_size") is not None:
            return {"attention": "block_causal", "extra": extra}
        return {"attention": "annealed" if cfg.init else "bidirectional", "extra": extra}

    def build_model(self, tokenizer: Any) -> torch.nn.Module:
        model = super().build_model(tokenizer)
        extra = {**(model.config.extra or {}), "process": "uniform"}  # whatever cfg.diffusion.extra said
        model.config = model.config.replace(extra=extra)
        return model

    # -- draws ------------------------------------------------------------------------------------------
    def _draw(self, x: torch.Tensor, generator: torch.Generator, antithetic: bool) -> UniformBatch:
        eps = self.model.config.eps
        if self.model.config.block_size is not None:  # one level per block (BD3-LM), given per token [B, L]
            t = uniform_block_times(self.model, x, antithetic=antithetic, eps=eps, generator=generator)
        else:
            t = sample_t(x.shape[0], antithetic=antithetic, eps=eps, generator=generator, device="cpu")
        replace, tokens = draw_uniform_noise(x.shape, uniform_times(t, eps=eps).replace_prob, int(self.model.vocab_size),
                                             generator=generator)
        return UniformBatch(x, t, replace, tokens)

    def global_batch(self, step: int) -> UniformBatch:
        return self._draw(self.train_batches.global_batch(step), step_generator(self.cfg.seed, step, NOISE),
                          self.cfg.antithetic)

    def validation_batch(self, index: int) -> UniformBatch:
        return self._draw(self.val_batches.global_batch(index), step_generator(VALIDATION_SEED, index, NOISE), True)

    # -- loss -------------------------------------------------------------------------------------------
    def batch_loss(self, forward: torch.nn.Module, batch: UniformBatch, *, step: int | None = None,
                   generator: torch.Generator | None = None, normalization: str | None = None) -> torch.Tensor:
        """The uniform-state bound per scored token of ``batch`` through ``forward`` (with shift, a row's
        first token has no prediction: it stays clean and unscored)."""
        device = self.accelerator.device
        x = batch.x.to(device)
        unscored = ~self.model.predictable_mask(x)
        out = uniform_diffusion_loss(self.model, x, t=batch.t, replace=batch.replace, noise_tokens=batch.noise_tokens,
                                     src_mask=unscored, eps=self.model.config.eps, forward=forward, step=step,
                                     anneal_generator=generator)
        return out.loss
