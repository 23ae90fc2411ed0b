"""The continuous (embedding-space) DLM: the forward process follows its schedule, the denoiser is
bidirectional and learns to round, samplers keep clamped tokens and are seeded, the likelihood
bound is a bound, models reload exactly, and bad settings fail with one line."""

import math

import pytest
import torch

from difflm.continuous.config import ContinuousConfig
from difflm.continuous.likelihood import importance_times, nll_bound
from difflm.continuous.model import ContinuousDLM, backbone_config
from difflm.continuous.objective import continuous_loss, draw_continuous_noise
from difflm.continuous.sampler import ContinuousSamplerOptions, generate, infill, nearest_embedding
from difflm.continuous.schedule import GaussianSchedule, standard_normal
from difflm.errors import ConfigError, InputError

ARCH = dict(model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=2, max_position_embeddings=32)
V, D = 20, 8


def tiny(seed: int = 0, **kw) -> ContinuousDLM:
    torch.manual_seed(seed)
    return ContinuousDLM(backbone_config(ARCH), ContinuousConfig(vocab_size=V, embed_dim=D, bos_token_id=1, **kw)).eval()


@pytest.mark.parametrize("name", ["sqrt", "cosine"])
def test_the_forward_process_has_the_schedules_mean_and_variance(name):
    model = tiny(schedule=name)
    ids = torch.tensor([[3, 7, 11]])
    for t in (0.0, 0.1, 0.5, 0.9):
        n = 20000
        noise = standard_normal((n, 3, D), generator=torch.Generator().manual_seed(1))
        z = model.noisy(ids.expand(n, -1), torch.full((n,), t), noise).detach()
        abar = float(model.schedule.alpha_bar(torch.tensor([t])))
        assert torch.allclose(z.mean(0), math.sqrt(abar) * model.embed(ids)[0].detach(), atol=0.03)
        assert torch.allclose(z.var(0), torch.full((3, D), 1 - abar), atol=0.03, rtol=0.05)
    if name == "sqrt":  # Diffusion-LM: alpha_bar = 1 - sqrt(t + s); the noise floor sigma(0)^2 = sqrt(1e-4)
        assert float(model.schedule.alpha_bar(torch.tensor([0.0]))) == pytest.approx(0.99, abs=1e-6)
        assert float(model.schedule.alpha_bar(torch.tensor([0.25]))) == pytest.approx(1 - math.sqrt(1e-4 + 0.9999 * 0.25))
    assert float(model.schedule.alpha_bar(torch.tensor([1.0]))) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name", ["sqrt", "cosine"])
def test_schedule_derivatives_and_inverse(name):
    s = GaussianSchedule(name, 1e-4 if name == "sqrt" else 0.008)
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    h = 1e-3  # the schedule answers in float32
    fd = (s.snr(t + h).double() - s.snr(t - h).double()) / (2 * h)
    assert torch.allclose(s.d_snr(t).double(), fd, rtol=5e-3)
    assert torch.allclose(s.t_of_alpha_bar(s.alpha_bar(t)).double(), t, atol=1e-4)


def test_gaussian_draws_are_standard_and_seeded():
    a = standard_normal((50000,), generator=torch.Generator().manual_seed(3))
    assert abs(float(a.mean())) < 0.02 and abs(float(a.std()) - 1) < 0.02
    assert torch.equal(a, standard_normal((50000,), generator=torch.Generator().manual_seed(3)))


def test_the_denoiser_is_bidirectional():
    model = tiny()
    z = torch.randn(1, 10, D)
    clean, ids = torch.zeros(1, 10, dtype=torch.bool), torch.zeros(1, 10, dtype=torch.long)
    t = torch.tensor([0.5])
    before = model.denoise(z, t, clean, ids)
    z2 = z.clone()
    z2[0, -1] += 1.0
    after = model.denoise(z2, t, clean, ids)
    assert not torch.allclose(before[0, 0], after[0, 0])  # the first position sees the last


def _train_tiny(steps: int = 150, seed: int = 0) -> ContinuousDLM:
    """A tiny model trained on random 8-token rows (it can only learn to read its input back)."""
    model = tiny(seed).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randint(0, V, (32, 8), generator=gen)
        draws = draw_continuous_noise(x, model.config, generator=gen)
        draws.t = draws.t * 0.3  # the low-noise end, where the tokens are recoverable
        total, count = continuous_loss(model, x, draws)
        (total / count).backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


@pytest.fixture(scope="module")
def trained():
    return _train_tiny()  # on one thread: conftest.one_torch_thread


def test_the_trained_denoiser_reconstructs_its_input_near_t0(trained):
    x = torch.randint(0, V, (16, 8), generator=torch.Generator().manual_seed(9))
    noise = standard_normal((16, 8, D), generator=torch.Generator().manual_seed(10))
    clean = torch.zeros_like(x, dtype=torch.bool)
    with torch.no_grad():
        logits = trained(x, torch.full((16,), 0.01), noise, clean)
    assert (logits.argmax(-1) == x).float().mean() > 0.95
    # rounding the clean embeddings back (nearest neighbour) is exact
    table = trained.embedding_table().detach()
    assert torch.equal(nearest_embedding(table[x], table), table[x])


