"""Structure around the loop: EOS handling and variable length, several infilling gaps, batch
independence, the history API."""

import pytest
import torch

from difflm import InputError
from difflm.sampling import fill, generate, infill
from conftest import tiny_dlm
from test_sampling import single_thread  # noqa: F401 (autouse fixture)

MASK, EOS = 63, 60


@pytest.fixture(scope="module")
def model():
    return tiny_dlm("llama", eos_token_id=EOS)


class boost_token:
    """Context manager: ``token`` is drawn wherever ``where(row, column)`` holds and nowhere else
    (its logit +/- ``amount``), by rewriting the backbone's candidate logits (rows of ``logits_to_keep``, row-major)."""

    def __init__(self, model, token, where, amount=100.0):
        self.model, self.token, self.where, self.amount = model, token, where, amount

    def _hook(self, module, args, kwargs, out):
        keep = kwargs["logits_to_keep"]
        shift = int(self.model.config.shift)
        for n, (b, p) in enumerate(keep.nonzero().tolist()):
            out.logits[n, self.token] += self.amount if self.where(b, p + shift) else -self.amount
        return out

    def __enter__(self):
        self.handle = self.model.model.register_forward_hook(self._hook, with_kwargs=True)

    def __exit__(self, *exc):
        self.handle.remove()


def test_stop_at_eos_ends_a_row_after_its_block(model):
    # prompts of 3 tokens: generated columns are 3..14; row 0 says EOS at its 6th new token
    with boost_token(model, EOS, lambda b, col: b == 0 and col == 3 + 5):
        seen = []
        res = generate(model, [[1, 2, 3], [4, 5, 6]], max_new_tokens=12, block_length=4, stop_at_eos=True,
                       return_dict=True, callback=seen.append)
    row0 = res.sequences[0, 3:].tolist()
    assert row0[5] == EOS and row0[8:] == [EOS] * 4  # block 2 never ran for row 0: filled with EOS
    assert not any(s.committed[0, 11:].any() for s in seen)
    assert res.new_tokens[0] == row0[:5]  # trimmed before the first EOS: variable length
    assert len(res.new_tokens[1]) == 12 and EOS not in res.new_tokens[1]
    assert res.steps == 12  # row 1 kept going


def test_stop_at_eos_stops_the_run_when_every_row_ended(model):
    with boost_token(model, EOS, lambda b, col: col == 4):
        res = generate(model, [[1, 2, 3], [4, 5, 6]], max_new_tokens=12, block_length=4, stop_at_eos=True, return_dict=True)
    assert res.steps == 4 and res.new_tokens == [res.sequences[0, 3:4].tolist(), res.sequences[1, 3:4].tolist()]


def test_without_stop_at_eos_the_length_is_fixed(model):
    with boost_token(model, EOS, lambda b, col: col == 4):
        res = generate(model, [1, 2, 3], max_new_tokens=8, return_dict=True)
    assert res.steps == 8 and len(res.new_tokens[0]) == 8 and res.new_tokens[0][1] == EOS


def test_suppress_eos_commits_eos_last(model):
    with boost_token(model, EOS, lambda b, col: col == 3):  # EOS is by far the most confident token here
        plain = generate(model, [1, 2, 3], max_new_tokens=6, return_dict=True, output_history=True)
        late = generate(model, [1, 2, 3], max_new_tokens=6, suppress_eos=True, return_dict=True, output_history=True)
    assert plain.history[0][0, 3] == EOS  # committed at the first step
    assert all(h[0, 3] == MASK for h in late.history[:-1]) and late.history[-1][0, 3] == EOS


def test_fill_several_gaps(model):
    template = [1, 2, MASK, MASK, 5, 6, MASK, MASK, MASK, 9]
    seen = []
    res = fill(model, template, block_length=3, return_dict=True, callback=seen.append)
    out = res.sequences[0].tolist()
    assert [out[i] for i in (0, 1, 4, 5, 9)] == [1, 2, 5, 6, 9]
    assert MASK not in out and len(res.new_tokens[0]) == 5
    # blocks run in reading order across gaps: block 0 = positions 2, 3, 6
    assert [s.block for s in seen] == [0, 0, 0, 1, 1]
    assert seen[2].canvas[0, 6] != MASK and seen[2].canvas[0, 7] == MASK


def test_fill_batch_rows_equal_each_alone(model):
    a = [1, MASK, MASK, 4, MASK]
    b = [7, 8, 9, MASK, MASK, 3, MASK, MASK]
    both = fill(model, [a, b], block_length=2)
    assert torch.equal(both[0, 3:], fill(model, a, block_length=2)[0])
    assert torch.equal(both[1], fill(model, b, block_length=2)[0])


@pytest.mark.parametrize("strategy", ["low_confidence", "topk_margin", "threshold"])
@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
def test_batch_independence(model, strategy, cache):
    """Deterministic settings: a row's output does not depend on the rest of the batch."""
    short, long = [7, 8, 9], [10, 11, 12, 13, 14, 15]
    kw = dict(max_new_tokens=8, block_length=4, strategy=strategy, cache=cache)
    both = generate(model, [short, long], **kw)
    assert torch.equal(both[1], generate(model, long, **kw)[0])
    assert torch.equal(both[0, 3:], generate(model, short, **kw)[0])


def test_history_and_callback_agree(model):
    seen = []
    res = generate(model, [1, 2], max_new_tokens=6, steps=3, output_history=True, return_dict=True, callback=seen.append)
    assert len(res.history) == len(seen) == res.steps == 3
    assert all(torch.equal(h, s.canvas) for h, s in zip(res.history, seen))
    assert torch.equal(res.history[-1], res.sequences)
    # proposals hold a drawn token at every candidate of the step, the committed ones among them
    first = seen[0]
    assert torch.equal(first.proposals[first.committed], first.canvas[first.committed])
    assert not (first.proposals[0, 2:] == MASK).any()


def test_eos_options_need_an_eos_id():
    m = tiny_dlm("llama")
    m.config.eos_token_id = m.config.pad_token_id = None
    with pytest.raises(InputError, match="eos_token_id"):
        generate(m, [1], max_new_tokens=4, stop_at_eos=True)


def test_fill_needs_a_mask(model):
    with pytest.raises(InputError, match="no masked position"):
        fill(model, [1, 2, 3])
    with pytest.raises(InputError, match="before the first masked"):
        fill(model, [MASK, 2, 3])
    assert infill(model, [1], [2], middle_length=2, return_dict=True).new_tokens[0].__len__() == 2


def test_block_length_that_does_not_divide_gives_a_shorter_last_block(model):
    seen = []
    generate(model, [1, 2], max_new_tokens=10, block_length=4, callback=seen.append)
    per_block = [sum(int(s.committed.sum()) for s in seen if s.block == b) for b in range(3)]
    assert per_block == [4, 4, 2]
