"""Per-row randomness and continuous batching in the sampler: with one generator per row a row's
output does not depend on the rest of the batch; `RowBatch` (rows joining and leaving between
steps) gives for each row exactly what `denoise` gives it alone."""

import pytest
import torch

from difflm import InputError, rng
from difflm.sampling import Row, RowBatch, SamplerOptions, fill, generate, sample_tokens
from conftest import tiny_dlm
from test_sampling import single_thread  # noqa: F401 (autouse fixture)

MASK, EOS = 63, 60
PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8, 9], [10, 11]]
SAMPLED = [
    dict(temperature=1.0),
    dict(temperature=0.8, top_p=0.8),
    dict(temperature=1.0, top_k=5, top_p=0.9, gumbel=True),  # the truncated Gumbel path
    dict(temperature=1.0, gumbel=True),
    dict(strategy="random", temperature=0.9),
    dict(strategy="maskgit_plus", alg_temp=0.5, temperature=1.0, block_length=3),
    dict(strategy="threshold", threshold=0.2, temperature=1.0, block_length=4, steps=4),
    dict(schedule="dream", strategy="random", temperature=1.0, steps=5),
    dict(cfg_scale=1.0, temperature=1.0, block_length=4),
    dict(stop_at_eos=True, block_length=3, temperature=1.5),
    dict(cache="dual", block_length=4, temperature=1.0),
    dict(cache="prefix", attention="block_causal", strategy="entropy", temperature=1.0, block_length=4),
    dict(cache="block", attention="block_causal", temperature=1.0, block_length=3, stop_at_eos=True),
    # the step's revisits and sub-blocks (the same `DecodingStep` in `denoise` and `RowBatch`)
    dict(editing_threshold=0.0, max_edits=2, temperature=1.0, block_length=4),
    dict(editing_threshold=0.0, max_edits=6, post_edit_steps=3, temperature=1.0, block_length=4),  # LLaDA 2.1
    dict(editing_threshold=0.1, max_edits=6, post_edit_steps=4, cache="dual", block_length=4, temperature=1.0),
    dict(remask=0.5, max_edits=1, temperature=1.0, block_length=4, steps=12),
    dict(sub_block_length=2, block_length=4, temperature=1.0),
    dict(sub_block_length=3, strategy="random", temperature=1.0, steps=5, stop_at_eos=True),
    dict(remask=0.4, editing_threshold=0.2, cache="dual", block_length=4, steps=10, temperature=1.0),
    dict(sub_block_length=2, cache="block", attention="block_causal", block_length=4, temperature=1.0),
]


@pytest.fixture(scope="module")
def model():
    return tiny_dlm("llama", eos_token_id=EOS)


