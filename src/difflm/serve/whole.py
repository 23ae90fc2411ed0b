"""Requests of models that do not decode by the masked row loop: each runs whole through `difflm.sampling.denoise`.

A uniform-state model (UDLM, Duo, difflm's own ``objective: uniform``, DiffusionGemma) has no mask to commit:
every generated position holds a token from the first step on, and a step *changes* tokens instead of
unmasking them (the ancestral sampler of `difflm.sampling.uniform`, or the renoising sampler of
`difflm.sampling.renoise` with ``entropy_bound``). The
server's `RowBatch` rows step the masked loop only, so the request batcher runs such a request differently:
its choices (up to ``--max-batch`` at a time) go through the sampler's own `denoise` as one batch, each row
with its own generator (a choice's text does not depend on the others, nor on the batch), and the sampler's
callback after every step counts the model call, posts the step's canvas (``stream_steps``) and stops the run
when the client went away, the request timed out or the server is shutting down.

No text is final before the last step (any position may still change), so an OpenAI client gets the text
when the run ends, cut at a stop token or stop string as a masked row's is (`ChoiceText`, with no mask id).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..config import is_uniform_state
from ..rng import RowGenerators
from ..sampling import SamplerOptions, SamplerStep, denoise, template_canvas
from ..sampling.renoise import uses_renoising
from .protocol import APIError
from .streaming import ChoiceText, TokenText, canvas_cells

# `SamplerOptions` fields of the masked loop alone - commit strategies, KV caches, guidance, attention
# overrides, remasking and editing: a uniform-state sampler redraws every generated position at every step
# and takes none of them (some it would ignore silently). A request that sets one to anything but its
# default is refused with a 400 naming it (`check_fields`); fields not listed here go to the sampler, which
# refuses what it cannot take (the renoising sampler's options on the ancestral one, ...).
MASKED_LOOP_ONLY = ("strategy", "threshold", "cfg_scale", "cache", "alg_temp", "gumbel", "attention", "schedule",
                    "filter_order", "suppress_eos", "sub_block_length", "editing_threshold", "remask", "max_edits",
                    "post_edit_steps", "speculative")
# ... and blocks: the renoising sampler decodes ``block_length`` positions at a time, the ancestral one
# (no ``entropy_bound``) the whole span at once
ANCESTRAL_REFUSES = ("block_length",)
_DEFAULTS = {spec.name: spec.default for spec in dataclasses.fields(SamplerOptions)}


def decodes_whole(model: Any) -> bool:
    """Whether ``model``'s requests run whole through `denoise` (`WholeRun`) rather than as `RowBatch` rows:
    a uniform-state model (`difflm.config.is_uniform_state`)."""
    return is_uniform_state(model)


def check_fields(model: Any, overrides: dict[str, Any], options: SamplerOptions) -> None:
    """400 naming the first field of ``overrides`` (the `SamplerOptions` fields a request sets; ``options``: what
    they resolve to) that the sampler of ``model`` does not take, set to anything but its default."""
    renoising = uses_renoising(model, options)
    for name in MASKED_LOOP_ONLY + (() if renoising else ANCESTRAL_REFUSES):
        if name in overrides and overrides[name] != _DEFAULTS.get(name):
            sampler = ("the renoising sampler" if renoising else
                       "its ancestral sampler (blocks need the renoising sampler: set entropy_bound)")
            raise APIError(400, f"{name} is an option of masked decoding; this server's model is a uniform-state "
                           f"model, decoded by {sampler}, which redraws tokens rather than unmasking them",
                           param=name, code="unsupported_parameter")


@dataclass
class WholeRow:
    """One choice of a request run whole: its template (the mask id marks the generated positions) and its
    random generator."""

    template: list[int]
    generator: torch.Generator


class Stopped(Exception):
    """Raised from the sampler's callback to end a run early (the job already has its answer, or none is wanted)."""


class WholeRun:
    """One `denoise` run over some choices of a job, posting to the job as the batcher's rows do.

    Args:
        model: the `DiffusionLM`.
        text: the shared `TokenText`.
        job: the `Job` (``job.options``: its `SamplerOptions`).
        choices: the job's choices this run decodes (their ``row`` is a `WholeRow`).
        should_stop: called after every step; True ends the run (`Stopped`), the job having been told why.
        metrics: a `Metrics` (or None).
    """

    def __init__(self, model: Any, text: TokenText, job: Any, choices: list[Any], *,
                 should_stop: Callable[[], bool], metrics: Any = None) -> None:
        self.model, self.text, self.job, self.choices = model, text, job, choices
        self.should_stop, self.metrics = should_stop, metrics
        self._last = time.perf_counter()

    def run(self) -> None:
        """Decode the choices to the end (or until `should_stop`) and post their text and end."""
        canvas, attention_mask, generate_mask = template_canvas(self.model, [c.row.template for c in self.choices])
        generators = RowGenerators([c.row.generator for c in self.choices])
        self._last = time.perf_counter()
        result = denoise(self.model, canvas, generate_mask, attention_mask, options=self.job.options,
                         generator=generators, callback=self._on_step)
        for b, choice in enumerate(self.choices):
            # the calls this row took part in (the renoising sampler stops rows early), else the run's
            choice.model_calls = result.row_calls[b] if result.row_calls is not None else result.steps
            generated = result.sequences[b][result.generate_mask[b]].tolist()  # untrimmed: the stop token ends it
            delta = choice.text.update(generated, final=True)
            if delta:
                self.job.post("delta", choice, delta, None)
            self.job.post("end", choice)
        self.job.finished = all(c.text.ended for c in self.job.choices)

    def _on_step(self, step: SamplerStep) -> None:
        now = time.perf_counter()
        seconds, self._last = now - self._last, now
        if self.metrics is not None:
            self.metrics.step(len(self.choices), seconds)
        for b, choice in enumerate(self.choices):
            choice.model_calls += 1
            if self.job.stream_steps and not self.job.finished:
                self.job.post("delta", choice, "", self._step_info(step, b, choice, seconds))
        if self.should_stop():
            raise Stopped

    def _step_info(self, step: SamplerStep, b: int, choice: Any, seconds: float) -> dict[str, Any]:
        """The ``denoising`` field of row ``b`` after ``step``: every generated position holds a token, and
        ``committed`` lists the positions this step changed."""
        generated = step.generate_mask[b]
        tokens = step.canvas[b][generated].tolist()
        changed = step.committed[b][generated].nonzero().flatten().tolist()
        return {"step": step.step, "total_steps": step.total_steps, "block": step.block, "process": "uniform",
                "canvas": canvas_cells(self.text, tokens, None), "committed": changed,
                "model_calls": choice.model_calls, "batch_size": len(self.choices),
                "step_ms": round(seconds * 1000, 3)}


def whole_choice_text(text: TokenText, stop_ids: list[int], stops: list[str]) -> ChoiceText:
    """The `ChoiceText` of a choice run whole: no position is ever masked (the mask id may well be drawn as noise)."""
    return ChoiceText(text, None, stop_ids, stops)
