"""Noise schedules, the forward process and the masked-diffusion loss."""

import math

import pytest
import torch

from difflm.errors import ConfigError, InputError
from difflm.losses import ar_loss, draw_noise, masked_diffusion_loss
from difflm.noise import corrupt, get_schedule, sample_t
from conftest import VOCAB, tiny_dlm

MASK = VOCAB - 1


def test_schedules_alpha_and_weights():
    t = torch.tensor([0.1, 0.5, 0.9])
    lin = get_schedule("linear")
    torch.testing.assert_close(lin.mask_prob(t), t)
    torch.testing.assert_close(lin.weight(t), 1 / t)
    cos = get_schedule("cosine")
    torch.testing.assert_close(cos.alpha(t), torch.cos(math.pi / 2 * t))
    # weight = -alpha'/(1 - alpha), checked against a finite difference
    h = 1e-3
    fd = -(cos.alpha(t + h) - cos.alpha(t - h)) / (2 * h) / (1 - cos.alpha(t))
    torch.testing.assert_close(cos.weight(t), fd, rtol=1e-3, atol=1e-3)
    ll = get_schedule("loglinear", eps=1e-3)
    torch.testing.assert_close(ll.mask_prob(t), (1 - 1e-3) * t)
    torch.testing.assert_close(ll.weight(t), 1 / t)
    with pytest.raises(ConfigError):
        get_schedule("sqrt")


def test_sample_t_range_and_antithetic_spread():
    g = torch.Generator().manual_seed(0)
    t = sample_t(10000, eps=1e-3, generator=g)
    assert t.min() >= 1e-3 and t.max() <= 1.0 and abs(t.mean().item() - 0.5) < 0.02
    anti = sample_t(8, antithetic=True, generator=g)
    u = (anti - 1e-3) / (1 - 1e-3)
    # one sample in each of the 8 strata of [0, 1)
    assert sorted((u * 8).floor().long().tolist()) == list(range(8))


def test_corrupt_rate_and_src_mask():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, 10, (4, 5000), generator=g)
    t = torch.tensor([0.1, 0.4, 0.7, 1.0])
    src = torch.zeros_like(x0, dtype=torch.bool)
    src[:, :100] = True
    xt, noise = corrupt(x0, t, 99, src_mask=src, generator=g)
    assert not noise[:, :100].any() and torch.equal(xt[:, :100], x0[:, :100])
    rates = noise[:, 100:].float().mean(1)
    torch.testing.assert_close(rates, t, atol=0.03, rtol=0)
    assert torch.equal(xt[noise], torch.full_like(xt[noise], 99)) and torch.equal(xt[~noise], x0[~noise])


def _hand_case():
    """A tiny shifted DLM, x0 [2, 6], t [2], a fixed noise mask and the model's log-probs of x_t."""
    model = tiny_dlm("llama", shift=True)
    x0 = torch.randint(0, 60, (2, 6), generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.5, 0.25])
    noise = torch.tensor([[0, 1, 0, 1, 1, 0], [0, 0, 1, 0, 0, 0]], dtype=torch.bool)
    xt = torch.where(noise, torch.full_like(x0, MASK), x0)
    with torch.no_grad():
        logp = model.logits(xt).log_softmax(-1)
    return model, x0, t, noise, logp


def test_loss_equals_a_hand_computation_and_normalisations_differ():
    model, x0, t, noise, logp = _hand_case()
    by_hand = 0.0
    for b, i in noise.nonzero().tolist():
        by_hand += -logp[b, i, x0[b, i]].item() / t[b].item()
    tokens = masked_diffusion_loss(model, x0, t=t, noise_mask=noise, normalization="tokens")
    masked = masked_diffusion_loss(model, x0, t=t, noise_mask=noise, normalization="masked")
    assert tokens.num_masked == masked.num_masked == 4
    assert tokens.num_targets == 10  # with shift, position 0 of each row is never a target
    assert tokens.loss.item() == pytest.approx(by_hand / 10, rel=1e-5)
    assert masked.loss.item() == pytest.approx(by_hand / 4, rel=1e-5)


