"""The names of difflm's extension points, in one torch-free table.

Every plug-in - a training objective, a checkpoint layout, a kind of model directory, a decoding
strategy, an evaluation task, a synthetic data task, a model family - is one line here: its name and
where it lives (``"package.module:attribute"``). Nothing is imported until it is asked for, so the
command line builds its choices from these tables without loading torch (``difflm --help`` answers at
once), and the library reads the same tables: there is no second, hand-typed list to keep in step.

This module is also the one place that imports plug-ins (`Registry.get`, through importlib): the
core names an extension point, never a family or an objective, and the import rules of
docs/architecture.md hold for everything else.

Adding a plug-in is one new file and one line in the table below (or, from outside difflm,
``OBJECTIVES.register("mine", "my_package.objective:MyObjective")``); the registry's contract test
(tests/test_registry_contracts.py) then runs the new entry through what every entry must do.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

from .errors import ConfigError, DiffLMError

__all__ = [
    "ATTENTION_OVERRIDES", "CACHE_MODES", "DATA_SPLITS", "DECODING", "DATA_TASKS", "EVAL_TASKS", "Entry", "FAMILIES",
    "FILTER_ORDERS", "FORMATS", "GSM_SUMS", "MODEL_KINDS", "OBJECTIVES", "RANDOM_STREAMS", "Registry", "REVEAL_SCHEDULES",
    "REWARDS",
    "STRATEGIES", "lazy_attributes",
]


@dataclass(frozen=True)
class Entry:
    """One registered plug-in: ``target`` is ``"module:attribute"`` (or ``"module"`` for a module that is
    the plug-in itself); ``meta`` holds facts the torch-free side needs without importing it (a marker
    file name, a help line)."""

    name: str
    target: str
    meta: Mapping[str, Any] = field(default_factory=dict)

    def load(self) -> Any:
        module, _, attribute = self.target.partition(":")
        obj = importlib.import_module(module)
        for part in filter(None, attribute.split(".")):
            obj = obj[part] if isinstance(obj, Mapping) else getattr(obj, part)
        return obj


class Registry:
    """An ordered table of named plug-ins of one ``kind`` ("objective", "format", ...).

    ``names()`` and ``entry(name)`` never import anything; ``get(name)`` imports the plug-in the first
    time and keeps it. An unknown name is refused with the valid ones listed (``error``: the
    `DiffLMError` subclass the caller's users expect, `ConfigError` by default)."""

    def __init__(self, kind: str, entries: Mapping[str, str | tuple[str, Mapping[str, Any]]]) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        self._loaded: dict[str, Any] = {}
        for name, spec in entries.items():
            target, meta = (spec, {}) if isinstance(spec, str) else spec
            self.register(name, target, **meta)

    def register(self, name: str, target: str, **meta: Any) -> None:
        """Add (or replace) ``name``; it comes after the entries registered before it."""
        self._entries.pop(name, None)
        self._loaded.pop(name, None)
        self._entries[name] = Entry(name, target, dict(meta))

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def entry(self, name: str, error: type[DiffLMError] = ConfigError) -> Entry:
        if name not in self._entries:
            raise error(f"unknown {self.kind} {name!r}; choose one of {', '.join(self._entries)}")
        return self._entries[name]

    def get(self, name: str, error: type[DiffLMError] = ConfigError) -> Any:
        """The plug-in registered as ``name``, imported on first use."""
        if name not in self._loaded:
            self._loaded[name] = self.entry(name, error).load()
        return self._loaded[name]

    def items(self) -> Iterator[tuple[str, Any]]:
        """(name, plug-in) of every entry, in order (imports them all)."""
        for name in self._entries:
            yield name, self.get(name)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._entries)})"


