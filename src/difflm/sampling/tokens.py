"""Drawing tokens from logits: greedy, temperature and nucleus (top-p) sampling."""

from __future__ import annotations

import torch

from ..errors import InputError


def check_sampling_args(temperature: float, top_p: float) -> None:
    if not temperature >= 0:
        raise InputError(f"temperature must be >= 0, got {temperature}")
    if not 0.0 < top_p <= 1.0:
        raise InputError(f"top_p must be in (0, 1], got {top_p}")


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability mass reaches ``top_p`` (the most likely
    token always stays); the rest get -inf. logits: [N, V] -> [N, V]."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    cumulative = sorted_logits.softmax(-1).cumsum(-1)
    drop_sorted = cumulative - sorted_logits.softmax(-1) >= top_p  # mass before this token already enough
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_tokens(
    logits: torch.Tensor,
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row and report its probability.

    Args:
        logits: FloatTensor [N, V] (only the rows that need a token: the masked positions).
        temperature: 0 = greedy (argmax); otherwise logits / temperature.
        top_p: nucleus mass kept before sampling.
    Returns:
        (tokens LongTensor [N], probs FloatTensor [N, V]) where probs is the distribution the
        token was drawn from (after temperature and top-p; the softmax of the logits when greedy).
    """
    logits = logits.float()
    if temperature == 0.0:
        probs = logits.softmax(-1)
        return probs.argmax(-1), probs
    probs = top_p_filter(logits / temperature, top_p).softmax(-1)
    tokens = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return tokens, probs
