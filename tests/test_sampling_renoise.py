"""The renoising sampler (difflm.sampling.renoise) on difflm's own uniform-state DiffusionLMs, and its parts:
entropy-bound acceptance, the temperature schedule, stable-and-confident stopping, the two random streams,
the options' validation. (DiffusionGemma, token for token against transformers: tests/test_diffusion_gemma.py.)"""

from __future__ import annotations

import pytest
import torch

from difflm.errors import InputError
from difflm.rng import RowGenerators, seeded_generator
from difflm.sampling import SamplerOptions
from difflm.sampling.renoise import StableAndConfident, TokenDraws, accept_by_entropy, step_temperature

from conftest import VOCAB, tiny_dlm

RENOISE = dict(entropy_bound=2.0, t_min=0.5, t_max=1.0)


def uniform_dlm(**kw):
    """A tiny random time-free uniform-state DLM (what `objective: uniform` trains), its head sharpened so
    that entropies spread over the canvas."""
    model = tiny_dlm("llama", extra={"process": "uniform"}, **kw)
    with torch.no_grad():
        model.model.lm_head.weight.mul_(6.0)
    return model


@pytest.fixture(scope="module")
def dlm():
    return uniform_dlm()


# -- the parts ------------------------------------------------------------------------------------------
def test_accept_by_entropy_takes_the_lowest_entropies_within_the_bound():
    entropy = torch.tensor([[0.5, 0.1, 2.0, 0.3], [3.0, 3.0, 3.0, 3.0]])
    # sorted 0.1, 0.3, 0.5, 2.0: cumulative minus largest = 0, 0.1, 0.4, 0.9 -> bound 0.45 keeps three
    assert accept_by_entropy(entropy, 0.45).tolist() == [[True, True, False, True], [True, False, False, False]]
    assert accept_by_entropy(entropy, 100.0).all()  # a loose bound accepts everything


def test_temperature_schedule_runs_linearly_from_t_max():
    opts = SamplerOptions(entropy_bound=1.0, t_min=0.2, t_max=1.0)
    temps = [float(step_temperature(opts, k, 4, torch.device("cpu"))) for k in range(4, 0, -1)]
    assert temps == pytest.approx([1.0, 0.8, 0.6, 0.4])  # k = K first; the last step is t_min + (t_max - t_min) / K
    assert step_temperature(SamplerOptions(temperature=0.7), 3, 4, torch.device("cpu")) == 0.7


def test_stable_and_confident_needs_both():
    stop = StableAndConfident(stability=2, confidence=0.1)
    sharp = torch.full((2, 3, 5), -1e4)
    sharp[..., 0] = 0.0  # entropy ~0
    flat = torch.zeros(2, 3, 5)  # entropy log 5
    draft = torch.zeros(2, 3, dtype=torch.long)
    assert not stop(draft, sharp).any()  # no history yet
    assert not stop(draft, sharp).any()  # one equal draft: stability 2 needs two
    assert stop(draft, sharp).all()
    assert not stop(draft, flat).any()  # stable but not confident
    changed = draft.clone()
    changed[1, 0] = 3
    assert stop(changed, sharp).tolist() == [True, False]
    assert StableAndConfident(0, 0.1)(draft, sharp).all()  # stability 0: confidence alone


def test_transformers_stream_makes_torch_own_draws_in_order():
    probs = torch.softmax(torch.randn(2, 3, 7), -1)
    torch.manual_seed(5)
    expected = (torch.randint(0, 7, (2, 3)), torch.multinomial(probs.view(-1, 7), num_samples=1).view(2, 3))
    torch.manual_seed(5)
    draws = TokenDraws("transformers", None, 7, torch.device("cpu"))
    assert torch.equal(draws.tokens(2, 3), expected[0]) and torch.equal(draws.sample(probs), expected[1])
    with pytest.raises(InputError, match="one torch.Generator"):
        TokenDraws("transformers", RowGenerators([seeded_generator(0)] * 2), 7, torch.device("cpu"))


def test_difflm_stream_gives_each_row_its_own_draws():
    rows = RowGenerators([seeded_generator(1), seeded_generator(2)])
    alone = TokenDraws("difflm", RowGenerators([seeded_generator(2)]), 50, torch.device("cpu")).tokens(1, 6)
    assert torch.equal(TokenDraws("difflm", rows, 50, torch.device("cpu")).tokens(2, 6)[1:], alone)


@pytest.mark.parametrize("bad, message", [
    (dict(t_min=0.2), "give both or neither"),
    (dict(t_min=0.8, t_max=0.4), "t_min < t_max"),
    (dict(stability_threshold=1), "give both or neither"),
    (dict(stability_threshold=-1, confidence_threshold=0.1), "stability_threshold"),
    (dict(entropy_bound=0.0), "entropy_bound"),
    (dict(confidence_threshold=float("inf"), stability_threshold=1), "confidence_threshold"),
    (dict(random_stream="numpy"), "random_stream"),
    (dict(entropy_bound="high"), "entropy_bound must be"),
])
def test_bad_options_are_one_line_errors(bad, message):
    with pytest.raises(InputError, match=message):
        SamplerOptions(**bad)


# -- the sampler on difflm's own uniform-state DLM -----------------------------------------------------------
def test_never_touches_the_prompt_and_suffix_and_fills_every_position(dlm):
    prefix, suffix = [3, 4, 5, 6], [7, 8]
    gen = seeded_generator(0)
    out = dlm.infill(prefix, suffix, middle_length=7, generator=gen, return_dict=True, steps=4, **RENOISE)
    seq = out.sequences[0].tolist()
    assert seq[:4] == prefix and seq[-2:] == suffix
    assert len(out.new_tokens[0]) == 7 and all(0 <= t < VOCAB for t in out.new_tokens[0])
    assert out.steps == 4 and out.row_calls == [4]


