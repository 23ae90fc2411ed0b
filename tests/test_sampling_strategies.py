"""Commit strategies and token sampling: each rule on hand-made distributions, then in the loop."""

import pytest
import torch

from difflm import InputError
from difflm.sampling import (
    STRATEGIES, StepContext, commit_schedule, commit_counts, generate, get_strategy, gumbel_max, sample_tokens,
    top_k_filter,
)
from conftest import tiny_dlm
from test_sampling import single_thread  # noqa: F401 (autouse fixture)

MASK = 63


def _context(probs, logits=None, k=1, suppressed=None):
    """One row, candidates at positions 0..N-1 with the given distributions [N, V]."""
    n = probs.shape[0]
    drawn = probs.argmax(-1)
    candidates = torch.ones(1, n, dtype=torch.bool)
    return StepContext(
        step=0, steps=4, candidates=candidates, tokens=drawn[None], confidence=probs.max(-1).values[None],
        probs=probs, num_to_commit=torch.tensor([k]), logits=logits, drawn=drawn, suppressed=suppressed,
    )


# Three positions on which the scores disagree:
#   0: max prob 0.50, but a close runner-up (margin 0.02), mass on 2 tokens
#   1: max prob 0.45, clear margin (0.40), the rest spread thin (high entropy)
#   2: max prob 0.40, runner-up 0.35, the rest zero (lowest entropy)
PROBS = torch.tensor([
    [0.50, 0.48, 0.01, 0.01, 0.00, 0.00],
    [0.45, 0.05, 0.125, 0.125, 0.125, 0.125],
    [0.40, 0.35, 0.25, 0.00, 0.00, 0.00],
])


def test_scores_pick_what_their_rule_says():
    ctx = _context(PROBS)
    picked = {name: int(get_strategy(name).select(ctx).nonzero()[0, 1]) for name in ("maskgit_plus", "topk_margin", "entropy")}
    entropy = -(PROBS * torch.log(PROBS + 1e-10)).sum(-1)
    assert picked == {"maskgit_plus": 0, "topk_margin": 1, "entropy": int(entropy.argmin())}
    assert picked["entropy"] == 0  # two-token mass beats a spread tail and a three-token mass


def test_low_confidence_scores_raw_logits_not_the_tempered_distribution():
    """LLaDA ranks by softmax of the untempered logits; Dream's maskgit_plus by the sampling
    distribution. A temperature that flattens one row differently tells them apart."""
    logits = torch.tensor([[4.0, 0.0, 0.0, 0.0, 0.0, 0.0], [3.0, 1.5, -20.0, -20.0, -20.0, -20.0]])
    tempered = (logits / 4.0).softmax(-1)
    ctx = _context(tempered, logits=logits)
    assert get_strategy("low_confidence").select(ctx)[0].tolist() == [True, False]
    assert get_strategy("maskgit_plus").select(ctx)[0].tolist() == [False, True]


def test_threshold_commits_all_confident_and_at_least_k():
    probs = torch.tensor([[0.95, 0.05], [0.92, 0.08], [0.6, 0.4], [0.7, 0.3]])
    ctx = _context(probs, k=1)
    assert get_strategy("threshold", threshold=0.9).select(ctx)[0].tolist() == [True, True, False, False]
    # nothing above the threshold: still the k most confident
    assert get_strategy("threshold", threshold=0.99).select(_context(probs, k=2))[0].tolist() == [True, True, False, False]
    assert get_strategy("threshold", threshold=0.5).select(ctx).sum() == 4


def test_alg_temp_samples_positions():
    ctx = _context(PROBS, k=1)
    near_greedy = get_strategy("maskgit_plus", alg_temp=1e-6)
    hot = get_strategy("maskgit_plus", alg_temp=100.0)
    picks_near_greedy, picks_hot = set(), set()
    for seed in range(30):
        ctx.generator = torch.Generator().manual_seed(seed)
        picks_near_greedy.add(int(near_greedy.select(ctx).nonzero()[0, 1]))
        picks_hot.add(int(hot.select(ctx).nonzero()[0, 1]))
    assert picks_near_greedy == {0} and picks_hot == {0, 1, 2}


