"""The ELBO estimators against an exact enumeration, their standard errors and reproducibility, and
the exact AR likelihood."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from difflm.errors import InputError
from difflm.evaluation.likelihood import ScoreRequest, ar_nll, elbo_nll, reference_score
from difflm.losses import ar_loss
from conftest import VOCAB, tiny_backbone, tiny_dlm

MASK = VOCAB - 1
IDS = (5, 9, 11, 20, 3, 7, 40)


def exact_elbo(model, request: ScoreRequest) -> float:
    """B = sum over non-empty masked subsets S of the targets of sum_{i in S} CE_i / (|S| C(N, |S|)):
    the l-form of the bound, computed without sampling (N small)."""
    n, total = request.num_targets, 0.0
    ids = torch.tensor([request.ids])
    for k in range(1, n + 1):
        for subset in itertools.combinations(range(n), k):
            pos = [request.start + s for s in subset]
            x = ids.clone()
            x[0, pos] = model.config.mask_token_id
            with torch.no_grad():
                logits = model.logits(x)
            total += F.cross_entropy(logits[0, pos], ids[0, pos], reduction="sum").item() / (k * math.comb(n, k))
    return total


@pytest.fixture(scope="module")
def dlm():
    return tiny_dlm("llama", shift=True)


@pytest.mark.parametrize("estimator", ["count", "time"])
@pytest.mark.parametrize("stratified", [True, False])
def test_estimators_are_unbiased_for_the_exact_bound(dlm, estimator, stratified):
    request = ScoreRequest(IDS, 3, 7)
    exact = exact_elbo(dlm, request)
    (est,) = elbo_nll(dlm, [request], n_samples=800, estimator=estimator, stratified=stratified, seed=1,
                      batch_size=800, progress=False)
    assert est.num_tokens == 4 and est.num_samples == 800 and est.stderr > 0
    # within 4 standard errors; the "time" estimator also misses the integral over [0, eps) (tiny)
    assert abs(est.nll - exact) < 4 * est.stderr + 1e-3 * exact


def test_a_no_shift_model_can_score_position_zero():
    model = tiny_dlm("llama", shift=False)
    request = ScoreRequest(IDS[:3], 0, 3)
    (est,) = elbo_nll(model, [request], n_samples=400, seed=0, batch_size=400, progress=False)
    assert abs(est.nll - exact_elbo(model, request)) < 4 * est.stderr


def test_count_estimator_has_lower_variance_at_equal_passes(dlm):
    request = ScoreRequest(IDS, 1, 7)
    spread = {}
    for estimator in ("count", "time"):
        # 30 copies of one request: each copy has its own seed, so they are 30 independent estimates
        values = [e.nll for e in elbo_nll(dlm, [request] * 30, n_samples=8, estimator=estimator, batch_size=240,
                                          progress=False)]
        spread[estimator] = torch.tensor(values).std().item()
    assert spread["count"] < spread["time"] / 3


def test_stderr_is_consistent_with_the_spread_over_seeds(dlm):
    request = ScoreRequest(IDS, 1, 7)
    runs = elbo_nll(dlm, [request] * 40, n_samples=16, stratified=False, batch_size=640, progress=False)
    empirical = torch.tensor([r.nll for r in runs]).std().item()
    reported = sum(r.stderr for r in runs) / len(runs)
    assert 0.6 < reported / empirical < 1.6  # independent samples: std / sqrt(n) is the right error


def test_seeded_results_are_reproducible_and_independent_of_batching(dlm):
    requests = [ScoreRequest(IDS, 2, 7), ScoreRequest(IDS[:5], 1, 5), ScoreRequest((1, 2, 3, 4), 2, 4)]
    a = elbo_nll(dlm, requests, n_samples=6, seed=3, batch_size=4, progress=False)
    b = elbo_nll(dlm, requests, n_samples=6, seed=3, batch_size=64, progress=False)
    c = elbo_nll(dlm, requests[:1], n_samples=6, seed=3, batch_size=1, progress=False)
    for x, y in zip(a, b):
        assert x.nll == pytest.approx(y.nll, rel=1e-5) and x.stderr == pytest.approx(y.stderr, rel=1e-4, abs=1e-6)
    assert c[0].nll == pytest.approx(a[0].nll, rel=1e-5)  # request 0 does not depend on the others
    d = elbo_nll(dlm, requests, n_samples=6, seed=4, progress=False)
    assert d[0].nll != a[0].nll


def test_only_targets_are_ever_masked(dlm):
    seen = []

    class Recorder(torch.nn.Module):
        config = dlm.config
        device = dlm.device
        vocab_size = dlm.vocab_size
        max_length = dlm.max_length
        first_predictable_position = dlm.first_predictable_position

        def logits(self, ids, attention_mask=None):
            seen.append(ids.clone())
            return dlm.logits(ids, attention_mask)

    request = ScoreRequest(IDS, 2, 5)
    elbo_nll(Recorder(), [request], n_samples=20, seed=0, progress=False)
    reference_score(Recorder(), [request], steps=8, progress=False)
    x = torch.cat(seen)
    masked = x == MASK
    assert masked[:, 2:5].any(1).all()  # every pass masks at least one target
    assert not masked[:, :2].any() and not masked[:, 5:].any()  # context on both sides stays clean


def test_reference_score_is_the_mean_cross_entropy_when_everything_is_masked(dlm):
    request = ScoreRequest(IDS, 3, 6)
    (score,) = reference_score(dlm, [request], steps=1, progress=False)  # one rate: 1/1, all masked
    x = torch.tensor([IDS])
    x[0, 3:6] = MASK
    with torch.no_grad():
        expected = F.cross_entropy(dlm.logits(x)[0, 3:6], torch.tensor(IDS[3:6])).item()
    assert score == pytest.approx(expected, rel=1e-5)


def test_ar_nll_is_exact():
    model = tiny_backbone("llama")
    x = torch.tensor([IDS])
    (full,) = ar_nll(model, [ScoreRequest(IDS, 1, 7)], progress=False)
    assert full.stderr == 0 and full.num_tokens == 6
    assert full.nll == pytest.approx(ar_loss(model, x).item() * 6, rel=1e-5)
    # a continuation: the sum of the last tokens' NLL, whatever the batch's padding
    (cont, short) = ar_nll(model, [ScoreRequest(IDS, 4, 7), ScoreRequest(IDS[:3], 1, 3)], progress=False)
    logp = torch.log_softmax(model(x).logits[0, :-1].float(), -1)
    expected = -sum(logp[i - 1, IDS[i]].item() for i in range(4, 7))
    assert cont.nll == pytest.approx(expected, rel=1e-5)
    greedy = all(logp[i - 1].argmax().item() == IDS[i] for i in range(4, 7))
    assert cont.greedy is greedy


def test_bad_requests_raise_clear_errors(dlm):
    with pytest.raises(InputError, match="n_samples"):
        elbo_nll(dlm, [ScoreRequest(IDS, 1, 3)], n_samples=0)
    with pytest.raises(InputError, match="estimator"):
        elbo_nll(dlm, [ScoreRequest(IDS, 1, 3)], estimator="magic")
    with pytest.raises(InputError, match="BOS"):
        elbo_nll(dlm, [ScoreRequest(IDS, 0, 3)])  # a shifted model has no prediction at position 0
    with pytest.raises(InputError, match="mask token"):
        elbo_nll(dlm, [ScoreRequest((1, MASK, 2), 1, 3)])
    with pytest.raises(InputError, match="context"):
        elbo_nll(dlm, [ScoreRequest(tuple(range(1, 60)) * 2, 1, 118)])
    with pytest.raises(InputError, match="empty"):
        ar_nll(tiny_backbone("llama"), [ScoreRequest(IDS, 3, 3)])


def test_one_target_is_exact_in_one_pass_and_one_sample_has_unknown_error(dlm):
    request = ScoreRequest(IDS, 4, 5)
    (est,) = elbo_nll(dlm, [request], n_samples=16, progress=False)
    assert est.num_samples == 1 and est.stderr == 0.0
    assert est.nll == pytest.approx(exact_elbo(dlm, request), rel=1e-5)
    (one,) = elbo_nll(dlm, [ScoreRequest(IDS, 2, 6)], n_samples=1, progress=False)
    assert math.isnan(one.stderr)


def test_requests_with_one_key_share_their_random_numbers(dlm):
    a, b = ScoreRequest(IDS, 2, 6), ScoreRequest(IDS[:3] + (30, 31, 32, 33), 3, 7)  # equal target counts
    same = elbo_nll(dlm, [a, a, b], n_samples=4, keys=[0, 0, 0], progress=False)
    assert same[0].nll == same[1].nll  # same draws: identical estimates
    apart = elbo_nll(dlm, [a, a], n_samples=4, progress=False)  # default keys 0, 1
    assert apart[0].nll != apart[1].nll
    assert reference_score(dlm, [a, a], steps=4, keys=[5, 5], progress=False)[0] == \
        reference_score(dlm, [a, a], steps=4, keys=[5, 5], progress=False)[1]
