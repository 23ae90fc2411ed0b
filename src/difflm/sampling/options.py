"""`SamplerOptions`: every knob of the denoising loop in one validated object.

The entry points (`generate`, `infill`, `fill`, `denoise`) take one ``options=SamplerOptions(...)``
and/or keyword overrides of its fields; `SamplerOptions.merge` combines them (``dataclasses.replace``,
validated again). The object is frozen: once validated it travels unchanged.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, fields, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any

from ..errors import InputError, ModelLoadError
from ..registry import ATTENTION_OVERRIDES, CACHE_MODES, FILTER_ORDERS, RANDOM_STREAMS, REVEAL_SCHEDULES, STRATEGIES

if TYPE_CHECKING:  # this module is torch-free (the command line checks flags with it before torch loads)
    from .strategies import Strategy

__all__ = ["ATTENTION_OVERRIDES", "FAMILY_DEFAULTS", "FILTER_ORDERS", "GENERIC_DEFAULTS", "MAX_CFG_SCALE", "RANDOM_STREAMS", "SamplerOptions",
           "check_renoising_applies", "check_sampling_args", "check_strategy", "defaults_options", "model_length",
           "model_options", "over_model"]

# The conventions of a model family (``DiffusionConfig.family``) that apply where an option is None.
FAMILY_DEFAULTS: dict[str, dict[str, str]] = {
    "dream": {"schedule": "dream", "filter_order": "top_p_first"},
}
GENERIC_DEFAULTS: dict[str, str] = {"schedule": "equal", "filter_order": "top_k_first"}
# The largest classifier-free guidance scale: u + (s + 1)(c - u) overflows float32 logits long before
# 1e308, and published guidance uses 0-3; a scale above this is a mistake, not a stronger guidance.
MAX_CFG_SCALE = 1000.0
# the Python types a field's annotation admits (a float field takes an int; no number field takes a bool)
_VALUE_TYPES: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}
_TYPE_NAMES = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
               "None": "null", "Strategy": "a Strategy"}


@dataclass(frozen=True)
class SamplerOptions:
    """Options of `denoise` / `generate` / `infill` / `fill`.

    steps: model calls at most (default: one per generated token); split evenly across blocks.
    strategy: a name of `difflm.registry.STRATEGIES` ("low_confidence" default) or a `Strategy`
        instance; kept as given. The resolved instance is ``commit_strategy``.
    block_length: semi-autoregressive block size in generated tokens (default: one block). A
        length that is not a multiple gives a shorter last block.
    temperature, top_p, top_k, gumbel: token sampling (temperature 0 = greedy; gumbel = LLaDA's
        float64 Gumbel-max draw). A temperature must be finite; one so small that logits /
        temperature overflows (e.g. 1e-300) draws as temperature 0 does (`sample_tokens`).
    threshold: confidence threshold of strategy "threshold" (default 0.9).
    alg_temp: > 0 samples positions with softmax(score / alg_temp) instead of the top scores (Dream);
        finite.
    cfg_scale: classifier-free guidance scale in [0, `MAX_CFG_SCALE`] (0 = off); the unconditional
        pass masks the prompt.
    cache: "none" | "prefix" | "dual" (block-wise KV cache, see `denoiser`).
    attention: None (the model's mode) | "causal" | "bidirectional" | "block_causal" (block
        diffusion: bidirectional inside a decoding block, causal across; makes the caches exact).
    stop_at_eos: once a finished block holds EOS/pad in a row, fill the rest of that row with
        EOS and stop denoising it (variable-length output; the run ends when every row stopped).
    suppress_eos: commit positions that drew EOS/pad only when nothing else is left in the step.
    schedule: how many tokens a fixed-count strategy commits per step: "equal" (LLaDA's equal
        share of the block), "dream" (Dream's int(n_mask * (1 - s / t)) on its time grid), or
        None = the model family's convention ("dream" for family "dream", else "equal").
    filter_order: "top_k_first" (difflm, LLaDA-style) or "top_p_first" (Dream: the nucleus of the
        full distribution, then top-k), or None = the model family's convention.
    sub_block_length: decode each block in sub-blocks of this many generated positions, in order
        (Fast-dLLM v2). With ``cache="block"`` a sub-block's later steps read the rest of its block
        from the cache made at the sub-block's first step: an approximation inside the block,
        exact across blocks. None = whole blocks.
    editing_threshold: token editing (LLaDA 2.1): after each step, a token already committed in
        the current block is replaced by the model's top prediction there when that prediction
        differs and its probability exceeds this (None = off). Meant for models trained to edit.
    remask: ReMDM-style remasking: at every step of a block but its last, each token committed
        earlier in the block is masked again with this probability and re-decided (0 = off).
    max_edits: how often one position may be edited or remasked, so that decoding settles.
    post_edit_steps: with ``editing_threshold``, once no position of the block is masked any more, up to
        this many more model calls that only edit (LLaDA 2.1's ``max_post_steps``); the first call that
        edits nothing ends the block. 0 = the block ends with its last mask (they are not counted in
        ``steps``).
    speculative: self-speculative decoding (`difflm.sampling.speculative`): a block diffusion model whose
        finished blocks are read causally (``block_context: causal``) drafts the next block with its
        diffusion view and verifies the drafts with its causal (AR) view, in one forward per call. The
        output is the AR view's own decoding - token for token under greedy, in distribution when
        sampling (speculative sampling) - in fewer calls. A continuation only; steps, strategy,
        threshold, block_length and cache have no effect.
    """

    steps: int | None = None
    strategy: str | Strategy = "low_confidence"
    block_length: int | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    gumbel: bool = False
    threshold: float | None = None
    alg_temp: float = 0.0
    cfg_scale: float = 0.0
    cache: str = "none"
    attention: str | None = None
    stop_at_eos: bool = False
    suppress_eos: bool = False
    schedule: str | None = None
    filter_order: str | None = None
    sub_block_length: int | None = None
    editing_threshold: float | None = None
    remask: float = 0.0
    max_edits: int = 2
    post_edit_steps: int = 0
    speculative: bool = False
    entropy_bound: float | None = None
    t_min: float | None = None
    t_max: float | None = None
    stability_threshold: int | None = None
    confidence_threshold: float | None = None
    random_stream: str = "difflm"

    def __post_init__(self) -> None:
        self._check_types()
        check_sampling_args(self.temperature, self.top_p, self.top_k)
        if self.steps is not None and self.steps < 1:
            raise InputError(f"steps must be >= 1, got {self.steps}")
        if self.block_length is not None and self.block_length < 1:
            raise InputError(f"block_length must be >= 1, got {self.block_length}")
        if not 0 <= self.cfg_scale <= MAX_CFG_SCALE:
            raise InputError(f"cfg_scale must be a number in [0, {MAX_CFG_SCALE:g}], got {self.cfg_scale}")
        if not 0 <= self.alg_temp < math.inf:
            raise InputError(f"alg_temp must be a finite number >= 0, got {self.alg_temp}")
        if self.cache not in CACHE_MODES:
            raise InputError(f"unknown cache mode {self.cache!r}; choose one of {', '.join(CACHE_MODES)}")
        if self.attention is not None and self.attention not in ATTENTION_OVERRIDES:
            raise InputError(f"unknown attention {self.attention!r}; choose one of {', '.join(ATTENTION_OVERRIDES)}")
        if self.schedule is not None and self.schedule not in REVEAL_SCHEDULES:
            raise InputError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(REVEAL_SCHEDULES)}")
        if self.filter_order is not None and self.filter_order not in FILTER_ORDERS:
            raise InputError(f"unknown filter_order {self.filter_order!r}; choose one of {', '.join(FILTER_ORDERS)}")
        if self.sub_block_length is not None and self.sub_block_length < 1:
            raise InputError(f"sub_block_length must be >= 1, got {self.sub_block_length}")
        if self.editing_threshold is not None and not 0.0 <= self.editing_threshold < 1.0:
            raise InputError(f"editing_threshold must be in [0, 1), got {self.editing_threshold}")
        if not 0.0 <= self.remask < 1.0:
            raise InputError(f"remask must be a probability in [0, 1), got {self.remask}")
        if isinstance(self.max_edits, bool) or not isinstance(self.max_edits, int) or self.max_edits < 1:
            raise InputError(f"max_edits must be an integer >= 1, got {self.max_edits!r}")
        if isinstance(self.post_edit_steps, bool) or not isinstance(self.post_edit_steps, int) or self.post_edit_steps < 0:
            raise InputError(f"post_edit_steps must be an integer >= 0, got {self.post_edit_steps!r}")
        if self.post_edit_steps and self.editing_threshold is None:  # never silently ignored
            raise InputError("post_edit_steps edits a filled block: it needs editing_threshold")
        self._check_renoising()
        if isinstance(self.strategy, str):  # a Strategy instance was checked when it was made
            check_strategy(self.strategy, self.threshold, self.alg_temp)

    def _check_renoising(self) -> None:
        """The renoising sampler's options: ranges, and the pairs that only make sense together."""
        if self.entropy_bound is not None and not 0 < self.entropy_bound < math.inf:
            raise InputError(f"entropy_bound must be a finite number > 0, got {self.entropy_bound}")
        if (self.t_min is None) != (self.t_max is None):
            raise InputError("t_min and t_max form one temperature schedule: give both or neither")
        if self.t_min is not None and not 0 <= self.t_min < self.t_max < math.inf:
            raise InputError(f"the temperature schedule needs 0 <= t_min < t_max (finite), got t_min={self.t_min}, "
                             f"t_max={self.t_max}")
        if (self.stability_threshold is None) != (self.confidence_threshold is None):
            raise InputError("stability_threshold and confidence_threshold form one stopping rule: give both or neither")
        if self.stability_threshold is not None and self.stability_threshold < 0:
            raise InputError(f"stability_threshold must be an integer >= 0, got {self.stability_threshold}")
        if self.confidence_threshold is not None and not 0 < self.confidence_threshold < math.inf:
            raise InputError(f"confidence_threshold must be a finite number > 0, got {self.confidence_threshold}")
        if self.random_stream not in RANDOM_STREAMS:
            raise InputError(f"unknown random_stream {self.random_stream!r}; choose one of {', '.join(RANDOM_STREAMS)}")

    def renoising_options(self) -> list[str]:
        """The renoising sampler's options set here (names): refused by the samplers they do not apply to."""
        on = {"entropy_bound": self.entropy_bound is not None, "t_min": self.t_min is not None,
              "t_max": self.t_max is not None, "stability_threshold": self.stability_threshold is not None,
              "confidence_threshold": self.confidence_threshold is not None,
              "random_stream": self.random_stream != "difflm"}
        return [name for name, value in on.items() if value]

    @cached_property
    def commit_strategy(self) -> Strategy:
        """The `Strategy` instance that ``strategy`` (with ``threshold``, ``alg_temp``) names (imports the
        strategy, and with it torch, on first use: the checks ran torch-free in ``__post_init__``)."""
        if not isinstance(self.strategy, str):
            return self.strategy
        return STRATEGIES.get(self.strategy, InputError).from_options(threshold=self.threshold, alg_temp=self.alg_temp)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def _check_types(self) -> None:
        """`InputError` for a value of the wrong type (a model's generation_config.json or a request can
        hold ``"temperature": "hot"``): the range checks below assume numbers, strings and booleans."""
        for spec in fields(self):
            value, kinds = getattr(self, spec.name), [k.strip() for k in str(spec.type).split("|")]
            if (value is None and "None" in kinds) or ("Strategy" in kinds and _is_strategy(value)):
                continue
            allowed = tuple(t for k in kinds for t in _VALUE_TYPES.get(k, ()))
            if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
                wanted = " or ".join(_TYPE_NAMES.get(k, k) for k in kinds)
                raise InputError(f"{spec.name} must be {wanted}, got {value!r}")

    @classmethod
    def merge(cls, options: SamplerOptions | None = None, /, **overrides: Any) -> SamplerOptions:
        """``options`` (default: all defaults) with the fields in ``overrides`` replaced, validated.

        Raises `InputError` for an ``options`` that is not a `SamplerOptions`, for an override
        that is not a field, and for any invalid value.
        """
        if options is not None and not isinstance(options, cls):
            raise InputError(f"options must be a SamplerOptions, got {type(options).__name__}")
        unknown = sorted(set(overrides) - set(cls.names()))
        if unknown:
            raise InputError(
                f"unknown sampler option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                f"choose from {', '.join(cls.names())}"
            )
        if options is None:
            return cls(**overrides)
        return replace(options, **overrides) if overrides else options

    def for_family(self, family: str | None) -> SamplerOptions:
        """A copy whose family-dependent options (``schedule``, ``filter_order``) left at None take
        the convention of the model family ``family`` (`FAMILY_DEFAULTS`, else `GENERIC_DEFAULTS`)."""
        defaults = FAMILY_DEFAULTS.get(family or "", GENERIC_DEFAULTS)
        missing = {name: value for name, value in defaults.items() if getattr(self, name) is None}
        return replace(self, **missing) if missing else self


def _is_strategy(value: Any) -> bool:
    """Whether ``value`` is a `Strategy` instance, without importing the strategies (torch): an instance
    exists only once their module has been imported."""
    module = sys.modules.get(f"{__package__}.strategies")
    return module is not None and isinstance(value, module.Strategy)


def check_sampling_args(temperature: float, top_p: float, top_k: int = 0) -> None:
    """Raise `InputError` unless temperature is finite and >= 0, top_p in (0, 1] and top_k >= 0."""
    if not 0 <= temperature < math.inf:
        raise InputError(f"temperature must be a finite number >= 0, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise InputError(f"top_p must be in (0, 1], got {top_p}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise InputError(f"top_k must be an integer >= 0 (0 = off), got {top_k!r}")


def check_strategy(strategy: str, threshold: float | None = None, alg_temp: float = 0.0) -> None:
    """`InputError` unless ``strategy`` names a strategy of `difflm.registry.STRATEGIES` that takes these
    values: ``threshold`` (in (0, 1]) belongs to "threshold" only, ``alg_temp`` to the scoring strategies
    (not "random"). Torch-free: the names come from the registry's table, no strategy is imported."""
    if not isinstance(strategy, str) or strategy not in STRATEGIES:
        raise InputError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if threshold is not None and strategy != "threshold":
        raise InputError(f"threshold applies to strategy 'threshold' only, not {strategy!r}")
    if threshold is not None and not 0.0 < threshold <= 1.0:
        raise InputError(f"threshold must be in (0, 1], got {threshold}")
    if alg_temp and strategy == "random":
        raise InputError("alg_temp applies to the scoring strategies, not 'random'")


def check_renoising_applies(options: SamplerOptions, *, uniform_state: bool) -> None:
    """`InputError` when ``options`` set renoising options that a model does not decode with: every
    model but a uniform-state one given ``entropy_bound`` (an encoder-decoder model such as DiffusionGemma
    always renoises and is not asked). ``uniform_state``: the model is a uniform-state DLM. Torch-free, so
    that the command line refuses the flags from the model's config files before the weights load."""
    if options.renoising_options() and not (uniform_state and options.entropy_bound is not None):  # never ignored
        kind = "a uniform-state model without entropy_bound" if uniform_state else "a masked diffusion model"
        raise InputError(f"option(s) {', '.join(options.renoising_options())} belong to the renoising sampler of "
                         f"uniform-state models (set entropy_bound); they do not apply to {kind}")


# -- a model's own defaults (generation_config.json, `difflm.formats.generation`) ------------------------------
def model_options(model: Any) -> SamplerOptions | None:
    """The decoding settings saved with ``model`` (``model.generation_defaults``) as a validated
    `SamplerOptions`, or None when it has none. `ModelLoadError` in one line, naming the file, for
    an unknown field or a bad value."""
    return defaults_options(getattr(model, "generation_defaults", None))


def defaults_options(defaults: Any) -> SamplerOptions | None:
    """`model_options` of a `difflm.formats.GenerationDefaults` (None: None), e.g. one read from a
    directory before its weights load."""
    if defaults is None:
        return None
    try:
        return SamplerOptions.merge(None, **defaults.options)
    except InputError as exc:
        raise ModelLoadError(f"{defaults.source or 'generation defaults'}: {exc} (fix or delete the file)") from None


def model_length(model: Any) -> int | None:
    """The number of new tokens ``model`` recommends (its generation_config.json), or None."""
    defaults = getattr(model, "generation_defaults", None)
    return None if defaults is None else defaults.max_new_tokens


def over_model(base: SamplerOptions | None, **overrides: Any) -> SamplerOptions:
    """``overrides`` (what the caller gave) over ``base`` (a model's defaults, `model_options`), as
    `SamplerOptions.merge` - except that a ``strategy`` given without a ``threshold`` drops the base's
    threshold, which belongs to the base's strategy (``--strategy low_confidence`` on a model that
    decodes by threshold)."""
    if base is not None and "strategy" in overrides and "threshold" not in overrides \
            and overrides["strategy"] != "threshold" and base.threshold is not None:
        base = replace(base, threshold=None)
    return SamplerOptions.merge(base, **overrides)
