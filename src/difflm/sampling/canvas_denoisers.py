"""The denoisers of the renoising sampler (`difflm.sampling.renoise`): a block of noisy tokens in, the logits
of its positions out.

The generated positions of each row (the same number N in every row, in reading order) are cut into blocks
decoded in order. Two denoisers:

* `SequenceDenoiser` - difflm's own uniform-state `DiffusionLM`s: one forward (`DiffusionLM.logits`) over
  the whole canvas [context | finished blocks | the block | later blocks]; positions not decoded yet hold
  uniform noise (the prior). Blocks of ``block_length`` positions (default: the model's block size for a
  block diffusion model, else the whole span). No self-conditioning.
* `EncoderDecoderDenoiser` - transformers' block-diffusion encoder-decoder (DiffusionGemma,
  ``DiffusionGemmaForBlockDiffusion``): the encoder writes the prompt, then each finished canvas, into a
  KV cache; the decoder denoises one canvas of ``canvas_length`` tokens reading that cache, with
  self-conditioning on the previous step's logits. Positions and masks are built as its ``generate()``
  builds them (positions count left padding), through the model's own mask functions. A continuation only.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from transformers import DynamicCache

from ..errors import InputError
from .step import stop_token_ids

__all__ = ["CanvasDenoiser", "ENCODER_DECODER", "EncoderDecoderDenoiser", "SequenceDenoiser", "canvas_denoiser",
           "is_encoder_decoder"]

ENCODER_DECODER = "encoder-decoder"  # config.extra["denoiser"] of a model with an encoder cache + canvas decoder
DEFAULT_CANVAS_STEPS = 48  # transformers' default max_denoising_steps for DiffusionGemma

# (batch, width) -> LongTensor [B, W] of uniform tokens: the sampler's noise (`renoise.TokenDraws.tokens`)
Noise = Callable[[int, int], torch.Tensor]


def is_encoder_decoder(model: Any) -> bool:
    """Whether ``model`` denoises canvases with an encoder cache and a decoder (``config.extra["denoiser"]``,
    set by its loader: `difflm.formats.diffusion_gemma`)."""
    extra = getattr(getattr(model, "config", None), "extra", None) or {}
    return extra.get("denoiser") == ENCODER_DECODER


class CanvasDenoiser:
    """The bookkeeping both denoisers share: where each block's tokens go in the canvas.

    Attributes:
        block_sizes: the width of each block, in decoding order (a last encoder-decoder canvas may reach past
            the N generated positions: the tokens beyond are dropped). default_steps: steps per block when
            ``steps`` is unset. self_conditioning: whether the call takes the previous step's logits.
        fill_id: the id of a row that ended (pad, else EOS); stop_ids: the ids that end a row
            (``config.extra["stop_token_ids"]``, else EOS and pad).
    """

    self_conditioning = False
    default_steps = 1

    def __init__(self, model: Any, canvas: torch.Tensor, generate_mask: torch.Tensor,
                 attention_mask: torch.Tensor | None, block_sizes: list[int]) -> None:
        self.model, self.canvas, self.generate_mask, self.attention_mask = model, canvas, generate_mask, attention_mask
        self.n = _generated_count(generate_mask)
        self.positions = generate_mask.nonzero()[:, 1].view(canvas.shape[0], self.n)  # [B, N], reading order
        self.block_sizes = block_sizes
        self.starts = [sum(block_sizes[:b]) for b in range(len(block_sizes))]
        self.block = 0
        cfg = model.config
        self.fill_id = next((i for i in (cfg.pad_token_id, cfg.eos_token_id) if i is not None), None)
        self.stop_ids = list((cfg.extra or {}).get("stop_token_ids") or stop_token_ids(model))

    def columns(self, b: int) -> torch.Tensor:
        """LongTensor [B, w]: the canvas columns of block ``b`` (w <= its width: clipped at N)."""
        start = self.starts[b]
        return self.positions[:, start:min(start + self.block_sizes[b], self.n)]

    def start_block(self, b: int) -> None:
        self.block = b

    def end_block(self, b: int, tokens: torch.Tensor) -> None:
        """Block ``b`` is finished with ``tokens`` [B, W]."""

    def __call__(self, x: torch.Tensor, self_conditioning: torch.Tensor | None) -> torch.Tensor:
        """FloatTensor [B, W, V] (float32): the logits of the current block's W positions holding ``x`` [B, W]."""
        raise NotImplementedError

    def view(self, blocks: list[torch.Tensor], current: torch.Tensor | None, *, fill_id: int | None = None) -> torch.Tensor:
        """The canvas [B, L] with the finished ``blocks`` ([B, W] each) and ``current`` (the block being decoded,
        or None) written; the generated positions after them hold the canvas's placeholder (the mask id), or ``fill_id`` if given."""
        parts = blocks + ([current] if current is not None else [])
        out = self.canvas.clone()
        written = torch.cat(parts, dim=1)[:, : self.n] if parts else self.positions[:, :0]
        k = written.shape[1]
        out.scatter_(1, self.positions[:, :k], written)
        if fill_id is not None and k < self.n:
            out.scatter_(1, self.positions[:, k:], fill_id)
        return out


def _generated_count(generate_mask: torch.Tensor) -> int:
    counts = generate_mask.sum(-1)
    if int(counts.min()) != int(counts.max()):
        raise InputError("the renoising sampler decodes the same number of positions in every row; "
                         f"got {counts.tolist()}")
    if int(counts.max()) == 0:
        raise InputError("nothing to generate: no masked position in the canvas")
    return int(counts[0])


