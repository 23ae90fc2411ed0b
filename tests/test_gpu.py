"""The CUDA path (`make test-gpu`): core, sampler, trainer and evaluation on a GPU, with the CPU
generators users and the trainer hand in. Skipped cleanly where there is no CUDA device."""

import pytest
import torch

from conftest import VOCAB, tiny_dlm

from difflm.losses import masked_diffusion_loss
from difflm.losses.block import two_copy_logits_with_clean
from difflm.sampling import build_canvas, denoise
from test_training import TINY, _records, _train, data  # noqa: F401 (fixture)

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
MASK = VOCAB - 1
PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8]]
# A cached step runs a shorter query window over the cached keys than a full pass. CUDA picks kernels
# (and reduction orders) by shape, so where the CPU agrees bitwise the GPU agrees to float32 rounding:
# the logits of every step within LOGITS_ATOL of the uncached ones, and greedy decoding (temperature 0)
# commits the same tokens. The tolerance is ~100x the differences seen from shape-dependent kernels
# on these tiny float32 models, far below the gap between the top two logits of a random model.
LOGITS_ATOL = 1e-4


def _decode(model, prefixes, length, suffixes=None, **options) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Greedy decoding of [prefix | MASK * length | suffix] rows: the final canvas [B, L] and the
    logits of every step's candidates ([N_step, V] each, on the CPU)."""
    canvas, attn, gen = build_canvas(model, prefixes, length, suffixes)
    seen: list[torch.Tensor] = []

    def record(logits: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        seen.append(logits.float().cpu())
        return logits

    out = denoise(model, canvas, gen, attn, temperature=0.0, logits_processor=record, **options)
    return out.sequences, seen


def _assert_cache_matches_no_cache(model, prefixes, length, suffixes=None, *, cache: str, **options) -> None:
    tokens, logits = _decode(model, prefixes, length, suffixes, cache=cache, **options)
    ref_tokens, ref_logits = _decode(model, prefixes, length, suffixes, cache="none", **options)
    assert torch.equal(tokens, ref_tokens), cache
    assert len(logits) == len(ref_logits)
    for step, (a, b) in enumerate(zip(logits, ref_logits)):
        torch.testing.assert_close(a, b, rtol=0, atol=LOGITS_ATOL, msg=lambda m: f"{cache}, step {step}: {m}")


def _pair(arch="llama", **kw):
    cpu = tiny_dlm(arch, **kw)
    gpu = tiny_dlm(arch, **kw).cuda()
    return cpu, gpu


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2"])
def test_logits_on_cuda_match_the_cpu_and_attend_both_ways(arch):
    cpu, gpu = _pair(arch)
    ids = torch.randint(0, MASK, (2, 12), generator=torch.Generator().manual_seed(0))
    attn = torch.tensor([[0, 0] + [1] * 10, [1] * 12])
    with torch.no_grad():
        assert torch.allclose(gpu.logits(ids.cuda(), attn.cuda()).cpu(), cpu.logits(ids, attn), atol=1e-4)
        changed = ids.clone()
        changed[:, -1] = (changed[:, -1] + 1) % MASK
        assert not torch.allclose(gpu.logits(changed.cuda())[:, 3], gpu.logits(ids.cuda())[:, 3])
        # annealed attention with the trainer's CPU generator
        annealed = tiny_dlm(arch, attention="annealed", anneal_steps=4).cuda()
        out = annealed.logits(ids.cuda(), step=1, generator=torch.Generator().manual_seed(0))
        assert out.is_cuda and torch.isfinite(out).all()


@pytest.mark.parametrize("strategy", ["random", "low_confidence", "maskgit_plus", "topk_margin", "entropy", "threshold"])
def test_every_strategy_samples_on_cuda_with_a_cpu_generator(strategy):
    _, gpu = _pair()
    gen = torch.Generator().manual_seed(0)
    out = gpu.generate(PROMPTS, max_new_tokens=8, steps=4, strategy=strategy, temperature=1.0, top_p=0.9, top_k=20,
                       generator=gen, return_dict=True)
    assert out.sequences.is_cuda and all(len(row) == 8 for row in out.new_tokens)
    assert (out.sequences[out.generate_mask] != MASK).all()
    again = gpu.generate(PROMPTS, max_new_tokens=8, steps=4, strategy=strategy, temperature=1.0, top_p=0.9, top_k=20,
                         generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, out.sequences)  # seeded: reproducible on the GPU


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_caches_and_cfg_on_cuda(cache):
    """Exact caches (block-causal attention) decode as no cache, to LOGITS_ATOL (see above)."""
    _, gpu = _pair()
    kw = dict(block_length=4, attention="block_causal")
    _assert_cache_matches_no_cache(gpu, PROMPTS, 8, cache=cache, cfg_scale=1.0, **kw)
    _assert_cache_matches_no_cache(gpu, PROMPTS, 8, [[9, 10]] * len(PROMPTS), cache=cache, **kw)


def test_context_causal_block_model_on_cuda():
    """A block diffusion model reading finished blocks causally (NBDiff): its clean copy is the causal LM
    on the GPU too, its AR-guided loss matches the CPU's, and every cache decodes as no cache."""
    cpu, gpu = _pair(attention="block_causal", block_size=4, block_context="causal")
    x0 = torch.randint(0, MASK, (2, 16), generator=torch.Generator().manual_seed(0))
    xt = x0.masked_fill(torch.rand(x0.shape, generator=torch.Generator().manual_seed(1)) < 0.5, MASK)
    with torch.no_grad():
        _, clean = two_copy_logits_with_clean(gpu, xt.cuda(), x0.cuda())
        assert torch.allclose(clean[:, 1:].cpu(), cpu.logits(x0, attention="causal")[:, 1:], atol=1e-4)
        noise, t = xt == MASK, torch.full((2,), 0.5)
        losses = [masked_diffusion_loss(m, x0.to(m.device), t=t.to(m.device), noise_mask=noise.to(m.device),
                                        ar_weight=1.0).loss.item() for m in (cpu, gpu)]
        assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    for cache in ("prefix", "dual", "block"):
        _assert_cache_matches_no_cache(gpu, PROMPTS, 10, cache=cache)


@pytest.mark.parametrize("objective", ["ar", "diffusion"])
def test_training_on_cuda_with_bf16(tmp_path, data, objective):  # noqa: F811
    _train(TINY + data + [f"objective={objective}", f"output_dir={tmp_path}", "max_steps=20", "eval_every=20",
                          "mixed_precision=bf16"])
    recs = [r for r in _records(tmp_path) if "val_loss" in r]
    assert recs[-1]["val_loss"] < recs[0]["val_loss"]


def test_annealed_adaptation_and_resume_on_cuda(tmp_path, data):  # noqa: F811
    _train(TINY + data + ["objective=ar", f"output_dir={tmp_path / 'ar'}", "max_steps=6", "eval_every=6"])
    args = TINY + data + ["objective=adapt", f"init={tmp_path / 'ar' / 'model'}", f"output_dir={tmp_path / 'dlm'}",
                          "max_steps=6", "save_every=3", "eval_every=3", "diffusion.anneal_steps=4", "keep_checkpoints=3"]
    _train(args)
    full = _records(tmp_path / "dlm")
    import shutil

    shutil.rmtree(tmp_path / "dlm" / "checkpoints" / "step-0000006")
    _train(args, resume=True)
    resumed = _records(tmp_path / "dlm")
    assert [r.get("train_loss") for r in resumed] == pytest.approx([r.get("train_loss") for r in full], rel=1e-4)


def test_evaluation_on_cuda_matches_the_cpu():
    from difflm.evaluation.likelihood import ScoreRequest, elbo_nll

    cpu, gpu = _pair()
    requests = [ScoreRequest((1, 2, 3, 4, 5, 6, 7, 8), 3, 8), ScoreRequest((9, 10, 11, 12, 13), 2, 5)]
    a = elbo_nll(cpu, requests, n_samples=8, seed=0, progress=False)
    b = elbo_nll(gpu, requests, n_samples=8, seed=0, progress=False)
    for x, y in zip(a, b):
        assert y.nll == pytest.approx(x.nll, rel=1e-4)
