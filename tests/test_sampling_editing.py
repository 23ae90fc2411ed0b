"""Token editing (LLaDA 2.1) and ReMDM-style remasking: strategies of the one loop that revisit
tokens committed in the current block, never anything else, and always settle."""

import pytest
import torch

from conftest import tiny_dlm
from difflm.errors import InputError
from difflm.sampling import SamplerStep, generate
from test_sampling import single_thread  # noqa: F401 (autouse fixture)

MASK = 63
PROMPTS = [[1, 2, 3, 4], [5, 6]]


def _run(model, **kw):
    steps: list[SamplerStep] = []
    out = generate(model, PROMPTS, max_new_tokens=12, block_length=4, callback=lambda s: steps.append(
        SamplerStep(s.step, s.total_steps, s.block, s.canvas.clone(), s.committed.clone(), s.generate_mask)),
        return_dict=True, generator=torch.Generator().manual_seed(0), **kw)
    return out, steps


def _rewrites(steps):
    """How often each position got a new token after its first one, and where, per step."""
    first = steps[0].canvas
    changed = torch.zeros_like(first)
    for before, after in zip(steps, steps[1:]):
        was = before.canvas != MASK
        changed += (was & (after.canvas != before.canvas)).long()
    return changed


def test_editing_rewrites_committed_tokens_of_the_current_block_only_and_at_most_max_edits_times():
    model = tiny_dlm("llama")
    plain, _ = _run(model, steps=12)
    edited, steps = _run(model, steps=12, editing_threshold=0.0, max_edits=2)
    assert edited.new_tokens != plain.new_tokens  # a random model's top token often differs from the drawn one
    changed = _rewrites(steps)
    assert changed.max() <= 2 and changed.sum() > 0
    assert not changed[~edited.generate_mask].any()  # never the prompt or padding
    for before, after in zip(steps, steps[1:]):  # only inside the block being decoded
        block = after.block
        rewritten = (before.canvas != MASK) & (after.canvas != before.canvas)
        cols = rewritten.nonzero()[:, 1]
        assert all(4 * block <= c.item() - (16 - 12) < 4 * block + 4 for c in cols)
    assert (edited.sequences[edited.generate_mask] != MASK).all()


def test_an_unreachable_editing_threshold_changes_nothing():
    model = tiny_dlm("llama")
    plain, _ = _run(model, steps=12)
    same, _ = _run(model, steps=12, editing_threshold=0.999999)
    assert same.new_tokens == plain.new_tokens


def test_remasking_revisits_tokens_and_still_fills_every_block():
    model = tiny_dlm("llama")
    plain, _ = _run(model, steps=12, temperature=1.0)
    out, steps = _run(model, steps=24, temperature=1.0, remask=0.9, max_edits=1)
    assert (out.sequences[out.generate_mask] != MASK).all()  # the last step of a block fills it
    remasked = sum(int(((a.canvas != MASK) & (b.canvas == MASK)).sum()) for a, b in zip(steps, steps[1:]))
    assert remasked > 0
    assert out.steps <= 24


def test_bad_editing_options_are_input_errors():
    model = tiny_dlm("llama")
    for bad in (dict(editing_threshold=1.5), dict(remask=1.0), dict(remask=-0.1), dict(max_edits=0)):
        with pytest.raises(InputError):
            generate(model, [[1, 2]], max_new_tokens=4, **bad)
