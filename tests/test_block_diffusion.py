"""Block diffusion (BD3-LM): the two-copy training forward sees exactly what a block-by-block
decoder sees, block size 1 is an AR model, and every block gets its own noise level - with finished
blocks read as blocks (BD3-LM) or causally (NBDiff's context-causal attention, whose clean copy is
then the AR model and trains the auxiliary AR loss)."""

import pytest
import torch

from conftest import tiny_dlm
from difflm import DiffusionConfig
from difflm.errors import ConfigError, InputError
from difflm.losses import draw_noise, masked_diffusion_loss
from difflm.losses.block import two_copy_logits, two_copy_logits_with_clean

MASK = 63


def _noisy(x0, seed=0, rate=0.5):
    gen = torch.Generator().manual_seed(seed)
    noise = torch.rand(x0.shape, generator=gen) < rate
    return torch.where(noise, torch.full_like(x0, MASK), x0)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("shift", [True, False])
@pytest.mark.parametrize("context", ["block", "causal"])
def test_two_copy_forward_equals_the_decoders_view_of_every_block(arch, shift, context):
    """Block k's predictions in training = what the decoder computes when blocks < k are committed
    (clean) and block k is partly masked; nothing later is visible."""
    block = 4
    model = tiny_dlm(arch, shift=shift, attention="block_causal", block_size=block, block_context=context)
    x0 = torch.randint(0, 60, (2, 16), generator=torch.Generator().manual_seed(1))
    xt = _noisy(x0)
    xt[:, block - 1::block] = MASK  # every block is being denoised (the decoder's first [MASK] marks it)
    with torch.no_grad():
        train = two_copy_logits(model, xt, x0)
        for k in range(4):
            canvas = x0.clone()
            canvas[:, k * block:] = MASK  # later blocks: anything (here all masked)
            canvas[:, k * block:(k + 1) * block] = xt[:, k * block:(k + 1) * block]
            decode = model.logits(canvas)
            first = max(k * block, 1 if shift else 0)
            torch.testing.assert_close(train[:, first:(k + 1) * block], decode[:, first:(k + 1) * block],
                                       rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("context", ["block", "causal"])
def test_nothing_leaks_from_later_blocks_or_from_other_noisy_blocks(context):
    model = tiny_dlm("llama", attention="block_causal", block_size=4, block_context=context)
    x0 = torch.randint(0, 60, (1, 16), generator=torch.Generator().manual_seed(2))
    xt = _noisy(x0, seed=3)
    with torch.no_grad():
        base = two_copy_logits(model, xt, x0)
        later = x0.clone()
        later[:, 12:] = (later[:, 12:] + 1) % 60  # change the clean last block
        other = xt.clone()
        other[:, 4:8] = MASK  # mask all of block 1 in the noisy copy
        assert torch.allclose(two_copy_logits(model, xt, later)[:, :12], base[:, :12], atol=1e-6)
        moved = two_copy_logits(model, other, x0)
        assert torch.allclose(moved[:, :4], base[:, :4], atol=1e-6) and torch.allclose(moved[:, 8:], base[:, 8:], atol=1e-6)
        assert not torch.allclose(moved[:, 4:8], base[:, 4:8], atol=1e-4)  # but its own block does change


@pytest.mark.parametrize("context", ["block", "causal"])
def test_block_size_one_with_shift_is_the_ar_model(context):
    """The AR model it was adapted from, logit for logit (without shift, block size 1 is an AR model
    too, but one that predicts token i at position i from a [MASK] there)."""
    model = tiny_dlm("llama", shift=True, attention="block_causal", block_size=1, block_context=context)
    x0 = torch.randint(0, 60, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(two_copy_logits(model, _noisy(x0), x0), model.logits(x0, attention="causal"),
                                   rtol=1e-4, atol=1e-5)


def test_every_block_has_its_own_noise_level_and_the_loss_trains():
    model = tiny_dlm("llama", attention="block_causal", block_size=4).train()
    x0 = torch.randint(0, 60, (4, 16), generator=torch.Generator().manual_seed(0))
    noise, t = draw_noise(model, x0, antithetic=True, generator=torch.Generator().manual_seed(1))
    assert t.shape == (4, 16)
    per_block = t.view(4, 4, 4)
    assert torch.equal(per_block, per_block[..., :1].expand_as(per_block))  # constant inside a block
    assert len(set(per_block[..., 0].flatten().tolist())) == 16  # a level per block
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for step in range(30):
        loss = masked_diffusion_loss(model, x0, generator=torch.Generator().manual_seed(step)).loss
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first - 0.5


@pytest.mark.parametrize("shift", [True, False])
def test_context_causal_reads_finished_blocks_as_the_ar_model_does(shift):
    """block_context causal (NBDiff): the clean copy of the training forward is the backbone run as a
    causal LM, logit for logit, and a decoder reads the finished blocks causally - a later token of a
    finished block changes nothing before it - while the block being denoised stays bidirectional."""
    x0 = torch.randint(0, 60, (2, 16), generator=torch.Generator().manual_seed(4))
    xt = _noisy(x0, seed=5)
    causal = tiny_dlm("llama", shift=shift, attention="block_causal", block_size=4, block_context="causal")
    blocks = tiny_dlm("llama", shift=shift, attention="block_causal", block_size=4)
    with torch.no_grad():
        noisy, clean = two_copy_logits_with_clean(causal, xt, x0)
        torch.testing.assert_close(noisy, two_copy_logits(causal, xt, x0))
        ar = causal.logits(x0, attention="causal")
        torch.testing.assert_close(clean[:, 1:], ar[:, 1:], rtol=1e-4, atol=1e-5)
        # a row without [MASK] is all finished text: the model's plain forward is the AR model's then
        torch.testing.assert_close(causal.logits(x0)[:, 1:], ar[:, 1:], rtol=1e-4, atol=1e-5)
        _, block_clean = two_copy_logits_with_clean(blocks, xt, x0)
        assert not torch.allclose(block_clean[:, 1:], ar[:, 1:], atol=1e-3)  # BD3-LM's clean copy is not AR
        canvas = x0.clone()
        canvas[:, 8:] = MASK  # blocks 0 and 1 finished, block 2 being denoised
        changed = canvas.clone()
        changed[:, 6] = (changed[:, 6] + 1) % 60  # a token inside finished block 1
        for model, context_sees_it in ((causal, False), (blocks, True)):
            a, b = model.logits(canvas), model.logits(changed)
            # aligned positions 4-5 are predicted from block 1 before its token 6 (or from 3 with shift)
            assert torch.allclose(a[:, 4:6], b[:, 4:6], atol=1e-6) != context_sees_it
            assert not torch.allclose(a[:, 8:12], b[:, 8:12], atol=1e-4)  # the active block sees it either way
        active = canvas.clone()
        active[:, 9] = (active[:, 9] + 1) % 60  # an unmasked token inside the active block
        assert not torch.allclose(causal.logits(canvas)[:, 8], causal.logits(active)[:, 8], atol=1e-4)


def test_ar_loss_weight_adds_the_clean_copys_next_token_loss():
    model = tiny_dlm("llama", attention="block_causal", block_size=4, block_context="causal")
    x0 = torch.randint(0, 60, (3, 16), generator=torch.Generator().manual_seed(6))
    src = torch.zeros_like(x0, dtype=torch.bool)
    src[:, :5] = True  # a prompt: neither noised nor an AR target
    noise, t = draw_noise(model, x0, src_mask=src, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        plain = masked_diffusion_loss(model, x0, t=t, noise_mask=noise, src_mask=src)
        guided = masked_diffusion_loss(model, x0, t=t, noise_mask=noise, src_mask=src, ar_weight=0.5)
        logits = model.logits(x0, attention="causal")
        ce = torch.nn.functional.cross_entropy(logits[:, 1:].transpose(1, 2), x0[:, 1:], reduction="none")
    expected = 0.5 * ce[:, 4:].sum() / (3 * 11)  # targets: positions 5..15 of each row
    assert plain.num_targets == 33
    torch.testing.assert_close(guided.loss - plain.loss, expected, rtol=1e-4, atol=1e-6)
    with pytest.raises(ConfigError, match="block_context: causal"):
        masked_diffusion_loss(tiny_dlm("llama", attention="block_causal", block_size=4), x0, ar_weight=0.5)


def test_block_causal_and_block_size_go_together():
    with pytest.raises(ConfigError, match="block_context 'causal' belongs to a block diffusion model"):
        DiffusionConfig(mask_token_id=3, block_context="causal")
    with pytest.raises(ConfigError, match="unknown block_context"):
        DiffusionConfig(mask_token_id=3, attention="block_causal", block_size=4, block_context="row")
    with pytest.raises(ConfigError, match="block_size"):
        DiffusionConfig(mask_token_id=3, attention="block_causal")
    with pytest.raises(ConfigError, match="block_size"):
        DiffusionConfig(mask_token_id=3, block_size=4)
    with pytest.raises(ConfigError, match="block_size"):
        DiffusionConfig(mask_token_id=3, attention="block_causal", block_size=0)


# -- the ELBO of a block diffusion model --------------------------------------------------------
from difflm.evaluation.likelihood import ScoreRequest, ar_nll, elbo_nll  # noqa: E402
from test_evaluation_likelihood import exact_elbo  # noqa: E402


@pytest.mark.parametrize("estimator", ["count", "time"])
def test_block_elbo_is_unbiased_for_the_sum_of_the_blocks_exact_bounds(estimator):
    """-log p <= sum_k B(block k | clean blocks < k): each block's bound enumerated exactly with the
    decoder's own forward, against the Monte Carlo estimate over the two-copy forward."""
    model = tiny_dlm("llama", attention="block_causal", block_size=4)
    ids = (5, 9, 11, 20, 3, 7, 40, 12, 30, 31, 8, 2)
    request = ScoreRequest(ids, 3, 11)  # targets in blocks 0 (3), 1 (4..7) and 2 (8..10)
    exact = sum(exact_elbo(model, ScoreRequest(ids, a, b)) for a, b in ((3, 4), (4, 8), (8, 11)))
    (est,) = elbo_nll(model, [request], n_samples=600, estimator=estimator, seed=2, batch_size=600, progress=False)
    assert est.num_tokens == 8 and est.stderr > 0
    assert abs(est.nll - exact) < 4 * est.stderr + 1e-3 * exact


def test_block_size_one_elbo_is_the_exact_ar_nll_in_one_pass():
    model = tiny_dlm("llama", attention="block_causal", block_size=1)
    requests = [ScoreRequest((5, 9, 11, 20, 3, 7, 40), 2, 7), ScoreRequest((1, 2, 3, 4), 1, 4)]
    estimates = elbo_nll(model, requests, n_samples=16, progress=False)
    exact = ar_nll(model.model, requests, pad_token_id=0, progress=False)
    for est, ref in zip(estimates, exact):
        assert est.num_samples == 1 and est.stderr == 0.0
        assert est.nll == pytest.approx(ref.nll, rel=1e-5)


# -- decoding a block diffusion model -------------------------------------------------------------
from difflm.errors import InputError  # noqa: E402
from difflm.sampling import build_canvas, decoding_blocks, generate  # noqa: E402


def test_decoding_follows_the_training_grid():
    """Blocks tile each row from its first real token: a prompt ending inside a block shares it with
    the first generated tokens (prompt of 6, blocks of 4: first block = positions 6-7)."""
    model = tiny_dlm("llama", attention="block_causal", block_size=4)
    canvas, attn, gen = build_canvas(model, [[1, 2, 3, 4, 5, 6], [1, 2, 3]], 10)
    blocks, groups = decoding_blocks(model, canvas, gen, attn, None)
    row0 = [b[0].nonzero().flatten().tolist() for b in blocks]
    assert row0[:3] == [[6, 7], [8, 9, 10, 11], [12, 13, 14, 15]]
    pad = int((attn[1] == 0).sum())  # row 1 is left-padded by 3: its grid starts there
    row1 = [(b[1].nonzero().flatten() - pad).tolist() for b in blocks]
    assert row1[:2] == [[3], [4, 5, 6, 7]]
    assert groups[0, 4].item() == groups[0, 6].item()  # prompt tail and first generated tokens: one group
    with pytest.raises(InputError, match="blocks of 4"):
        generate(model, [[1, 2, 3]], max_new_tokens=8, block_length=8)


@pytest.mark.parametrize("shift", [True, False])
@pytest.mark.parametrize("strategy", ["low_confidence", "threshold", "random"])
@pytest.mark.parametrize("context", ["block", "causal"])
def test_block_model_generation_is_the_same_with_the_block_cache_and_alone_or_batched(shift, strategy, context):
    model = tiny_dlm("llama", shift=shift, attention="block_causal", block_size=4, block_context=context)
    prompts = [[1, 2, 3, 4, 5, 6], [7, 8, 9]]
    kw = dict(max_new_tokens=11, strategy=strategy, temperature=1.0, top_p=0.9)
    gens = lambda: [torch.Generator().manual_seed(s) for s in (0, 1)]  # noqa: E731
    plain = generate(model, prompts, generator=gens(), return_dict=True, **kw)
    for cache in ("prefix", "dual", "block"):  # all exact on a block-causal model
        cached = generate(model, prompts, generator=gens(), cache=cache, return_dict=True, **kw)
        assert cached.new_tokens == plain.new_tokens, cache
    for row, prompt in enumerate(prompts):
        alone = generate(model, [prompt], generator=[gens()[row]], cache="block", return_dict=True, **kw)
        assert alone.new_tokens[0] == plain.new_tokens[row]


def test_context_causal_generation_with_cfg_is_the_same_with_every_cache():
    """CFG doubles the canvas: the rebuilt per-block mask is doubled with it, so every cache stays exact."""
    model = tiny_dlm("llama", attention="block_causal", block_size=4, block_context="causal")
    kw = dict(max_new_tokens=10, cfg_scale=1.0)
    plain = generate(model, [[1, 2, 3, 4, 5, 6], [7, 8, 9]], return_dict=True, **kw)
    for cache in ("prefix", "dual", "block"):
        assert generate(model, [[1, 2, 3, 4, 5, 6], [7, 8, 9]], cache=cache, return_dict=True, **kw).new_tokens \
            == plain.new_tokens, cache


# -- Fast-dLLM v2's sub-blocks ----------------------------------------------------------------------
from difflm.sampling import Denoiser, block_masks  # noqa: E402


def test_sub_blocks_are_decoded_in_order():
    model = tiny_dlm("llama", attention="block_causal", block_size=8)
    order = []
    generate(model, [[1, 2, 3, 4, 5, 6, 7]], max_new_tokens=17, sub_block_length=4,
             callback=lambda s: order.append(s.committed[0].nonzero().flatten().tolist()))
    committed = [p for step in order for p in step]
    # grid blocks of 8 from position 0: generated 7..23 -> blocks [7], [8..15], [16..23]; sub-blocks of 4
    units = [[7], [8, 9, 10, 11], [12, 13, 14, 15], [16, 17, 18, 19], [20, 21, 22, 23]]
    position = {p: i for i, unit in enumerate(units) for p in unit}
    assert [position[p] for p in committed] == sorted(position[p] for p in committed)


def test_sub_block_cache_is_exact_at_every_refresh_and_close_in_between():
    """The block-level cache stays exact; inside a block, a sub-block's later steps read the rest of
    the block from its first step (Fast-dLLM v2): close to, not equal to, a full recomputation."""
    model = tiny_dlm("llama", attention="block_causal", block_size=8)
    canvas, attn, gen = build_canvas(model, [[1, 2, 3, 4, 5, 6, 7, 8], [9, 10, 11]], 16)
    blocks, groups = decoding_blocks(model, canvas, gen, attn, None)
    canvas = canvas.masked_fill(gen, MASK)
    dens = {mode: Denoiser(model, canvas, attn, gen, groups=groups, cache=mode) for mode in ("none", "block")}
    rng = torch.Generator().manual_seed(0)
    refresh_err, step_err = [], []
    for block in blocks:
        for sub in block_masks(block, 4):
            for den in dens.values():
                den.start_block(sub, within=block)
            first = True
            while (sub & (canvas == MASK)).any():
                cand = sub & (canvas == MASK)
                ref, got = (dens[m](canvas, cand).log_softmax(-1) for m in ("none", "block"))
                (refresh_err if first else step_err).append((ref - got).abs().max().item())
                first = False
                commit = cand & (cand.long().cumsum(-1) <= 1)
                canvas = canvas.masked_scatter(commit, torch.randint(4, 60, (int(commit.sum()),), generator=rng))
    assert max(refresh_err) < 1e-5
    assert 1e-6 < max(step_err) < 0.5


def test_rows_of_a_batch_finish_at_different_blocks():
    from test_sampling_structure import boost_token

    eos = 60
    model = tiny_dlm("llama", attention="block_causal", block_size=4, eos_token_id=eos)
    # prompts of 4 tokens: generated columns 4..15 = grid blocks [4..7], [8..11], [12..15]
    with boost_token(model, eos, lambda b, col: b == 0 and col == 5):
        res = generate(model, [[1, 2, 3, 4], [5, 6, 7, 8]], max_new_tokens=12, stop_at_eos=True, return_dict=True)
    row0 = res.sequences[0, 4:].tolist()
    assert row0[1] == eos and row0[4:] == [eos] * 8  # row 0 ended with its first block
    assert res.new_tokens[0] == row0[:1] and len(res.new_tokens[1]) == 12
    assert res.steps == 12  # row 1 ran every block


@pytest.mark.parametrize("shift", [True, False])
@pytest.mark.parametrize("context", ["block", "causal"])
def test_noising_some_blocks_is_the_full_forward_restricted_to_them(shift, context):
    """A step that noises only some blocks (noised_blocks): the noisy copy holds just the positions that
    predict those blocks, their logits are the full two-copy forward's, the clean copy's are unchanged,
    and the backbone runs over L + K * block_size positions."""
    from difflm.attention import block_diffusion_training_mask
    from difflm.losses import in_blocks

    model = tiny_dlm("llama", shift=shift, attention="block_causal", block_size=4, block_context=context)
    x0 = torch.randint(0, 60, (3, 24), generator=torch.Generator().manual_seed(8))
    xt = _noisy(x0, seed=9)
    blocks = torch.tensor([[1, 4], [5, -1], [0, 2]])
    seen = []
    hook = model.model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["input_ids"].shape[1]), with_kwargs=True)
    with torch.no_grad():
        full, full_clean = two_copy_logits_with_clean(model, xt, x0)
        part, part_clean = two_copy_logits_with_clean(model, xt, x0, noisy_blocks=blocks)
    hook.remove()
    assert seen == [48, 24 + 8]
    member = in_blocks(model, x0, blocks)
    assert member.sum(1).tolist() == [8, 4, 8]
    torch.testing.assert_close(part[member], full[member], rtol=1e-4, atol=1e-5)
    assert not part[~member].any()
    torch.testing.assert_close(part_clean, full_clean, rtol=1e-4, atol=1e-5)
    # the pattern of a subset is the full pattern's rows and columns of that subset
    ids = torch.tensor([[0, 0, 1, 1, 2, 2, 3, 3]])
    keep = torch.tensor([[2, 3, 6, 7]])
    whole = block_diffusion_training_mask(ids, causal_context=context == "causal")
    rows = torch.cat([keep[0], torch.arange(8, 16)])
    sub = block_diffusion_training_mask(ids, causal_context=context == "causal", noisy_ids=ids.gather(1, keep))
    assert torch.equal(sub[0], whole[0][rows][:, rows])


def test_noised_blocks_are_drawn_among_those_with_targets_and_the_loss_covers_them_only():
    from difflm.losses import draw_blocks, in_blocks

    model = tiny_dlm("llama", attention="block_causal", block_size=4, block_context="causal")
    x0 = torch.randint(0, 60, (4, 24), generator=torch.Generator().manual_seed(10))
    src = torch.zeros_like(x0, dtype=torch.bool)
    src[:, :9] = True  # a prompt: blocks 0 and 1 have no targets, block 2 has three
    src[3, :17] = True  # the last row has only blocks 4 and 5 left
    drawn = set()
    for seed in range(40):
        blocks = draw_blocks(model, x0, 3, src_mask=src, generator=torch.Generator().manual_seed(seed))
        assert blocks.shape == (4, 3) and blocks[3].tolist().count(-1) == 1
        for row in blocks.tolist():
            real = [b for b in row if b >= 0]
            assert len(set(real)) == len(real) and all(2 <= b <= 5 for b in real)
        drawn.update(blocks[:3].flatten().tolist())
        noise, t = draw_noise(model, x0, src_mask=src, generator=torch.Generator().manual_seed(seed), blocks=blocks)
        assert not (noise & ~in_blocks(model, x0, blocks)).any() and not (noise & src).any()
    assert drawn == {2, 3, 4, 5}  # uniform among the blocks with targets
    ends = torch.tensor([24, 13, 9, 24])  # answers ending in blocks 5, 3, 2, 5: at most one block after
    for seed in range(20):
        blocks = draw_blocks(model, x0, 3, src_mask=src, ends=ends, generator=torch.Generator().manual_seed(seed))
        assert blocks[1].sort().values.tolist() == [2, 3, 4] and blocks[2].sort().values.tolist() == [-1, 2, 3]
    noise, t = draw_noise(model, x0, src_mask=src, generator=torch.Generator().manual_seed(11))
    every = torch.arange(6).expand(4, -1)
    with torch.no_grad():
        whole = masked_diffusion_loss(model, x0, t=t, noise_mask=noise, src_mask=src, ar_weight=1.0)
        same = masked_diffusion_loss(model, x0, t=t, noise_mask=noise, src_mask=src, ar_weight=1.0, blocks=every)
        torch.testing.assert_close(same.loss, whole.loss)
        two = torch.tensor([[2, 4]] * 4)
        inside = noise & in_blocks(model, x0, two)
        part = masked_diffusion_loss(model, x0, t=t, noise_mask=inside, src_mask=src, blocks=two)
        assert part.num_targets == int((in_blocks(model, x0, two) & ~src).sum())  # the per-token mean of those blocks
        plain = masked_diffusion_loss(model, x0, t=t, noise_mask=inside, src_mask=src)
        torch.testing.assert_close(part.loss * part.num_targets, plain.loss * plain.num_targets, rtol=1e-4, atol=1e-5)
        guided = masked_diffusion_loss(model, x0, t=t, noise_mask=inside, src_mask=src, blocks=two, ar_weight=1.0)
        ar = whole.loss - masked_diffusion_loss(model, x0, t=t, noise_mask=noise, src_mask=src).loss
        torch.testing.assert_close(guided.loss - part.loss, ar, rtol=1e-4, atol=1e-6)  # AR guidance over the whole row
    with pytest.raises(InputError, match="outside the given blocks"):
        masked_diffusion_loss(model, x0, t=t, noise_mask=noise, src_mask=src, blocks=two)
    with pytest.raises(ConfigError, match="block diffusion model"):
        draw_blocks(tiny_dlm("llama"), x0, 2)
