"""One interface over the models an evaluation compares: AR causal LMs and diffusion LMs.

Tasks only ever call `EvalLM`: ``nll`` (exact for an AR model, the Monte Carlo ELBO bound for a DLM),
``generate`` (greedy continuation), ``fill`` (infilling; an AR model sees only the prefix, as in the
DiffuLLaMA paper's AR baselines) and ``greedy_matches``. `AREvalLM` wraps a transformers causal LM,
`DiffusionEvalLM` a `DiffusionLM`; a family's models bring their own subclass. Which one a directory
becomes is decided in `difflm.evaluation.loading` (`load_eval_lm`) from what `difflm.formats.load` found.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Sequence, TypeVar

import torch

from .. import rng, sampling
from ..errors import ModelLoadError
from ..sampling import SamplerOptions
from ..sampling.options import model_length, model_options
from .likelihood import NLLEstimate, ScoreRequest, ar_nll, elbo_nll, reference_score
from .settings import EvalSettings

__all__ = ["AREvalLM", "DiffusionEvalLM", "EvalLM", "EvalSettings", "GenerationStats", "Layout", "cut_at_eos",
           "grouped"]


T = TypeVar("T")


def grouped(items: Sequence[T], key: Callable[[T], Hashable]) -> list[tuple[Hashable, list[int]]]:
    """Indices of ``items`` grouped by ``key`` (first-seen order): a generation batch needs one length."""
    groups: dict[Hashable, list[int]] = defaultdict(list)
    for i, item in enumerate(items):
        groups[key(item)].append(i)
    return list(groups.items())


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
    def max_new_tokens(self) -> int:
        """The generation budget of open-ended tasks: the settings' ``max_new_tokens``, else what the
        model recommends (a DLM's generation_config.json), else `DEFAULT_MAX_NEW_TOKENS`."""
        return self.settings.generation_budget()

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


def cut_at_eos(ids: list[int], eos: int | None) -> list[int]:
    """``ids`` up to (without) the first ``eos``."""
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
            out.extend(cut_at_eos(row[width:].tolist(), self.eos_token_id) for row in gen)
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
        # over the model's own decoding settings (its generation_config.json) where the settings leave one at None
        self.sampler_options: SamplerOptions = self.settings.sampler_options(model_options(model))
        # infilling has a given length (no stop at EOS) and a suffix (no self-speculation, which continues)
        self.infill_options = dataclasses.replace(self.sampler_options, stop_at_eos=False, speculative=False)
        self.generation_stats = GenerationStats()

    @property
    def max_new_tokens(self) -> int:
        return self.settings.generation_budget(model_length(self.model))

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
        # through the module: a test (or a profiler) may wrap difflm.sampling.generate
        result = sampling.generate(self.model, prompts, max_new_tokens=max_new_tokens, options=self.sampler_options,
                          generator=self.sampler_generator(), return_dict=True)
        return result.new_tokens, result.steps

    def infill_rows(self, prefixes: list[list[int]], suffixes: list[list[int]], length: int) -> torch.Tensor:
        """The sampler's canvas [B, W] of one batch: rows [pad | prefix | middle | suffix]."""
        return sampling.infill(self.model, prefixes, suffixes, middle_length=length, options=self.infill_options,
                      generator=self.sampler_generator())

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> list[list[int]]:
        """New tokens up to EOS (with ``stop_at_eos``: up to the first EOS/pad, as the sampler cuts
        them); the cost goes to ``generation_stats``."""
        out: list[list[int]] = []
        for batch in self._batches([list(p) for p in prompts]):
            rows, steps = self.generate_batch(batch, max_new_tokens)
            rows = [cut_at_eos(list(row), self.eos_token_id) for row in rows]
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
        # what decoding really ran with: the settings over the model's saved defaults over the sampler's,
        # every field (a report reproduces its numbers without knowing which layer set which value)
        out["decoding"] = {"max_new_tokens": self.max_new_tokens, **dataclasses.asdict(self.sampler_options)}
        saved = getattr(self.model, "generation_defaults", None)
        if saved is not None:  # the model's own decoding settings (generation_config.json), under the settings'
            out["generation_defaults"] = saved.to_json()
        if self.generation_stats.sequences:  # what generation cost so far (the report: over all its tasks)
            out["generation"] = self.generation_stats.to_dict()
        return out