def gens(*seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


def alone(model, prompt, seed, length=8, **options):
    return fill(model, [prompt + [MASK] * length], generator=gens(seed), return_dict=True, **options)


@pytest.mark.parametrize("options", SAMPLED, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_per_row_generators_make_rows_independent_of_the_batch(model, options):
    batch = generate(model, PROMPTS, max_new_tokens=8, generator=gens(1, 2, 3), return_dict=True, **options)
    for b, prompt in enumerate(PROMPTS):
        assert batch.new_tokens[b] == alone(model, prompt, b + 1, **options).new_tokens[0]
    again = generate(model, PROMPTS, max_new_tokens=8, generator=rng.RowGenerators(gens(1, 2, 3)), **options)
    assert torch.equal(again, batch.sequences)
    if options.get("temperature"):  # the seeds matter
        other = generate(model, PROMPTS, max_new_tokens=8, generator=gens(4, 5, 6), return_dict=True, **options)
        assert other.new_tokens != batch.new_tokens


def test_per_row_generators_are_checked(model):
    with pytest.raises(InputError, match="2 per-row generators for a batch of 3"):
        generate(model, PROMPTS, max_new_tokens=4, generator=gens(1, 2), temperature=1.0)
    with pytest.raises(InputError, match="one torch.Generator per row"):
        rng.RowGenerators([])
    with pytest.raises(InputError, match="do not add up"):
        rng.uniform((5,), generator=rng.RowGenerators(gens(1, 2)), rows=[2, 2])
    with pytest.raises(InputError, match="number of items of each row"):
        sample_tokens(torch.randn(3, 7), temperature=1.0, generator=rng.RowGenerators(gens(1)))


def test_a_row_draws_only_from_its_own_stream():
    draws = rng.RowGenerators(gens(1, 2)).uniform([3, 0], (2,))
    assert torch.equal(draws, torch.rand((3, 2), generator=torch.Generator().manual_seed(1)))
    second = rng.RowGenerators(gens(1, 2))
    second.uniform([0, 4])
    assert torch.equal(second.generators[0].get_state(), torch.Generator().manual_seed(1).get_state())


def run_rows(model, rows):
    batch = RowBatch(model, rows[0].key)
    for row in rows:
        batch.add(row)
    batch.run()
    return rows


@pytest.mark.parametrize("options", SAMPLED, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_row_batch_gives_what_denoise_gives(model, options):
    opts = SamplerOptions(**options)
    for seed, prompt in enumerate(PROMPTS):
        seen, reference = [], []
        ref = fill(model, [prompt + [MASK] * 8], options=opts, generator=gens(seed), callback=reference.append,
                   return_dict=True)
        (row,) = run_rows(model, [Row(model, prompt + [MASK] * 8, opts, generator=gens(seed)[0], callback=seen.append)])
        assert row.canvas.tolist() == ref.sequences[0].tolist() and row.calls == ref.steps == len(seen)
        for mine, theirs in zip(seen, reference):  # the same step events, as a batch of one
            assert (mine.step, mine.block, mine.total_steps) == (theirs.step, theirs.block, theirs.total_steps)
            assert torch.equal(mine.committed, theirs.committed) and torch.equal(mine.canvas, theirs.canvas)
    # several rows at once, each with its own length: every row as if alone
    length = {"cache": 8}.get("cache" in options and "cache", None)
    rows = [Row(model, p + [MASK] * (length or 6 + i), opts, generator=gens(10 + i)[0]) for i, p in enumerate(PROMPTS)]
    for i, row in enumerate(run_rows(model, rows)):
        single = alone(model, PROMPTS[i], 10 + i, length or 6 + i, options=opts).sequences[0]
        assert row.canvas.tolist() == single[-row.canvas.shape[0]:].tolist()


def test_rows_join_and_leave_between_steps(model):
    opts = SamplerOptions(temperature=1.0, block_length=4)
    first, late, cancelled = (Row(model, p + [MASK] * 8, opts, generator=gens(i)[0]) for i, p in enumerate(PROMPTS))
    batch = RowBatch(model, opts)
    batch.add(first)
    batch.add(cancelled)
    sizes = []
    for step in range(8):
        if step == 3:
            batch.add(late)
            batch.cancel(cancelled)
        sizes.append(len(batch.step()))
    batch.run()
    assert sizes[:3] == [2, 2, 2] and sizes[3:6] == [2, 2, 2] and cancelled.calls == 3
    for i, row in ((0, first), (1, late)):
        assert row.canvas.tolist() == alone(model, PROMPTS[i], i, options=opts).sequences[0].tolist()


def test_cached_rows_run_as_a_cohort(model):
    opts = SamplerOptions(cache="dual", block_length=4, temperature=1.0)
    a, b = Row(model, PROMPTS[0] + [MASK] * 8, opts), Row(model, PROMPTS[1] + [MASK] * 8, opts)
    other_layout = Row(model, PROMPTS[2] + [MASK] * 6, opts)
    batch = RowBatch(model, opts)
    batch.add(a)
    assert batch.accepts(b) and not batch.accepts(other_layout)
    batch.add(b)
    batch.step()
    late = Row(model, PROMPTS[2] + [MASK] * 8, opts)
    assert not batch.accepts(late)  # the cache holds keys of the rows that started
    with pytest.raises(InputError, match="cannot join"):
        batch.add(late)
    assert not RowBatch(model, SamplerOptions()).accepts(a)  # other options: another batch


def test_row_errors_are_input_errors(model):
    with pytest.raises(InputError, match="steps \\(1\\) must be at least the number of blocks"):
        Row(model, [1, 2] + [MASK] * 8, SamplerOptions(steps=1, block_length=4))
    with pytest.raises(InputError, match="no masked position"):
        Row(model, [1, 2, 3], SamplerOptions())


@pytest.mark.parametrize("cache", ["none", "dual"])
def test_rows_whose_block_fills_early_give_what_they_give_alone(model, cache):
    """With remasking, a row whose block is full before its budget is spent (threshold 0.001 commits
    every candidate) ends the block at the first step that remasks nothing (alone), or waits for the
    cohort's other rows without being remasked again (cached): either way each row gives exactly what
    it gives alone."""
    opts = SamplerOptions(strategy="threshold", threshold=0.001, remask=0.2, cache=cache, block_length=4, steps=12,
                          temperature=1.0)
    rows = [Row(model, p + [MASK] * 8, opts, generator=gens(20 + i)[0]) for i, p in enumerate(PROMPTS)]
    for i, row in enumerate(run_rows(model, rows)):
        single = alone(model, PROMPTS[i], 20 + i, 8, options=opts)
        assert row.canvas.tolist() == single.sequences[0][-row.canvas.shape[0]:].tolist()
        assert MASK not in row.new_tokens