def test_token_reweighting_is_the_focal_loss_of_each_target():
    """alpha * (1 - p) ** gamma * CE per target (MGDM): a hand computation; gamma 0, alpha 1 is the ELBO;
    a token the model already gets right weighs less than one it gets wrong."""
    model, x0, t, noise, logp = _hand_case()
    by_hand = 0.0
    for b, i in noise.nonzero().tolist():
        ce = -logp[b, i, x0[b, i]].item()
        by_hand += 0.25 * (1 - math.exp(-ce)) ** 2 * ce / t[b].item()
    focal = masked_diffusion_loss(model, x0, t=t, noise_mask=noise, token_reweighting=(0.25, 2.0))
    assert focal.loss.item() == pytest.approx(by_hand / 10, rel=1e-5)
    plain = masked_diffusion_loss(model, x0, t=t, noise_mask=noise)
    assert masked_diffusion_loss(model, x0, t=t, noise_mask=noise, token_reweighting=(1.0, 0.0)).loss.item() == \
        pytest.approx(plain.loss.item(), rel=1e-6)
    from difflm.losses import diffusion_loss_from_logits

    logits = torch.full((1, 2, 5), -3.0)
    logits[0, 0, 1] = logits[0, 1, 2] = 3.0  # position 0 predicts its token (1), position 1 does not (3)
    x = torch.tensor([[1, 3]])
    schedule = get_schedule("linear")
    ratio = []
    for position in (0, 1):
        only = torch.tensor([[position == 0, position == 1]])
        ce = diffusion_loss_from_logits(logits, x, only, torch.ones(1), 1, schedule=schedule).loss
        weighted = diffusion_loss_from_logits(logits, x, only, torch.ones(1), 1, schedule=schedule,
                                              token_reweighting=(1.0, 1.0)).loss
        ratio.append((weighted / ce).item())
    # the right token (p 0.98) keeps 2% of its loss, the wrong one (p 0.002) all but 0.3%
    assert ratio[0] < 0.03 and ratio[1] > 0.99


def test_shift_never_masks_position_zero_and_src_is_kept():
    model = tiny_dlm("llama", shift=True)
    x0 = torch.randint(0, 60, (3, 8))
    src = torch.zeros_like(x0, dtype=torch.bool)
    src[:, :3] = True
    out = masked_diffusion_loss(model, x0, t=torch.ones(3), src_mask=src)
    assert out.num_masked == out.num_targets == 3 * 5  # t = 1 masks every allowed position
    no_shift = tiny_dlm("llama", shift=False)
    assert masked_diffusion_loss(no_shift, x0, t=torch.ones(3)).num_masked == 24


def test_nothing_masked_gives_a_finite_loss_and_zero_gradients():
    model = tiny_dlm("llama")
    x0 = torch.randint(0, 60, (2, 6))
    out = masked_diffusion_loss(model, x0, t=torch.tensor([0.5, 0.5]), noise_mask=torch.zeros(2, 6, dtype=torch.bool))
    assert out.num_masked == 0 and torch.isfinite(out.loss) and out.loss.item() == 0.0
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.all(g == 0) for g in grads)


def test_gradients_flow_and_a_few_steps_lower_the_loss():
    model = tiny_dlm("gpt2").train()
    x0 = torch.randint(0, 60, (4, 16), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    t = torch.full((4,), 0.5)
    noise = torch.rand(4, 16, generator=torch.Generator().manual_seed(1)) < 0.5
    first = None
    for _ in range(30):
        loss = masked_diffusion_loss(model, x0, t=t, noise_mask=noise).loss
        opt.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.5 * first


def test_random_draws_are_reproducible_with_a_generator():
    model = tiny_dlm("llama")
    x0 = torch.randint(0, 60, (2, 10))
    a = masked_diffusion_loss(model, x0, generator=torch.Generator().manual_seed(5))
    b = masked_diffusion_loss(model, x0, generator=torch.Generator().manual_seed(5))
    assert a.loss.item() == b.loss.item() and torch.equal(a.t, b.t)


def test_ar_loss_matches_transformers():
    model = tiny_dlm("qwen2")
    x = torch.randint(0, 60, (2, 10))
    with torch.no_grad():
        expected = model.model(input_ids=x, labels=x).loss
        assert ar_loss(model, x).item() == pytest.approx(expected.item(), rel=1e-5)
        assert ar_loss(model.model, x).item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ConfigError):
        ar_loss(tiny_dlm("qwen2", shift=False), x)


