"""One interface over the models an evaluation compares: AR causal LMs and diffusion LMs.

Tasks only ever call `EvalLM`: ``nll`` (exact for an AR model, the Monte Carlo ELBO bound for a DLM),
``generate`` (greedy continuation), ``fill`` (infilling; an AR model sees only the prefix, as in the
DiffuLLaMA paper's AR baselines) and ``greedy_matches``. `load_eval_lm` picks the right class from the
checkpoint layout: a plain transformers causal-LM directory is an AR model, a difflm (or DiffuGPT)
directory a DLM.
"""

from __future__ import annotations

import dataclasses
import os
from abc import ABC, abstractmethod
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Hashable, Sequence, TypeVar

import torch

from ..errors import InputError, ModelLoadError
from .likelihood import ESTIMATORS, NLLEstimate, ScoreRequest, ar_nll, elbo_nll, reference_score


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

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "progress"}


T = TypeVar("T")


def grouped(items: Sequence[T], key: Callable[[T], Hashable]) -> list[tuple[Hashable, list[int]]]:
    """Indices of ``items`` grouped by ``key`` (first-seen order): a generation batch needs one length."""
    groups: dict[Hashable, list[int]] = defaultdict(list)
    for i, item in enumerate(items):
        groups[key(item)].append(i)
    return list(groups.items())


class EvalLM(ABC):
    """A model under evaluation: its tokenizer, settings and the four operations tasks use."""

    kind = "base"  # "ar" | "dlm"

    def __init__(self, model: Any, tokenizer: Any, settings: EvalSettings | None = None, name: str = "model") -> None:
        if tokenizer is None:
            raise ModelLoadError(f"{name} has no tokenizer; save one next to the weights (tokenizer.json) to evaluate it")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.settings = settings or EvalSettings()
        self.name = name

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
        return {"name": self.name, "kind": self.kind}

    def _batches(self, items: Sequence[Any]) -> list[Sequence[Any]]:
        size = self.settings.batch_size
        return [items[i : i + size] for i in range(0, len(items), size)]


def _cut_at_eos(ids: list[int], eos: int | None) -> list[int]:
    return ids[: ids.index(eos)] if eos is not None and eos in ids else ids


class AREvalLM(EvalLM):
    """A transformers causal LM: exact likelihoods, greedy decoding with the KV cache."""

    kind = "ar"

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
            x = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
            attn = torch.zeros_like(x)
            for b, p in enumerate(batch):  # left padding: every row's next token lands in the same column
                x[b, width - len(p) :] = torch.tensor(list(p))
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

    def _sampler_options(self, tokens: int) -> dict[str, Any]:
        s = self.settings
        return {"steps": s.steps or tokens, "strategy": s.strategy, "block_length": s.block_length,
                "generator": torch.Generator().manual_seed(s.seed)}

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> list[list[int]]:
        from ..sampling import generate

        out: list[list[int]] = []
        for batch in self._batches([list(p) for p in prompts]):
            canvas = generate(self.model, batch, max_new_tokens=max_new_tokens, **self._sampler_options(max_new_tokens))
            out.extend(_cut_at_eos(row[-max_new_tokens:].tolist(), self.eos_token_id) for row in canvas)
        return out

    def fill(self, prefixes: Sequence[Sequence[int]], suffixes: Sequence[Sequence[int]], length: int) -> list[list[int]]:
        from ..sampling import infill

        out: list[list[int]] = []
        pairs = list(zip([list(p) for p in prefixes], [list(s) for s in suffixes]))
        for batch in self._batches(pairs):
            canvas = infill(self.model, [p for p, _ in batch], [s for _, s in batch], middle_length=length,
                            **self._sampler_options(length))
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
        return {**super().describe(), "diffusion_config": self.model.config.to_dict()}


def load_eval_lm(name_or_path: str | os.PathLike, settings: EvalSettings | None = None, *,
                 dtype: torch.dtype | str = torch.float32, device: str | None = None) -> EvalLM:
    """Load a model for evaluation: a bundled name (``ar-base``, ``dlm-adapted``, ...) or a directory.

    A plain transformers causal LM becomes an `AREvalLM` (exact NLL); a difflm or DiffuGPT directory a
    `DiffusionEvalLM` (ELBO). Weights are cast to ``dtype`` (float32 by default: scores should not
    depend on the storage precision).
    """
    from ..bundled import resolve_model
    from ..formats import detect_format, load_tokenizer

    path = Path(resolve_model(name_or_path))
    if not path.exists():
        raise ModelLoadError(f"no model at {path}; pass a model directory or a bundled name (ar-base, dlm-adapted, dlm-scratch)")
    fmt = detect_format(path)
    if fmt == "causal-lm":
        from transformers import AutoModelForCausalLM

        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise ModelLoadError(f"could not load a causal LM from {path}: {exc}") from None
        lm: EvalLM = AREvalLM(model, load_tokenizer(path), settings, name=str(name_or_path))
    else:
        from ..model import DiffusionLM

        dlm = DiffusionLM.from_pretrained(path, dtype=dtype)
        lm = DiffusionEvalLM(dlm, dlm.tokenizer, settings, name=str(name_or_path))
    if device is not None:
        lm.model.to(device)
    return lm
