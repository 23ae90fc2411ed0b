"""The text benchmark tasks (`Task` subclasses, one protocol each), applied to AR models and DLMs alike.

| task                 | protocol                                                                         |
|----------------------|-----------------------------------------------------------------------------------|
| `PerplexityTask`     | NLL of documents in independent windows (BOS + up to context - 1 tokens): nats/token, bits/byte, perplexity (a bound for a DLM) |
| `LastWordTask`       | LAMBADA: decode the final word's tokens greedily (a DLM: all masked, one token per step), exact match |
| `MultipleChoiceTask` | HellaSwag/PIQA/SIQA/Winogrande: lowest -log p(continuation | context) wins; also length-normalised (per byte) and DiffuGPT's unweighted score |
| `InfillingTask`      | ROCStories: fill the middle (its reference length in tokens), ROUGE-1/2/L; an AR model continues the prefix |
| `GSM8KTask`          | greedy generation, answer extraction, numeric exact match                         |

Every sequence starts with the tokenizer's BOS (if any); texts are tokenised piecewise (context,
continuation), so all models see the same token boundaries.
"""

from __future__ import annotations

import math
from typing import Any

from ..tasks.gsm import extract_answer, numbers_match
from .data import ChoiceExample, InfillExample, LastWordExample, QAExample
from .likelihood import ScoreRequest
from .lm import EvalLM, grouped
from .metrics import rouge
from .stats import Estimate, mean_stderr
from .task_base import Outcome, Task, estimate_kind, fit_context


def window_requests(lm: EvalLM, ids: list[int]) -> list[ScoreRequest]:
    """A document's tokens in consecutive windows, each scored after BOS alone: windows are independent,
    so AR models and DLMs see the same (lack of) context at every window start."""
    window = (lm.max_length or 1024) - len(lm.bos)
    return [ScoreRequest.continuation(lm.bos, ids[lo : lo + window]) for lo in range(0, len(ids), window)]


class PerplexityTask(Task):
    """Likelihood of held-out text (examples: strings)."""

    primary = "nll_per_token"
    higher_is_better = False

    def evaluate(self, lm: EvalLM, examples: list[str]) -> Outcome:
        requests, heads = [], []
        for text in examples:
            windows = window_requests(lm, lm.encode(text))
            requests += windows
            heads += [text[:60]] + [""] * (len(windows) - 1)
        total_bytes = sum(len(text.encode("utf-8")) for text in examples)
        scores = lm.nll(requests)
        nll = sum(s.nll for s in scores)
        se = math.sqrt(sum(s.stderr**2 for s in scores))  # windows are estimated independently
        tokens = sum(s.num_tokens for s in scores)
        kind = estimate_kind(lm)
        per_token = Estimate(nll / tokens, se / tokens, len(requests), kind)
        ppl = math.exp(min(per_token.value, 700.0))  # an untrained model's bound can pass exp's range
        metrics = {
            "nll_per_token": per_token,
            "bits_per_byte": Estimate(nll / math.log(2) / total_bytes, se / math.log(2) / total_bytes, len(requests), kind),
            "perplexity": Estimate(ppl, ppl * per_token.stderr, len(requests), kind),  # delta method
        }
        bound = "upper bound (ELBO)" if lm.kind == "dlm" else "exact"
        samples = [{"start": h, "nll_per_token": round(s.nll / s.num_tokens, 4), "stderr": round(s.stderr / s.num_tokens, 4)}
                   for h, s in zip(heads, scores)]
        return Outcome(metrics, {"windows": len(requests), "tokens": tokens, "bytes": total_bytes, "likelihood": bound},
                       samples)


class LastWordTask(Task):
    """LAMBADA protocol (examples: `LastWordExample`)."""

    primary = "acc"

    def evaluate(self, lm: EvalLM, examples: list[LastWordExample]) -> Outcome:
        targets = [lm.encode(" " + ex.target) for ex in examples]
        prompts = [fit_context(lm, lm.bos + lm.encode(ex.context), len(t)) for ex, t in zip(examples, targets)]
        predictions: list[str] = [""] * len(examples)
        for length, idx in grouped(targets, len):  # one generation length per batch
            for i, ids in zip(idx, lm.generate([prompts[i] for i in idx], int(length))):
                predictions[i] = lm.decode(ids)
        correct = [p.strip() == ex.target for p, ex in zip(predictions, examples)]
        samples = [{"context": ex.context[-80:], "target": ex.target, "prediction": p}
                   for ex, p in zip(examples, predictions)]
        return Outcome({"acc": mean_stderr(correct)}, {"length": "target word's token count (given)",
                                                       "decoding": "greedy, one token per step"}, samples)


