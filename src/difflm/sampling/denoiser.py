"""The sampler's forward pass: the logits of the masked candidates only, with classifier-free
guidance and the block-wise KV cache of Fast-dLLM.

`Denoiser` runs the model through `DiffusionLM.logits_at`, the cache-aware entry point that owns
the conventions (shift, position ids, the form of the attention mask): it needs what
`DiffusionLM.logits` does not offer, ``past_key_values`` and a query window shorter than the keys,
and projects onto the vocabulary only the candidates' prediction sources.

Cache modes (the *window* is what each step recomputes; its keys are written back into the cache
for the step, everything else is read from it):

* ``"none"``: every step runs the whole canvas (the reference behaviour).
* ``"prefix"``: at the first step of a block the whole canvas runs and its keys/values are kept;
  later steps of the block run everything from the block's window on against the cached prefix.
* ``"dual"``: as prefix, but later steps run only the window; what follows it (later blocks) is
  read from the cache too.
* ``"block"``: the AR-style cache of a block diffusion model (block-causal or causal attention
  only). Finished blocks are cached once and for all; a block's first step runs just the previous
  window (its tokens now final) and the new one, later steps the window alone, and nothing after
  the window is ever computed. The whole generation costs about one pass over the canvas plus the
  steps' windows, instead of a full pass per block.

The window of a block is its decoding group - the block's positions and the committed text up to
the next block (an infilling suffix, the text between two gaps) - plus the positions that predict
the block's tokens (one to the left with shift). When is a cache exact?

* Under ``attention="block_causal"`` both caches are **exact**: a position outside the window
  either sits in an earlier group, which cannot see the block, or in a later one, which the
  block cannot see; everything the window attends to is therefore what a full forward computes.
* Under bidirectional (or annealed) attention they are **approximations**: the cached keys of the
  prefix and of later text were computed at the block's first step and miss the tokens committed
  since (measured on the bundled adapted DLM: 99.6% argmax agreement with no cache, total
  variation 0.01; bench/RESULTS.md).
"""

from __future__ import annotations

import torch

from ..errors import InputError
from ..registry import CACHE_MODES
INCREMENTAL_ATTENTION = ("block_causal", "causal")  # where nothing before a block ever sees it


