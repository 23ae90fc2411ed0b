"""`DiffusionLM`: a masked diffusion LM on top of any transformers causal-LM backbone.

The wrapper owns the two conventions that differ between DLM families, so nothing downstream has
to think about them:

* attention: the backbone always gets an explicit 4-D mask (causal, bidirectional, or DiffuLLaMA's
  annealed pattern), because stock transformers attention silently turns causal without one;
* shift: `logits()` returns *aligned* logits, ``logits[:, i]`` predicts token ``i``, whether the
  backbone predicts token i at position i-1 (shift, AR-style) or at i (no shift, LLaDA-style).
"""

from __future__ import annotations

import inspect
import os
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn
from transformers import AutoModelForCausalLM, PreTrainedModel

from .atomic import atomic_directory
from .attention import anneal_ratio, attention_pattern, block_causal_attention_mask, context_causal_attention_mask, to_4d
from .config import DiffusionConfig
from .errors import ConfigError, InputError, ModelLoadError
from .formats import GenerationDefaults, load_checkpoint, load_tokenizer, require_model_dir, write_generation_defaults
from .formats.mask_token import resolve_mask_token, special_ids
from .registry import DECODING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

_MASKABLE_IMPLEMENTATIONS = ("sdpa", "eager")


class DiffusionLM(nn.Module):
    """A diffusion LM = a causal-LM backbone + a `DiffusionConfig` (+ an optional tokenizer)."""

    def __init__(
        self,
        model: PreTrainedModel,
        config: DiffusionConfig,
        tokenizer: "PreTrainedTokenizerBase | None" = None,
        generation_defaults: GenerationDefaults | None = None,
    ) -> None:
        super().__init__()
        impl = getattr(model.config, "_attn_implementation", None) or "eager"
        if impl not in _MASKABLE_IMPLEMENTATIONS:
            raise ConfigError(f"attention implementation {impl!r} cannot take a custom attention mask; "
                              "load the backbone with attn_implementation='sdpa' or 'eager'")
        self.model = model
        self.config = config
        self.tokenizer = tokenizer
        # how the model decodes unless told otherwise (generation_config.json's "difflm" section): the
        # defaults of `generate` / `infill`, the CLI, evaluation and the server; None: the sampler's own
        self.generation_defaults = generation_defaults
        config.validate(vocab_size=self.vocab_size)

    # -- properties ----------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Number of rows of the output head (the ids the model can predict)."""
        head = self.model.get_output_embeddings()
        if head is not None:
            return int(head.weight.shape[0])
        return int(self.model.get_input_embeddings().weight.shape[0])

    @property
    def max_length(self) -> int | None:
        """Longest sequence the backbone's position encoding supports (None if unbounded)."""
        cfg = self.model.config
        for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            value = getattr(cfg, name, None)
            if isinstance(value, int):
                return value
        return None

    @property
    def _no_split_modules(self) -> list[str] | None:
        """The backbone's layer classes that must stay whole (its decoder layers): what FSDP wraps
        one by one and what device maps keep on one device (transformers' convention)."""
        return getattr(self.model, "_no_split_modules", None)

    @property
    def mask_token_id(self) -> int:
        return self.config.mask_token_id

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # -- the conventions -----------------------------------------------------------------------
    # Everything that differs between DLM families (shift, where predictions start, the mask form
    # the backbone's attention takes, position ids under padding) is answered here and nowhere else.

    def position_ids(self, attention_mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        """Position ids [B, L] for ``like`` (LongTensor [B, L]): real tokens count from 0 (left
        padding shifts nothing), padded positions get 0."""
        if attention_mask is None:
            return torch.arange(like.shape[1], device=like.device).expand(like.shape[0], -1)
        return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)

    def predictable_mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """BoolTensor [B, L]: positions that have a prediction of their own, i.e. real tokens,
        and with shift not the first real token of a row (position 0, or the first token after
        left padding: nothing before it can predict it; it acts as BOS)."""
        real = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        if not self.config.shift:
            return real
        return real & (real.long().cumsum(-1) > 1)

    @property
    def first_predictable_position(self) -> int:
        """Index of the first position of an unpadded sequence with a prediction: 1 with shift, else 0."""
        return 1 if self.config.shift else 0

    def prediction_sources(self, targets: torch.Tensor) -> torch.Tensor:
        """BoolTensor [B, L]: the backbone positions whose outputs predict the ``targets``
        (BoolTensor [B, L], aligned positions), in the same row-major order. With shift the
        prediction for token i is made at i - 1; ``targets`` must then exclude column 0."""
        if not self.config.shift:
            return targets
        if bool(targets[:, 0].any()):
            raise InputError("a shifted model has no prediction for position 0")
        return torch.cat([targets[:, 1:], torch.zeros_like(targets[:, :1])], dim=1)

    def block_attention_ids(self, groups: torch.Tensor) -> torch.Tensor:
        """Block ids of the queries and keys for block-causal attention, from the decoding group
        of every token (LongTensor [B, L], non-decreasing). With shift the ids move one position
        left: position i - 1 predicts token i, so it must see the block that token belongs to;
        the last token of a block is then seen by the next block only (never as a [MASK] by its
        own block's queries)."""
        if not self.config.shift:
            return groups
        # The last position predicts nothing inside the sequence: it gets a group of its own after
        # the last one, as the last token of every other block does (then block size 1 is AR).
        return torch.cat([groups[:, 1:], groups[:, -1:] + 1], dim=1)

    def block_groups(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The block of every position of a block diffusion model (``config.block_size``): blocks
        tile each row from its first real token, so the grid is the one training used whatever the
        left padding. LongTensor [B, L]."""
        if self.config.block_size is None:
            raise InputError("this model has no block_size: it is not a block diffusion model")
        groups = self.position_ids(attention_mask, input_ids) // self.config.block_size
        if attention_mask is None:
            return groups
        # right padding forms a block after the last real one, so that the last real token ends its
        # block exactly as at the end of an unpadded row (`block_attention_ids`)
        real = attention_mask.bool()
        after = real.flip(-1).long().cumsum(-1).flip(-1) == 0
        return torch.where(after, (groups * real).amax(-1, keepdim=True) + 1, groups)

    def first_masked_group(self, input_ids: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        """LongTensor [B]: the decoding group of each row's first [MASK], i.e. the block a block-by-block
        decoder is working on; in a row without one, a group after every attention id (all finished)."""
        masked = input_ids == self.mask_token_id
        beyond = groups.amax(-1) + 2  # attention ids reach max(groups) + 1 (`block_attention_ids`)
        return torch.where(masked, groups, beyond[:, None]).amin(-1)

    def attention_mask_4d(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        attention: str | None = None,
        step: int | None = None,
        generator: torch.Generator | None = None,
        groups: torch.Tensor | None = None,
        active: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The 4-D mask [B, 1, L, L] the backbone gets for these inputs: boolean for sdpa,
        additive float for eager attention (see `logits`). ``attention="block_causal"`` needs the
        decoding ``groups`` [B, L] of the tokens (see `block_attention_ids`). A model with
        ``block_context="causal"`` reads the blocks before the ``active`` one (LongTensor [B], a
        group per row; default: the group of each row's first [MASK], none in a row without one)
        causally."""
        mode = attention or self.config.attention
        if mode == "block_causal":
            if groups is None and self.config.block_size is None:
                raise InputError("block_causal attention needs the decoding groups of the tokens")
            if groups is None:
                groups = self.block_groups(input_ids, attention_mask)
            ids = self.block_attention_ids(groups)
            if self.config.block_context == "causal":
                if active is None:
                    active = self.first_masked_group(input_ids, groups)
                pattern = context_causal_attention_mask(ids, active.to(ids.device))
            else:
                pattern = block_causal_attention_mask(ids)
        else:
            ratio = anneal_ratio(step, self.config.anneal_steps) if mode == "annealed" else 1.0
            pattern = attention_pattern(mode, input_ids.shape[1], ratio=ratio, generator=generator, device=input_ids.device)
        eager = self.model.config._attn_implementation == "eager"
        return to_4d(pattern, attention_mask, batch_size=input_ids.shape[0], dtype=torch.float32 if eager else None)

    def _check_length(self, length: int) -> None:
        if self.max_length is not None and length > self.max_length:
            raise InputError(f"sequence of {length} tokens is longer than the model's context of {self.max_length}; "
                             "shorten the prompt or ask for fewer new tokens")

    # -- the forward pass ----------------------------------------------------------------------
    def logits(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        attention: str | None = None,
        step: int | None = None,
        generator: torch.Generator | None = None,
        groups: torch.Tensor | None = None,
        timesteps: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Aligned logits: ``logits[:, i]`` is the prediction for token ``i``.

        (Block diffusion *training* runs a two-copy forward over [x_t | x_0] instead:
        `difflm.losses.block.two_copy_logits`.)

        Args:
            input_ids: LongTensor [B, L].
            attention_mask: [B, L], 1 for real tokens, 0 for padding (left or right). Padded keys
                are hidden; position ids count real tokens only.
            attention: override the configured mode ("causal" | "bidirectional" | "annealed" |
                "block_causal" with ``groups``).
            step: training step, for "annealed": ratio = min(1, (step + 1) / anneal_steps); each
                future entry is opened with that probability, one draw per call shared by batch,
                heads and layers. Without a step, "annealed" means annealing is over (bidirectional).
            generator: RNG for the annealing draw (any device: see `difflm.rng`).
            groups: LongTensor [B, L], decoding groups for "block_causal" (default for a block
                diffusion model: its block grid, `block_groups`).
            timesteps: FloatTensor [B], noise levels for a time-conditioned backbone (UDLM, Duo), if given;
                a backbone without a time input (`takes_time` False: a time-free uniform-state DLM, which
                reads the noise level off x_t like DiffuGPT) ignores them.
        Returns:
            FloatTensor [B, L, V]. With ``shift`` the backbone's prediction made at i-1 is moved to
            i; position 0 has no prediction of its own and holds a copy of position 1's (Dream's
            convention) - never score or sample a position outside `predictable_mask`.
        """
        if input_ids.dim() != 2:
            raise InputError(f"input_ids must be [batch, length], got shape {tuple(input_ids.shape)}")
        if (self.config.extra or {}).get("denoiser") == "encoder-decoder":  # an encoder cache + a canvas decoder
            raise InputError("DiffusionGemma has no forward over one sequence (so no ELBO); decode it with generate()")
        self._check_length(input_ids.shape[1])
        mask4d = self.attention_mask_4d(input_ids, attention_mask, attention=attention, step=step,
                                        generator=generator, groups=groups)
        position_ids = None if attention_mask is None else self.position_ids(attention_mask, input_ids)
        time = {} if timesteps is None or not self.takes_time else {"timesteps": timesteps}
        raw = self.model(input_ids=input_ids, attention_mask=mask4d, position_ids=position_ids, use_cache=False,
                         **time).logits
        return self.aligned(raw)

    def aligned(self, raw: torch.Tensor) -> torch.Tensor:
        """The backbone's logits [B, L, V] as aligned logits: with shift, the prediction made at i - 1
        moves to i, and position 0 keeps a copy of position 1's (it has none of its own)."""
        if self.config.shift:
            return torch.cat([raw[:, :1], raw[:, :-1]], dim=1)
        return raw

    def logits_at(
        self,
        input_ids: torch.Tensor,
        targets: torch.Tensor,
        *,
        attention_mask_4d: torch.Tensor,
        position_ids: torch.Tensor,
        past_key_values: Any = None,
        use_cache: bool = False,
    ) -> tuple[torch.Tensor, Any]:
        """The cache-aware forward of samplers: aligned logits of the ``targets`` only.

        ``input_ids`` [B, W] may be a window of a longer sequence whose other keys/values are in
        ``past_key_values`` (a transformers cache); ``attention_mask_4d`` [B, 1, W, K] and
        ``position_ids`` [B, W] are then the window's rows of the full ones (keys in the cache's
        order). The vocabulary projection runs on the targets' prediction sources alone.

        Args:
            targets: BoolTensor [B, W], aligned positions of the window to predict; with shift the
                source of a target (one position left) must lie in the window too.
        Returns:
            (FloatTensor [N, V] in row-major order of ``targets``, the backbone's cache or None).
        """
        keep = self.prediction_sources(targets)
        kwargs = {"logits_to_keep": keep} if self.keeps_logits else {}
        out = self.model(input_ids=input_ids, attention_mask=attention_mask_4d, position_ids=position_ids,
                         past_key_values=past_key_values, use_cache=use_cache, **kwargs)
        logits = out.logits if self.keeps_logits else out.logits[keep]
        return logits.reshape(-1, logits.shape[-1]).float(), (out.past_key_values if use_cache else None)

    @cached_property
    def takes_time(self) -> bool:
        """Whether the backbone's forward takes a noise-level input ``timesteps`` (difflm's DiT does)."""
        return "timesteps" in inspect.signature(self.model.forward).parameters

    @cached_property
    def keeps_logits(self) -> bool:
        """Whether the backbone's forward takes ``logits_to_keep`` (project only some positions)."""
        return "logits_to_keep" in inspect.signature(self.model.forward).parameters

    def forward(self, input_ids: torch.Tensor, *args: Any, run: Callable[..., Any] | None = None, **kwargs: Any) -> Any:
        """Same as `logits` (so accelerate/DDP/FSDP can wrap the module). ``run``: another forward of this
        model, called as ``run(self, input_ids, *args, **kwargs)`` inside the module's call, so that a
        DDP/FSDP wrapper's hooks run around it as around `logits` (the two-copy forward of block
        diffusion training, `difflm.losses.block.two_copy_logits`, goes this way)."""
        if run is not None:
            return run(self, input_ids, *args, **kwargs)
        return self.logits(input_ids, *args, **kwargs)

    # -- sampling: the sampler sits above the model, which reaches it through `registry.DECODING` ------
    def generate(self, prompt_ids: Any, **kwargs: Any) -> torch.Tensor:
        """See `difflm.sampling.generate`."""
        return DECODING.get("generate")(self, prompt_ids, **kwargs)

    def infill(self, prefix_ids: Any, suffix_ids: Any, **kwargs: Any) -> torch.Tensor:
        """See `difflm.sampling.infill`."""
        return DECODING.get("infill")(self, prefix_ids, suffix_ids, **kwargs)

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_causal_lm(
        cls,
        model_or_path: PreTrainedModel | str | os.PathLike,
        *,
        mask_token: int | str | None = None,
        shift: bool = True,
        tokenizer: "PreTrainedTokenizerBase | None" = None,
        dtype: torch.dtype | str | None = None,
        attn_implementation: str = "sdpa",
        **config: Any,
    ) -> "DiffusionLM":
        """Wrap an autoregressive checkpoint for adaptation into a DLM (DiffuGPT / DiffuLLaMA).

        Args:
            model_or_path: a transformers causal LM, or a directory holding one (its tokenizer,
                if present, is loaded too).
            mask_token: an existing token id or token string to reuse as [MASK] (DiffuGPT-S
                reuses a rare token); a string not in the vocabulary, or None when the tokenizer
                has no mask token, adds a new token (DiffuGPT-M): the embedding matrix grows by a
                row initialised to the mean of the existing rows.
            shift: keep the AR convention (hidden state i-1 predicts token i). The paper's recipe.
            config: other `DiffusionConfig` fields; ``attention`` defaults to "annealed".
        """
        if isinstance(model_or_path, (str, os.PathLike)):
            path = require_model_dir(model_or_path)
            try:
                model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or "auto",
                                                             attn_implementation=attn_implementation)
            except (OSError, ValueError, KeyError) as exc:
                raise ModelLoadError(f"could not load a causal LM from {path}: {exc}") from None
            tokenizer = tokenizer or load_tokenizer(path)
        else:
            model = model_or_path
        mask_id = resolve_mask_token(model, tokenizer, mask_token)
        config.setdefault("attention", "annealed")
        for name, value in special_ids(model, tokenizer).items():
            config.setdefault(name, value)
        return cls(model, DiffusionConfig(mask_token_id=mask_id, shift=shift, **config), tokenizer)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        *,
        format: str | None = None,
        dtype: torch.dtype | str | None = None,
        attn_implementation: str = "sdpa",
        **overrides: Any,
    ) -> "DiffusionLM":
        """Load a DLM from a local directory; the layout is detected from config.json and the
        weight names (never from the directory name). See docs/formats.md.

        Supported: difflm's own layout; DiffuGPT-S/M (gpt2 config + wrapper keys); LLaDA
        (keys renamed onto LlamaForCausalLM, no shift); Dream (Qwen2ForCausalLM, shift); DiffuLLaMA
        (a plain LLaMA: only with ``format="diffullama"``); a plain transformers causal LM when
        ``mask_token_id`` is given in ``overrides``. ``format`` skips detection. ``overrides`` are
        `DiffusionConfig` fields that replace the detected ones. Weights are loaded shard by shard
        onto a model built on the meta device. (`difflm.formats.load` loads any model directory - an AR
        model, a family's model - and says what it found.)
        """
        return load_checkpoint(cls, path, format=format, dtype=dtype, attn_implementation=attn_implementation, **overrides)

    def save_pretrained(self, path: str | os.PathLike, *, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
        """Write the Hugging Face layout (config.json, model.safetensors, tokenizer files) plus
        difflm_config.json (and the ``generation_defaults``, as the "difflm" section of
        generation_config.json), atomically (`difflm.atomic`): an interrupted save never leaves a
        half-written model behind. ``state_dict`` (backbone keys) replaces the module's own, e.g.
        one gathered from FSDP shards."""
        with atomic_directory(path) as tmp:
            self.model.save_pretrained(tmp, state_dict=state_dict)
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(tmp)
            self.config.save(tmp)
            if self.generation_defaults is not None:
                write_generation_defaults(tmp, self.generation_defaults)
        return Path(path)