def test_suppressed_positions_come_last():
    suppressed = torch.tensor([[True, False, False]])
    ctx = _context(PROBS, k=1, suppressed=suppressed)
    assert get_strategy("maskgit_plus").select(ctx)[0].tolist() == [False, True, False]
    ctx.num_to_commit = torch.tensor([3])
    assert get_strategy("maskgit_plus").select(ctx).all()
    probs = torch.tensor([[0.95, 0.05], [0.6, 0.4]])
    sup = _context(probs, k=1, suppressed=torch.tensor([[True, False]]))
    assert get_strategy("threshold", threshold=0.9).select(sup)[0].tolist() == [False, True]


@pytest.mark.parametrize("alg_temp", [0.0, 1e-3, 1e-9, 1e-300])
def test_suppression_is_strict_at_any_alg_temp(alg_temp):
    """A tiny alg_temp makes the perturbed scores huge (score / alg_temp); a suppressed position
    must still come after every other candidate."""
    strategy = get_strategy("maskgit_plus", alg_temp=alg_temp)
    for seed in range(20):
        ctx = _context(PROBS, k=1, suppressed=torch.tensor([[True, False, False]]))
        ctx.generator = torch.Generator().manual_seed(seed)
        assert strategy.select(ctx)[0].tolist() == [False, True, False]
        ctx.num_to_commit = torch.tensor([3])
        assert strategy.select(ctx).all()  # nothing else left: suppressed ones are committed too
    # among suppressed positions the score still decides (position 1 ranks above position 2)
    ctx = _context(PROBS, k=2, suppressed=torch.tensor([[False, True, True]]))
    assert get_strategy("maskgit_plus").select(ctx)[0].tolist() == [True, True, False]


def test_commit_schedule_per_row():
    sched = commit_schedule(torch.tensor([10, 3, 0]), 4)
    assert sched[:, 0].tolist() == commit_counts(10, 4) == [3, 3, 2, 2]
    assert sched[:, 1].tolist() == [1, 1, 1, 0] and sched[:, 2].tolist() == [0, 0, 0, 0]


@pytest.fixture(scope="module")
def model():
    return tiny_dlm("llama")


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_strategy_runs_in_the_loop(model, name):
    prompt = [[1, 2, 3], [4, 5, 6, 7]]
    kw = dict(max_new_tokens=8, steps=4, strategy=name, temperature=0.8, top_k=20, block_length=4)
    seen = []
    out = generate(model, prompt, generator=torch.Generator().manual_seed(0), callback=seen.append, **kw)
    assert not (out == MASK).any() and out[1, :4].tolist() == [4, 5, 6, 7]
    assert torch.equal(out, generate(model, prompt, generator=torch.Generator().manual_seed(0), **kw))
    assert len(seen) <= 4
    if name != "random":  # fixed count: 2 tokens per row and step; threshold may add more
        assert all(int(s.committed[0].sum()) >= 2 for s in seen)


def test_threshold_with_low_threshold_finishes_a_block_per_step(model):
    seen = []
    generate(model, [1, 2], max_new_tokens=12, block_length=4, strategy="threshold", threshold=1e-9, callback=seen.append)
    assert [s.block for s in seen] == [0, 1, 2]


def test_threshold_one_equals_low_confidence(model):
    kw = dict(max_new_tokens=8, block_length=4)
    a = generate(model, [1, 2, 3], strategy="threshold", threshold=1.0, **kw)
    assert torch.equal(a, generate(model, [1, 2, 3], strategy="low_confidence", **kw))


def test_top_k_and_greedy():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    assert top_k_filter(logits, 2).isinf().tolist() == [[True, False, False, True]]
    tokens, _ = sample_tokens(logits.repeat(50, 1), temperature=1.0, top_k=1, generator=torch.Generator().manual_seed(0))
    assert (tokens == 1).all()


