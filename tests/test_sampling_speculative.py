"""Self-speculative decoding (sampling/speculative.py): one context-causal block model drafts with its
diffusion view and verifies with its causal view. Greedy output = the model's own AR greedy decoding
token for token; sampled output = the AR head's distribution (chi-square)."""

from __future__ import annotations

import pytest
import torch
from conftest import VOCAB, tiny_dlm

from difflm.errors import InputError
from difflm.sampling import generate, infill, stop_token_ids
from transformers import DynamicCache

from difflm.sampling.speculative import Drawing, ar_greedy, speculative_row, verify_and_draft


def causal_block_model(size: int = 4, attn: str = "sdpa", **kw):
    return tiny_dlm("llama", attn, attention="block_causal", block_size=size, block_context="causal", **kw)


def uncached_ar_greedy(model, prompt: list[int], budget: int) -> list[int]:
    """AR greedy through `DiffusionLM.logits(attention="causal")`, the whole sequence every token."""
    tokens = list(prompt)
    for _ in range(budget):
        aligned = model.logits(torch.tensor([tokens + [model.mask_token_id]]), attention="causal")
        tokens.append(int(aligned[0, -1].argmax()))
    return tokens[len(prompt):]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_one_call_is_the_causal_view_and_the_block_samplers_view(attn):
    """V's logits = `logits(attention="causal")`; M's = the block sampler's context-causal forward of the
    canvas [text | drafts | masks] at the block after the drafts - with and without cached keys."""
    model = causal_block_model(4, attn)
    mask, total = model.mask_token_id, 16
    past = DynamicCache()
    for tokens, cached, drafts in (([5, 9, 17, 33, 2, 8], 0, [11, 12, 13]), ([5, 9, 17, 33, 2, 8, 11, 40], 7, [20, 21])):
        if past.get_seq_length() > cached:
            past.crop(cached - past.get_seq_length())
        verify, draft, m_start = verify_and_draft(model, past, tokens, cached, drafts, total)
        end = len(tokens) + len(drafts)
        text = tokens + drafts
        causal = model.logits(torch.tensor([text + [mask]]), attention="causal")[0]
        torch.testing.assert_close(verify, causal[cached + 1: end + 1], rtol=1e-4, atol=1e-4)
        canvas = torch.tensor([text + [mask] * (total - end)])
        sampler = model.logits(canvas)[0]  # block_causal, context-causal at the block of the first mask
        assert m_start == end // 4 * 4 - 1
        torch.testing.assert_close(draft, sampler[m_start + 1: min(end // 4 * 4 + 4, total)], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("size", [4, 8])
def test_greedy_is_the_ar_heads_greedy_token_for_token(attn, size):
    model = causal_block_model(size, attn)
    gen, accepted = torch.Generator().manual_seed(0), 0
    for length in (1, size - 1, size, size + 3):  # prompts ending before, at and after a block boundary
        prompt = torch.randint(4, VOCAB - 1, (length,), generator=gen).tolist()
        reference = ar_greedy(model, prompt, 20).tokens
        assert reference == uncached_ar_greedy(model, prompt, 20)
        for redraft in (False, True):
            result = speculative_row(model, prompt, 20, redraft=redraft)
            assert result.tokens == reference
            assert result.calls == len(result.accepted) and result.calls + sum(result.accepted) >= 20
            accepted += sum(result.accepted)
    assert accepted > 0  # even a random model's drafts are sometimes right: the acceptance path ran


def test_greedy_on_the_bundled_gsm_model_is_its_ar_greedy_in_fewer_calls():
    from difflm.formats import load_diffusion_lm
    from difflm.tasks import make_examples
    from difflm.tasks.formatting import sft_texts

    model = load_diffusion_lm("dlm-gsm").eval()
    stops = stop_token_ids(model)
    tokens = calls = 0
    for record in make_examples("gsm", 4, seed=0, split="test"):
        prompt = [model.config.bos_token_id] + model.tokenizer.encode(sft_texts(record)[0], add_special_tokens=False)
        reference = ar_greedy(model, prompt, 100, stop_ids=stops).tokens
        result = speculative_row(model, prompt, 100, stop_ids=stops)
        assert result.tokens == reference
        tokens, calls = tokens + len(result.tokens), calls + result.calls
    assert tokens / calls > 3  # the drafts are good: most of a block per call


def test_sampling_follows_the_ar_heads_distribution():
    """Speculative sampling: the second new token (drafted by M, verified by V) is distributed as the AR
    head's marginal; a wrong rule (resampling from p instead of the residual) fails this test."""
    from scipy.stats import chisquare

    model = causal_block_model(4)
    with torch.no_grad():
        model.model.lm_head.weight.mul_(20.0)  # peaked, distinct p and q: a test with power
    prompt, mask = [5, 9, 17, 33], model.mask_token_id
    with torch.no_grad():
        p1 = model.logits(torch.tensor([prompt + [mask]]), attention="causal")[0, -1].softmax(-1)
        rows = torch.tensor([prompt + [x, mask] for x in range(VOCAB)])
        p2 = (p1[:, None] * model.logits(rows, attention="causal")[:, -1].softmax(-1)).sum(0)
    counts = torch.zeros(2, VOCAB)
    gen, runs, accepted = torch.Generator().manual_seed(1), 1500, 0
    for _ in range(runs):
        result = speculative_row(model, prompt, 2, drawing=Drawing(temperature=1.0), generator=gen)
        counts[0, result.tokens[0]] += 1
        counts[1, result.tokens[1]] += 1
        accepted += sum(result.accepted)
    assert 0 < accepted < runs  # both branches ran
    for observed, probs in zip(counts, (p1, p2)):
        expected = probs * runs
        big = expected >= 5
        obs = torch.cat([observed[big], observed[~big].sum()[None]])
        exp = torch.cat([expected[big], expected[~big].sum()[None]])
        assert chisquare(obs.numpy(), exp.numpy() * obs.sum().item() / exp.sum().item()).pvalue > 1e-3


def test_batches_with_left_padding_give_each_rows_solo_output():
    model = causal_block_model(4)
    prompts = [[5, 9, 17], [7, 8, 9, 10, 11, 12]]
    out = generate(model, prompts, max_new_tokens=12, speculative=True, return_dict=True)
    for row, prompt in zip(out.new_tokens, prompts):
        assert row == ar_greedy(model, prompt, 12).tokens
    assert out.steps == sum(speculative_row(model, p, 12).calls for p in prompts)


def test_stop_at_eos_fills_the_rest_and_trims():
    model = causal_block_model(4)
    prompt = [5, 9, 17]
    free = ar_greedy(model, prompt, 12).tokens
    model.config.eos_token_id = free[4]  # a token it writes: EOS there
    stops = stop_token_ids(model)
    out = generate(model, prompt, max_new_tokens=12, speculative=True, stop_at_eos=True, return_dict=True)
    cut = next(i for i, t in enumerate(free) if t in stops)
    assert out.new_tokens[0] == free[:cut]
    assert out.sequences[0, len(prompt) + cut:].eq(model.config.eos_token_id).all()


def test_callback_and_history_see_every_model_call():
    model = causal_block_model(4)
    steps = []
    out = generate(model, [5, 9, 17], max_new_tokens=10, speculative=True, return_dict=True, output_history=True,
                   callback=steps.append)
    assert len(steps) == len(out.history) == out.steps
    assert sum(int(s.committed.sum()) for s in steps) == 10
    assert torch.equal(out.history[-1], out.sequences)


@pytest.mark.parametrize("kwargs, match", [
    ({"attention": "block_causal", "block_size": 4}, "causal view"),
    ({"attention": "bidirectional"}, "block diffusion model"),
    ({"attention": "block_causal", "block_size": 4, "block_context": "causal", "shift": False}, "shifted"),
])
def test_models_without_a_causal_view_are_refused(kwargs, match):
    model = tiny_dlm("llama", **kwargs)
    with pytest.raises(InputError, match=match):
        generate(model, [5, 9, 17], max_new_tokens=4, speculative=True)


def test_bad_combinations_are_refused_in_one_line():
    model = causal_block_model(4)
    with pytest.raises(InputError, match="cfg_scale"):
        generate(model, [5, 9, 17], max_new_tokens=4, speculative=True, cfg_scale=1.0)
    with pytest.raises(InputError, match="continues a prompt"):
        infill(model, [5, 9, 17], [20, 21], middle_length=4, speculative=True)


def test_the_server_refuses_speculative_with_a_400():
    from difflm.serve.protocol import APIError, CompletionRequest

    request = CompletionRequest(model="m", prompt="hi", speculative=True)
    with pytest.raises(APIError) as caught:
        request.check_unsupported()
    assert caught.value.status == 400 and caught.value.param == "speculative"
    # a served model whose saved settings ask for it is refused per request too, never decoded without it
    from difflm.sampling import SamplerOptions
    from difflm.serve.prompts import sampler_options

    with pytest.raises(APIError) as caught:
        sampler_options(CompletionRequest(model="m", prompt="hi"), SamplerOptions(speculative=True))
    assert caught.value.status == 400 and caught.value.param == "speculative"
    assert not sampler_options(CompletionRequest(model="m", prompt="hi"), SamplerOptions()).speculative


def test_difflm_eval_generates_speculatively_and_infills_as_usual():
    """`difflm eval --speculative` (EvalSettings.speculative): open-ended generation is the AR head's own
    greedy decoding; infilling tasks (a suffix) keep the other options."""
    from difflm.evaluation import DiffusionEvalLM, EvalSettings

    from conftest import tiny_tokenizer

    model = causal_block_model(4)
    lm = DiffusionEvalLM(model, tiny_tokenizer(), EvalSettings(speculative=True, batch_size=2, progress=False))
    assert lm.sampler_options.speculative and not lm.infill_options.speculative
    prompts = [[5, 9, 17], [6, 7, 8, 10, 11]]
    stops = set(stop_token_ids(model))
    expected = [ar_greedy(model, p, 9).tokens for p in prompts]
    expected = [t[:next((i for i, x in enumerate(t) if x in stops), len(t))] for t in expected]  # the answer, cut at EOS
    assert lm.generate(prompts, 9) == expected
    assert len(lm.fill([[5, 9]], [[20, 21]], 4)[0]) == 4
    with pytest.raises(InputError, match="speculative must be true or false"):
        EvalSettings(speculative="yes")
