"""`ContinuousEvalLM`: a continuous DLM behind the evaluation interface (`difflm eval`, the bench).

Likelihoods are the variational bound of `difflm.continuous.likelihood` (an upper bound on the NLL,
like a masked DLM's ELBO, so both sit in one table with the AR model's exact NLL); generation and
infilling use the DDIM sampler (eta = 0: the seed fixes the starting noise and nothing else).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from .. import rng
from ..errors import ModelLoadError
from ..evaluation.likelihood import NLLEstimate, ScoreRequest, check_requests, item_seed
from ..evaluation.lm import DiffusionEvalLM, EvalLM, EvalSettings, Layout
from ..evaluation.progress import progress_bar
from ..formats import LoadedModel
from .likelihood import nll_bound
from .model import load_continuous
from .sampler import ContinuousSamplerOptions, generate, infill


class ContinuousEvalLM(DiffusionEvalLM):
    """A `ContinuousDLM` under evaluation: a DLM to the tasks (kind "dlm": its scores are reported as
    bounds; generation, infilling and greedy matching are the masked DLM's loops over this sampler)."""

    @property
    def scoring(self) -> str:
        return f"the continuous-diffusion NLL bound (variational, Monte Carlo, {self.settings.n_samples} samples)"

    def continuous_options(self, length: int) -> ContinuousSamplerOptions:
        """DDIM with ``settings.steps`` steps (default: one per generated token, as for masked DLMs)."""
        return ContinuousSamplerOptions(steps=self.settings.steps or max(1, length))

    def nll(self, requests: Sequence[ScoreRequest], keys: Sequence[int] | None = None) -> list[NLLEstimate]:
        """Every request's ``n_samples`` bound samples in one batch, drawn from a generator seeded by
        (seed, key): results depend neither on the batch size nor on the other requests."""
        s = self.settings
        check_requests(requests, vocab_size=self.model.config.vocab_size, max_length=self.max_length, first_target=0)
        out = []
        with progress_bar(len(requests), "bound", enabled=s.progress) as advance:
            for n, request in enumerate(requests):
                out.append(self._bound(request, n if keys is None else keys[n]))
                advance(1)
        return out

    def _bound(self, request: ScoreRequest, key: int) -> NLLEstimate:
        """``n_samples`` samples of the bound of one request, the times stratified across them."""
        s = self.settings
        gen = rng.seeded_generator(item_seed(s.seed, key))
        ids = torch.tensor(request.ids, dtype=torch.long)[None].expand(s.n_samples, -1)
        clean = torch.ones_like(ids, dtype=torch.bool)
        clean[:, request.start : request.end] = False
        if s.stratified:
            u = (rng.uniform((1,), generator=gen) + torch.arange(s.n_samples)) / s.n_samples
        else:
            u = rng.uniform((s.n_samples,), generator=gen)
        totals = nll_bound(self.model, ids, clean, generator=gen, u=u).total.tolist()
        mean = sum(totals) / len(totals)
        var = sum((v - mean) ** 2 for v in totals) / (len(totals) - 1) if len(totals) > 1 else math.nan
        return NLLEstimate(mean, math.sqrt(var / len(totals)), request.num_targets, s.n_samples)

    def reference_score(self, requests: Sequence[ScoreRequest], keys: Sequence[int] | None = None) -> None:
        return None  # DiffuGPT's masking-rate score has no continuous counterpart

    def generate_batch(self, prompts: list[list[int]], max_new_tokens: int) -> tuple[list[list[int]], None]:
        canvas = generate(self.model, prompts, max_new_tokens, options=self.continuous_options(max_new_tokens),
                          generator=self.sampler_generator())
        return [row[-max_new_tokens:].tolist() for row in canvas], None  # its sampler counts no calls

    def infill_rows(self, prefixes: list[list[int]], suffixes: list[list[int]], length: int) -> torch.Tensor:
        return infill(self.model, prefixes, suffixes, length, options=self.continuous_options(length),
                      generator=self.sampler_generator())

    def describe(self) -> dict[str, Any]:
        return {**EvalLM.describe(self), "continuous_config": self.model.config.to_dict(),
                "parameters": self.model.num_parameters}


def continuous_eval_lm(loaded: LoadedModel, settings: EvalSettings | None = None, *,
                       name: str = "model") -> ContinuousEvalLM:
    """The evaluation adapter of the "continuous" kind of `difflm.registry.MODEL_KINDS` (``meta["eval"]``):
    ``difflm eval`` reaches it for a directory holding continuous_config.json."""
    if loaded.tokenizer is None:
        raise ModelLoadError(f"{loaded.path} has no tokenizer; save one next to the weights to evaluate it")
    layout = Layout(loaded.format, loaded.given, loaded.reason, loaded.model_type)
    return ContinuousEvalLM(loaded.model, loaded.tokenizer, settings, name=name, layout=layout)


def load_continuous_eval_lm(path: Any, settings: EvalSettings | None = None, *, name: str = "model",
                            dtype: torch.dtype = torch.float32, device: str | None = None) -> ContinuousEvalLM:
    """A continuous DLM directory as an `EvalLM` (what `difflm.evaluation.load_eval_lm` gives for one)."""
    return continuous_eval_lm(load_continuous(path, dtype=dtype).to(device), settings, name=name)
