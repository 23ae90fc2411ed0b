"""The renoising sampler of uniform-state diffusion LMs (DiffusionGemma's entropy-bound loop).

A uniform-state model has no [MASK]: an undecided position holds a random token. The generated span is
decoded block by block (a DiffusionGemma canvas, or ``block_length`` positions of a difflm model); each
block starts as uniformly random tokens and every step

1. runs the denoiser on the block (`difflm.sampling.canvas_denoisers`), with the previous step's
   (temperature-scaled) logits as self-conditioning when the model takes it;
2. scales the logits by the step's temperature - the linear schedule t_min + (t_max - t_min) * k / K at
   step k of K (k counts down: t_max at the first step), else ``temperature``;
3. draws a token at every position from that distribution, and takes the argmax (the block's draft);
4. accepts draws by the entropy bound: the positions sorted by entropy, the longest prefix whose summed
   entropy minus its largest entropy stays within ``entropy_bound`` (a bound on the mutual information
   of the accepted tokens, so they are close to independent); the other positions get fresh random
   tokens (renoising);
5. stops the block for a row early once it is stable (the argmax draft unchanged for
   ``stability_threshold`` steps) and confident (mean entropy below ``confidence_threshold``); a stopped
   row is frozen while the others go on.

The block's result is its argmax draft. With ``stop_at_eos``, a row whose finished block holds a stop
token is done: its tokens after the first stop token, and its later blocks, become the pad id (the
block still runs for it when others go on, as transformers' batched ``generate`` does).

Draws come from one of two streams (``random_stream``): difflm's (`difflm.rng`; per-row generators make a
row's output independent of its batch) or torch's own ``randint`` / ``multinomial`` over the whole batch,
in transformers' order - with the same seed, DiffusionGemma's ``generate()`` gives the same tokens.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import torch

from .. import rng
from ..errors import InputError
from .canvas_denoisers import CanvasDenoiser, canvas_denoiser, is_encoder_decoder
from .options import SamplerOptions
from .step import SamplerStep, trim_at_stop
from .tokens import inverse_cdf, top_k_filter, top_p_filter

__all__ = ["DEFAULT_ENTROPY_BOUND", "RenoiseRun", "StableAndConfident", "TokenDraws", "accept_by_entropy",
           "renoise_denoise", "step_temperature", "uses_renoising"]

DEFAULT_ENTROPY_BOUND = 0.1  # transformers' default for DiffusionGemma when a generation config gives none
# options of masked decoding that mean nothing to a canvas of random tokens
_MASKED_ONLY = ("cfg_scale", "cache", "remask", "editing_threshold", "sub_block_length", "speculative",
                "suppress_eos")


class RenoiseRun(NamedTuple):
    """What `renoise_denoise` returns, in the field order of `difflm.sampling.Generation`.

    steps: model calls of the run; row_calls: per row, the calls it took part in (not counting calls
    after its block stopped or after it ended at EOS), so tokens per call = len(new_tokens[b]) / row_calls[b].
    """

    sequences: torch.Tensor
    generate_mask: torch.Tensor
    new_tokens: list[list[int]]
    steps: int
    history: list[torch.Tensor] | None
    row_calls: list[int]


def uses_renoising(model: Any, options: SamplerOptions) -> bool:
    """Whether a uniform-state ``model`` decodes with this sampler: ``entropy_bound`` is set, or the model is
    an encoder-decoder (DiffusionGemma), which has no other sampler."""
    return options.entropy_bound is not None or is_encoder_decoder(model)


class TokenDraws:
    """The sampler's random draws - uniform tokens (a block's start, renoising) and one token per position
    from a distribution - from difflm's streams or from torch's own, in transformers' order (module doc)."""

    def __init__(self, stream: str, generator: rng.Generators, vocab: int, device: torch.device) -> None:
        if stream == "transformers" and isinstance(generator, rng.RowGenerators):
            raise InputError("random_stream 'transformers' follows one stream over the whole batch: give one "
                             "torch.Generator (or none: torch's global one), not one per row")
        self.stream, self.generator, self.vocab, self.device = stream, generator, vocab, device

    def _uniforms(self, batch: int, width: int) -> torch.Tensor:
        """[B * W] U[0, 1) in float64, row by row (each row from its own stream with `RowGenerators`)."""
        return rng.uniform((batch * width,), generator=self.generator, device=self.device, dtype=torch.float64,
                           rows=[width] * batch)

    def tokens(self, batch: int, width: int) -> torch.Tensor:
        """LongTensor [B, W], uniform over the vocabulary."""
        if self.stream == "transformers":
            return rng.integers(self.vocab, (batch, width), generator=self.generator, device=self.device)
        return (self._uniforms(batch, width) * self.vocab).long().clamp_(max=self.vocab - 1).view(batch, width)

    def sample(self, probs: torch.Tensor) -> torch.Tensor:
        """One token per position of ``probs`` [B, W, V] (float32, rows summing to 1): LongTensor [B, W]."""
        batch, width, vocab = probs.shape
        flat = probs.reshape(-1, vocab)
        if self.stream == "transformers":
            return rng.multinomial(flat, generator=self.generator).view(batch, width)
        return inverse_cdf(flat, self._uniforms(batch, width)).view(batch, width)


