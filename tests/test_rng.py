"""Seeded draws work on any device: every draw that takes a generator goes through difflm.rng,
which draws on the generator's own device and moves the numbers (PyTorch refuses a CPU generator
for a CUDA tensor; the trainer's and the evaluation's generators are CPU generators)."""

import re
from pathlib import Path

import pytest
import torch

import difflm
from difflm.attention import annealed_attention_mask
from difflm.noise import corrupt, sample_t
from difflm.rng import uniform

SRC = Path(difflm.__file__).parent
DRAW = re.compile(r"torch\.(rand|randn|randint|randperm|multinomial|bernoulli|normal)\((?:[^()]|\([^()]*\))*generator\s*=")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_every_seeded_draw_goes_through_difflm_rng():
    """A torch draw handed a generator fails as soon as the generator and the tensor live on
    different devices; only difflm.rng may make such calls (it draws where the generator lives)."""
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "rng.py":
            continue
        text = path.read_text()
        for match in DRAW.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            offenders.append(f"{path.relative_to(SRC)}:{line}")
    assert not offenders, f"seeded draws outside difflm.rng: {offenders}"


def test_uniform_gives_the_same_numbers_whatever_the_target_device():
    a = uniform((3, 4), generator=torch.Generator().manual_seed(5), device="cpu")
    b = torch.rand(3, 4, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    moved = uniform((3, 4), generator=torch.Generator().manual_seed(5), device="meta")
    assert moved.device.type == "meta" and moved.shape == (3, 4)


def test_annealed_training_draws_work_for_a_foreign_device(cuda_like_generators):
    """The adapt objective's step on a GPU: the trainer's CPU generator draws the annealing
    pattern and the noise for tensors on another device (meta stands in for CUDA; the fixture
    makes torch refuse a foreign generator as CUDA does)."""
    from conftest import tiny_dlm

    gen = torch.Generator().manual_seed(0)
    mask = annealed_attention_mask(16, 0.5, generator=gen, device="meta")
    assert mask.device.type == "meta"
    model = tiny_dlm("llama", attention="annealed", anneal_steps=4).to("meta")
    x = torch.zeros(2, 12, dtype=torch.long, device="meta")
    assert model.logits(x, step=1, generator=gen).device.type == "meta"
    t = sample_t(2, antithetic=True, generator=gen, device="meta")
    _, noise = corrupt(x, t, 7, generator=gen)
    assert noise.device.type == "meta"


@pytest.mark.gpu
@cuda
def test_cpu_generator_serves_cuda_draws_with_the_cpu_numbers():
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    mask = annealed_attention_mask(32, 0.5, generator=gen(), device="cuda")
    assert mask.is_cuda and torch.equal(mask.cpu(), annealed_attention_mask(32, 0.5, generator=gen()))
    t = sample_t(8, antithetic=True, generator=gen(), device="cuda")
    assert t.is_cuda and torch.equal(t.cpu(), sample_t(8, antithetic=True, generator=gen()))
    x0 = torch.zeros(4, 16, dtype=torch.long)
    _, noise = corrupt(x0.cuda(), torch.full((4,), 0.5, device="cuda"), 7, generator=gen())
    assert torch.equal(noise.cpu(), corrupt(x0, torch.full((4,), 0.5), 7, generator=gen())[1])