def test_gumbel_max_draws_from_the_softmax():
    logits = torch.tensor([0.0, 1.0, 2.0, -1.0]).repeat(40000, 1)
    drawn = gumbel_max(logits, torch.Generator().manual_seed(0))
    freq = torch.bincount(drawn, minlength=4).double() / drawn.numel()
    assert torch.allclose(freq, logits[0].double().softmax(-1), atol=0.01)
    tokens, probs = sample_tokens(logits[:5], temperature=0.5, gumbel=True, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(probs[0], (logits[0] / 0.5).softmax(-1))


@pytest.mark.parametrize("kwargs, match", [
    (dict(strategy="best"), "unknown strategy"),
    (dict(strategy="threshold", threshold=0.0), "threshold"),
    (dict(strategy="threshold", threshold=1.5), "threshold"),
    (dict(strategy="low_confidence", threshold=0.9), "threshold applies"),
    (dict(alg_temp=-1.0), "alg_temp"),
    (dict(strategy="random", alg_temp=1.0), "alg_temp"),
    (dict(cfg_scale=-0.5), "cfg_scale"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=-1), "top_k"),
    (dict(cache="full"), "cache"),
    (dict(attention="sideways"), "attention"),
    (dict(block_length=0), "block_length"),
    (dict(steps=2, block_length=2), "number of blocks"),
])
def test_bad_options(model, kwargs, match):
    with pytest.raises(InputError, match=match):
        generate(model, [1], max_new_tokens=8, **kwargs)


@pytest.mark.parametrize("top_k, top_p", [(0, 0.9), (0, 0.999), (5, 1.0), (40, 0.8), (3, 0.5)])
def test_truncated_distribution_equals_the_filters(top_k, top_p):
    """The fast path of sample_tokens ranks only what the nucleus needs; it must give the same
    distribution as filtering the whole vocabulary (flat rows need more than 64 tokens)."""
    from difflm.sampling import top_p_filter
    from difflm.sampling.tokens import truncated_distribution

    gen = torch.Generator().manual_seed(0)
    logits = torch.cat([torch.randn(3, 1000, generator=gen) * 4, torch.randn(3, 1000, generator=gen) * 0.05])
    expected = top_p_filter(top_k_filter(logits, top_k), top_p).softmax(-1)
    kept, ids = truncated_distribution(logits, top_k, top_p)
    got = torch.zeros_like(logits).scatter(-1, ids, kept)
    assert torch.allclose(got, expected, atol=1e-6)
    _, probs = sample_tokens(logits, temperature=1.0, top_k=top_k, top_p=top_p, generator=gen)
    assert torch.allclose(probs, expected, atol=1e-6)


@pytest.mark.parametrize("gumbel", [False, True])
def test_truncated_draws_follow_the_kept_distribution(gumbel):
    logits = torch.tensor([0.0, 1.0, 2.0, -1.0, 0.5]).repeat(40000, 1)
    tokens, probs = sample_tokens(logits, temperature=1.0, top_k=3, gumbel=gumbel, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(tokens, minlength=5).float() / tokens.numel()
    expected = torch.tensor([float("-inf"), 1.0, 2.0, float("-inf"), 0.5]).softmax(-1)
    assert torch.allclose(freq, expected, atol=0.01) and torch.allclose(probs[0], expected, atol=1e-6)


def test_nucleus_draw_stays_in_the_nucleus(monkeypatch):
    """33 equally likely tokens: the kept probabilities (1/33 each) sum to a float just below the
    largest uniform torch.rand can return, and the 31 zero-probability tokens ranked after the
    nucleus share that cumulative value: an unclamped inverse CDF lands on one of them."""
    from difflm.sampling.tokens import truncated_distribution

    logits = torch.full((1, 100), -30.0)
    logits[0, :33] = 0.0
    largest = 1.0 - 2.0 ** -24  # the largest float32 below 1
    kept, _ = truncated_distribution(logits, 0, 0.999)
    assert kept.shape[-1] > 33 and kept.cumsum(-1)[0, -1] < largest  # the case is the one described

    real_rand = torch.rand
    monkeypatch.setattr(torch, "rand", lambda *size, **kw: real_rand(*size, **kw).fill_(largest))
    tokens, probs = sample_tokens(logits, temperature=1.0, top_p=0.999, generator=torch.Generator())
    assert probs[0, tokens[0]] > 0 and int(tokens[0]) < 33
    tokens, probs = sample_tokens(logits, temperature=1.0, generator=torch.Generator())  # the full distribution
    assert probs[0, tokens[0]] > 0


def test_inverse_cdf_draws_follow_the_softmax():
    logits = torch.tensor([0.0, 1.0, 2.0, -1.0, float("-inf")]).repeat(40000, 1)
    tokens, probs = sample_tokens(logits, temperature=1.0, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(tokens, minlength=5).float() / tokens.numel()
    assert torch.allclose(freq, logits[0].softmax(-1), atol=0.01) and not (tokens == 4).any()