def step_temperature(options: SamplerOptions, remaining: int, steps: int, device: torch.device) -> Any:
    """The temperature of the step with ``remaining`` steps left (``steps`` .. 1): the linear schedule as a
    float32 scalar tensor (computed in float32, as transformers' schedule is), else ``temperature``."""
    if options.t_min is None:
        return options.temperature
    fraction = torch.tensor(remaining, dtype=torch.int32, device=device) / steps
    return options.t_min + (options.t_max - options.t_min) * fraction


def accept_by_entropy(entropy: torch.Tensor, bound: float) -> torch.Tensor:
    """BoolTensor [B, W]: per row, the lowest-entropy positions whose summed entropy minus the largest of
    them stays within ``bound`` (``entropy`` [B, W]). The lowest one is always accepted."""
    ranked, order = torch.sort(entropy, dim=-1)
    within = ranked.cumsum(-1) - ranked <= bound  # ranked ascending: ranked[i] is the largest of the first i+1
    return torch.zeros_like(within).scatter(-1, order, within)


def entropy_of(logits: torch.Tensor) -> torch.Tensor:
    """Entropy [B, W] of the categorical distributions with ``logits`` [B, W, V]."""
    return torch.distributions.Categorical(logits=logits).entropy()


class StableAndConfident:
    """Adaptive stopping of one block: BoolTensor [B], rows whose argmax draft [B, W] equals each of the last
    ``stability`` drafts (0: always stable) and whose mean entropy of ``logits`` [B, W, V] is below
    ``confidence``. Call once per step; `reset` at a block's start."""

    def __init__(self, stability: int, confidence: float) -> None:
        self.stability, self.confidence = stability, confidence
        self.history: torch.Tensor | None = None  # [stability, B, W], the oldest draft first

    def reset(self) -> None:
        self.history = None

    def __call__(self, draft: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        if self.stability == 0:
            stable = torch.ones(draft.shape[0], dtype=torch.bool, device=draft.device)
        else:
            if self.history is None:  # -1 is no token: nothing is stable before `stability` drafts
                self.history = torch.full((self.stability, *draft.shape), -1, dtype=draft.dtype, device=draft.device)
            stable = (self.history == draft[None]).all(-1).all(0)
            self.history = torch.cat([self.history[1:], draft[None]])
        return stable & (entropy_of(logits).mean(-1) < self.confidence)


def _check_options(model: Any, opts: SamplerOptions, logits_processor: Any) -> None:
    bad = [name for name in _MASKED_ONLY if getattr(opts, name) not in (None, False, 0, 0.0, "none")]
    if bad:
        raise InputError(f"option(s) {', '.join(bad)} of masked decoding do not apply to the renoising sampler "
                         "(a uniform-state canvas holds random tokens, not masks)")
    if logits_processor is not None:
        raise InputError("the renoising sampler takes no logits_processor")
    if (getattr(model.config, "extra", None) or {}).get("time_conditioning"):
        raise InputError("the renoising sampler runs models without a time input (its canvas carries no noise "
                         "level); a time-conditioned UDLM / Duo samples by ancestral steps (leave entropy_bound unset)")


def _process(logits: torch.Tensor, temperature: Any, opts: SamplerOptions) -> tuple[torch.Tensor, bool]:
    """(the logits the step samples from, whether it draws greedily): temperature (a greedy step keeps the
    logits at temperature 1 for its entropies), then top-k / top-p when set."""
    greedy = not isinstance(temperature, torch.Tensor) and temperature == 0
    if not greedy and not (not isinstance(temperature, torch.Tensor) and temperature == 1):
        logits = logits / temperature
    if opts.top_k or opts.top_p < 1.0:
        flat = top_p_filter(top_k_filter(logits.reshape(-1, logits.shape[-1]), opts.top_k), opts.top_p)
        logits = flat.view(logits.shape)
    return logits, greedy


@torch.inference_mode()
def renoise_denoise(
    model: Any,
    canvas: torch.Tensor,
    generate_mask: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    options: SamplerOptions,
    generator: rng.Generators = None,
    callback: Callable[[SamplerStep], None] | None = None,
    output_history: bool = False,
    logits_processor: Any = None,
) -> RenoiseRun:
    """Fill every position of ``generate_mask`` (BoolTensor [B, L], the same count in every row) of ``canvas``
    (LongTensor [B, L]) by renoising (module doc); other positions are never written. ``generator``: one for
    the batch, a `difflm.rng.RowGenerators` (stream "difflm" only), or None. Returns a `RenoiseRun`."""
    _check_options(model, options, logits_processor)
    draws = TokenDraws(options.random_stream, generator, int(model.vocab_size), canvas.device)
    denoiser: CanvasDenoiser = canvas_denoiser(model, canvas, generate_mask, attention_mask, options.block_length,
                                               draws.tokens)
    batch, device = canvas.shape[0], canvas.device
    bound = options.entropy_bound if options.entropy_bound is not None else DEFAULT_ENTROPY_BOUND
    steps = options.steps or denoiser.default_steps
    stopper = None if options.stability_threshold is None else StableAndConfident(
        options.stability_threshold, options.confidence_threshold)
    stop_ids = torch.tensor(denoiser.stop_ids if options.stop_at_eos else [], dtype=torch.long, device=device)
    if options.stop_at_eos and stop_ids.numel() == 0:
        raise InputError("stop_at_eos needs an EOS or pad id in the model's config")
    fill_id = denoiser.fill_id
    done = torch.zeros(batch, dtype=torch.bool, device=device)  # rows that ended at a stop token
    row_calls = torch.zeros(batch, dtype=torch.long, device=device)
    blocks: list[torch.Tensor] = []
    history: list[torch.Tensor] | None = [] if output_history else None
    calls, total_steps = 0, steps * len(denoiser.block_sizes)
    # what the callback saw last (undecided positions: the placeholder)
    shown = denoiser.view([], None) if callback is not None else None
    for b, width in enumerate(denoiser.block_sizes):
        denoiser.start_block(b)
        x = draws.tokens(batch, width)
        draft, self_cond = x, None
        stopped = torch.zeros(batch, dtype=torch.bool, device=device)  # rows whose block stopped early
        if stopper is not None:
            stopper.reset()
        for remaining in range(steps, 0, -1):
            row_calls += ~(stopped | done)
            logits = denoiser(x, self_cond if denoiser.self_conditioning else None)
            calls += 1
            processed, greedy = _process(logits, step_temperature(options, remaining, steps, device), options)
            probs = torch.softmax(processed, dim=-1, dtype=torch.float32)
            proposals = processed.argmax(-1) if greedy else draws.sample(probs)
            new_draft = processed.argmax(-1)
            accepted = accept_by_entropy(entropy_of(processed), bound)
            new_x = torch.where(accepted, proposals, x)
            new_x = torch.where(accepted, new_x, draws.tokens(batch, width))  # renoise the rest
            if stopper is not None:
                if bool(stopped.any()):  # a stopped row keeps its draft, canvas and self-conditioning
                    new_draft = torch.where(stopped[:, None], draft, new_draft)
                    new_x = torch.where(stopped[:, None], x, new_x)
                    processed = torch.where(stopped[:, None, None], self_cond, processed)
                stopped = stopped | stopper(new_draft, processed)
            x, draft, self_cond = new_x, new_draft, processed
            # the whole canvas is assembled only for who looks at it: none of it on an ordinary step
            view = denoiser.view(blocks, x) if history is not None or callback is not None else None
            if history is not None:
                history.append(view.clone())
            if callback is not None:  # no mask to show: the positions this step changed (`difflm.visualize`)
                changed, shown = (view != shown) & generate_mask, view
                callback(SamplerStep(calls - 1, total_steps, b, view, changed, generate_mask,
                                     denoiser.view(blocks, draft), attention_mask, None))
            if bool(stopped.all()):
                break
        tokens = draft.clone()
        if stop_ids.numel():
            tokens, done = _end_at_stop(tokens, done, stop_ids, fill_id)
        denoiser.end_block(b, tokens)
        blocks.append(tokens)
        if callback is not None:  # a finished block shows its draft: not a change of the next block's steps
            shown = denoiser.view(blocks, None)
        if stop_ids.numel() and bool(done.all()):
            break
    sequences = denoiser.view(blocks, None, fill_id=fill_id)
    new_tokens = [row[m].tolist() for row, m in zip(sequences, generate_mask)]
    if options.stop_at_eos:
        new_tokens = [trim_at_stop(row, stop_ids.tolist()) for row in new_tokens]
    return RenoiseRun(sequences, generate_mask, new_tokens, calls, history, row_calls.tolist())


def _end_at_stop(tokens: torch.Tensor, done: torch.Tensor, stop_ids: torch.Tensor,
                 fill_id: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """A finished block's tokens [B, W] under EOS stopping, and the rows done after it: rows done before get
    the fill id throughout; a row whose block holds a stop token keeps it (its first) and gets the fill id
    after it (no fill id: the tokens stay as drawn)."""
    is_stop = torch.isin(tokens, stop_ids)
    if fill_id is not None:
        seen = is_stop.long().cumsum(-1)
        after_first = (seen > 0) & ~((seen == 1) & is_stop)
        tokens = tokens.masked_fill(done[:, None] | after_first, fill_id)
    return tokens, done | is_stop.any(-1)

