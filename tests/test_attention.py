"""The attention mode really is what it says, for every architecture and attention kernel."""

import pytest
import torch

from difflm.attention import anneal_ratio, annealed_attention_mask, causal_attention_mask, to_4d
from difflm.errors import ConfigError
from conftest import tiny_dlm

L = 12


def _future_change(model, attention, **kw):
    """Max change of the aligned logits at positions < 8 when the token at 8 changes."""
    x = torch.randint(0, 60, (2, L), generator=torch.Generator().manual_seed(0))
    y = x.clone()
    y[:, 8] = (y[:, 8] + 7) % 60
    with torch.no_grad():
        a = model.logits(x, attention=attention, generator=torch.Generator().manual_seed(1), **kw)
        b = model.logits(y, attention=attention, generator=torch.Generator().manual_seed(1), **kw)
    return (a[:, :8] - b[:, :8]).abs().max().item()


def test_bidirectional_sees_the_future_causal_never(arch_impl):
    model = tiny_dlm(*arch_impl)
    assert _future_change(model, "bidirectional") > 1e-4
    assert _future_change(model, "causal") == 0.0


def test_annealed_endpoints_equal_causal_and_bidirectional(arch_impl):
    model = tiny_dlm(*arch_impl, attention="annealed", anneal_steps=1000)
    x = torch.randint(0, 60, (2, L), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        causal = model.logits(x, attention="causal")
        bidir = model.logits(x, attention="bidirectional")
        # ratio (step + 1) / anneal_steps: step -1 is impossible, so ratio 0 needs the mask itself;
        # ratio 1 at the last step, and after training (step None)
        at_end = model.logits(x, step=999)
        after = model.logits(x)
    torch.testing.assert_close(at_end, bidir, rtol=0, atol=0)
    torch.testing.assert_close(after, bidir, rtol=0, atol=0)
    zero = to_4d(annealed_attention_mask(L, 0.0), batch_size=2)
    assert torch.equal(zero[0, 0], causal_attention_mask(L))
    with torch.no_grad():
        out = model.model(input_ids=x, attention_mask=zero if arch_impl[1] == "sdpa" else
                          to_4d(annealed_attention_mask(L, 0.0), batch_size=2, dtype=torch.float32)).logits
    torch.testing.assert_close(torch.cat([out[:, :1], out[:, :-1]], 1), causal, rtol=0, atol=1e-6)


def test_annealed_step_opens_future_entries_with_the_ratio():
    assert anneal_ratio(0, 10) == pytest.approx(0.1)
    assert anneal_ratio(4, 10) == pytest.approx(0.5)
    assert anneal_ratio(50, 10) == 1.0
    mask = annealed_attention_mask(200, 0.5, generator=torch.Generator().manual_seed(0))
    future = torch.ones(200, 200, dtype=torch.bool).triu(1)
    assert mask[~future].all()  # the causal part is always open
    assert mask[future].float().mean().item() == pytest.approx(0.5, abs=0.02)
    model = tiny_dlm("llama", attention="annealed", anneal_steps=10)
    x = torch.zeros(3, 6, dtype=torch.long)
    m4 = model.attention_mask_4d(x, step=4, generator=torch.Generator().manual_seed(0))
    assert m4.shape == (3, 1, 6, 6)
    assert all(torch.equal(m4[0], m4[b]) for b in range(3))  # one draw shared by the batch


def test_annealed_ratio_half_changes_some_early_logits():
    model = tiny_dlm("llama", attention="annealed", anneal_steps=10)
    assert _future_change(model, None, step=4) > 0.0


def test_invalid_attention_mode_is_a_clear_error():
    model = tiny_dlm("llama")
    with pytest.raises(ConfigError, match="unknown attention mode"):
        model.logits(torch.zeros(1, 4, dtype=torch.long), attention="sideways")


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2"])
def test_left_padding_gives_the_unpadded_logits(arch):
    model = tiny_dlm(arch)
    x = torch.randint(0, 60, (1, 9), generator=torch.Generator().manual_seed(3))
    padded = torch.cat([torch.full((1, 3), 5), x], dim=1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 9, dtype=torch.long)], dim=1)
    with torch.no_grad():
        plain = model.logits(x)[:, 1:]  # with shift the first real token has no prediction
        pad = model.logits(padded, mask)[:, 4:]
        other_pad = model.logits(padded.masked_fill(mask == 0, 11), mask)[:, 4:]
    torch.testing.assert_close(pad, plain, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(other_pad, pad, rtol=0, atol=0)  # pad values are invisible