def test_an_explicit_noise_mask_is_fed_as_given_and_position_zero_is_no_target():
    """DiffuLLaMA feeds [MASK] wherever the caller's noise mask says, position 0 included, and
    only drops position 0 as a target (it has no prediction under shift)."""
    model = tiny_dlm("llama", shift=True)
    x0 = torch.randint(0, 60, (1, 6), generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.5])
    noise = torch.tensor([[1, 0, 1, 0, 0, 1]], dtype=torch.bool)
    xt = torch.where(noise, torch.full_like(x0, MASK), x0)  # position 0 masked in the input
    with torch.no_grad():
        logp = model.logits(xt).log_softmax(-1)
        out = masked_diffusion_loss(model, x0, t=t, noise_mask=noise)
    by_hand = sum(-logp[0, i, x0[0, i]].item() for i in (2, 5)) / 0.5
    assert out.num_masked == 2 and out.num_targets == 5
    assert out.loss.item() == pytest.approx(by_hand / 5, rel=1e-5)


def test_left_padding_makes_the_first_real_token_the_bos():
    model = tiny_dlm("llama", shift=True)
    x0 = torch.randint(0, 60, (2, 6), generator=torch.Generator().manual_seed(2))
    attn = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    out = masked_diffusion_loss(model, x0, t=torch.ones(2), attention_mask=attn)
    assert out.num_targets == 3 + 5  # row 0: padding and its first real token (position 2) are never targets
    noise, _ = draw_noise(model, x0, t=torch.ones(2), attention_mask=attn)
    assert noise.tolist() == [[False, False, False, True, True, True], [False] + [True] * 5]
    # the padded row scores exactly like its unpadded self
    alone = masked_diffusion_loss(model, x0[:1, 2:], t=torch.ones(1), noise_mask=noise[:1, 2:])
    padded = masked_diffusion_loss(model, x0[:1], t=torch.ones(1), noise_mask=noise[:1], attention_mask=attn[:1])
    assert padded.loss.item() == pytest.approx(alone.loss.item(), rel=1e-5)


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, float("nan")])
def test_noise_levels_outside_zero_one_are_refused(bad):
    model = tiny_dlm("llama")
    x0 = torch.randint(0, 60, (2, 6))
    with pytest.raises(InputError, match=r"\(0, 1\]"):
        masked_diffusion_loss(model, x0, t=torch.tensor([0.5, bad]))
    with pytest.raises(InputError, match=r"\(0, 1\]"):
        masked_diffusion_loss(model, x0, t=torch.tensor([0.5, bad]), noise_mask=torch.ones(2, 6, dtype=torch.bool))


def test_a_noise_mask_over_the_prompt_is_refused():
    model = tiny_dlm("llama")
    x0 = torch.randint(0, 60, (1, 6))
    src = torch.tensor([[1, 1, 0, 0, 0, 0]], dtype=torch.bool)
    with pytest.raises(InputError, match="src_mask"):
        masked_diffusion_loss(model, x0, t=torch.ones(1), noise_mask=torch.ones(1, 6, dtype=torch.bool), src_mask=src)


def test_cosine_schedule_is_accurate_near_zero():
    cosine = get_schedule("cosine")
    t = torch.tensor([1e-4, 1e-3, 0.5, 1.0])
    exact_p = 1 - torch.cos(0.5 * math.pi * t.double())
    exact_w = 0.5 * math.pi * torch.sin(0.5 * math.pi * t.double()) / exact_p
    assert torch.allclose(cosine.mask_prob(t).double(), exact_p, rtol=1e-5, atol=0)
    assert torch.allclose(cosine.weight(t).double(), exact_w, rtol=1e-5, atol=0)