@pytest.mark.parametrize("opts", [dict(), dict(eta=1.0, clamp=True), dict(cfg_scale=1.5)])
def test_infilling_never_changes_the_clamped_tokens(opts):
    model = tiny()
    prefixes, suffixes = [[1, 4, 5, 6], [1, 9]], [[7, 8], [3, 3, 3]]
    rows = infill(model, prefixes, suffixes, 4, options=ContinuousSamplerOptions(steps=5, **opts),
                  generator=torch.Generator().manual_seed(0))
    for row, p, s in zip(rows.tolist(), prefixes, suffixes):
        assert row[len(row) - len(s):] == s
        start = len(row) - len(s) - 4 - len(p)
        assert row[start : start + len(p)] == p


def test_ddim_is_deterministic_given_the_seed_and_ddpm_draws_noise():
    model = tiny()
    run = lambda seed, eta=0.0: generate(model, [[1, 4, 5]], 6, options=ContinuousSamplerOptions(steps=6, eta=eta),
                                         generator=torch.Generator().manual_seed(seed))
    assert torch.equal(run(0), run(0))
    assert torch.equal(run(0, 1.0), run(0, 1.0))
    assert not all(torch.equal(run(0), run(s)) for s in (1, 2, 3))


def test_a_longer_prompt_than_the_context_is_refused():
    with pytest.raises(InputError, match="context"):
        generate(tiny(), [[1] * 30], 8, options=ContinuousSamplerOptions(steps=2))


class ExactPosterior:
    """The Bayes-optimal denoiser of a toy language: BOS then one token drawn from ``probs``."""

    def __init__(self, probs: torch.Tensor, table: torch.Tensor, optimal: bool = True) -> None:
        self.config = ContinuousConfig(vocab_size=len(probs), embed_dim=table.shape[1], self_condition=False)
        self.schedule = GaussianSchedule("sqrt", 1e-4)
        self.device = torch.device("cpu")
        self.log_probs, self.table, self.optimal = probs.log(), table, optimal

    def embedding_table(self) -> torch.Tensor:
        return self.table

    def x0_estimate(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits, -1) @ self.table

    def denoise(self, z, t, clean, ids, self_cond=None, attention_mask=None) -> torch.Tensor:
        if not self.optimal:
            return torch.zeros(*z.shape[:2], len(self.table))
        alpha, sigma = self.schedule.alpha_sigma(t)
        alpha, var = alpha[:, None, None], (sigma**2).clamp_min(1e-12)[:, None, None]
        return self.log_probs + (alpha * z @ self.table.T - alpha**2 * (self.table**2).sum(-1) / 2) / var


def test_the_nll_bound_bounds_the_entropy_of_a_toy_language_and_is_tight_for_the_exact_denoiser():
    probs = torch.tensor([0.5, 0.25, 0.15, 0.1])
    table = 2.0 * torch.eye(4)  # norm sqrt(d) = 2
    entropy = float(-(probs * probs.log()).sum())
    n = 4000
    results = {}
    for optimal in (True, False):
        model = ExactPosterior(probs, table, optimal)
        expected, var = 0.0, 0.0
        for v, p in enumerate(probs.tolist()):
            ids = torch.tensor([[0, v]]).expand(n, -1)
            clean = torch.tensor([[True, False]]).expand(n, -1)
            total = nll_bound(model, ids, clean, generator=torch.Generator().manual_seed(v)).total
            expected += p * float(total.mean())
            var += p**2 * float(total.var()) / n
        results[optimal] = (expected, math.sqrt(var))
    (exact, se), (bad, _) = results[True], results[False]
    assert exact >= entropy - 3 * se  # a bound: E_x[B(x)] >= H(x) >= ... whatever the denoiser
    assert exact <= entropy + 0.03 + 3 * se  # and tight for the Bayes-optimal one
    assert bad > entropy + 0.3


def test_importance_weights_integrate_the_snr_derivative():
    """E_q[w(t)/q(t)] over the mixture = the integral of -SNR'(t) = SNR(0) - SNR(1)."""
    s = GaussianSchedule("sqrt", 1e-4)
    n = 200000
    u = (torch.rand(1, generator=torch.Generator().manual_seed(0)) + torch.arange(n)) / n
    pick = torch.rand(n, generator=torch.Generator().manual_seed(1))
    _, w = importance_times(u, pick, s)
    truth = float(s.snr(torch.zeros(1)) - s.snr(torch.ones(1)))
    assert float(w.double().mean()) == pytest.approx(truth, rel=0.02)


def test_save_and_reload_give_the_same_logits(tmp_path):
    model = tiny()
    model.save_pretrained(tmp_path / "m")
    again = ContinuousDLM.from_pretrained(tmp_path / "m")
    z, t = torch.randn(2, 6, D), torch.tensor([0.3, 0.7])
    clean, ids = torch.zeros(2, 6, dtype=torch.bool), torch.zeros(2, 6, dtype=torch.long)
    assert torch.equal(model.denoise(z, t, clean, ids), again.denoise(z, t, clean, ids))
    assert again.config == model.config


def test_bad_settings_are_one_line_errors():
    with pytest.raises(ConfigError, match="unknown continuous setting.*embedim.*valid: embed_dim"):
        ContinuousConfig.from_dict({"embedim": 16})
    with pytest.raises(ConfigError, match="schedule must be one of sqrt, cosine"):
        ContinuousConfig(schedule="linear")
    with pytest.raises(ConfigError, match="even integer"):
        ContinuousConfig(embed_dim=15)
    with pytest.raises(InputError, match="eta must be in"):
        ContinuousSamplerOptions(eta=2.0)
