"""The sampler's forward pass: the logits of the masked candidates only, with classifier-free
guidance and the block-wise KV cache of Fast-dLLM.

`Denoiser` calls the transformers backbone directly (not `DiffusionLM.logits`) because it needs
what that method does not offer: ``past_key_values``, a query window shorter than the keys, and
``logits_to_keep`` so that the vocabulary projection runs on the candidate positions alone.

Cache modes (the query window is what each step recomputes; its keys are written back into the
cache, everything else is read from it):

* ``"none"``: every step runs the whole canvas (the reference behaviour).
* ``"prefix"``: at the first step of a block the whole canvas runs and its keys/values are kept;
  later steps of the block run only [block start, end) against the cached prefix.
* ``"dual"``: as prefix, but later steps run only the block itself; the suffix (later blocks,
  an infilling suffix) is read from the cache too.

Under block-causal attention nothing before a block can see the block, so the cached keys are
exactly what a full forward would compute: both caches are exact. Under bidirectional attention
the cached prefix (and suffix) are stale by the tokens committed since the block began: an
approximation, refreshed at every block.
"""

from __future__ import annotations

import inspect

import torch

from ..attention import block_causal_attention_mask, to_4d
from ..errors import InputError

CACHE_MODES = ("none", "prefix", "dual")


class Denoiser:
    """Aligned logits of the candidate positions of a canvas, step after step.

    Args:
        model: a `DiffusionLM`.
        canvas: LongTensor [B, L], the initial canvas (only its shape and condition tokens are used).
        attention_mask: [B, L] 1 = real token, or None.
        generate_mask: BoolTensor [B, L], the positions being generated.
        attention: None = the model's configured mode; "causal" | "bidirectional" override it;
            "block_causal" needs ``block_ids``.
        block_ids: LongTensor [B, L] from `attention_block_ids`, for "block_causal".
        cfg_scale: classifier-free guidance s: logits = u + (s + 1)(c - u), where u comes from
            the canvas with every condition token (prompt, suffix) masked (LLaDA). 0 = off.
        cache: "none" | "prefix" | "dual".
    """

    def __init__(
        self,
        model,
        canvas: torch.Tensor,
        attention_mask: torch.Tensor | None,
        generate_mask: torch.Tensor,
        *,
        attention: str | None = None,
        block_ids: torch.Tensor | None = None,
        cfg_scale: float = 0.0,
        cache: str = "none",
    ) -> None:
        if cache not in CACHE_MODES:
            raise InputError(f"unknown cache mode {cache!r}; choose one of {', '.join(CACHE_MODES)}")
        self.model = model
        self.backbone = model.model
        self.shift = model.config.shift
        self.cache_mode = cache
        self.cfg_scale = float(cfg_scale)
        eager = self.backbone.config._attn_implementation == "eager"
        if attention == "block_causal":
            if block_ids is None:
                raise InputError("block_causal attention needs the block ids of the canvas")
            mask4d = to_4d(block_causal_attention_mask(block_ids), attention_mask, dtype=torch.float32 if eager else None)
        else:
            mask4d = model.attention_mask_4d(canvas, attention_mask, attention=attention)
        if attention_mask is None:
            positions = torch.arange(canvas.shape[1], device=canvas.device).expand(canvas.shape[0], -1)
        else:
            positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        self.condition = None
        if self.cfg_scale > 0:
            real = attention_mask.bool() if attention_mask is not None else torch.ones_like(generate_mask)
            self.condition = real & ~generate_mask  # masked in the unconditional half
            mask4d, positions = torch.cat([mask4d, mask4d]), torch.cat([positions, positions])
        self.mask4d, self.positions = mask4d, positions
        self.keeps_logits = "logits_to_keep" in inspect.signature(self.backbone.forward).parameters
        self._past = None
        self._window = (0, canvas.shape[1])

    def start_block(self, block: torch.Tensor) -> None:
        """Begin a block (BoolTensor [B, L]): the next call refreshes the cache."""
        columns = block.any(0).nonzero().flatten()
        first, last = int(columns[0]), int(columns[-1])
        start = max(first - 1, 0) if self.shift else first  # with shift, position i - 1 predicts token i
        end = block.shape[1] if self.cache_mode == "prefix" else last + 1
        self._window = (start, end)
        self._past = None

    @torch.inference_mode()
    def __call__(self, canvas: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Aligned logits of the candidates: FloatTensor [N, V], rows in row-major order of
        ``candidates`` (BoolTensor [B, L]), which must lie in the current block."""
        # The backbone's prediction for token i sits at i - 1 under shift.
        keep = torch.cat([candidates[:, 1:], torch.zeros_like(candidates[:, :1])], dim=1) if self.shift else candidates
        if self.condition is not None:
            canvas = torch.cat([canvas, canvas.masked_fill(self.condition, self.model.config.mask_token_id)])
            keep = torch.cat([keep, keep])
        if self.cache_mode == "none":
            logits = self._forward(canvas, self.mask4d, self.positions, keep)
        elif self._past is None:
            logits = self._forward(canvas, self.mask4d, self.positions, keep, refresh=True)
        else:
            start, end = self._window
            logits = self._forward(
                canvas[:, start:end], self._window_mask, self.positions[:, start:end], keep[:, start:end], past=self._past
            )
            self._past.crop(start - end)  # drop the window's keys again; the cache holds the rest
        if self.condition is None:
            return logits
        cond, uncond = logits.chunk(2)
        return uncond + (self.cfg_scale + 1.0) * (cond - uncond)

    def _forward(self, ids, mask4d, positions, keep, *, past=None, refresh: bool = False) -> torch.Tensor:
        use_cache = refresh or past is not None
        kwargs = {"logits_to_keep": keep} if self.keeps_logits else {}
        out = self.backbone(
            input_ids=ids, attention_mask=mask4d, position_ids=positions, past_key_values=past, use_cache=use_cache, **kwargs
        )
        logits = out.logits if self.keeps_logits else out.logits[keep]
        if refresh:
            self._keep_cache(out.past_key_values)
        return logits.reshape(-1, logits.shape[-1]).float()

    def _keep_cache(self, past) -> None:
        """Keep the keys/values outside the window, ordered [before | after] the window; the
        window's own keys are appended by each step and cropped away after it."""
        from transformers import DynamicCache

        start, end = self._window
        length = self.mask4d.shape[-1]
        kept = [
            (torch.cat([layer.keys[..., :start, :], layer.keys[..., end:, :]], dim=-2),
             torch.cat([layer.values[..., :start, :], layer.values[..., end:, :]], dim=-2))
            for layer in past.layers
        ]
        self._past = DynamicCache(kept)
        # Key order during a cached step: [0, start) + [end, L) + the window [start, end).
        order = torch.cat([torch.arange(start), torch.arange(end, length), torch.arange(start, end)]).to(self.mask4d.device)
        self._window_mask = self.mask4d[:, :, start:end][..., order]
