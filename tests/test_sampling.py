"""The sampler loop: what it promises about prompts, masks, steps, seeds and batches."""

import dataclasses

import pytest
import torch

from difflm import InputError
from difflm.sampling import LowConfidence, SamplerOptions, Threshold, commit_counts, generate, infill
from conftest import VOCAB, tiny_dlm

MASK = VOCAB - 1


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny models are overhead-bound: one intra-op thread avoids OpenMP contention with the
    other processes on a 2-core machine (100x faster here). Imported by the other sampling tests."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model():
    return tiny_dlm("llama")


@pytest.mark.parametrize("strategy", ["low_confidence", "random"])
def test_prompt_untouched_no_mask_left(model, strategy):
    prompt = torch.randint(0, 60, (3, 5), generator=torch.Generator().manual_seed(0))
    out = generate(model, prompt, max_new_tokens=9, steps=4, strategy=strategy, temperature=1.0,
                   generator=torch.Generator().manual_seed(1))
    assert out.shape == (3, 14)
    assert torch.equal(out[:, :5], prompt)
    assert not (out == MASK).any()


def test_steps_fewer_than_tokens_and_callback_sees_every_step(model):
    seen = []
    out = generate(model, [1, 2, 3], max_new_tokens=10, steps=3, callback=seen.append)
    assert len(seen) == 3 and [s.step for s in seen] == [0, 1, 2]
    # low_confidence commits an equal share per step: 4, 3, 3 tokens
    assert [int(s.committed.sum()) for s in seen] == commit_counts(10, 3) == [4, 3, 3]
    masks_left = [int((s.canvas == MASK).sum()) for s in seen]
    assert masks_left == [6, 3, 0]
    assert torch.equal(seen[-1].canvas, out)
    # the prompt is never written
    assert not any(s.committed[:, :3].any() for s in seen)


def test_more_steps_than_tokens_stops_when_done(model):
    seen = []
    generate(model, [1, 2], max_new_tokens=3, steps=10, callback=seen.append)
    assert len(seen) == 3


def test_same_seed_same_output(model):
    kw = dict(max_new_tokens=8, steps=8, strategy="random", temperature=1.0, top_p=0.9)
    a = generate(model, [4, 5, 6], generator=torch.Generator().manual_seed(7), **kw)
    b = generate(model, [4, 5, 6], generator=torch.Generator().manual_seed(7), **kw)
    c = generate(model, [4, 5, 6], generator=torch.Generator().manual_seed(8), **kw)
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2"])
def test_batch_of_two_equals_each_alone(arch):
    m = tiny_dlm(arch)
    short, long = [7, 8, 9], [10, 11, 12, 13, 14, 15]
    both = generate(m, [short, long], max_new_tokens=6, steps=3)
    alone_short = generate(m, short, max_new_tokens=6, steps=3)
    alone_long = generate(m, long, max_new_tokens=6, steps=3)
    assert torch.equal(both[1], alone_long[0])
    assert torch.equal(both[0, 3:], alone_short[0])  # left padding of 3 in the batch


def test_random_strategy_reveals_like_the_reference(model):
    """Each masked position is revealed with probability 1/(remaining steps): about n/T the first step."""
    counts = []
    for seed in range(40):
        seen = []
        generate(model, [1], max_new_tokens=40, steps=8, strategy="random", temperature=1.0,
                 generator=torch.Generator().manual_seed(seed), callback=seen.append)
        counts.append(int(seen[0].committed.sum()))
        assert len(seen) <= 8 and int((seen[-1].canvas == MASK).sum()) == 0
    assert sum(counts) / len(counts) == pytest.approx(40 / 8, rel=0.2)


def test_infill_keeps_prefix_and_suffix(model):
    prefix, suffix = [1, 2, 3], [20, 21, 22, 23]
    seen = []
    out = infill(model, prefix, suffix, middle_length=5, steps=5, callback=seen.append)
    assert out.shape == (1, 12)
    assert out[0, :3].tolist() == prefix and out[0, 8:].tolist() == suffix
    assert not (out == MASK).any()
    assert all(not s.committed[:, 8:].any() for s in seen)
    # batched infill with prefixes of different lengths: each row equals its own run
    both = infill(model, [prefix, [5, 6]], suffix, middle_length=5)
    alone = infill(model, [5, 6], suffix, middle_length=5)
    assert torch.equal(both[1, 1:], alone[0])


