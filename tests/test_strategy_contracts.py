"""The contract every registered decoding strategy keeps (in the spirit of diffusers' SchedulerCommonTest),
under every KV cache mode: run through `generate` / `fill` and through the server's `RowBatch`, on a tiny
random model, it

* never writes a prompt, an infilling suffix or the text between two gaps,
* leaves no masked position at the end,
* takes at most the step budget in model calls (and reports what it ran),
* gives the same tokens for the same seed, and
* gives, row by row through `RowBatch`, exactly the tokens `generate` / `fill` give.

A strategy added to `difflm.registry.STRATEGIES` is picked up here with no edit;
`test_the_contract_catches_a_broken_strategy` shows that the checks fail for strategies that break it.
"""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_dlm
from difflm import registry
from difflm.sampling import Row, RowBatch, SamplerOptions, Strategy, fill, generate
from test_sampling import single_thread  # noqa: F401 (autouse fixture)

MASK, EOS = 63, 60
NEW, STEPS, BLOCK = 8, 6, 4
PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8]]
# two gaps, committed text between them and a suffix
TEMPLATES = [[1, 2] + [MASK] * 5 + [10, 11] + [MASK] * 3 + [12], [5, 6, 7] + [MASK] * 4 + [13] + [MASK] * 4 + [14, 15]]
CACHES = {"none": {}, "prefix": {}, "dual": {}, "block": {"attention": "block_causal"}}


@pytest.fixture(scope="module")
def model():
    return tiny_dlm("llama", eos_token_id=EOS)


def options(strategy: str | Strategy, cache: str) -> SamplerOptions:
    return SamplerOptions(strategy=strategy, cache=cache, steps=STEPS, block_length=BLOCK, temperature=1.0, top_k=20,
                          **CACHES[cache])


def gens(seed: int, n: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


class CountCalls:
    """Counts the backbone's forward calls (one per denoising step, whatever the cache)."""

    def __init__(self, model) -> None:
        self.model, self.calls = model, 0

    def __enter__(self) -> CountCalls:
        self.handle = self.model.model.register_forward_hook(lambda *_: setattr(self, "calls", self.calls + 1))
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


def run_rows(model, templates: list[list[int]], opts: SamplerOptions, seed: int) -> list[list[int]]:
    """Each template as a `Row` with its own generator, batched as the server batches them (a cached
    cohort takes rows of one layout only); their final canvases."""
    rows = [Row(model, t, opts, generator=g) for t, g in zip(templates, gens(seed, len(templates)))]
    batches: list[RowBatch] = []
    for row in rows:
        batch = next((b for b in batches if b.accepts(row)), None)
        if batch is None:
            batches.append(batch := RowBatch(model, opts))
        batch.add(row)
    for batch in batches:
        batch.run()
    return [row.canvas.tolist() for row in rows]


def check_contract(model, strategy: str | Strategy, cache: str) -> None:
    """Every invariant of a strategy under ``cache``; an `AssertionError` says which one broke."""
    opts = options(strategy, cache)
    for templates in (TEMPLATES, [p + [MASK] * NEW for p in PROMPTS]):
        seen = []
        with CountCalls(model) as counter:
            out = fill(model, templates, options=opts, generator=gens(0, len(templates)), callback=seen.append,
                       return_dict=True)
        fixed = ~out.generate_mask
        for step in seen:  # the condition is never written, at no step
            assert torch.equal(step.canvas[fixed], out.sequences[fixed]) and not step.committed[fixed].any()
        length = out.sequences.shape[1]
        for row, template in zip(out.sequences.tolist(), templates):
            given = template
            written = row[length - len(given):]
            assert [w for w, t in zip(written, given) if t != MASK] == [t for t in given if t != MASK], "condition changed"
        assert not (out.sequences[out.generate_mask] == MASK).any(), "a masked position was left unfilled"
        assert out.steps == len(seen) == counter.calls <= STEPS, "model calls beyond the step budget"
        again = fill(model, templates, options=opts, generator=gens(0, len(templates)))
        assert torch.equal(again, out.sequences), "the same seed gave another output"
        # each row as `fill` gives it alone (a cache's window, and so its approximation, depends on the batch)
        for row, template, g in zip(run_rows(model, templates, opts, 0), templates, gens(0, len(templates))):
            assert row == fill(model, template, options=opts, generator=[g])[0].tolist(), "RowBatch and fill disagree"
    # the same through generate (a prompt and new tokens), one row as the server runs it
    reference = generate(model, PROMPTS[1], max_new_tokens=NEW, options=opts, generator=gens(3, 1))
    assert run_rows(model, [PROMPTS[1] + [MASK] * NEW], opts, 3)[0] == reference[0].tolist(), "RowBatch and generate disagree"


def test_the_registry_names_the_strategies():
    for name, cls in registry.STRATEGIES.items():
        assert issubclass(cls, Strategy) and cls.name == name


@pytest.mark.parametrize("cache", list(CACHES))
@pytest.mark.parametrize("name", registry.STRATEGIES.names())
def test_every_strategy_keeps_the_sampler_contract(model, name, cache):
    check_contract(model, name, cache)


class CommitsNothing(Strategy):
    """Broken: never commits, so positions stay masked."""

    name = "commits_nothing"

    def select(self, ctx):
        return torch.zeros_like(ctx.candidates)


class IgnoresTheSeed(Strategy):
    """Broken: draws its order from torch's global RNG instead of the run's generator."""

    name = "ignores_the_seed"

    def score(self, ctx):
        return torch.rand(ctx.candidates.shape)


@pytest.mark.parametrize("broken, reason", [(CommitsNothing, "unfilled"), (IgnoresTheSeed, "same seed")])
def test_the_contract_catches_a_broken_strategy(model, broken, reason):
    with pytest.raises(AssertionError, match=reason):
        check_contract(model, broken(), "none")
