"""The Kuleshov group's DiT checkpoints (MDLM, BD3-LM, UDLM, Duo) load onto difflm's native DiT and
compute what their official code computes.

The official outputs are fixtures (tests/fixtures/official/<family>.*) written by
scripts/official_fixtures/mdlm_family.py, which runs the official modeling code on the tiny checkpoints
of tests/mdlm_layouts.py in a separate environment; here the same checkpoints are rebuilt from their seeds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from difflm import DiffusionLM, formats, sampling
from difflm.errors import InputError, ModelLoadError
from difflm.evaluation.likelihood import ScoreRequest
from difflm.evaluation.uniform import uniform_elbo_nll
from difflm.losses import masked_diffusion_loss, two_copy_logits
from difflm.losses.uniform import uniform_diffusion_loss, uniform_nll_from_logits, uniform_times
from difflm.sampling.uniform import posterior as uniform_posterior
from mdlm_layouts import SIZES, WRITERS, write_bd3lm, write_mdlm, write_udlm

FIXTURES = Path(__file__).parent / "fixtures" / "official"
MASK = SIZES["vocab_size"] - 1
TOL = dict(atol=1e-5, rtol=1e-5)


def official(family: str) -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / f"{family}.safetensors"))


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, DiffusionLM]:
    root = tmp_path_factory.mktemp("dit")
    return {name: DiffusionLM.from_pretrained(write(root / name), dtype="float32") for name, write in WRITERS.items()}


def _forward(dlm: DiffusionLM, ids: torch.Tensor, attention_mask: torch.Tensor | None, sigma: torch.Tensor | None):
    """Masked families through DiffusionLM.logits; time-conditioned ones through the backbone with sigma."""
    if sigma is None:
        return dlm.logits(ids, attention_mask)
    mask4d = dlm.attention_mask_4d(ids, attention_mask)
    positions = dlm.position_ids(attention_mask, ids)
    return dlm.model(input_ids=ids, attention_mask=mask4d, position_ids=positions, timesteps=sigma).logits


def _close(ours: torch.Tensor, theirs: torch.Tensor, family: str) -> None:
    if family in ("mdlm", "bd3lm"):  # SUBS: the mask column is never a prediction (ours: the lowest value)
        assert bool((ours[..., MASK] < -1e30).all())
        ours, theirs = ours[..., :MASK], theirs[..., :MASK]
    torch.testing.assert_close(ours, theirs, **TOL)


@pytest.mark.parametrize("family", list(WRITERS))
def test_unpadded_logits_equal_the_official_code(models, family):
    ref = official(family)
    sigma = ref["t"] if family in ("udlm", "duo") else None
    key = "sample_logits" if family == "bd3lm" else "logits"
    with torch.no_grad():
        _close(_forward(models[family], ref["x0"], None, sigma), ref[key], family)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("family", list(WRITERS))
def test_padded_logits_equal_the_official_code_on_each_row_alone(models, family, side):
    """The official code has no padding mask: its reference is each row run alone, unpadded."""
    ref = official(family)
    x0, lengths = ref["x0"], ref["lengths"].tolist()
    ids = torch.full_like(x0, 0)
    attn = torch.zeros_like(x0)
    for b, n in enumerate(lengths):
        cols = slice(0, n) if side == "right" else slice(x0.shape[1] - n, None)
        ids[b, cols], attn[b, cols] = x0[b, :n], 1
    sigma = ref["t"] if family in ("udlm", "duo") else None
    with torch.no_grad():
        out = _forward(models[family], ids, attn, sigma)
    for b, n in enumerate(lengths):
        cols = slice(0, n) if side == "right" else slice(x0.shape[1] - n, None)
        _close(out[b, cols], ref[f"row{b}_logits"], family)


def test_bd3lm_two_copy_forward_equals_the_official_training_forward(models):
    ref = official("bd3lm")
    xt = torch.where(ref["noise"], MASK, ref["x0"])
    with torch.no_grad():
        _close(two_copy_logits(models["bd3lm"], xt, ref["x0"]), ref["noisy_logits"], "bd3lm")


@pytest.mark.parametrize("family,t", [("mdlm", "t"), ("bd3lm", "t_block")])
def test_elbo_on_fixed_noise_equals_the_official_loss(models, family, t):
    ref = official(family)
    with torch.no_grad():
        out = masked_diffusion_loss(models[family], ref["x0"], t=ref[t], noise_mask=ref["noise"])
        # and it is not trivially so: another noise gives another loss
        other = masked_diffusion_loss(models[family], ref["x0"], t=ref[t], noise_mask=~ref["noise"])
    assert abs(float(out.loss) - float(ref["loss"])) < 1e-5 * max(1.0, abs(float(ref["loss"])))
    assert abs(float(other.loss) - float(ref["loss"])) > 1e-3


def test_fixtures_record_their_sources():
    for family in WRITERS:
        meta = json.loads((FIXTURES / f"{family}.json").read_text())
        assert len(meta["commit"]) == 40 and meta["files"] and meta["repo"]


@pytest.mark.parametrize("family,process", [("mdlm", "masked"), ("bd3lm", "masked"), ("udlm", "uniform"), ("duo", "uniform")])
def test_detection_names_the_family_and_why(tmp_path, family, process):
    path = WRITERS[family](tmp_path / family)
    found = formats.detect(path)
    assert found.format == "mdlm"
    assert family.upper() in found.reason.upper() and "config.json" in found.reason
    loaded = formats.load(path)
    assert loaded.model.config.family == family
    assert loaded.model.config.extra["process"] == process
    if family == "bd3lm":
        assert loaded.model.config.attention == "block_causal" and loaded.model.config.block_size == 4
    else:
        assert loaded.model.config.attention == "bidirectional"
    assert loaded.model.config.shift is False


def test_unnamed_dit_weights_are_read_as_mdlm(tmp_path):
    path = write_mdlm(tmp_path / "m", model_type="something", architectures=["Other"])
    assert "DiT" in formats.detect(path).reason


@pytest.mark.parametrize("family", ["mdlm", "bd3lm", "udlm", "duo"])
def test_convert_round_trip_reloads_to_identical_logits(models, tmp_path, family):
    dlm = models[family]
    dlm.save_pretrained(tmp_path / "out")
    again = DiffusionLM.from_pretrained(tmp_path / "out")
    assert formats.detect(tmp_path / "out").format == "difflm" and again.config == dlm.config
    x = official(family)["x0"]
    # the uniform-state models are time-conditioned: the time input must survive the round trip too
    time = {"timesteps": torch.linspace(0.1, 2.0, x.shape[0])} if family in ("udlm", "duo") else {}
    with torch.no_grad():
        assert torch.equal(dlm.logits(x, **time), again.logits(x, **time))


@pytest.mark.parametrize("family,cache", [("mdlm", "none"), ("bd3lm", "none"), ("bd3lm", "block")])
def test_sampling_runs_through_difflm_loop_and_keeps_the_prompt(models, family, cache):
    dlm = models[family]
    prompt = torch.tensor([[5, 9, 17, 3]])
    torch.manual_seed(0)
    out = dlm.generate(prompt, max_new_tokens=8, steps=8, cache=cache, temperature=0.0)
    assert torch.equal(out[:, :4], prompt)
    assert out.shape[1] == 12 and not bool((out == MASK).any())


def test_bd3lm_block_cache_is_exact(models):
    dlm = models["bd3lm"]
    prompt = torch.tensor([[5, 9, 17, 3]])
    plain = dlm.generate(prompt, max_new_tokens=8, steps=8, cache="none", temperature=0.0)
    cached = dlm.generate(prompt, max_new_tokens=8, steps=8, cache="block", temperature=0.0)
    assert torch.equal(plain, cached)


@pytest.mark.parametrize("change,message", [
    ({"n_heads": None}, "n_heads"),
    ({"causal": True}, "causal"),
    ({"hidden_dim": 30}, "hidden_dim"),
])
def test_bad_configs_are_one_line_errors(tmp_path, change, message):
    config = {k: v for k, v in change.items() if v is not None}
    path = write_mdlm(tmp_path / "m", **config)
    if change.get("n_heads", 0) is None:
        data = json.loads((path / "config.json").read_text())
        del data["n_heads"]
        (path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match=message) as err:
        DiffusionLM.from_pretrained(path)
    assert "\n" not in str(err.value)


def test_bd3lm_needs_a_block_size(tmp_path):
    path = write_bd3lm(tmp_path / "b", block_size=None)
    with pytest.raises(ModelLoadError, match="block_size"):
        DiffusionLM.from_pretrained(path)


def test_converted_dit_reloads_in_a_fresh_process(models, tmp_path):
    """A converted directory names model_type difflm_dit: a new interpreter must know it without having
    imported difflm.formats.mdlm (the native backbones register with the Auto classes on loading)."""
    import subprocess
    import sys

    models["mdlm"].save_pretrained(tmp_path / "out")
    code = ("import sys; from difflm import DiffusionLM; "
            "m = DiffusionLM.from_pretrained(sys.argv[1]); print(type(m.model).__name__)")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "out")], capture_output=True, text=True,
                          env={"OMP_NUM_THREADS": "1", "PATH": ""}, timeout=120)
    assert done.returncode == 0, done.stderr[-500:]
    assert done.stdout.strip() == "DiTForDiffusion"


# -- uniform-state diffusion (UDLM, Duo): the ELBO, `difflm eval` and the sampler -----------------------------
UNIFORM = {"udlm": "udlm", "duo": "duo"}  # family -> the convention its official loss follows


def _official_draw(ref: dict[str, torch.Tensor], convention: str) -> torch.Tensor:
    """The official replace decisions: its torch.rand draws below 1 - alpha_t (of the schedule we implement)."""
    return ref["loss_u"] < uniform_times(ref["t"], convention=convention).replace_prob[:, None]


@pytest.mark.parametrize("family", list(UNIFORM))
def test_uniform_elbo_on_fixed_noise_equals_the_official_loss(models, family):
    ref, convention = official(family), UNIFORM[family]
    replace = _official_draw(ref, convention)
    assert torch.equal(torch.where(replace, ref["loss_noise_tokens"], ref["x0"]), ref["loss_xt"])  # same x_t
    with torch.no_grad():
        out = uniform_diffusion_loss(models[family], ref["x0"], t=ref["t"], replace=replace,
                                     noise_tokens=ref["loss_noise_tokens"], convention=convention)
    assert torch.equal(out.x_t, ref["loss_xt"])
    torch.testing.assert_close(out.token_nll, ref["loss_token_nll"], **TOL)
    assert abs(float(out.loss) - float(ref["loss"])) < 1e-5 * max(1.0, abs(float(ref["loss"])))
    # not trivially so: another noise draw, or the other convention, gives another value
    other = uniform_diffusion_loss(models[family], ref["x0"], t=ref["t"], replace=~replace,
                                   noise_tokens=ref["loss_noise_tokens"], convention=convention)
    assert abs(float(other.loss) - float(ref["loss"])) > 1e-3
    swapped = uniform_diffusion_loss(models[family], ref["x0"], t=ref["t"], replace=replace,
                                     noise_tokens=ref["loss_noise_tokens"], convention=({"udlm", "duo"} - {convention}).pop())
    assert abs(float(swapped.loss) - float(ref["loss"])) > 1e-5


def test_uniform_bound_equals_its_explicit_sum_over_the_vocabulary():
    """The closed form (no [.., V] x_bar tensor) against the bound written out term by term."""
    g = torch.Generator().manual_seed(0)
    vocab, n = 11, 40
    logits = torch.randn(n, vocab, generator=g, dtype=torch.float64) * 3
    x0 = torch.randint(0, vocab, (n,), generator=g)
    xt = torch.where(torch.rand(n, generator=g, dtype=torch.float64) < 0.5, torch.randint(0, vocab, (n,), generator=g), x0)
    alpha = torch.rand(n, generator=g, dtype=torch.float64) * 0.98 + 0.01
    ours = uniform_nll_from_logits(logits, x0, xt, alpha, torch.full_like(alpha, -0.999))
    a = alpha[:, None]
    bar = vocab * a * torch.nn.functional.one_hot(x0, vocab) + 1 - a
    bar_theta = vocab * a * logits.softmax(-1) + 1 - a
    bz, btz = bar.gather(-1, xt[:, None]), bar_theta.gather(-1, xt[:, None])
    term2 = (bar / bz * (btz.log() - bar_theta.log() + bar.log() - bz.log())).sum(-1, keepdim=True)
    explicit = (-0.999 / (vocab * a) * (vocab / bz - vocab / btz - term2)).squeeze(-1)
    torch.testing.assert_close(ours, explicit, atol=1e-10, rtol=1e-10)
    assert bool((ours > -1e-9).all())  # a KL-type integrand: never negative


def test_uniform_posterior_equals_the_official_closed_form():
    """Duo's `_posterior_from_x0` / UDLM's `_compute_posterior`, written out, against difflm's product form."""
    g = torch.Generator().manual_seed(1)
    vocab, n, alpha_t, alpha_s = 9, 30, 0.3, 0.55
    p = torch.randn(n, vocab, generator=g, dtype=torch.float64).softmax(-1)
    xt = torch.randint(0, vocab, (n,), generator=g)
    onehot = torch.nn.functional.one_hot(xt, vocab).double()
    ts = alpha_t / alpha_s
    closed = ((alpha_t * vocab * p * onehot + (ts - alpha_t) * onehot + (alpha_s - alpha_t) * p
               + (1 - ts) * (1 - alpha_s) / vocab) / (alpha_t * vocab * p.gather(-1, xt[:, None]) + 1 - alpha_t))
    torch.testing.assert_close(uniform_posterior(p, xt, alpha_t, alpha_s), closed, atol=1e-12, rtol=1e-12)


