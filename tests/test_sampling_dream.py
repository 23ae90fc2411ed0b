"""Dream's conventions: its commit schedule (int(n_mask * (1 - s / t)) on linspace(1, eps, steps + 1))
and its filter order (top-p before top-k), the default for models of family "dream"."""

import pytest
import torch

import difflm.sampling.step as sampler_module
from difflm.sampling import SamplerOptions, StepContext, dream_commit_count, generate, get_strategy, top_k_filter, top_p_filter
from difflm.sampling.tokens import truncated_distribution
from conftest import tiny_dlm
from test_sampling import single_thread  # noqa: F401 (autouse fixture)

MASK = 63


@pytest.fixture(scope="module")
def model():
    return tiny_dlm("qwen2")


@pytest.fixture(scope="module")
def dream_model():
    return tiny_dlm("qwen2", family="dream")


def dream_loop(model, prompts, max_new_tokens, steps, eps=1e-3):
    """Dream's diffusion_generate, greedy 'maskgit_plus', rewritten from its description: prompts of
    equal length (no padding), no blocks. At step i of ``steps``, with t, s = timesteps[i],
    timesteps[i + 1] of linspace(1, eps, steps + 1): draw the argmax token of every masked position
    with its probability as confidence, then commit the int(n * (1 - s / t)) most confident (n =
    masked tokens per row, averaged over the batch as Dream does), everything on the last step."""
    x = torch.tensor([list(p) + [MASK] * max_new_tokens for p in prompts])
    timesteps = torch.linspace(1, eps, steps + 1)
    for i in range(steps):
        masked = x == MASK
        with torch.no_grad():
            logits = model.logits(x)  # aligned: Dream's shifted logits
        candidate_logits = logits[masked].float()
        candidate_logits[:, MASK] = float("-inf")  # difflm never predicts the mask token (Dream does not guard it)
        confidence, drawn = candidate_logits.softmax(-1).max(-1)
        n = masked.sum() / masked.shape[0]
        t, s = timesteps[i], timesteps[i + 1]
        k = int(n * (1 - s / t)) if i < steps - 1 else int(n)
        if k > 0:
            scores = torch.full(x.shape, float("-inf"))
            scores[masked] = confidence
            index = scores.topk(k, dim=-1).indices
            proposal = torch.full_like(x, MASK)
            proposal[masked] = drawn
            x.scatter_(1, index, proposal.gather(1, index))
    return x


def test_dream_commit_count_follows_the_time_grid():
    steps, eps = 12, 1e-3
    timesteps = torch.linspace(1, eps, steps + 1)
    n = torch.tensor([12, 30, 0])
    for i in range(steps - 1):
        expected = [int(v * (1 - timesteps[i + 1] / timesteps[i])) for v in n.tolist()]
        assert dream_commit_count(n, i, steps).tolist() == expected
    assert dream_commit_count(n, steps - 1, steps).tolist() == [12, 30, 0]  # the last step: all that remain
    assert dream_commit_count(torch.tensor([12]), 0, 12).tolist() == [0]  # 12 * 0.09992 < 1: Dream's first step commits nothing


@pytest.mark.parametrize("max_new_tokens, steps", [(10, 5), (12, 12), (16, 6)])
def test_greedy_maskgit_plus_reproduces_dreams_loop(model, max_new_tokens, steps):
    prompts = [[1, 2, 3], [7, 8, 9]]
    kw = dict(max_new_tokens=max_new_tokens, steps=steps, strategy="maskgit_plus")
    dream = generate(model, prompts, schedule="dream", **kw)
    assert torch.equal(dream, dream_loop(model, prompts, max_new_tokens, steps))
    assert not torch.equal(dream, generate(model, prompts, **kw))  # LLaDA's equal share differs


def test_dream_schedule_commits_dreams_counts(model):
    seen = []
    generate(model, [1, 2, 3], max_new_tokens=10, steps=5, strategy="maskgit_plus", schedule="dream", callback=seen.append)
    assert [int(s.committed.sum()) for s in seen] == [1, 2, 2, 2, 3]  # equal share: [2, 2, 2, 2, 2]