def test_follows_the_block_order(dlm):
    """With block_length 3 the blocks run left to right: a step writes inside its block only, and the
    positions of later blocks show nothing decoded yet (the placeholder) until their block starts."""
    seen = []
    out = dlm.generate([3, 4, 5], max_new_tokens=8, block_length=3, steps=3, generator=seeded_generator(1),
                       callback=seen.append, return_dict=True, **RENOISE)
    blocks = [s.block for s in seen]
    assert blocks == sorted(blocks) and set(blocks) == {0, 1, 2}
    for s in seen:
        lo, hi = 3 + 3 * s.block, min(3 + 3 * s.block + 3, 11)
        cols = s.committed[0].nonzero().flatten().tolist()
        assert all(lo <= c < hi for c in cols), (s.block, cols)
        assert (s.canvas[0, hi:] == dlm.config.mask_token_id).all()  # later blocks: not started
        assert s.canvas[0, :3].tolist() == [3, 4, 5]
    assert out.steps == 9 and out.sequences.shape == (1, 11)


def test_stops_adaptively(dlm):
    """A loose confidence threshold with stability 0 ends each block after its first step; a strict one never."""
    quick = dlm.generate([3, 4, 5], max_new_tokens=6, block_length=3, steps=5, generator=seeded_generator(2),
                         return_dict=True, stability_threshold=0, confidence_threshold=100.0, **RENOISE)
    assert quick.steps == 2 and quick.row_calls == [2]
    never = dlm.generate([3, 4, 5], max_new_tokens=6, block_length=3, steps=5, generator=seeded_generator(2),
                         return_dict=True, stability_threshold=1, confidence_threshold=1e-9, **RENOISE)
    assert never.steps == 10
    assert never.tokens_per_call() == [6 / 10]


def test_stopped_rows_are_frozen_while_others_go_on(dlm):
    """A row stops once its mean entropy falls below the threshold (stability 0); a batch runs until its last
    row stops, and a stopped row keeps the tokens it had when it stopped (equal to its run alone)."""
    prompts = [[3, 4, 5], [9, 10, 11]]
    kw = dict(max_new_tokens=5, steps=12, return_dict=True, stability_threshold=0, confidence_threshold=1.5,
              entropy_bound=2.0, t_min=0.05, t_max=0.3)
    both = dlm.generate(prompts, generator=[seeded_generator(s) for s in (7, 8)], **kw)
    alone = [dlm.generate(p, generator=[seeded_generator(s)], **kw) for p, s in zip(prompts, (7, 8))]
    assert both.new_tokens == [a.new_tokens[0] for a in alone]
    assert both.row_calls == [a.steps for a in alone] and both.steps == max(both.row_calls) < 12
    assert len(set(both.row_calls)) == 2, both.row_calls  # one row stopped before the other


def test_rows_do_not_depend_on_their_batch_with_per_row_generators(dlm):
    prompts = [[3, 4, 5, 6, 7], [9, 10], [12, 13, 14]]
    kw = dict(max_new_tokens=6, steps=4, block_length=3, return_dict=True, temperature=1.0, entropy_bound=1.5)
    batch = dlm.generate(prompts, generator=[seeded_generator(10 + i) for i in range(3)], **kw)
    for i, prompt in enumerate(prompts):
        alone = dlm.generate(prompt, generator=[seeded_generator(10 + i)], **kw)
        assert batch.new_tokens[i] == alone.new_tokens[0]
    again = dlm.generate(prompts, generator=[seeded_generator(10 + i) for i in range(3)], **kw)
    assert again.new_tokens == batch.new_tokens  # seeded
    other = dlm.generate(prompts, generator=[seeded_generator(20 + i) for i in range(3)], **kw)
    assert other.new_tokens != batch.new_tokens  # ... and the seed matters


def test_stop_at_eos_pads_after_the_first_stop_token():
    dlm = uniform_dlm(eos_token_id=VOCAB - 2, pad_token_id=VOCAB - 3)
    with torch.no_grad():  # make EOS the likeliest token everywhere: the first block ends the row
        dlm.model.lm_head.weight[VOCAB - 2] = dlm.model.lm_head.weight.abs().max(0).values * 4
    out = dlm.generate([3, 4, 5], max_new_tokens=9, block_length=3, steps=2, generator=seeded_generator(0),
                       return_dict=True, stop_at_eos=True, **RENOISE)
    gen = out.sequences[0, 3:].tolist()
    first = gen.index(VOCAB - 2)
    assert first < 3 and all(t == VOCAB - 3 for t in gen[first + 1:])
    assert out.new_tokens == [gen[:first]] and out.steps == 2  # the later blocks never ran


@pytest.mark.parametrize("bad", [dict(cfg_scale=1.0), dict(cache="prefix"), dict(remask=0.1)])
def test_masked_decoding_options_are_refused(dlm, bad):
    with pytest.raises(InputError, match="do not apply to the renoising sampler"):
        dlm.generate([3, 4], max_new_tokens=3, entropy_bound=1.0, **bad)


def test_renoising_options_are_refused_where_they_do_not_apply(dlm):
    with pytest.raises(InputError, match="a masked diffusion model"):
        tiny_dlm("llama").generate([3, 4], max_new_tokens=3, t_min=0.2, t_max=0.5)
    with pytest.raises(InputError, match="without entropy_bound"):
        dlm.generate([3, 4], max_new_tokens=3, stability_threshold=1, confidence_threshold=0.1)
    timed = uniform_dlm()
    timed.config.extra["time_conditioning"] = True
    with pytest.raises(InputError, match="time input"):
        timed.generate([3, 4], max_new_tokens=3, entropy_bound=1.0)