@pytest.fixture(scope="module")
def udlm_dir(tmp_path_factory) -> Path:
    """A tiny UDLM in the hub layout with the bundled tokenizer (vocabulary 8192): `difflm eval` / `generate`."""
    from evaluation_fixtures import bundled_tokenizer

    path = write_udlm(tmp_path_factory.mktemp("udlm") / "udlm", vocab_size=8192)
    bundled_tokenizer().save_pretrained(path)
    return path


def test_difflm_eval_scores_a_uniform_model_with_the_uniform_elbo(udlm_dir, tmp_path, capsys):
    from difflm.cli import main

    doc = tmp_path / "doc.txt"
    doc.write_text("In the beginning God created the heaven and the earth.")

    def run(name: str, *extra: str) -> dict:
        out = tmp_path / name
        assert main(["eval", "--model", str(udlm_dir), "--tasks", f"perplexity={doc}", "--n-samples", "4",
                     "--output", str(out), "--no-progress", *extra]) == 0
        return json.loads(out.read_text())

    report = run("a.json")
    assert "uniform-state ELBO" in report["model"]["scoring"]
    task = next(iter(report["tasks"].values()))
    metric = task["metrics"]["nll_per_token"]
    assert 0 < metric["value"] < 50 and metric["stderr_source"] == "monte-carlo"
    assert task["protocol"]["likelihood"] == "upper bound (ELBO)"
    assert next(iter(run("b.json")["tasks"].values()))["metrics"] == task["metrics"]  # seeded: reproducible
    assert next(iter(run("c.json", "--seed", "3")["tasks"].values()))["metrics"] != task["metrics"]
    assert "uniform-state ELBO" in capsys.readouterr().err