class Denoiser:
    """Aligned logits of the candidate positions of a canvas, step after step.

    Args:
        model: a `DiffusionLM`.
        canvas: LongTensor [B, L], the initial canvas (only its shape and condition tokens are used).
        attention_mask: [B, L] 1 = real token, or None.
        generate_mask: BoolTensor [B, L], the positions being generated.
        groups: LongTensor [B, L], the decoding group of every position (`decoding_groups`):
            they define the cache windows and, for "block_causal", the attention blocks.
        attention: None = the model's configured mode; "causal" | "bidirectional" |
            "block_causal" override it.
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
        groups: torch.Tensor,
        attention: str | None = None,
        cfg_scale: float = 0.0,
        cache: str = "none",
    ) -> None:
        if cache not in CACHE_MODES:
            raise InputError(f"unknown cache mode {cache!r}; choose one of {', '.join(CACHE_MODES)}")
        if cache == "block" and (attention or model.config.attention) not in INCREMENTAL_ATTENTION:
            raise InputError("cache 'block' keeps finished blocks for good, which is exact only under block-causal "
                             "attention: use a block diffusion model or attention='block_causal' (or cache 'dual')")
        self.model = model
        self.groups = groups
        self.cache_mode = cache
        self.cfg_scale = float(cfg_scale)
        # NBDiff's context-causal attention changes with the block being denoised: the mask is
        # rebuilt at every block (`start_block`); any other mask is fixed for the whole run
        mode = attention or model.config.attention
        self._per_block = mode == "block_causal" and model.config.block_context == "causal"
        self._mask_inputs = (canvas, attention_mask, attention)
        positions = model.position_ids(attention_mask, canvas)
        self.condition = None
        if self.cfg_scale > 0:
            real = attention_mask.bool() if attention_mask is not None else torch.ones_like(generate_mask)
            self.condition = real & ~generate_mask  # masked in the unconditional half
            positions = torch.cat([positions, positions])
        self.positions = positions
        self.mask4d = self._mask(None)
        self._past = None
        self._window = (0, canvas.shape[1])
        self._cached = 0  # "block": positions [0, _cached) are in the cache for good
        self._refresh = False
        self._step = self._window  # "block": what later steps recompute (a sub-block, or the window)
        self._sub = None  # "block" with sub-blocks: the cache of the rest of the block

    def _mask(self, active: torch.Tensor | None) -> torch.Tensor:
        """The 4-D mask of the canvas (doubled for CFG), with the block ``active`` ([B]) being denoised."""
        canvas, attention_mask, attention = self._mask_inputs
        mask4d = self.model.attention_mask_4d(canvas, attention_mask, attention=attention, groups=self.groups, active=active)
        return mask4d if self.condition is None else torch.cat([mask4d, mask4d])

    def start_block(self, block: torch.Tensor, within: torch.Tensor | None = None) -> None:
        """Begin a block (BoolTensor [B, L]): the next call refreshes the cache. ``within``: the
        block it is a sub-block of (Fast-dLLM v2's sub-blocks), whose group defines the window."""
        parent = block if within is None else within
        # each row's group of this block (rows of a block model may sit at different grid offsets);
        # the window holds every position that sees the block: its group by token and by attention
        # id (with shift the position before a group's first token predicts it and sees the group)
        group = torch.where(parent, self.groups, -1).amax(-1, keepdim=True)
        if self._per_block:  # the blocks before this one are finished: read causally from now on
            self.mask4d = self._mask(group.squeeze(-1))
        ids = self.model.block_attention_ids(self.groups)
        in_group = ((self.groups == group) | (ids == group)) & parent.any(-1, keepdim=True)
        window = parent | self.model.prediction_sources(parent) | in_group
        columns = window.any(0).nonzero().flatten()
        start = int(columns[0])
        end = block.shape[1] if self.cache_mode == "prefix" else int(columns[-1]) + 1
        self._window = self._step = (start, end)
        if within is not None and self.cache_mode == "block":
            sub = (block | self.model.prediction_sources(block)).any(0).nonzero().flatten()
            self._step = (int(sub[0]), int(sub[-1]) + 1)
        if self.cache_mode == "block":
            self._refresh = True  # the previous window's final keys join the cache at the next call
        else:
            self._past = None

    @torch.inference_mode()
    def __call__(self, canvas: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Aligned logits of the candidates: FloatTensor [N, V], rows in row-major order of
        ``candidates`` (BoolTensor [B, L]), which must lie in the current block."""
        if self.condition is not None:
            canvas = torch.cat([canvas, canvas.masked_fill(self.condition, self.model.mask_token_id)])
            candidates = torch.cat([candidates, candidates])
        if self.cache_mode == "none":
            logits, _ = self.model.logits_at(canvas, candidates, attention_mask_4d=self.mask4d, position_ids=self.positions)
        elif self.cache_mode == "block":
            logits = self._incremental(canvas, candidates)
        elif self._past is None:
            logits, past = self.model.logits_at(
                canvas, candidates, attention_mask_4d=self.mask4d, position_ids=self.positions, use_cache=True
            )
            self._keep_cache(past)
        else:
            start, end = self._window
            logits, _ = self.model.logits_at(
                canvas[:, start:end], candidates[:, start:end], attention_mask_4d=self._window_mask,
                position_ids=self.positions[:, start:end], past_key_values=self._past, use_cache=True,
            )
            self._past.crop(start - end)  # drop the window's keys again; the cache holds the rest
        if self.condition is None:
            return logits
        cond, uncond = logits.chunk(2)
        return uncond + (self.cfg_scale + 1.0) * (cond - uncond)

    def _incremental(self, canvas: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """The "block" cache. A refresh runs [first uncached position, window end) against the
        exact prefix cache and keeps everything before the window for good (under block-causal
        attention nothing before a block sees it). Later steps run the window - or, for a
        sub-block, only the sub-block against the rest of its block as computed at the refresh
        (Fast-dLLM v2's sub-block cache: an approximation inside the block, exact across blocks)."""
        start, end = self._window
        step_start, step_end = self._step
        if self._refresh:
            first = self._cached
            logits, past = self.model.logits_at(
                canvas[:, first:end], candidates[:, first:end], attention_mask_4d=self.mask4d[:, :, first:end, :end],
                position_ids=self.positions[:, first:end], past_key_values=self._past, use_cache=True,
            )
            self._sub = None
            if (step_start, step_end) != (start, end):  # a sub-block: cache [0, start) + [end of it, window end)
                from transformers import DynamicCache

                self._sub = DynamicCache([
                    (torch.cat([layer.keys[..., :step_start, :], layer.keys[..., step_end:end, :]], dim=-2),
                     torch.cat([layer.values[..., :step_start, :], layer.values[..., step_end:end, :]], dim=-2))
                    for layer in past.layers
                ])
                order = torch.cat([torch.arange(step_start), torch.arange(step_end, end),
                                   torch.arange(step_start, step_end)]).to(self.mask4d.device)
                self._sub_mask = self.mask4d[:, :, step_start:step_end, :end][..., order]
            past.crop(start - end)  # the cache held [0, end): keep [0, start), exact
            self._past, self._cached, self._refresh = past, start, False
            return logits
        if self._sub is not None:
            logits, _ = self.model.logits_at(
                canvas[:, step_start:step_end], candidates[:, step_start:step_end], attention_mask_4d=self._sub_mask,
                position_ids=self.positions[:, step_start:step_end], past_key_values=self._sub, use_cache=True,
            )
            self._sub.crop(step_start - step_end)
            return logits
        logits, _ = self.model.logits_at(
            canvas[:, start:end], candidates[:, start:end], attention_mask_4d=self.mask4d[:, :, start:end, :end],
            position_ids=self.positions[:, start:end], past_key_values=self._past, use_cache=True,
        )
        self._past.crop(start - end)
        return logits

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
