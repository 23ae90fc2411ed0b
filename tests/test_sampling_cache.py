"""The sampler's forward pass: candidate-only logits, CFG and the block-wise KV cache.

What each cache mode promises: under block-causal attention the cached logits equal the uncached
ones at every step (exact); under bidirectional attention the first step of every block is exact
and later steps are an approximation whose error is bounded here (random tiny models) and in
test_sampling_bundled.py (the bundled model)."""

import pytest
import torch

from difflm.errors import InputError
from difflm.sampling import Denoiser, block_masks, build_canvas, decoding_groups, fill, generate, infill, template_canvas
from conftest import tiny_dlm
from test_sampling import single_thread  # noqa: F401 (autouse fixture)

MASK = 63


def _run_block(model, mode, attention, *, prompts=None, canvas=None, n=12, block_length=4, commits_per_step=2,
               seed=0, max_blocks=2):
    """Denoise the first blocks by committing random tokens at fixed positions, recording the
    candidates' logits of every step. ``canvas`` = (canvas, attention_mask, generate_mask), else
    built from ``prompts``. Returns a list of FloatTensor [N, V]."""
    canvas, attn, gen = canvas if canvas is not None else build_canvas(model, prompts, n)
    canvas = canvas.masked_fill(gen, MASK)
    blocks = block_masks(gen, block_length)
    den = Denoiser(model, canvas, attn, gen, groups=decoding_groups(blocks), attention=attention, cache=mode)
    rng = torch.Generator().manual_seed(seed)
    recorded = []
    for block in blocks[:max_blocks]:
        den.start_block(block)
        while True:
            candidates = block & (canvas == MASK)
            if not candidates.any():
                break
            recorded.append(den(canvas, candidates))
            # commit the first `commits_per_step` candidates of each row with random tokens
            rank = candidates.long().cumsum(-1)
            commit = candidates & (rank <= commits_per_step)
            canvas = canvas.masked_scatter(commit, torch.randint(4, 60, (int(commit.sum()),), generator=rng))
    return recorded


PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8, 9]]


