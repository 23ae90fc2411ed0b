"""Seeded draws of the evaluation work on every device and give the same numbers there.

A CUDA tensor cannot be drawn with a CPU generator ("Expected a 'cuda' device type for generator").
torch 2.13 lets a CPU generator fill a meta tensor, so on a machine without a GPU `strict_generators`
puts CUDA's rule on every device; with the default device set to "meta", every draw the evaluation makes
without naming a device would then target a device its generator does not live on. The real thing runs
under the ``gpu`` marker.
"""

import functools

import pytest
import torch

from difflm.evaluation import EvalSettings, build_task, load_eval_lm
from difflm.evaluation.likelihood import ScoreRequest, _count_plan, _reference_plan, _time_plan, elbo_nll, reference_score
from difflm.noise import get_schedule
from difflm.rng import seeded_generator
from conftest import tiny_dlm
from evaluation_fixtures import model_dirs  # noqa: F401  (fixture)

IDS = (5, 9, 11, 20, 3, 7, 40)


def _target_device(device) -> torch.device:
    return torch.device(device) if device is not None else torch.get_default_device()


@pytest.fixture
def strict_generators(monkeypatch):
    """torch's random functions refuse, as on CUDA, a generator of another device than their output's."""

    def check(generator, device):
        if generator is not None and generator.device.type != device.type:
            raise RuntimeError(f"Expected a '{device.type}' device type for generator but found '{generator.device.type}'")

    def strict(fn):
        @functools.wraps(fn)
        def draw(*args, generator=None, device=None, **kwargs):
            check(generator, _target_device(device))
            return fn(*args, generator=generator, device=device, **kwargs)
        return draw

    for name in ("rand", "randn", "randint", "randperm"):
        monkeypatch.setattr(torch, name, strict(getattr(torch, name)))
    multinomial = torch.multinomial

    def strict_multinomial(input, *args, generator=None, **kwargs):
        check(generator, input.device)
        return multinomial(input, *args, generator=generator, **kwargs)

    monkeypatch.setattr(torch, "multinomial", strict_multinomial)


def test_the_strict_rule_is_cudas(strict_generators):
    with pytest.raises(RuntimeError, match="Expected a 'meta' device type for generator but found 'cpu'"):
        torch.rand(3, generator=torch.Generator(), device="meta")
    with torch.device("meta"), pytest.raises(RuntimeError, match="Expected a 'meta'"):
        torch.randperm(3, generator=torch.Generator())
    assert torch.rand(3, generator=torch.Generator()).shape == (3,)


def _plans():
    schedule = get_schedule("linear")
    return {
        "count": _count_plan(6, 5, True, seeded_generator(1)),
        "count-independent": _count_plan(6, 5, False, seeded_generator(2)),
        "time": _time_plan(6, 5, True, seeded_generator(3), schedule, 1e-3),
        "time-independent": _time_plan(6, 5, False, seeded_generator(4), schedule, 1e-3),
        "reference": _reference_plan(6, 8, seeded_generator(5)),
    }


def test_likelihood_plans_draw_on_the_generators_device(strict_generators):
    expected = _plans()
    with torch.device("meta"):  # a foreign default device, as `torch.set_default_device("cuda")` makes one
        got = _plans()
    for name, plan in expected.items():
        assert [w for _, w in got[name]] == [w for _, w in plan], name
        for (positions, _), (want, _) in zip(got[name], plan):
            assert positions.device.type == "cpu" and positions.tolist() == want.tolist(), name


def test_elbo_and_reference_score_under_a_foreign_default_device(strict_generators):
    dlm = tiny_dlm("llama", shift=True)
    requests = [ScoreRequest(IDS, 2, 7), ScoreRequest(IDS[:5], 1, 5), ScoreRequest(IDS, 3, 4)]
    for estimator in ("count", "time"):
        expected = elbo_nll(dlm, requests, n_samples=4, estimator=estimator, seed=3, progress=False)
        with torch.device("meta"):
            got = elbo_nll(dlm, requests, n_samples=4, estimator=estimator, seed=3, progress=False)
        assert [e.nll for e in got] == pytest.approx([e.nll for e in expected], rel=1e-6), estimator
    expected_ref = reference_score(dlm, requests, steps=4, seed=3, progress=False)
    with torch.device("meta"):
        assert reference_score(dlm, requests, steps=4, seed=3, progress=False) == pytest.approx(expected_ref, rel=1e-6)


def test_the_sampler_gets_a_cpu_generator_seeded_from_the_settings(model_dirs):  # noqa: F811
    lm = load_eval_lm(model_dirs["dlm"], EvalSettings(seed=11, progress=False))
    generator = lm.sampler_generator()
    assert generator.device.type == "cpu"  # the device-independent source (`difflm.rng`)
    assert torch.equal(torch.rand(4, generator=generator), torch.rand(4, generator=seeded_generator(11)))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_elbo_and_generation_run_on_cuda(model_dirs):  # noqa: F811
    settings = EvalSettings(n_samples=4, limit=3, progress=False, batch_size=8, max_new_tokens=4)
    cpu = load_eval_lm(model_dirs["dlm"], settings)
    gpu = load_eval_lm(model_dirs["dlm"], settings, device="cuda")
    assert gpu.model.device.type == "cuda"
    requests = [ScoreRequest((0, *IDS), 2, 8), ScoreRequest((0, *IDS[:5]), 1, 6)]
    on_cpu = elbo_nll(cpu.model, requests, n_samples=4, seed=3, progress=False)
    on_gpu = elbo_nll(gpu.model, requests, n_samples=4, seed=3, progress=False)
    # the same draws on both devices: the estimates differ only by float rounding
    assert [e.nll for e in on_gpu] == pytest.approx([e.nll for e in on_cpu], rel=1e-3)
    with torch.device("cuda"):  # a CUDA default device too
        assert [e.nll for e in elbo_nll(gpu.model, requests, n_samples=4, seed=3, progress=False)] == \
            pytest.approx([e.nll for e in on_cpu], rel=1e-3)
    # generation and infilling tasks (the sampler, with the evaluation's seeded generator)
    for name in ("last-word", "infilling"):
        result = build_task(name).run(gpu)
        assert result.n_examples == 3 and result.samples
    perplexity = build_task("perplexity").run(gpu).metrics["nll_per_token"]
    assert perplexity.value == pytest.approx(build_task("perplexity").run(cpu).metrics["nll_per_token"].value, rel=1e-3)
