"""One interface over the models an evaluation compares: AR causal LMs and diffusion LMs.

Tasks only ever call `EvalLM`: ``nll`` (exact for an AR model, the Monte Carlo ELBO bound for a DLM),
``generate`` (greedy continuation), ``fill`` (infilling; an AR model sees only the prefix, as in the
DiffuLLaMA paper's AR baselines) and ``greedy_matches``. `load_eval_lm` picks the right class from the
checkpoint layout (detected, or given as ``format``): the ``causal-lm`` layout (a plain transformers
causal LM) is an AR model, every other layout a DLM. DiffuLLaMA's published files *are* a plain LLaMA,
so it is detected as ``causal-lm`` (and scored as AR) unless ``format="diffullama"`` says otherwise;
`scoring_summary` is the one line that tells the user which layout and which score were used.
"""

from __future__ import annotations

import dataclasses
import os
from abc import ABC, abstractmethod
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Hashable, Sequence, TypeVar

import torch

from .. import rng
from ..errors import InputError, ModelLoadError
from .likelihood import ESTIMATORS, NLLEstimate, ScoreRequest, ar_nll, elbo_nll, reference_score

if TYPE_CHECKING:
    from ..sampling import SamplerOptions


@dataclass
class EvalSettings:
    """How models are scored and decoded. Everything that changes a number is in here (and in the JSON).

    n_samples: Monte Carlo samples (= forward passes) per scored sequence of a DLM.
    estimator: "count" (LLaDA's l-sampling) or "time" (t-sampling), see `difflm.evaluation.likelihood`.
    stratified: stratify l (or t) across the samples of one sequence.
    common_random_numbers: the options of a multiple-choice question share their random draws, so
        that their comparison is less noisy than each option's own error.
    seed: base seed of every random draw.
    batch_size: sequences per forward pass.
    reference_steps: T of DiffuGPT's unweighted multiple-choice score (0 = do not compute it).
    steps: denoising steps per generation (None = one per generated token, the reference protocol).
    block_length, strategy: sampler options (semi-autoregressive blocks, commit strategy).
    threshold: confidence threshold in (0, 1] of strategy "threshold" (None = the sampler's 0.9).
    cache: the sampler's block-wise KV cache: "none", "prefix", "dual" (or "block").
    stop_at_eos: stop a generated row once a finished block holds EOS/pad (variable-length answers,
        e.g. GSM8K); applies to open-ended generation, not to infilling (its length is given).
    The DLM sampler options (steps .. stop_at_eos) are validated here, before any model loads; an AR
    model ignores them.
    max_new_tokens: generation budget of open-ended tasks (GSM8K, HumanEval).
    limit: evaluate only the first ``limit`` examples of each task.
    """

    n_samples: int = 32
    estimator: str = "count"
    stratified: bool = True
    common_random_numbers: bool = True
    seed: int = 0
    batch_size: int = 16
    reference_steps: int = 0
    steps: int | None = None
    block_length: int | None = None
    strategy: str = "low_confidence"
    threshold: float | None = None
    cache: str = "none"
    stop_at_eos: bool = False
    max_new_tokens: int = 256
    limit: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        def positive(name: str, value: Any, minimum: int = 1) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")

        positive("n_samples", self.n_samples)
        positive("batch_size", self.batch_size)
        positive("reference_steps", self.reference_steps, 0)
        positive("max_new_tokens", self.max_new_tokens)
        for name in ("steps", "block_length", "limit"):
            if getattr(self, name) is not None:
                positive(name, getattr(self, name))
        if self.estimator not in ESTIMATORS:
            raise InputError(f"unknown estimator {self.estimator!r}; choose one of {', '.join(ESTIMATORS)}")
        if self.threshold is not None and (isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float))):
            raise InputError(f"threshold must be a number in (0, 1], got {self.threshold!r}")
        if not isinstance(self.stop_at_eos, bool):
            raise InputError(f"stop_at_eos must be true or false, got {self.stop_at_eos!r}")
        self.sampler_options()  # strategy, threshold and cache: fail now, not after the model loaded

    def sampler_options(self) -> SamplerOptions:
        """The DLM sampler's options of these settings (validated: `InputError` on a bad value)."""
        from ..sampling import SamplerOptions

        return SamplerOptions(steps=self.steps, strategy=self.strategy, block_length=self.block_length,
                              threshold=self.threshold, cache=self.cache, stop_at_eos=self.stop_at_eos)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "progress"}