def test_uniform_elbo_does_not_depend_on_the_batch(models):
    dlm = models["udlm"]
    requests = [ScoreRequest((5, 9, 17, 3, 8, 30), 2, 6), ScoreRequest(tuple(range(10, 22)), 1, 12)]
    one = uniform_elbo_nll(dlm, requests, n_samples=6, batch_size=1, progress=False)
    many = uniform_elbo_nll(dlm, requests, n_samples=6, batch_size=16, progress=False)
    for a, b in zip(one, many):
        assert abs(a.nll - b.nll) < 1e-5 and a.num_tokens == b.num_tokens and a.nll > 0
    alone = uniform_elbo_nll(dlm, requests[1:], n_samples=6, keys=[1], progress=False)
    assert abs(alone[0].nll - one[1].nll) < 1e-5  # a request's draws are its own


@pytest.mark.parametrize("family", list(UNIFORM))
def test_uniform_sampling_keeps_the_prompt_and_is_seeded(models, family):
    dlm = models[family]
    prompts = torch.tensor([[5, 9, 17, 3], [8, 1, 2, 40]])
    gens = lambda: [torch.Generator().manual_seed(s) for s in (1, 2)]  # noqa: E731
    out = dlm.generate(prompts, max_new_tokens=8, steps=6, temperature=1.0, generator=gens())
    assert torch.equal(out[:, :4], prompts) and out.shape == (2, 12)
    assert torch.equal(out, dlm.generate(prompts, max_new_tokens=8, steps=6, temperature=1.0, generator=gens()))
    alone = dlm.generate(prompts[1:], max_new_tokens=8, steps=6, temperature=1.0,
                         generator=[torch.Generator().manual_seed(2)])
    assert torch.equal(alone[0], out[1])  # a row's output does not depend on its batch
    other = dlm.generate(prompts, max_new_tokens=8, steps=6, temperature=1.0,
                         generator=[torch.Generator().manual_seed(s) for s in (3, 4)])
    assert not torch.equal(other, out)