class SequenceDenoiser(CanvasDenoiser):
    """difflm's own uniform-state DiffusionLM (module doc). ``noise`` draws the prior of the undecided positions."""

    def __init__(self, model: Any, canvas: torch.Tensor, generate_mask: torch.Tensor,
                 attention_mask: torch.Tensor | None, block_length: int | None, noise: Noise) -> None:
        n = _generated_count(generate_mask)
        size = block_length or model.config.block_size or n
        sizes = [min(size, n - start) for start in range(0, n, size)]
        super().__init__(model, canvas, generate_mask, attention_mask, sizes)
        self.default_steps = max(sizes)  # one step per token, as difflm's other samplers
        self.sequence = canvas.clone()
        self.sequence.scatter_(1, self.positions, noise(canvas.shape[0], n))

    def __call__(self, x: torch.Tensor, self_conditioning: torch.Tensor | None) -> torch.Tensor:
        cols = self.columns(self.block)
        logits = self.model.logits(self.sequence.scatter(1, cols, x), self.attention_mask)
        return logits.gather(1, cols[..., None].expand(-1, -1, logits.shape[-1])).float()

    def end_block(self, b: int, tokens: torch.Tensor) -> None:
        self.sequence.scatter_(1, self.columns(b), tokens)


class EncoderDecoderDenoiser(CanvasDenoiser):
    """transformers' block-diffusion encoder-decoder (module doc): ``model.model`` is a
    ``DiffusionGemmaForBlockDiffusion``; canvases of ``config.canvas_length`` after a left-padded prompt."""

    self_conditioning = True
    default_steps = DEFAULT_CANVAS_STEPS

    def __init__(self, model: Any, canvas: torch.Tensor, generate_mask: torch.Tensor,
                 attention_mask: torch.Tensor | None, block_length: int | None) -> None:
        backbone = model.model
        width = int(backbone.config.canvas_length)
        if block_length not in (None, width):
            raise InputError(f"this encoder-decoder model denoises canvases of {width} tokens; leave block_length "
                             f"unset or give {width}, not {block_length}")
        n = _generated_count(generate_mask)
        batch, length = canvas.shape
        context = length - n
        if not bool(generate_mask[:, context:].all()):
            raise InputError("an encoder-decoder model continues a prompt: infilling (a suffix, or gaps) is not supported")
        if context == 0:
            raise InputError("an encoder-decoder model needs a prompt of at least one token")
        super().__init__(model, canvas, generate_mask, attention_mask, [width] * math.ceil(n / width))
        self.backbone, self.width = backbone, width
        device = canvas.device
        self.pending = canvas[:, :context]  # tokens the encoder has not read yet
        real = (torch.ones_like(self.pending, dtype=torch.bool) if attention_mask is None
                else attention_mask[:, :context].bool())
        self.real = real  # [B, cached]: which cached keys are real tokens
        self.cache = DynamicCache(config=backbone.config.get_text_config(decoder=True))
        # positions count every column, padding included (as generate() numbers them): RoPE sees only differences
        self.encoder_positions = torch.arange(0, context, dtype=torch.int32, device=device)[None]
        self.decoder_positions = torch.arange(context, context + width, dtype=torch.int32, device=device)[None]
        self.decoder_mask: Any = None

    def start_block(self, b: int) -> None:
        super().start_block(b)
        backbone, batch = self.backbone, self.pending.shape[0]
        encoder = backbone.model.encoder
        shape_only = torch.empty((batch, self.pending.shape[1], 0), dtype=backbone.dtype, device=self.pending.device)
        masks = encoder.create_masks_for_generate(config=backbone.config, inputs_embeds=shape_only,
                                                  attention_mask=self.real, past_key_values=self.cache,
                                                  position_ids=self.encoder_positions)
        encoder(input_ids=self.pending.contiguous(), attention_mask=masks, past_key_values=self.cache,
                position_ids=self.encoder_positions)
        with_canvas = torch.nn.functional.pad(self.real, (0, self.width), value=True)
        canvas_shape = torch.empty((batch, self.width, 1), device=self.pending.device)
        self.decoder_mask = backbone.model.decoder.create_diffusion_decoder_attention_mask(
            config=backbone.config, inputs_embeds=canvas_shape, past_key_values=self.cache,
            decoder_attention_mask=with_canvas)

    def __call__(self, x: torch.Tensor, self_conditioning: torch.Tensor | None) -> torch.Tensor:
        if self_conditioning is not None:  # the decoder embeds it in its own dtype
            self_conditioning = self_conditioning.to(self.backbone.model.decoder.embed_tokens.weight.dtype)
        out = self.backbone(decoder_input_ids=x, self_conditioning_logits=self_conditioning,
                            decoder_attention_mask=self.decoder_mask, past_key_values=self.cache,
                            decoder_position_ids=self.decoder_positions)
        return out.logits.float()

    def end_block(self, b: int, tokens: torch.Tensor) -> None:
        """The finished canvas (after EOS padding) is what the encoder reads next."""
        self.pending = tokens
        self.real = torch.nn.functional.pad(self.real, (0, self.width), value=True)
        self.encoder_positions = self.decoder_positions
        self.decoder_positions = self.decoder_positions + self.width


def canvas_denoiser(model: Any, canvas: torch.Tensor, generate_mask: torch.Tensor, attention_mask: torch.Tensor | None,
                    block_length: int | None, noise: Noise) -> CanvasDenoiser:
    """The denoiser of ``model`` for this canvas (module doc)."""
    if is_encoder_decoder(model):
        return EncoderDecoderDenoiser(model, canvas, generate_mask, attention_mask, block_length)
    return SequenceDenoiser(model, canvas, generate_mask, attention_mask, block_length, noise)