def test_blocks_are_finished_left_to_right(model):
    seen = []
    generate(model, [1, 2], max_new_tokens=8, steps=4, block_length=4, callback=seen.append)
    assert [s.block for s in seen] == [0, 0, 1, 1]
    first_block_done = seen[1].canvas[0, 2:6]
    assert not (first_block_done == MASK).any() and (seen[1].canvas[0, 6:] == MASK).all()


def test_model_methods_delegate(model):
    out = model.generate([1, 2], max_new_tokens=4, steps=2)
    assert torch.equal(out, generate(model, [1, 2], max_new_tokens=4, steps=2))
    prefix, suffix = [[1, 2, 3], [4, 5]], [20, 21]
    kw = dict(middle_length=4, steps=3, strategy="random", temperature=1.0, top_k=10)
    via_model = model.infill(prefix, suffix, generator=torch.Generator().manual_seed(3), **kw)
    direct = infill(model, prefix, suffix, generator=torch.Generator().manual_seed(3), **kw)
    assert torch.equal(via_model, direct) and via_model.shape == (2, 9)
    assert via_model[0, :3].tolist() == [1, 2, 3] and via_model[1, 1:3].tolist() == [4, 5]  # row 1 is left-padded
    assert via_model[:, 7:].tolist() == [suffix, suffix] and not (via_model == MASK).any()
    with_options = model.infill(prefix, suffix, middle_length=4, options=SamplerOptions(steps=3, strategy="random"),
                                temperature=1.0, top_k=10, generator=torch.Generator().manual_seed(3))
    assert torch.equal(with_options, direct)


def test_options_travel_as_one_object(model):
    opts = SamplerOptions(steps=2, strategy="threshold", threshold=0.5)
    by_keywords = generate(model, [1, 2], max_new_tokens=4, steps=2, strategy="threshold", threshold=0.5)
    assert torch.equal(generate(model, [1, 2], max_new_tokens=4, options=opts), by_keywords)
    assert torch.equal(generate(model, [1, 2], max_new_tokens=4, options=SamplerOptions(steps=2), strategy="threshold",
                                threshold=0.5), by_keywords)  # overrides on top of the options
    assert opts.strategy == "threshold" and isinstance(opts.commit_strategy, Threshold)  # the user's value is kept
    assert opts.commit_strategy.threshold == 0.5
    assert SamplerOptions.merge(opts, steps=3) == SamplerOptions(steps=3, strategy="threshold", threshold=0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.steps = 3
    strategy = LowConfidence()
    assert SamplerOptions(strategy=strategy).commit_strategy is strategy


def test_unknown_option_is_an_input_error(model):
    with pytest.raises(InputError, match="unknown sampler option 'stepz'") as info:
        generate(model, [1], max_new_tokens=4, stepz=2)
    assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="unknown sampler options 'a', 'b'"):
        infill(model, [1], [2], middle_length=2, b=1, a=2)
    with pytest.raises(InputError, match="options must be a SamplerOptions"):
        generate(model, [1], max_new_tokens=4, options={"steps": 2})
    with pytest.raises(InputError, match="unknown schedule"):
        generate(model, [1], max_new_tokens=4, schedule="cosine")
    with pytest.raises(InputError, match="unknown filter_order"):
        generate(model, [1], max_new_tokens=4, filter_order="random")


def test_bad_input(model):
    with pytest.raises(InputError, match="steps"):
        generate(model, [1], max_new_tokens=4, steps=0)
    with pytest.raises(InputError, match="max_new_tokens"):
        generate(model, [1], max_new_tokens=0)
    with pytest.raises(InputError, match="unknown strategy"):
        generate(model, [1], max_new_tokens=4, strategy="best")
    with pytest.raises(InputError, match="top_p"):
        generate(model, [1], max_new_tokens=4, top_p=0.0)
    with pytest.raises(InputError, match="temperature"):
        generate(model, [1], max_new_tokens=4, temperature=-1)
    with pytest.raises(InputError, match="context"):
        generate(model, list(range(1, 60)), max_new_tokens=10)
    with pytest.raises(InputError, match="at least one token"):
        generate(model, [], max_new_tokens=4)
    with pytest.raises(InputError, match=r"\[0, 64\)"):
        generate(model, [100], max_new_tokens=4)
    with pytest.raises(InputError, match="mask token"):
        generate(model, [MASK], max_new_tokens=4)
    with pytest.raises(InputError, match="middle_length"):
        infill(model, [1], [2], middle_length=0)


@pytest.mark.parametrize("bad", [-1.0, float("inf"), float("nan")])
def test_cfg_scale_must_be_finite_and_non_negative(model, bad):
    with pytest.raises(InputError, match="cfg_scale"):
        generate(model, [1], max_new_tokens=4, cfg_scale=bad)
