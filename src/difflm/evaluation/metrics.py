"""Text metrics: ROUGE-1/2/L (F1). (GSM8K's answer extraction and numeric match: `difflm.tasks.gsm`.)

ROUGE follows the `rouge_score` package's defaults (lower-case, every run of characters other than
a-z and 0-9 separates tokens, no stemming), so numbers compare with published ones; a test checks the
two agree.
"""

from __future__ import annotations

import re
from collections import Counter

_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def rouge_tokens(text: str) -> list[str]:
    return _NON_ALNUM.sub(" ", text.lower()).split()


def _f1(overlap: int, predicted: int, reference: int) -> float:
    if overlap == 0:
        return 0.0
    precision, recall = overlap / predicted, overlap / reference
    return 2 * precision * recall / (precision + recall)


def rouge_n(prediction: str, reference: str, n: int) -> float:
    """ROUGE-n F1 in [0, 1]: clipped n-gram overlap between prediction and reference."""
    def grams(tokens: list[str]) -> Counter:
        return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))

    pred, ref = grams(rouge_tokens(prediction)), grams(rouge_tokens(reference))
    return _f1(sum((pred & ref).values()), sum(pred.values()), sum(ref.values()))


def _lcs_length(a: list[str], b: list[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 in [0, 1]: longest common subsequence of the two token lists."""
    pred, ref = rouge_tokens(prediction), rouge_tokens(reference)
    return _f1(_lcs_length(pred, ref), len(pred), len(ref))


def rouge(prediction: str, reference: str) -> dict[str, float]:
    """{"rouge1", "rouge2", "rougeL"} F1 scores in [0, 1]."""
    return {"rouge1": rouge_n(prediction, reference, 1), "rouge2": rouge_n(prediction, reference, 2),
            "rougeL": rouge_l(prediction, reference)}