T = TypeVar("T")


def grouped(items: Sequence[T], key: Callable[[T], Hashable]) -> list[tuple[Hashable, list[int]]]:
    """Indices of ``items`` grouped by ``key`` (first-seen order): a generation batch needs one length."""
    groups: dict[Hashable, list[int]] = defaultdict(list)
    for i, item in enumerate(items):
        groups[key(item)].append(i)
    return list(groups.items())


AR_FORMAT = "causal-lm"  # the one layout scored as an AR model (exact NLL); every other one is a DLM


def check_format(format: str | None) -> str | None:
    """``format`` if it names a checkpoint layout (`difflm.formats.FORMATS`) or is None; else `InputError`."""
    from ..formats import FORMATS

    if format is not None and format not in FORMATS:
        raise InputError(f"unknown format {format!r}; choose one of {', '.join(FORMATS)} "
                         f"({AR_FORMAT}: a plain causal LM, scored as an AR model; the others: scored as DLMs)")
    return format


@dataclass(frozen=True)
class Layout:
    """The checkpoint layout a model was loaded as: its `difflm.formats` name, whether the caller gave
    it (else it was detected) and why it was chosen."""

    format: str
    given: bool
    reason: str
    model_type: str | None = None  # config.json's


class EvalLM(ABC):
    """A model under evaluation: its tokenizer, settings and the four operations tasks use."""

    kind = "base"  # "ar" | "dlm"
    scoring = "its own nll()"  # how likelihoods are computed, in words (the report, `scoring_summary`)

    def __init__(self, model: Any, tokenizer: Any, settings: EvalSettings | None = None, name: str = "model",
                 layout: Layout | None = None) -> None:
        if tokenizer is None:
            raise ModelLoadError(f"{name} has no tokenizer; save one next to the weights (tokenizer.json) to evaluate it")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.settings = settings or EvalSettings()
        self.name = name
        self.layout = layout

    # -- text <-> ids ---------------------------------------------------------------------------
    @property
    def bos(self) -> list[int]:
        """[BOS] if the tokenizer has one (prepended to every scored or generated sequence), else []."""
        bos = self.tokenizer.bos_token_id
        return [] if bos is None else [int(bos)]

    @property
    def eos_token_id(self) -> int | None:
        return self.tokenizer.eos_token_id

    @property
    @abstractmethod
    def max_length(self) -> int | None:
        """Longest sequence (context + targets) the model takes."""

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` up to the first EOS, special tokens dropped."""
        ids = list(ids)
        if self.eos_token_id is not None and self.eos_token_id in ids:
            ids = ids[: ids.index(self.eos_token_id)]
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    # -- the operations -------------------------------------------------------------------------
    @abstractmethod
    def nll(self, requests: Sequence[ScoreRequest], keys: Sequence[int] | None = None) -> list[NLLEstimate]:
        """-log p(targets | context) per request, in nats (exact, or an upper-bound estimate). ``keys``:
        requests with equal keys share random numbers (see `elbo_nll`)."""

    @abstractmethod
    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> list[list[int]]:
        """Greedy continuation of each prompt: up to ``max_new_tokens`` new ids (cut at EOS)."""

    @abstractmethod
    def fill(self, prefixes: Sequence[Sequence[int]], suffixes: Sequence[Sequence[int]], length: int) -> list[list[int]]:
        """``length`` tokens between each prefix and suffix (greedy)."""

    @abstractmethod
    def greedy_matches(self, requests: Sequence[ScoreRequest]) -> list[bool]:
        """Whether greedy decoding of each request's targets reproduces them exactly."""

    def reference_score(self, requests: Sequence[ScoreRequest], keys: Sequence[int] | None = None) -> list[float] | None:
        """DiffuGPT's unweighted multiple-choice score (DLMs only; None when not applicable)."""
        return None

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind, "scoring": self.scoring}
        if self.layout is not None:
            out.update(layout=self.layout.format, layout_given=self.layout.given, layout_reason=self.layout.reason)
        return out

    def _batches(self, items: Sequence[Any]) -> list[Sequence[Any]]:
        size = self.settings.batch_size
        return [items[i : i + size] for i in range(0, len(items), size)]


def _cut_at_eos(ids: list[int], eos: int | None) -> list[int]:
    return ids[: ids.index(eos)] if eos is not None and eos in ids else ids


@dataclass
class GenerationStats:
    """What a DLM's open-ended generation (`DiffusionEvalLM.generate`) cost, summed over a run.

    sequences: generated rows; tokens: the tokens they returned (the answers, cut before EOS);
    model_calls: denoising steps run, each one batched forward pass (`Generation.steps`);
    row_calls: each row charged the steps of its batch. ``tokens_per_call`` = tokens / row_calls: the
    mean answer tokens one row gained per model call (1 or less for one token per step; more with
    threshold decoding).
    """

    sequences: int = 0
    tokens: int = 0
    model_calls: int = 0
    row_calls: int = 0

    def add(self, rows: Sequence[Sequence[int]], steps: int) -> None:
        """Count one sampler call: ``rows`` its answers, ``steps`` its model calls."""
        self.sequences += len(rows)
        self.tokens += sum(len(r) for r in rows)
        self.model_calls += steps
        self.row_calls += steps * len(rows)

    def since(self, earlier: "GenerationStats") -> "GenerationStats":
        """What was counted after the snapshot ``earlier`` (a copy of these stats taken then): one task's cost."""
        return GenerationStats(self.sequences - earlier.sequences, self.tokens - earlier.tokens,
                               self.model_calls - earlier.model_calls, self.row_calls - earlier.row_calls)

    def to_dict(self) -> dict[str, Any]:
        return {"sequences": self.sequences, "tokens": self.tokens, "model_calls": self.model_calls,
                "tokens_per_call": round(self.tokens / self.row_calls, 4) if self.row_calls else None}


class AREvalLM(EvalLM):
    """A transformers causal LM: exact likelihoods, greedy decoding with the KV cache."""

    kind = "ar"
    scoring = "the exact AR NLL"

    @property
    def max_length(self) -> int | None:
        cfg = self.model.config
        return getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)

    @property
    def pad_token_id(self) -> int:
        return next((int(i) for i in (self.tokenizer.pad_token_id, self.eos_token_id) if i is not None), 0)

    def nll(self, requests: Sequence[ScoreRequest], keys: Sequence[int] | None = None) -> list[NLLEstimate]:
        s = self.settings
        return ar_nll(self.model, requests, pad_token_id=self.pad_token_id, batch_size=s.batch_size, progress=s.progress)

    def greedy_matches(self, requests: Sequence[ScoreRequest]) -> list[bool]:
        return [bool(e.greedy) for e in self.nll(requests)]

    @torch.inference_mode()
    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> list[list[int]]:
        out: list[list[int]] = []
        device = self.model.get_output_embeddings().weight.device
        for batch in self._batches(list(prompts)):
            width = max(len(p) for p in batch)
            x = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long, device="cpu")
            attn = torch.zeros_like(x)
            for b, p in enumerate(batch):  # left padding: every row's next token lands in the same column
                x[b, width - len(p) :] = torch.tensor(list(p), dtype=torch.long, device="cpu")
                attn[b, width - len(p) :] = 1
            gen = self.model.generate(
                input_ids=x.to(device), attention_mask=attn.to(device), max_new_tokens=max_new_tokens, do_sample=False,
                pad_token_id=self.pad_token_id, eos_token_id=self.eos_token_id,
            )
            out.extend(_cut_at_eos(row[width:].tolist(), self.eos_token_id) for row in gen)
        return out

    def fill(self, prefixes: Sequence[Sequence[int]], suffixes: Sequence[Sequence[int]], length: int) -> list[list[int]]:
        # An AR model cannot look ahead: it continues the prefix (the paper's AR infilling baseline).
        return self.generate(prefixes, length)


class DiffusionEvalLM(EvalLM):
    """A `DiffusionLM`: ELBO likelihoods, generation and infilling by the difflm sampler."""

    kind = "dlm"

    def __init__(self, model: Any, tokenizer: Any, settings: EvalSettings | None = None, name: str = "model",
                 layout: Layout | None = None) -> None:
        super().__init__(model, tokenizer, settings, name, layout)
        # Built once (EvalSettings validated it before the model loaded); steps None = one per
        # generated token, the reference protocol. Infilling has a given length: no stop at EOS.
        self.sampler_options: SamplerOptions = self.settings.sampler_options()
        self.infill_options = dataclasses.replace(self.sampler_options, stop_at_eos=False) \
            if self.sampler_options.stop_at_eos else self.sampler_options
        self.generation_stats = GenerationStats()

    @property
    def scoring(self) -> str:
        s = self.settings
        kind = f"the block ELBO (blocks of {self.model.config.block_size})" if self.model.config.block_size else "the ELBO"
        return f"{kind} (Monte Carlo, {s.n_samples} samples, {s.estimator} estimator)"

    @property
    def max_length(self) -> int | None:
        return self.model.max_length

    def nll(self, requests: Sequence[ScoreRequest], keys: Sequence[int] | None = None) -> list[NLLEstimate]:
        s = self.settings
        return elbo_nll(self.model, requests, n_samples=s.n_samples, estimator=s.estimator, stratified=s.stratified,
                        seed=s.seed, keys=keys, batch_size=s.batch_size, progress=s.progress)

    def reference_score(self, requests: Sequence[ScoreRequest], keys: Sequence[int] | None = None) -> list[float] | None:
        s = self.settings
        if not s.reference_steps:
            return None
        return reference_score(self.model, requests, steps=s.reference_steps, seed=s.seed, keys=keys,
                               batch_size=s.batch_size, progress=s.progress)

    def sampler_generator(self) -> torch.Generator:
        """The generator of one sampler call: a CPU generator seeded with the settings' seed. The sampler
        draws on its device and moves the draws (`difflm.rng`), so a seed decodes alike on every device."""
        return rng.seeded_generator(self.settings.seed)

    def generate_batch(self, prompts: list[list[int]], max_new_tokens: int) -> tuple[list[list[int]], int | None]:
        """One batch of prompts: each row's new tokens (with ``stop_at_eos`` cut where the sampler cut
        them) and the model calls the batch took (None where the sampler does not count them)."""
        from ..sampling import generate

        result = generate(self.model, prompts, max_new_tokens=max_new_tokens, options=self.sampler_options,
                          generator=self.sampler_generator(), return_dict=True)
        return result.new_tokens, result.steps

    def infill_rows(self, prefixes: list[list[int]], suffixes: list[list[int]], length: int) -> torch.Tensor:
        """The sampler's canvas [B, W] of one batch: rows [pad | prefix | middle | suffix]."""
        from ..sampling import infill

        return infill(self.model, prefixes, suffixes, middle_length=length, options=self.infill_options,
                      generator=self.sampler_generator())

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> list[list[int]]:
        """New tokens up to EOS (with ``stop_at_eos``: up to the first EOS/pad, as the sampler cuts
        them); the cost goes to ``generation_stats``."""
        out: list[list[int]] = []
        for batch in self._batches([list(p) for p in prompts]):
            rows, steps = self.generate_batch(batch, max_new_tokens)
            rows = [_cut_at_eos(list(row), self.eos_token_id) for row in rows]
            if steps is not None:
                self.generation_stats.add(rows, steps)
            out.extend(rows)
        return out

    def fill(self, prefixes: Sequence[Sequence[int]], suffixes: Sequence[Sequence[int]], length: int) -> list[list[int]]:
        out: list[list[int]] = []
        pairs = list(zip([list(p) for p in prefixes], [list(s) for s in suffixes]))
        for batch in self._batches(pairs):
            canvas = self.infill_rows([p for p, _ in batch], [s for _, s in batch], length)
            for row, (_, suffix) in zip(canvas.tolist(), batch):
                end = len(row) - len(suffix)  # rows are left-padded: [pad | prefix | middle | suffix]
                out.append(row[end - length : end])
        return out

    def greedy_matches(self, requests: Sequence[ScoreRequest]) -> list[bool]:
        """Mask each request's targets and decode them greedily (LLaDA's check): batched by target length."""
        matches = [False] * len(requests)
        for length, idx in grouped(requests, lambda r: r.num_targets):
            rs = [requests[i] for i in idx]
            filled = self.fill([r.ids[: r.start] for r in rs], [r.ids[r.end :] for r in rs], int(length))
            for i, r, ids in zip(idx, rs, filled):
                matches[i] = ids == list(r.ids[r.start : r.end])
        return matches

    def describe(self) -> dict[str, Any]:
        out = {**super().describe(), "diffusion_config": self.model.config.to_dict()}
        if self.generation_stats.sequences:  # what generation cost so far (the report: over all its tasks)
            out["generation"] = self.generation_stats.to_dict()
        return out


_STOCK_WEIGHTS = ("difflm", "diffullama", AR_FORMAT)  # layouts whose weights a stock causal LM loads as stored


def load_eval_lm(name_or_path: str | os.PathLike, settings: EvalSettings | None = None, *, format: str | None = None,
                 dtype: torch.dtype | str = torch.float32, device: str | None = None) -> EvalLM:
    """Load a model for evaluation: a bundled name (``ar-base``, ``dlm-adapted``, ...) or a directory.

    ``format`` (a name of `difflm.formats.FORMATS`, as for `DiffusionLM.from_pretrained`) gives the
    checkpoint layout instead of detecting it. The ``causal-lm`` layout becomes an `AREvalLM` (exact
    NLL); every other layout a `DiffusionEvalLM` (ELBO). A plain LLaMA directory is detected as
    ``causal-lm``: DiffuLLaMA needs ``format="diffullama"``. The result's ``layout`` records the
    choice; `scoring_summary` says it in one line. Weights are cast to ``dtype`` (float32 by default:
    scores should not depend on the storage precision).
    """
    from ..bundled import resolve_model
    from ..formats import detect, load_tokenizer

    check_format(format)
    path = Path(resolve_model(name_or_path))
    if not path.exists():
        raise ModelLoadError(f"no model at {path}; pass a model directory or a bundled name (ar-base, dlm-adapted, dlm-scratch)")
    from ..continuous.config import is_continuous_model

    if format is None and is_continuous_model(path):  # an embedding-space DLM (difflm.continuous)
        from ..continuous.evaluation import load_continuous_eval_lm

        return load_continuous_eval_lm(path, settings, name=str(name_or_path), dtype=dtype, device=device)
    if format is None and (path / "difflm_adapter.json").is_file():  # a LoRA adapter (difflm.training.lora)
        from ..training.lora import load_adapter_for_eval

        adapted = load_adapter_for_eval(path, settings, name=str(name_or_path), dtype=dtype)
        if device is not None:
            adapted.model.to(device)
        return adapted
    found = detect(path, format)
    layout = Layout(found.format, format is not None, found.reason if format is None else "given by the caller",
                    found.checkpoint.model_type)
    if found.format == AR_FORMAT:
        from transformers import AutoModelForCausalLM

        if format is not None:  # forced: refuse layouts whose weights a stock class would not find (random init)
            try:
                stored = detect(path).format
            except ModelLoadError:
                stored = AR_FORMAT
            if stored not in _STOCK_WEIGHTS:
                raise ModelLoadError(f"{path} is in the {stored} layout, whose weights a stock causal LM cannot load; "
                                     f"it can only be evaluated as a DLM (format {stored})")
        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ModelLoadError(f"could not load a causal LM from {path}: {exc}") from None
        lm: EvalLM = AREvalLM(model, load_tokenizer(path), settings, name=str(name_or_path), layout=layout)
    else:
        from ..model import DiffusionLM

        dlm = DiffusionLM.from_pretrained(path, format=found.format, dtype=dtype)
        lm = DiffusionEvalLM(dlm, dlm.tokenizer, settings, name=str(name_or_path), layout=layout)
    if device is not None:
        lm.model.to(device)
    return lm


def scoring_summary(lm: EvalLM, option: str = "--format") -> str:
    """One line for stderr: which layout ``lm`` was loaded as (given or detected, and why) and how it is
    scored. ``option`` is how the user gives a layout (``--format`` on difflm's command line,
    ``format`` in lm-eval's model arguments)."""

    def given(fmt: str) -> str:
        return f"{option} {fmt}" if option.startswith("-") else f"{option}={fmt}"

    layout = lm.layout
    if layout is None:
        where = f"layout unknown ({type(lm).__name__} built directly)"
    elif layout.given:
        where = f"layout {layout.format} (given by {option})"
    else:
        where = f"layout {layout.format} (detected: {layout.reason})"
    line = f"difflm: model {lm.name}: {where}, scored by {lm.scoring}"
    if layout is not None and not layout.given and layout.format == AR_FORMAT and layout.model_type == "llama":
        line += f"; if it is a DiffuLLaMA checkpoint, pass {given('diffullama')}"
    return line