class MultipleChoiceTask(Task):
    """Multiple choice by conditional likelihood (examples: `ChoiceExample`)."""

    primary = "acc"

    def evaluate(self, lm: EvalLM, examples: list[ChoiceExample]) -> Outcome:
        requests, owner = [], []
        for n, ex in enumerate(examples):
            for ctx, cont in zip(ex.contexts, ex.continuations):
                target = lm.encode(cont)
                requests.append(ScoreRequest.continuation(fit_context(lm, lm.bos + lm.encode(ctx), len(target)), target))
                owner.append(n)
        keys = owner if lm.settings.common_random_numbers else None  # the options of a question share draws
        scores = lm.nll(requests, keys)
        reference = lm.reference_score(requests, keys)
        picks: dict[str, list[bool]] = {"acc": [], "acc_norm": []}
        if reference is not None:
            picks["acc_ref"] = []
        samples, k = [], 0
        for ex in examples:
            n = len(ex.continuations)
            nll = [s.nll for s in scores[k : k + n]]
            per_byte = [v / max(1, len(c.encode("utf-8"))) for v, c in zip(nll, ex.continuations)]
            picks["acc"].append(min(range(n), key=nll.__getitem__) == ex.label)
            picks["acc_norm"].append(min(range(n), key=per_byte.__getitem__) == ex.label)
            if reference is not None:
                picks["acc_ref"].append(min(range(n), key=reference[k : k + n].__getitem__) == ex.label)
            samples.append({"label": ex.label, "nll": [round(v, 3) for v in nll],
                            "stderr": [round(s.stderr, 3) for s in scores[k : k + n]]})
            k += n
        protocol: dict[str, Any] = {
            "acc": "lowest -log p(continuation | context), " + ("ELBO bound" if lm.kind == "dlm" else "exact"),
            "acc_norm": "the same per UTF-8 byte of the continuation",
            "mean_option_stderr": sum(s.stderr for s in scores) / len(scores),
        }
        if reference is not None:
            protocol["acc_ref"] = f"DiffuGPT unweighted score, T = {lm.settings.reference_steps}"
        return Outcome({name: mean_stderr(flags) for name, flags in picks.items()}, protocol, samples)


class InfillingTask(Task):
    """ROCStories protocol (examples: `InfillExample`)."""

    primary = "rougeL"

    def evaluate(self, lm: EvalLM, examples: list[InfillExample]) -> Outcome:
        middles = [lm.encode(ex.middle) for ex in examples]
        suffixes = [lm.encode(ex.suffix) for ex in examples]
        prefixes = [fit_context(lm, lm.bos + lm.encode(ex.prefix), len(m) + len(s))
                    for ex, m, s in zip(examples, middles, suffixes)]
        predictions: list[str] = [""] * len(examples)
        for length, idx in grouped(middles, len):
            filled = lm.fill([prefixes[i] for i in idx], [suffixes[i] for i in idx], int(length))
            for i, ids in zip(idx, filled):
                predictions[i] = lm.decode(ids)
        scores = [rouge(p, ex.middle) for p, ex in zip(predictions, examples)]
        metrics = {name: mean_stderr(s[name] * 100 for s in scores) for name in ("rouge1", "rouge2", "rougeL")}
        samples = [{"prefix": ex.prefix[-60:], "reference": ex.middle, "prediction": p, "suffix": ex.suffix[:60]}
                   for ex, p in zip(examples, predictions)]
        seen = "prefix only (an AR model cannot see the suffix)" if lm.kind == "ar" else "prefix and suffix"
        return Outcome(metrics, {"length": "reference middle's token count (given)", "context": seen,
                                 "scale": "F1 x 100"}, samples)


class GSM8KTask(Task):
    """GSM8K protocol (examples: `QAExample`): zero-shot "Question: ...\\nAnswer:" prompts."""

    primary = "exact_match"
    stop = ("\n\nQuestion:", "\nQuestion:")

    def evaluate(self, lm: EvalLM, examples: list[QAExample]) -> Outcome:
        budget = lm.max_new_tokens
        prompts = [fit_context(lm, lm.bos + lm.encode(f"Question: {ex.question}\nAnswer:"), budget) for ex in examples]
        generations = [lm.decode(ids) for ids in lm.generate(prompts, budget)]
        generations = [min((g.split(s)[0] for s in self.stop), key=len) for g in generations]
        answers = [extract_answer(g) for g in generations]
        correct = [numbers_match(a, ex.answer) for a, ex in zip(answers, examples)]
        samples = [{"question": ex.question[:80], "answer": ex.answer, "extracted": a, "generation": g[:200]}
                   for ex, a, g in zip(examples, answers, generations)]
        return Outcome({"exact_match": mean_stderr(correct)},
                       {"max_new_tokens": budget, "extraction": "number after '####', else the last number"}, samples)
