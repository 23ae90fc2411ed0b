"""lm-evaluation-harness adapter: the model type ``difflm``, for AR models and DLMs alike.

* ``loglikelihood``: -log p(continuation | context) from `EvalLM.nll` (exact for an AR model, the
  Monte Carlo ELBO bound for a DLM, with ``n_samples`` / ``estimator`` / ``seed`` from the model args);
  ``is_greedy`` decodes the continuation greedily (a DLM: all masked, one token per step).
* ``loglikelihood_rolling``: the perplexity protocol's independent windows, summed.

A DLM's random draws are keyed by what is scored, never by where lm-eval put a request in its list
(`request_key`): the options of one document share their draws (common random numbers, as in
``difflm eval``), and a request's estimate does not depend on which other requests lm-eval sends with it.
* ``generate_until``: greedy generation (the difflm sampler for a DLM), cut at the stop strings.

lm-eval 0.4.13 finds models only in its own registry, and importing this module adds ``difflm`` to it.
The ``difflm-lm-eval`` command (or ``python -m difflm.evaluation.harness``) does that and then runs
lm-eval's own command line, so it takes exactly lm-eval's arguments::

    difflm-lm-eval --model difflm --model_args pretrained=DIR,n_samples=32 --tasks TASK --include_path DIR

In Python: ``import difflm.evaluation.harness`` before ``lm_eval.simple_evaluate(model="difflm", ...)``.

The checkpoint layout is detected as by ``difflm eval`` (a plain causal LM: scored as AR) unless the
``format`` model argument gives it (``format=diffullama`` for DiffuLLaMA, whose files are a plain LLaMA);
one line on stderr says which layout and which score are used.
"""

from __future__ import annotations

import hashlib
import sys
import warnings
from typing import Any

import torch

from ..errors import InputError

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError:  # pragma: no cover - depends on the environment
    raise InputError("the lm-eval adapter needs lm-evaluation-harness: pip install 'difflm[eval]'") from None

from .likelihood import ScoreRequest
from .lm import EvalSettings, grouped
from .loading import load_eval_lm, scoring_summary
from .text_tasks import window_requests
from .task_base import fit_context


def stable_key(*parts: Any) -> int:
    """A 63-bit key of ``parts`` (their repr), the same in every process (unlike ``hash``)."""
    digest = hashlib.blake2b(repr(parts).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def request_key(instance: Any, request: ScoreRequest) -> int:
    """The random-number key (see `elbo_nll`) of a loglikelihood request: its task and document when
    lm-eval says which (the options of a question share draws), else its context's tokens."""
    task, doc = getattr(instance, "task_name", None), getattr(instance, "doc_id", None)
    if doc is not None:
        return stable_key("doc", task, doc)
    return stable_key("context", request.ids[: request.start])


def window_key(window: ScoreRequest) -> int:
    """The random-number key of a rolling-loglikelihood window: its tokens."""
    return stable_key("window", window.ids)


def _batch_size(value: Any, default: int) -> int:
    """lm-eval passes --batch_size as an int, a numeric string or "auto"; difflm needs a number."""
    try:
        return max(1, int(value))
    except (TypeError, ValueError):
        return default


def _device(requested: str | None) -> str | None:
    if requested and requested.startswith("cuda") and not torch.cuda.is_available():
        warnings.warn(f"device {requested!r} is not available; using the CPU", stacklevel=3)
        return "cpu"
    return requested


@register_model("difflm")
class DiffLMHarnessModel(LM):
    """``--model_args pretrained=DIR[,format=..,n_samples=..,estimator=..,stratified=..,seed=..,steps=..,
    block_length=..,strategy=..,threshold=..,cache=none|prefix|dual,stop_at_eos=true|false,speculative=true|false,max_new_tokens=..,
    greedy_check=true|false]`` - the options of `difflm eval` of the same names. The decoding options left out
    are the model's own (its generation_config.json), as in `difflm eval`."""

    def __init__(self, pretrained: str, *, format: str | None = None, n_samples: int = 32, estimator: str = "count",
                 stratified: bool = True,
                 seed: int = 0, steps: int | None = None, block_length: int | None = None,
                 strategy: str | None = None, threshold: float | None = None, cache: str | None = None,
                 stop_at_eos: bool | None = None, speculative: bool | None = None, max_new_tokens: int | None = None,
                 greedy_check: bool = True,
                 batch_size: Any = 16, device: str | None = None, **_: Any) -> None:
        super().__init__()
        settings = EvalSettings(n_samples=n_samples, estimator=estimator, stratified=stratified, seed=seed,
                                batch_size=_batch_size(batch_size, 16), steps=steps, block_length=block_length,
                                strategy=strategy, threshold=threshold, cache=cache, stop_at_eos=stop_at_eos,
                                speculative=speculative, max_new_tokens=max_new_tokens, progress=False)
        self.lm = load_eval_lm(str(pretrained), settings, format=format or None, device=_device(device))
        print(scoring_summary(self.lm, "format"), file=sys.stderr)
        self.greedy_check = greedy_check

    def _requests(self, pairs: list[tuple[str, str]]) -> list[ScoreRequest]:
        out = []
        for context, continuation in pairs:
            target = self.lm.encode(continuation)
            if not target:
                raise InputError(f"empty continuation after context {context[-40:]!r}; nothing to score")
            out.append(ScoreRequest.continuation(fit_context(self.lm, self.lm.bos + self.lm.encode(context), len(target)), target))
        return out

    def loglikelihood(self, requests: list[Any]) -> list[tuple[float, bool]]:
        scored = self._requests([r.args[:2] for r in requests])
        estimates = self.lm.nll(scored, [request_key(i, r) for i, r in zip(requests, scored)])
        if any(e.greedy is None for e in estimates):  # a DLM: decode to find out
            greedy = self.lm.greedy_matches(scored) if self.greedy_check else [False] * len(scored)
        else:
            greedy = [bool(e.greedy) for e in estimates]
        return [(-e.nll, g) for e, g in zip(estimates, greedy)]

    def loglikelihood_rolling(self, requests: list[Any]) -> list[float]:
        windows, owner = [], []
        for n, r in enumerate(requests):
            for w in window_requests(self.lm, self.lm.encode(r.args[0])):
                windows.append(w)
                owner.append(n)
        totals = [0.0] * len(requests)
        for n, e in zip(owner, self.lm.nll(windows, [window_key(w) for w in windows])):
            totals[n] -= e.nll
        return totals

    def generate_until(self, requests: list[Any]) -> list[str]:
        jobs = []
        for r in requests:
            context, kwargs = r.args[0], dict(r.args[1] if len(r.args) > 1 else {})
            if kwargs.get("do_sample") or kwargs.get("temperature", 0) > 0:
                warnings.warn("difflm decodes greedily; do_sample/temperature are ignored", stacklevel=2)
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            budget = int(kwargs.get("max_gen_toks", self.lm.max_new_tokens))
            prompt = fit_context(self.lm, self.lm.bos + self.lm.encode(context), budget)
            jobs.append((prompt, budget, until))
        out = [""] * len(jobs)
        for budget, idx in grouped(jobs, lambda job: job[1]):
            for i, ids in zip(idx, self.lm.generate([jobs[i][0] for i in idx], int(budget))):
                text = self.lm.decode(ids)
                for stop in jobs[i][2]:
                    text = text.split(stop)[0] if stop else text
                out[i] = text
        return out


def main() -> None:
    """lm-eval's command line with the ``difflm`` model registered."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
