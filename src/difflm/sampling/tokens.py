"""Drawing tokens from logits: greedy, temperature, top-k, nucleus (top-p) and Gumbel-max sampling.

Every seeded draw goes through `difflm.rng.uniform`: the numbers are drawn on the generator's own
device and moved, so a CPU generator works for logits on any device and a seed gives the same
stream wherever the model runs.
"""

from __future__ import annotations

import torch

from .. import rng

# How many of the N rows of a draw belong to each batch row: LongTensor [B] or ints (see `rng.RowGenerators`).
RowCounts = torch.Tensor | list[int]


def top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability mass reaches ``top_p`` (the most likely
    token always stays); the rest get -inf. logits: [N, V] -> [N, V]."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    sorted_probs = sorted_logits.softmax(-1)
    drop_sorted = sorted_probs.cumsum(-1) - sorted_probs >= top_p  # mass before this token already enough
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def top_k_filter(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Keep the ``top_k`` most likely tokens of each row (0 = keep all). logits: [N, V] -> [N, V]."""
    if top_k <= 0 or top_k >= logits.shape[-1]:
        return logits
    kth = logits.topk(top_k, dim=-1).values[:, -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def gumbel_max(logits: torch.Tensor, generator: rng.Generators = None, rows: RowCounts | None = None) -> torch.Tensor:
    """argmax(logits + Gumbel noise) in float64: an exact draw from softmax(logits).

    LLaDA draws this way in float64 because Gumbel noise in low precision collapses the tails
    (few distinct values of -log(-log u)), which lowers diversity. logits: [N, V] -> LongTensor [N].
    ``rows``: items per batch row, needed with a `difflm.rng.RowGenerators`.
    """
    uniform = rng.uniform(logits.shape, generator=generator, device=logits.device, dtype=torch.float64, rows=rows)
    gumbel = -torch.log(-torch.log(uniform.clamp_min(1e-300)))
    return (logits.double() + gumbel).argmax(-1)


def inverse_cdf(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """The index drawn by inverse-CDF sampling in each row of ``probs`` [N, K] (non-negative, rows
    summing to about 1) with ``uniform`` [N] in [0, 1): LongTensor [N].

    The uniform is scaled by the row's total, and the result is clamped to the last index of
    non-zero probability: float error in the cumulative sum can never select a token outside
    the support (zero-probability tokens after the support share the last cumulative value).
    """
    cdf = probs.cumsum(-1)
    target = uniform.to(cdf.dtype)[:, None] * cdf[:, -1:]
    choice = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    # The last index of the support, from a one-byte mask (an int64 index tensor of [N, V] made
    # this the sampler's largest cost after the matmuls); no host sync, so it stays cheap on a GPU.
    support = (probs > 0).flip(-1).to(torch.uint8)
    last = probs.shape[-1] - 1 - support.argmax(-1)
    return torch.minimum(choice, last)


def truncated_distribution(
    logits: torch.Tensor, top_k: int, top_p: float, *, top_p_first: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """The top-k / top-p distribution on the few tokens it keeps, without sorting the vocabulary.

    Equal to ``top_p_filter(top_k_filter(logits, top_k), top_p).softmax(-1)`` (up to the order of
    tied logits), but it ranks only as many tokens as the nucleus needs: 64 first, 8x more until
    every row's kept mass reaches ``top_p``. Sorting [N, V] was the sampler's largest cost.

    ``top_p_first`` applies the filters in Dream's order instead: the nucleus of the full
    distribution, then at most ``top_k`` of its tokens, i.e.
    ``top_k_filter(top_p_filter(logits, top_p), top_k).softmax(-1)``. It keeps at least as many
    tokens as the default order (whose nucleus is measured on the renormalised top-k).

    Args:
        logits: FloatTensor [N, V] (already divided by the temperature).
    Returns:
        (probs FloatTensor [N, K], token ids LongTensor [N, K]): K candidate tokens per row in
        descending order, probability 0 for those outside the nucleus.
    """
    vocab = logits.shape[-1]
    if top_p_first and top_p < 1.0 and 0 < top_k < vocab:
        kept, ids = truncated_distribution(logits, 0, top_p)  # the nucleus, in descending order
        kept, ids = kept[:, :top_k], ids[:, :top_k]  # then its top_k most likely tokens
        return kept / kept.sum(-1, keepdim=True), ids
    k_max = top_k if 0 < top_k < vocab else vocab
    if k_max < vocab:
        values, ids = logits.topk(k_max, dim=-1)
        norm = values.logsumexp(-1, keepdim=True)
    else:
        norm = logits.logsumexp(-1, keepdim=True)
    k = k_max if k_max < vocab or top_p >= 1.0 else min(64, vocab)
    while True:
        if k == vocab:
            values, ids = logits.sort(dim=-1, descending=True)
        elif k < k_max or k_max == vocab:
            values, ids = logits.topk(k, dim=-1)
        probs = (values - norm).exp()
        if top_p >= 1.0:
            return probs / probs.sum(-1, keepdim=True), ids
        cumulative = probs.cumsum(-1)
        if k == k_max or bool((cumulative[:, -1] >= top_p).all()):
            break
        k = min(k * 8, k_max)
        if k > k_max // 8:  # a flat row: ranking most of the vocabulary, one sort is cheaper
            k = k_max
    kept = probs.masked_fill(cumulative - probs >= top_p, 0.0)  # mass before this token already enough
    return kept / kept.sum(-1, keepdim=True), ids


def sample_tokens(
    logits: torch.Tensor,
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    gumbel: bool = False,
    generator: rng.Generators = None,
    top_p_first: bool = False,
    rows: RowCounts | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one token per row and report the distribution it came from.

    Args:
        logits: FloatTensor [N, V] (only the rows that need a token: the masked positions).
        temperature: 0 = greedy (argmax); otherwise logits / temperature.
        top_p: nucleus mass kept before sampling (1 = off).
        top_k: keep only the k most likely tokens before sampling (0 = off).
        gumbel: draw by Gumbel-max in float64 (LLaDA) instead of by inverse CDF (one uniform per
            row); the same distribution, a different random stream. Gumbel-max needs one
            uniform per vocabulary entry: with a CPU generator and GPU logits those are drawn on
            the CPU and copied, so prefer a generator on the logits' device there.
        generator: RNG for the draw, on any device (see `difflm.rng`); None = torch's global RNG.
        top_p_first: apply top-p before top-k (Dream's order) instead of top-k before top-p.
        rows: how many of the N logits rows belong to each batch row (LongTensor [B], in order);
            needed when ``generator`` is a `difflm.rng.RowGenerators` (one stream per row).
    Returns:
        (tokens LongTensor [N], probs FloatTensor [N, V]) where probs is the distribution the
        token was drawn from (after temperature, top-k and top-p; the softmax of the logits when
        greedy).

    The limit of a tiny temperature is greedy: a row whose ``logits / temperature`` overflows
    (a temperature such as 1e-300, or one that rounds to 0 in float32) is drawn exactly as with
    temperature 0 - its argmax, and the softmax of its logits as ``probs``. Other rows, and the
    random stream, are untouched.
    """
    logits = logits.float()
    if temperature == 0.0:
        probs = logits.softmax(-1)
        return probs.argmax(-1), probs
    scaled = logits / temperature
    if temperature >= 1.0:  # dividing by >= 1 cannot overflow
        return _draw(logits, scaled, top_p, top_k, gumbel, generator, top_p_first, rows)
    greedy = ~torch.isfinite(scaled.amax(-1, keepdim=True))  # [N, 1]: the row max overflowed (or is NaN)
    # no `if greedy.any()` shortcut: a data-dependent branch would sync the device at every step (and cannot
    # run on meta tensors); the cost is one elementwise pass over [N, V], small beside the model call
    scaled = torch.where(greedy, logits, scaled)  # those rows draw (and discard) from finite numbers
    drawn, probs = _draw(logits, scaled, top_p, top_k, gumbel, generator, top_p_first, rows)
    if top_p < 1.0 or 0 < top_k < logits.shape[-1]:  # the greedy probs are the full softmax
        probs = torch.where(greedy, logits.softmax(-1), probs)
    return torch.where(greedy.squeeze(-1), logits.argmax(-1), drawn), probs


def _draw(logits: torch.Tensor, scaled: torch.Tensor, top_p: float, top_k: int, gumbel: bool,
          generator: rng.Generators, top_p_first: bool, rows: RowCounts | None) -> tuple[torch.Tensor, torch.Tensor]:
    """`sample_tokens`' draw from ``scaled`` = logits / temperature (finite in every row)."""
    if top_p >= 1.0 and not 0 < top_k < logits.shape[-1]:
        probs = scaled.softmax(-1)
        if gumbel:
            return gumbel_max(scaled, generator, rows), probs
        return inverse_cdf(probs, rng.uniform((probs.shape[0],), generator=generator, device=probs.device, rows=rows)), probs
    # Draw among the few tokens top-k / top-p keep, then place their probabilities on [N, V].
    kept, ids = truncated_distribution(scaled, top_k, top_p, top_p_first=top_p_first)
    probs = torch.zeros_like(scaled).scatter_(-1, ids, kept)
    if gumbel and isinstance(generator, rng.RowGenerators):
        # How many tokens `truncated_distribution` ranks depends on every row of the batch, so
        # noise indexed by rank would shift a row's stream with its neighbours; noise indexed by
        # token id over the whole vocabulary cannot (the same distribution, V uniforms per row).
        full = torch.full(scaled.shape, float("-inf"), dtype=torch.float64, device=scaled.device)
        return gumbel_max(full.scatter_(-1, ids, kept.double().log()), generator, rows), probs
    if gumbel:
        choice = gumbel_max(kept.double().log(), generator)
    else:  # inverse CDF: one uniform per row instead of noise over every kept token
        choice = inverse_cdf(kept, rng.uniform((kept.shape[0],), generator=generator, device=kept.device, rows=rows))
    return ids.gather(-1, choice[:, None]).squeeze(-1), probs