def lazy_attributes(package: str, table: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` (PEP 562) for ``package`` that imports each name of ``table`` (name ->
    relative module, e.g. ``{"ContinuousDLM": ".model"}``) on first access and keeps it: a family package
    can then be imported (for its torch-free plug-in) without loading torch."""

    def __getattr__(name: str) -> Any:
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(table[name], package), name)
        setattr(sys.modules[package], name, value)  # later lookups skip this function
        return value

    return __getattr__


# -- training objectives (difflm.training.objectives.Objective subclasses; `objective:` in a YAML) ---------
# meta "sections": the TrainConfig keys only that objective takes (TrainConfig refuses them under another)
OBJECTIVES = Registry("objective", {
    "ar": "difflm.training.objectives.pretrain:ARObjective",
    "diffusion": "difflm.training.objectives.pretrain:DiffusionObjective",
    "adapt": "difflm.training.objectives.pretrain:AdaptObjective",
    "block": "difflm.training.objectives.block:BlockObjective",
    "uniform": "difflm.training.objectives.uniform:UniformObjective",
    "sft": ("difflm.training.objectives.sft:SFTObjective", {"sections": ("sft", "lora", "noised_blocks")}),
    "continuous": ("difflm.continuous.training:ContinuousObjective", {"sections": ("continuous",)}),
})

# -- checkpoint layouts, in detection order (modules with detect / plan [/ TOKENIZER_FALLBACK];
# -- difflm.formats.detection; difflm.formats.register_format adds one from outside) ----------------------
FORMATS = Registry("format", {
    "difflm": "difflm.formats.native",
    "diffugpt": "difflm.formats.diffugpt",
    "llada": "difflm.formats.llada",
    "dream": "difflm.formats.dream",
    "sdar": "difflm.formats.sdar",
    "diffullama": "difflm.formats.diffullama",
    "llada2": "difflm.formats.llada2",
    "mdlm": "difflm.formats.mdlm",
    "diffusion-gemma": "difflm.formats.diffusion_gemma",
    "causal-lm": "difflm.formats.causal_lm",
})

# -- what a model directory holds, told by a marker file (difflm.io.directory_kind, difflm.formats.load) --
# The first kind whose marker is present wins; "checkpoint" (no marker) is any transformers-style layout
# of FORMATS: a DLM, or a plain causal LM. A target is a loader `(path, *, format, dtype, **overrides) ->
# difflm.formats.LoadedModel`; meta "eval" names a family's evaluation adapter `(loaded, settings, *, name)
# -> EvalLM` (difflm.evaluation.loading), "dlm_class" the class a DLM checkpoint becomes (formats sits
# below model and never imports it).
MODEL_KINDS = Registry("model kind", {
    "adapter": ("difflm.formats.adapter:load_adapter_dir", {"marker": "difflm_adapter.json"}),
    "continuous": ("difflm.continuous.model:load_continuous", {
        "marker": "continuous_config.json", "eval": "difflm.continuous.evaluation:continuous_eval_lm"}),
    "checkpoint": ("difflm.formats.loaders:load_checkpoint_dir", {
        "marker": None, "dlm_class": "difflm.model:DiffusionLM"}),
})

# -- decoding strategies (difflm.sampling.strategies.Strategy subclasses; `get_strategy` builds them by name,
# -- tests/test_strategy_contracts.py holds every entry to the sampler's invariants) -----------------------
STRATEGIES = Registry("strategy", {
    "random": "difflm.sampling.strategies:RandomOrder",
    "low_confidence": "difflm.sampling.strategies:LowConfidence",
    "maskgit_plus": "difflm.sampling.strategies:MaskGITPlus",
    "topk_margin": "difflm.sampling.strategies:TopKMargin",
    "entropy": "difflm.sampling.strategies:Entropy",
    "threshold": "difflm.sampling.strategies:Threshold",
})

# -- what `DiffusionLM.generate` / `.infill` run: the sampler sits above the model, which reaches it here ----
DECODING = Registry("decoding entry point", {
    "generate": "difflm.sampling:generate",
    "infill": "difflm.sampling:infill",
})

# -- evaluation tasks of `difflm eval --tasks` (difflm.evaluation.registry.TaskSpec) ----------------------
EVAL_TASKS = Registry("evaluation task", {name: f"difflm.evaluation.registry:TASK_SPECS.{name}" for name in (
    "perplexity", "last-word", "multiple-choice", "infilling", "lambada", "hellaswag", "piqa", "siqa",
    "winogrande", "rocstories", "gsm8k", "humaneval", "humaneval-infill", "sudoku", "countdown")})

# -- synthetic task suites of `difflm data make` (difflm.tasks.TaskGenerator) ----------------------------
DATA_TASKS = Registry("data task", {
    "gsm": "difflm.tasks.gsm:GENERATOR",
    "sudoku": "difflm.tasks.sudoku:GENERATOR",
    "countdown": "difflm.tasks.countdown:GENERATOR",
})

# -- verifiable rewards for RL: `reward(prompt, completion, **example_fields) -> float` (difflm.rewards; a YAML
# -- names these or a user "module:function"); meta "range": the values each returns (tests hold them to it)
_UNIT = {"range": (0.0, 1.0)}
REWARDS = Registry("reward", {
    "correct": ("difflm.rewards.tasks:task_correct", _UNIT),  # the example's task, told by its fields
    "format": ("difflm.rewards.tasks:task_format", _UNIT),
    "gsm_correct": ("difflm.rewards.tasks:gsm_correct", _UNIT),
    "gsm_format": ("difflm.rewards.tasks:gsm_format", _UNIT),
    "sudoku_solved": ("difflm.rewards.tasks:sudoku_solved", _UNIT),
    "sudoku_valid": ("difflm.rewards.tasks:sudoku_valid", _UNIT),
    "sudoku_cells": ("difflm.rewards.tasks:sudoku_cells", _UNIT),
    "sudoku_format": ("difflm.rewards.tasks:sudoku_format", _UNIT),
    "countdown_solved": ("difflm.rewards.tasks:countdown_solved", _UNIT),
    "countdown_format": ("difflm.rewards.tasks:countdown_format", _UNIT),
})

# -- model families beyond the masked core: each registers its CLI flags, generation runner and
# -- evaluation adapter in one torch-free module (difflm.cli.family.FamilyPlugin) ------------------------
# -- (in the order they are asked to claim a run: a family claimed by a flag before one told by a marker file)
FAMILIES = Registry("family", {
    "multimodal": "difflm.multimodal.plugin:PLUGIN",
    "continuous": "difflm.continuous.plugin:PLUGIN",
})

# -- fixed vocabularies of options (names only: the code that uses them is in one place each) -----------
CACHE_MODES = ("none", "prefix", "dual", "block")  # difflm.sampling.denoiser.Denoiser
ATTENTION_OVERRIDES = ("causal", "bidirectional", "block_causal")  # SamplerOptions.attention
REVEAL_SCHEDULES = ("equal", "dream")  # how many tokens a step reveals (SamplerOptions.schedule)
FILTER_ORDERS = ("top_k_first", "top_p_first")  # SamplerOptions.filter_order
RANDOM_STREAMS = ("difflm", "transformers")  # SamplerOptions.random_stream (difflm.sampling.renoise)
DATA_SPLITS = ("train", "validation", "test")  # difflm.tasks.splits
GSM_SUMS = ("whole", "pairwise")  # difflm.tasks.gsm