def test_uniform_sampling_counts_its_model_calls_and_infills(models):
    dlm = models["duo"]  # Duo's default end: one more (ancestral) step after the grid
    result = sampling.generate(dlm, [[5, 9, 17, 3]], max_new_tokens=6, steps=5, return_dict=True,
                               generator=torch.Generator().manual_seed(0), output_history=True)
    assert result.steps == 6 and len(result.history) == 6 and len(result.new_tokens[0]) == 6
    udlm = sampling.generate(models["udlm"], [[5, 9, 17, 3]], max_new_tokens=6, steps=5, return_dict=True,
                             generator=torch.Generator().manual_seed(0))
    assert udlm.steps == 5  # UDLM's sampler stops at t = eps
    filled = dlm.infill([[5, 9]], [[17, 3, 8]], middle_length=4, steps=4, generator=torch.Generator().manual_seed(0))
    assert filled[0, :2].tolist() == [5, 9] and filled[0, -3:].tolist() == [17, 3, 8]


def test_uniform_sampling_refuses_masked_decoding_options(models):
    with pytest.raises(InputError, match="cfg_scale"):
        models["udlm"].generate(torch.tensor([[5, 9]]), max_new_tokens=4, cfg_scale=1.0)


def test_difflm_generate_runs_a_uniform_model(udlm_dir, capsys):
    from difflm.cli import main

    assert main(["generate", "In the beginning", "--model", str(udlm_dir), "--length", "6", "--steps", "4",
                 "--seed", "0", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert len(record["new_tokens"]) == 6


def test_masked_scoring_refuses_a_uniform_model(models):
    """The masked ELBO has no meaning for a uniform-state model and says so in one line (difflm eval picks the
    uniform bound by itself; the server serves these models through the sampler, tests/test_serve_uniform.py)."""
    from difflm.errors import InputError
    from difflm.evaluation.likelihood import ScoreRequest, elbo_nll

    with pytest.raises(InputError, match="uniform-state model"):
        elbo_nll(models["udlm"], [ScoreRequest.continuation([1, 2], [3, 4])], n_samples=2)