@pytest.mark.parametrize("shift", [True, False])
def test_uncached_denoiser_matches_model_logits(shift):
    model = tiny_dlm("llama", shift=shift)
    canvas, attn, gen = build_canvas(model, PROMPTS, 6)
    canvas = canvas.masked_fill(gen, MASK)
    den = Denoiser(model, canvas, attn, gen, groups=decoding_groups([gen]))
    den.start_block(gen)
    expected = model.logits(canvas, attn)[gen]
    assert torch.allclose(den(canvas, gen), expected, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
@pytest.mark.parametrize("shift", [True, False])
@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_cache_is_exact_under_block_causal_attention(arch, shift, mode):
    model = tiny_dlm(arch, shift=shift)
    reference = _run_block(model, "none", "block_causal", prompts=PROMPTS)
    cached = _run_block(model, mode, "block_causal", prompts=PROMPTS)
    assert len(reference) == len(cached) == 4
    for ref, got in zip(reference, cached):
        assert torch.allclose(ref, got, atol=1e-5)


# Committed text after a block (an infilling suffix; the text between two gaps) belongs to that
# block's group: its keys see the block's tokens and must be recomputed with them.
INFILL = ([[1, 2, 3], [4, 5, 6, 7]], [[20, 21, 22, 23, 24], [25, 26]])
TWO_GAPS = [[1, 2, MASK, MASK, MASK, MASK, 30, 31, 32, MASK, MASK, MASK, 33, 34],
            [5, MASK, MASK, MASK, MASK, 36, 37, MASK, MASK, MASK, 38]]


def _canvas(model, layout):
    if layout == "infill":
        return build_canvas(model, INFILL[0], 8, INFILL[1])
    return template_canvas(model, TWO_GAPS)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("shift", [True, False])
@pytest.mark.parametrize("mode", ["prefix", "dual"])
@pytest.mark.parametrize("layout", ["infill", "two_gaps"])
def test_cache_is_exact_under_block_causal_attention_with_text_after_the_block(arch, shift, mode, layout):
    model = tiny_dlm(arch, shift=shift)
    kw = dict(block_length=4, max_blocks=3, commits_per_step=1)
    reference = _run_block(model, "none", "block_causal", canvas=_canvas(model, layout), **kw)
    cached = _run_block(model, mode, "block_causal", canvas=_canvas(model, layout), **kw)
    assert len(reference) == len(cached) >= 7
    for ref, got in zip(reference, cached):
        assert (ref.log_softmax(-1) - got.log_softmax(-1)).abs().max() < 1e-5


@pytest.mark.parametrize("shift", [True, False])
def test_cached_infill_and_fill_identical_under_block_causal(shift):
    model = tiny_dlm("llama", shift=shift)
    kw = dict(block_length=4, strategy="low_confidence", attention="block_causal")
    for seed in range(3):
        base = infill(model, INFILL[0], INFILL[1], middle_length=8, temperature=1.0,
                      generator=torch.Generator().manual_seed(seed), **kw)
        got = infill(model, INFILL[0], INFILL[1], middle_length=8, temperature=1.0, cache="dual",
                     generator=torch.Generator().manual_seed(seed), **kw)
        assert torch.equal(got, base)
    assert torch.equal(fill(model, TWO_GAPS, cache="dual", **kw), fill(model, TWO_GAPS, **kw))


@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_cache_is_an_approximation_under_bidirectional_attention(mode):
    model = tiny_dlm("llama")
    reference = _run_block(model, "none", None, prompts=PROMPTS)
    cached = _run_block(model, mode, None, prompts=PROMPTS)
    errors = [(ref.log_softmax(-1) - got.log_softmax(-1)).abs().max().item() for ref, got in zip(reference, cached)]
    # The refresh step of each block (steps 0 and 2) is exact; the others read stale keys.
    assert errors[0] < 1e-5 and errors[2] < 1e-5
    assert errors[1] > 1e-4 and errors[3] > 1e-4
    # bounded: a stale cache of a few tokens moves log-probabilities of a random model only a little
    assert max(errors) < 0.5


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("strategy", ["low_confidence", "threshold", "entropy"])
def test_cached_generation_identical_under_block_causal(arch, strategy):
    model = tiny_dlm(arch)
    kw = dict(max_new_tokens=12, block_length=4, strategy=strategy, attention="block_causal")
    base = generate(model, PROMPTS, **kw)
    for mode in ("prefix", "dual"):
        assert torch.equal(generate(model, PROMPTS, cache=mode, **kw), base)


def test_cache_recomputes_only_the_window():
    """The point of the cache: later steps of a block feed only the window to the backbone."""
    model = tiny_dlm("llama")  # shift: the window starts one position before the block
    lengths = {}
    for mode in ("none", "prefix", "dual"):
        seen = []
        hook = model.model.register_forward_hook(lambda m, args, kw, out: seen.append(kw["input_ids"].shape[1]), with_kwargs=True)
        try:
            generate(model, [1, 2, 3, 4], max_new_tokens=12, block_length=4, cache=mode)
        finally:
            hook.remove()
        lengths[mode] = seen
    assert lengths["none"] == [16] * 12
    # block b covers positions 4+4b .. 7+4b; each block: one full refresh, then the window
    assert lengths["prefix"] == [16, 13, 13, 13, 16, 9, 9, 9, 16, 5, 5, 5]
    assert lengths["dual"] == [16, 5, 5, 5, 16, 5, 5, 5, 16, 5, 5, 5]


@pytest.mark.parametrize("mode", ["none", "dual"])
def test_cfg_combines_conditional_and_unconditional(mode):
    model = tiny_dlm("llama", shift=False)
    scale = 1.5
    canvas, attn, gen = build_canvas(model, [[1, 2, 3, 4]], 6)
    canvas = canvas.masked_fill(gen, MASK)
    groups = decoding_groups([gen])
    den = Denoiser(model, canvas, attn, gen, groups=groups, cfg_scale=scale, cache=mode, attention="block_causal")
    den.start_block(gen)
    got = den(canvas, gen)
    uncond_canvas = canvas.clone()
    uncond_canvas[:, :4] = MASK  # the prompt fully masked
    cond = Denoiser(model, canvas, attn, gen, groups=groups, attention="block_causal")
    uncond = Denoiser(model, uncond_canvas, attn, gen, groups=groups, attention="block_causal")
    c, u = cond(canvas, gen), uncond(uncond_canvas, gen)
    assert torch.allclose(got, u + (scale + 1) * (c - u), atol=1e-4)
    assert not torch.allclose(got, c, atol=1e-3)


def test_cfg_zero_is_off_and_cfg_changes_generation():
    model = tiny_dlm("llama")
    plain = generate(model, [[1, 2, 3, 4]], max_new_tokens=8)
    assert torch.equal(generate(model, [[1, 2, 3, 4]], max_new_tokens=8, cfg_scale=0.0), plain)
    assert not torch.equal(generate(model, [[1, 2, 3, 4]], max_new_tokens=8, cfg_scale=3.0), plain)


@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_cache_is_exact_with_eager_attention_too(mode):
    """Eager attention takes the additive float mask; the cache slices and reorders it the same way."""
    model = tiny_dlm("llama", "eager")
    reference = _run_block(model, "none", "block_causal", prompts=PROMPTS)
    for ref, got in zip(reference, _run_block(model, mode, "block_causal", prompts=PROMPTS)):
        assert torch.allclose(ref, got, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("shift", [True, False])
@pytest.mark.parametrize("layout", ["generate", "infill", "two_gaps"])
def test_block_cache_is_exact_and_computes_each_finished_block_once(arch, shift, layout):
    """The AR-style cache of block diffusion: every step's logits equal a full recomputation, and
    the backbone never sees a position after the current window."""
    model = tiny_dlm(arch, shift=shift)
    canvas = build_canvas(model, PROMPTS, 12) if layout == "generate" else _canvas(model, layout)
    kw = dict(block_length=4, max_blocks=3, commits_per_step=1)
    reference = _run_block(model, "none", "block_causal", canvas=canvas, **kw)
    fed = []
    hook = model.model.register_forward_hook(lambda m, args, kws, out: fed.append(kws["input_ids"].shape[1]), with_kwargs=True)
    try:
        cached = _run_block(model, "block", "block_causal", canvas=canvas, **kw)
    finally:
        hook.remove()
    assert len(reference) == len(cached) >= 7
    for ref, got in zip(reference, cached):
        assert (ref.log_softmax(-1) - got.log_softmax(-1)).abs().max() < 1e-5
    length = canvas[0].shape[1]
    assert max(fed[1:]) < length and sum(fed) < 0.75 * len(fed) * length  # never a full pass after the first


def test_block_cache_refuses_bidirectional_attention():
    model = tiny_dlm("llama")
    canvas, attn, gen = build_canvas(model, PROMPTS, 8)
    with pytest.raises(InputError, match="block-causal"):
        Denoiser(model, canvas, attn, gen, groups=decoding_groups([gen]), cache="block")
