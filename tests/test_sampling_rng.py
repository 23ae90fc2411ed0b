"""Seeded draws on any device: every random draw of the sampler goes through `difflm.rng.uniform`,
which draws on the generator's own device and moves the numbers, so a CPU generator works for
tensors on a GPU and a seed gives the same stream wherever the model runs.

PyTorch refuses `torch.rand(..., generator=cpu_generator, device="cuda")`; on the meta device it
silently draws nothing instead. Meta tensors stand in for a foreign device here: the fixture
`cuda_like_generators` (conftest.py) makes torch refuse a generator of another device as CUDA does, and the
generator's state shows whether the numbers were really drawn from it.
"""

import pytest
import torch

from difflm.sampling import StepContext, generate, get_strategy, gumbel_max, sample_tokens
from conftest import tiny_dlm
from test_sampling import single_thread  # noqa: F401 (autouse fixture)

FOREIGN = "meta"


def _state_after(fn, seed=0):
    generator = torch.Generator().manual_seed(seed)
    fn(generator)
    return generator.get_state()


SAMPLING = [
    dict(temperature=1.0),
    dict(temperature=0.7, gumbel=True),
    dict(temperature=1.0, top_k=3),
    dict(temperature=1.0, top_k=3, gumbel=True),
]


@pytest.mark.parametrize("kwargs", SAMPLING, ids=lambda kw: "-".join(kw))
def test_sample_tokens_with_a_cpu_generator_on_a_foreign_device(cuda_like_generators, kwargs):
    logits = torch.randn(5, 11, generator=torch.Generator().manual_seed(0))
    tokens, probs = sample_tokens(logits.to(FOREIGN), generator=torch.Generator().manual_seed(1), **kwargs)
    assert tokens.device.type == FOREIGN and tokens.shape == (5,) and probs.shape == (5, 11)
    # the draws came from the CPU generator, exactly as many as on the CPU
    on_cpu = _state_after(lambda g: sample_tokens(logits, generator=g, **kwargs))
    on_foreign = _state_after(lambda g: sample_tokens(logits.to(FOREIGN), generator=g, **kwargs))
    assert torch.equal(on_cpu, on_foreign) and not torch.equal(on_cpu, torch.Generator().manual_seed(0).get_state())


def test_gumbel_max_with_a_cpu_generator_on_a_foreign_device(cuda_like_generators):
    logits = torch.randn(4, 9)
    assert gumbel_max(logits.to(FOREIGN), torch.Generator().manual_seed(0)).device.type == FOREIGN
    assert torch.equal(_state_after(lambda g: gumbel_max(logits, g)), _state_after(lambda g: gumbel_max(logits.to(FOREIGN), g)))


def _context(device, generator, suppressed=False):
    probs = torch.tensor([[0.5, 0.5], [0.9, 0.1], [0.7, 0.3]])
    candidates = torch.ones(1, 3, dtype=torch.bool)
    return StepContext(
        step=0, steps=3, candidates=candidates.to(device), tokens=torch.zeros(1, 3, dtype=torch.long, device=device),
        confidence=probs.max(-1).values[None].to(device), probs=probs.to(device), num_to_commit=torch.tensor([1], device=device),
        generator=generator, suppressed=torch.tensor([[True, False, False]], device=device) if suppressed else None,
    )


def test_random_order_with_a_cpu_generator_on_a_foreign_device(cuda_like_generators):
    strategy = get_strategy("random")
    assert strategy.select(_context(FOREIGN, torch.Generator().manual_seed(0))).device.type == FOREIGN
    assert torch.equal(_state_after(lambda g: strategy.select(_context("cpu", g))),
                       _state_after(lambda g: strategy.select(_context(FOREIGN, g))))


@pytest.mark.parametrize("suppressed", [False, True])
def test_alg_temp_with_a_cpu_generator_on_a_foreign_device(cuda_like_generators, suppressed):
    strategy = get_strategy("maskgit_plus", alg_temp=0.5)
    ranking = strategy.ranking(_context(FOREIGN, torch.Generator().manual_seed(0), suppressed))
    assert ranking.device.type == FOREIGN and ranking.shape == (1, 3)
    assert torch.equal(_state_after(lambda g: strategy.ranking(_context("cpu", g, suppressed))),
                       _state_after(lambda g: strategy.ranking(_context(FOREIGN, g, suppressed))))


@pytest.mark.parametrize("kwargs", [dict(strategy="random", temperature=1.0, top_p=0.9),
                                    dict(strategy="maskgit_plus", alg_temp=0.3, temperature=0.8, gumbel=True)])
def test_seeded_runs_are_reproducible(kwargs):
    model = tiny_dlm("llama")
    kw = dict(max_new_tokens=8, steps=4, **kwargs)
    a = generate(model, [[1, 2, 3], [4, 5, 6]], generator=torch.Generator().manual_seed(3), **kw)
    b = generate(model, [[1, 2, 3], [4, 5, 6]], generator=torch.Generator().manual_seed(3), **kw)
    assert torch.equal(a, b)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("strategy", ["random", "maskgit_plus"])
def test_cpu_generator_drives_a_model_on_cuda(strategy):
    model = tiny_dlm("llama").cuda()
    kw = dict(max_new_tokens=8, steps=4, strategy=strategy, temperature=1.0, top_p=0.9)
    if strategy != "random":
        kw["alg_temp"] = 0.5
    a = generate(model, [[1, 2, 3]], generator=torch.Generator().manual_seed(5), **kw)
    b = generate(model, [[1, 2, 3]], generator=torch.Generator().manual_seed(5), **kw)
    assert a.device.type == "cuda" and torch.equal(a, b)
    logits = torch.randn(64, 50, generator=torch.Generator().manual_seed(0)) * 5
    for sampling in SAMPLING:
        on_cpu, _ = sample_tokens(logits, generator=torch.Generator().manual_seed(1), **sampling)
        on_gpu, _ = sample_tokens(logits.cuda(), generator=torch.Generator().manual_seed(1), **sampling)
        # the same uniforms on both devices: the same tokens, up to float differences at a boundary
        assert (on_cpu == on_gpu.cpu()).float().mean() > 0.95