def test_family_dream_defaults_to_dreams_conventions(model, dream_model):
    prompts = [[1, 2, 3], [7, 8, 9]]
    kw = dict(max_new_tokens=10, steps=5, strategy="maskgit_plus")
    assert torch.equal(generate(dream_model, prompts, **kw), dream_loop(dream_model, prompts, 10, 5))
    assert torch.equal(generate(dream_model, prompts, schedule="equal", **kw), generate(model, prompts, **kw))
    assert SamplerOptions().for_family("dream") == SamplerOptions(schedule="dream", filter_order="top_p_first")
    assert SamplerOptions().for_family("llada") == SamplerOptions(schedule="equal", filter_order="top_k_first")
    assert SamplerOptions(schedule="equal").for_family("dream").schedule == "equal"  # an explicit choice wins


def test_family_dream_filters_top_p_first(model, dream_model, monkeypatch):
    orders = []
    real = sampler_module.sample_tokens

    def spy(*args, **kwargs):
        orders.append(kwargs["top_p_first"])
        return real(*args, **kwargs)

    monkeypatch.setattr(sampler_module, "sample_tokens", spy)
    kw = dict(max_new_tokens=4, steps=1, temperature=1.0, top_p=0.9, top_k=5, generator=torch.Generator().manual_seed(0))
    generate(dream_model, [1, 2], **kw)
    generate(model, [1, 2], **kw)
    generate(model, [1, 2], filter_order="top_p_first", **kw)
    assert orders == [True, False, True]


def test_top_p_first_is_dreams_order():
    """Dream keeps the nucleus of the full distribution, then its top-k; difflm's default measures
    the nucleus on the renormalised top-k, which keeps fewer tokens."""
    logits = torch.tensor([[0.5, 0.25, 0.15, 0.1]]).log()
    dream = top_k_filter(top_p_filter(logits, 0.6), 2).softmax(-1)  # nucleus {0.5, 0.25}, both in the top 2
    default = top_p_filter(top_k_filter(logits, 2), 0.6).softmax(-1)  # top 2 renormalised: 0.67 alone reaches 0.6
    assert (dream > 0).tolist() == [[True, True, False, False]] and (default > 0).tolist() == [[True, False, False, False]]
    for top_p_first, expected in ((True, dream), (False, default)):
        kept, ids = truncated_distribution(logits, 2, 0.6, top_p_first=top_p_first)
        assert torch.allclose(torch.zeros_like(logits).scatter(-1, ids, kept), expected, atol=1e-6)


@pytest.mark.parametrize("top_k, top_p", [(5, 0.9), (40, 0.8), (3, 0.5), (200, 0.95)])
def test_top_p_first_equals_the_filters(top_k, top_p):
    gen = torch.Generator().manual_seed(0)
    logits = torch.cat([torch.randn(3, 1000, generator=gen) * 4, torch.randn(3, 1000, generator=gen) * 0.05])
    expected = top_k_filter(top_p_filter(logits, top_p), top_k).softmax(-1)
    kept, ids = truncated_distribution(logits, top_k, top_p, top_p_first=True)
    assert torch.allclose(torch.zeros_like(logits).scatter(-1, ids, kept), expected, atol=1e-6)


def test_random_order_under_dreams_schedule_reveals_with_one_minus_s_over_t():
    """Dream's 'origin': each masked position is revealed with probability 1 - s / t."""
    candidates = torch.ones(4, 50, dtype=torch.bool)
    timesteps = torch.linspace(1, 1e-3, 5)
    for step in range(4):
        ctx = StepContext(step=step, steps=4, candidates=candidates, tokens=torch.zeros(4, 50, dtype=torch.long),
                          confidence=torch.zeros(4, 50), probs=torch.zeros(200, 2), num_to_commit=torch.zeros(4),
                          generator=torch.Generator().manual_seed(step), schedule="dream")
        p = float(1 - timesteps[step + 1] / timesteps[step]) if step < 3 else 1.0
        expected = torch.rand(4, 50, generator=torch.Generator().manual_seed(step)) < p
        assert torch.equal(get_strategy("random").select(ctx), expected)
