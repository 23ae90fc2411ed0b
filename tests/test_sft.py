"""Supervised fine-tuning (objective: sft): the prompt is never noised and the EOS/pad tail is an
ordinary target; AR SFT scores the response only; the loss does not depend on how the global batch
is split (micro-batches, DDP); resume is exact; LoRA adapters reload to identical logits and merge
to the same logits; the four presets train, reload and evaluate end to end; bad input fails with
one line naming the file and line."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import free_port
from difflm import DiffusionLM
from difflm.cli import main
from difflm.errors import ModelLoadError
from difflm.evaluation import EvalSettings, build_task, load_eval_lm
from difflm.losses import masked_diffusion_loss, maskable_positions
from difflm.tasks import make_examples, write_jsonl
from difflm.tasks.model_task import read_model_task
from difflm.tasks.tokenizer import save_task_tokenizer, sft_file_texts, train_task_tokenizer
from difflm.training import Trainer, load_train_config
from difflm.losses.ar import ar_response_loss
from difflm.training.objectives.sft import SFTBatch, SFTObjective

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
TINY = ["architecture.model_type=llama", "architecture.hidden_size=32", "architecture.intermediate_size=64",
        "architecture.num_hidden_layers=2", "architecture.num_attention_heads=2", "architecture.num_key_value_heads=2",
        "architecture.tie_word_embeddings=true", "mixed_precision=no", "threads=1", "log_every=1",
        "eval_batches=2", "warmup_steps=2", "lr=3e-3", "batch_size=8"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft-data")
    files = {}
    for task, knobs in (("sudoku", {"blanks": "20-30"}), ("gsm", {"steps": "1-2", "numbers": "2-9"})):
        for split, n in (("train", 64), ("validation", 16), ("test", 4)):
            files[task, split] = str(write_jsonl(make_examples(task, n, split=split, **knobs), root / f"{task}-{split}.jsonl"))
        # the presets' recipe: a task tokenizer trained on the train split (`difflm data tokenizer`)
        corpus = write_jsonl(make_examples(task, 400, split="train", seed=1, **knobs), root / f"{task}-tok.jsonl")
        tokenizer = train_task_tokenizer(sft_file_texts([corpus]), 500, split_digits=task == "gsm")
        files[task, "tokenizer"] = str(save_task_tokenizer(tokenizer, root / f"{task}-tokenizer"))
    return files


def _args(data, task="sudoku", arch=192):
    return TINY + [f"architecture.max_position_embeddings={arch}", "objective=sft", f"seq_length={arch}",
                   f"train_files=[{data[task, 'train']}]", f"validation_files=[{data[task, 'validation']}]"]


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _fields(batch: SFTBatch) -> tuple:
    """(x, noise, t, src, lengths, scale, blocks) of a micro-batch."""
    return tuple(getattr(batch, f.name) for f in dataclasses.fields(batch))


def _loss(trainer, x, noise, t, src, lengths, scale=None, blocks=None, *, step=None):
    """The objective's loss of these rows through the model: with ``scale`` its share of the global
    batch's mean, else its own mean; the training options (focal loss, AR guidance) only with ``step``."""
    return trainer.objective.batch_loss(trainer.model, SFTBatch(x, noise, t, src, lengths, scale, blocks), step=step)


def _losses(out: Path) -> list[float]:
    return [r["train_loss"] for r in _records(out) if "train_loss" in r]


# -- what is noised, what is scored --------------------------------------------------------------
def test_dlm_sft_never_noises_the_prompt_and_the_tail_is_an_ordinary_target(tmp_path, data):
    trainer = Trainer(load_train_config(None, _args(data, "sudoku", 200) + [f"output_dir={tmp_path}", "max_steps=2",
                                                             "sft.pad_with=pad"]), show_progress=False)
    assert isinstance(trainer.objective, SFTObjective) and trainer.model.config.attention == "bidirectional"
    rows = trainer.train_batches.data
    n = int(rows.lengths[0])
    assert rows.ids[0, n - 1] == trainer.tokenizer.eos_token_id and (rows.ids[0, n:] == trainer.tokenizer.pad_token_id).all()
    tail_noised = 0
    for step in range(20):
        for x, noise, t, src, lengths, *_ in map(_fields, trainer.micro_batches(step)):
            assert not (noise & src).any()  # the prompt is never noised
            positions = torch.arange(x.shape[1])[None, :]
            # everything after the prompt - response, EOS and the whole pad tail - may be noised
            assert torch.equal(maskable_positions(trainer.model, x, src_mask=src), ~src)
            tail_noised += int((noise & (positions >= lengths[:, None])).sum())
    assert tail_noised > 0
    # A noise mask on the tail alone: those pad tokens are targets (the loss sees them and depends on them)
    x, src, lengths = trainer.train_batches.global_batch(0)
    tail = torch.arange(x.shape[1])[None, :] >= lengths[:, None]
    t = torch.full((x.shape[0],), 0.5)
    loss = _loss(trainer, x, tail, t, src, lengths)
    assert loss > 0
    other = x.masked_fill(tail, trainer.tokenizer.eos_token_id)
    assert not torch.isclose(loss, _loss(trainer, other, tail, t, src, lengths))
    # ... and it is the library's loss with the prompt as src and no attention mask (pads are attended)
    reference = masked_diffusion_loss(trainer.model, x, t=t, noise_mask=tail, src_mask=src)
    assert torch.allclose(loss, reference.loss) and reference.num_masked == int(tail.sum())
    with pytest.raises(Exception, match="src_mask"):
        _loss(trainer, x, src & (torch.arange(x.shape[1]) > 0), t, src, lengths)


def test_block_diffusion_sft_denoises_each_block_from_the_clean_blocks_before_it(tmp_path, data):
    """sft with diffusion.block_size trains a block diffusion model (BD3-LM): the prompt is never noised,
    each block has one noise level, a block's loss sees the clean blocks before it and nothing after
    it; the saved model decodes on its grid without touching the prompt, and SFT continued from it
    stays block-causal."""
    from difflm.sampling import generate

    args = _args(data, "gsm", 256) + ["max_steps=3", "eval_every=3", "save_every=3", "diffusion.block_size=4"]
    trainer = Trainer(load_train_config(None, args + [f"output_dir={tmp_path / 'run'}"]), show_progress=False)
    dlm = trainer.model
    assert (dlm.config.attention, dlm.config.block_size) == ("block_causal", 4)
    for step in range(5):
        for x, noise, t, src, lengths, *_ in map(_fields, trainer.micro_batches(step)):
            assert not (noise & src).any() and t.shape == x.shape
            groups = dlm.block_groups(x)
            first_of_block = torch.zeros_like(t).scatter_reduce(1, groups, t, reduce="amax", include_self=False)
            assert torch.equal(first_of_block.gather(1, groups), t)  # one noise level per block (its max is all of it)
    x, src, lengths = trainer.train_batches.global_batch(0)
    groups = dlm.block_groups(x)
    k = int(groups[0, int(src[0].sum()) + 4])  # a block of the first row's response
    noise = (groups == k) & ~src & (torch.arange(x.shape[1]) % 2 == 0)
    t = torch.full(x.shape, 0.5)
    with torch.no_grad():
        loss = _loss(trainer, x, noise, t, src, lengths)
        later = torch.where(groups > k, (x + 5) % 100 + 10, x)  # every later block rewritten
        assert torch.equal(loss, _loss(trainer, later, noise, t, src, lengths))
        earlier = torch.where((groups == k - 1) & ~src, (x + 5) % 100 + 10, x)
        assert not torch.equal(loss, _loss(trainer, earlier, noise, t, src, lengths))
    trainer.train()
    model = DiffusionLM.from_pretrained(tmp_path / "run" / "model")
    assert (model.config.attention, model.config.block_size) == ("block_causal", 4)
    prompt = x[0, : int(src[0].sum())]
    out = generate(model, prompt, max_new_tokens=12, steps=12, cache="block", return_dict=True)
    assert torch.equal(out.sequences[0, : len(prompt)], prompt) and out.generate_mask[0].sum() == 12
    assert not (out.sequences == model.config.mask_token_id).any() and 3 <= out.steps <= 12  # blocks, tokens
    continued = Trainer(load_train_config(None, _args(data, "gsm", 256) + [
        f"output_dir={tmp_path / 'more'}", "max_steps=1", f"init={tmp_path / 'run' / 'model'}"]), show_progress=False)
    assert (continued.model.config.attention, continued.model.config.block_size) == ("block_causal", 4)


def test_the_block_size_of_an_init_is_read_from_any_layout(tmp_path):
    """SFT reads what its init is from `formats.survey` (configs only) and continues a block diffusion
    init block-causally whatever its layout: SDAR's config says blocks of 4; a plain causal LM is
    autoregressive (no conventions) and a full-attention DLM has no block size."""
    from published_layouts import write_sdar
    from transformers import LlamaConfig, LlamaForCausalLM

    from difflm.formats import survey

    write_sdar(tmp_path / "sdar")
    assert (survey(tmp_path / "sdar").kind, survey(tmp_path / "sdar").config.block_size) == ("dlm", 4)
    ar = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=2))
    ar.save_pretrained(tmp_path / "ar")
    found = survey(tmp_path / "ar")
    assert (found.kind, found.autoregressive, found.config) == ("causal-lm", True, None)
    DiffusionLM.from_causal_lm(tmp_path / "ar", mask_token=63).save_pretrained(tmp_path / "dlm")
    assert survey(tmp_path / "dlm").config.block_size is None


def test_token_reweighting_trains_on_the_focal_loss_and_validates_on_the_elbo(tmp_path, data):
    args = _args(data, "gsm", 256) + [f"output_dir={tmp_path}", "max_steps=1"]
    plain = Trainer(load_train_config(None, args), show_progress=False)
    focal = Trainer(load_train_config(None, args + ["token_reweighting.gamma=2"]), show_progress=False)
    assert focal.cfg.token_reweighting == {"alpha": 1.0, "gamma": 2}
    x, noise, t, src, lengths, scale, _ = _fields(focal.micro_batches(0)[0])
    with torch.no_grad():
        ce = _loss(plain, x, noise, t, src, lengths, scale, step=0)
        weighted = _loss(focal, x, noise, t, src, lengths, scale, step=0)
        assert weighted < ce  # every weight (1 - p) ** 2 is below 1
        # validation (no step) is the ELBO either way, and so is the validation loss of a run
        assert torch.equal(_loss(focal, x, noise, t, src, lengths), _loss(plain, x, noise, t, src, lengths))
    assert focal.evaluate() == plain.evaluate()


def test_context_causal_block_sft_trains_with_the_ar_guidance_and_keeps_its_context(tmp_path, data):
    """diffusion.block_context causal + ar_loss_weight (NBDiff): training steps add the clean copy's
    next-token loss (validation stays the ELBO); the saved model reads finished blocks causally, decodes
    the same with and without its block cache, and SFT continued from it keeps its context."""
    from difflm.sampling import generate

    args = _args(data, "gsm", 256) + ["max_steps=2", "eval_every=2", "save_every=2", "diffusion.block_size=4",
                                      "diffusion.block_context=causal"]
    plain = Trainer(load_train_config(None, args + [f"output_dir={tmp_path / 'plain'}"]), show_progress=False)
    guided = Trainer(load_train_config(None, args + [f"output_dir={tmp_path / 'run'}", "ar_loss_weight=1"]),
                     show_progress=False)
    assert guided.model.config.block_context == "causal"
    x, noise, t, src, lengths, scale, _ = _fields(guided.micro_batches(0)[0])
    with torch.no_grad():
        diffusion = _loss(plain, x, noise, t, src, lengths, scale, step=0)
        assert _loss(guided, x, noise, t, src, lengths, scale, step=0) > diffusion
        assert torch.equal(_loss(guided, x, noise, t, src, lengths), _loss(plain, x, noise, t, src, lengths))
    guided.train()
    model = DiffusionLM.from_pretrained(tmp_path / "run" / "model")
    assert (model.config.block_size, model.config.block_context) == (4, "causal")
    prompt = x[0, : int(src[0].sum())]
    outs = [generate(model, prompt, max_new_tokens=10, cache=c, return_dict=True).new_tokens for c in ("none", "block")]
    assert outs[0] == outs[1]
    continued = Trainer(load_train_config(None, _args(data, "gsm", 256) + [
        f"output_dir={tmp_path / 'more'}", "max_steps=1", f"init={tmp_path / 'run' / 'model'}"]), show_progress=False)
    assert (continued.model.config.block_size, continued.model.config.block_context) == (4, "causal")


def test_noised_blocks_noise_only_the_drawn_blocks_and_shorten_the_forward(tmp_path, data):
    """noised_blocks: each step noises and scores only that many blocks of each row, drawn among those
    with targets up to the first block after the answer (never the prompt's), with the AR guidance over the whole row; the backbone runs over
    L + noised_blocks * block_size positions; the run trains, resumes exactly and saves a model that
    decodes as any block diffusion model."""
    from difflm.losses import in_blocks

    args = _args(data, "gsm", 256) + ["diffusion.block_size=4", "diffusion.block_context=causal", "ar_loss_weight=1",
                                      "noised_blocks=3", "max_steps=4", "eval_every=2", "save_every=2",
                                      "keep_checkpoints=3", f"output_dir={tmp_path / 'run'}"]
    trainer = Trainer(load_train_config(None, args), show_progress=False)
    for step in range(3):
        (x, noise, t, src, lengths, scale, blocks), = map(_fields, trainer.micro_batches(step))
        inside = in_blocks(trainer.model, x, blocks)
        assert blocks.shape == (x.shape[0], 3) and (blocks >= 0).all()
        assert not (noise & ~inside).any() and not (noise & src).any() and noise.any()
        assert ((inside & ~src).sum(1) > 0).all() and not (inside & src).all(1).any()
        last = trainer.model.block_groups(x).gather(1, lengths.view(-1, 1) - 1)  # the block of each answer's EOS
        assert (blocks <= last + 1).all()  # nothing past the first block of the tail
    seen = []
    hook = trainer.model.model.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["input_ids"].shape), with_kwargs=True)
    with torch.no_grad():
        _loss(trainer, x, noise, t, src, lengths, scale, blocks, step=0)
    hook.remove()
    assert seen == [(x.shape[0], 256 + 3 * 4)]
    trainer.train()
    full = _records(tmp_path / "run")
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "step-0000004")
    Trainer(load_train_config(None, args), resume=True, show_progress=False).train()
    key = lambda recs: [(r["step"], round(r.get("train_loss", 0), 6), round(r.get("val_loss", 0), 6)) for r in recs]
    assert key(_records(tmp_path / "run")) == key(full)
    model = DiffusionLM.from_pretrained(tmp_path / "run" / "model")
    assert (model.config.block_size, model.config.block_context) == (4, "causal")


def test_ar_sft_scores_the_response_and_its_eos_only(tmp_path, data):
    trainer = Trainer(load_train_config(None, _args(data, "gsm", 256) + [f"output_dir={tmp_path}", "max_steps=1",
                                                                        "sft.loss=ar"]), show_progress=False)
    assert not isinstance(trainer.model, DiffusionLM)
    x, src, lengths = trainer.train_batches.global_batch(0)
    total, count = ar_response_loss(trainer.model, x, src, lengths)
    prompt_lens = src.sum(1)
    assert count == int((lengths - prompt_lens).sum())  # response tokens + EOS
    tail = torch.arange(x.shape[1])[None, :] >= lengths[:, None]
    changed, _ = ar_response_loss(trainer.model, x.masked_fill(tail, 7), src, lengths)
    assert torch.equal(total, changed)  # the tail is no target and (causal) changes nothing before it
    first_prompt_token = torch.zeros_like(src)
    first_prompt_token[:, 1] = True
    changed, _ = ar_response_loss(trainer.model, torch.where(first_prompt_token, 7, x), src, lengths)
    assert not torch.equal(total, changed)  # the prompt is context


# -- the loss does not depend on how the batch is split; resume; DDP ------------------------------
@pytest.mark.parametrize("loss", ["diffusion", "ar"])
def test_micro_batches_give_the_global_batch_loss(tmp_path, data, loss):
    common = _args(data, "gsm", 256) + ["max_steps=3", "eval_every=3", "save_every=3", f"sft.loss={loss}"]
    Trainer(load_train_config(None, common + [f"output_dir={tmp_path / 'one'}"]), show_progress=False).train()
    Trainer(load_train_config(None, common + [f"output_dir={tmp_path / 'acc'}", "grad_accum=4"]), show_progress=False).train()
    torch.testing.assert_close(torch.tensor(_losses(tmp_path / "acc")), torch.tensor(_losses(tmp_path / "one")),
                               rtol=1e-5, atol=1e-6)


def test_sft_resume_retraces_the_uninterrupted_run(tmp_path, data):
    args = _args(data) + [f"output_dir={tmp_path}", "max_steps=6", "save_every=3", "eval_every=3", "keep_checkpoints=3"]
    Trainer(load_train_config(None, args), show_progress=False).train()
    full = _records(tmp_path)
    shutil.rmtree(tmp_path / "checkpoints" / "step-0000006")
    shutil.rmtree(tmp_path / "model")
    Trainer(load_train_config(None, args), resume=True, show_progress=False).train()
    resumed = _records(tmp_path)
    key = lambda recs: [(r["step"], round(r.get("train_loss", 0), 6), round(r.get("val_loss", 0), 6)) for r in recs]
    assert key(resumed) == key(full)


def test_two_ddp_processes_match_one(tmp_path, data):
    """torchrun --nproc_per_node 2 (gloo): the same losses as one process (prompts of different lengths
    in the two halves: the loss is normalised over the global batch)."""
    common = _args(data, "gsm", 256) + ["max_steps=3", "eval_every=3", "save_every=3", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "-m", "difflm", "train", *common, f"output_dir={tmp_path / 'ddp'}"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    single = subprocess.run([sys.executable, "-m", "difflm", "train", *common, f"output_dir={tmp_path / 'one'}"],
                            env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    torch.testing.assert_close(torch.tensor(_losses(tmp_path / "ddp")), torch.tensor(_losses(tmp_path / "one")),
                               rtol=1e-4, atol=1e-5)


# -- the presets, end to end ----------------------------------------------------------------------
def _tiny_preset(preset: str, data, out: Path) -> Path:
    """Train ``preset`` at a tiny size on the generated data into ``out``; a preset that continues another
    run (``init: runs/...``) continues a tiny run of that preset instead. Returns the model directory."""
    task = preset.split("-")[1]
    full = load_train_config(CONFIGS / f"{preset}.yaml")
    overrides = [f"train_files=[{data[task, 'train']}]", f"validation_files=[{data[task, 'validation']}]",
                 f"output_dir={out}", "max_steps=30", "eval_every=30", "save_every=30"]
    if full.init:  # e.g. sft-gsm-dlm adapts the model of sft-gsm-ar: train that one first
        stage = Path(full.init).parent.name  # runs/sft-gsm-ar/model -> sft-gsm-ar
        init = _tiny_preset(stage, data, out.parent / f"{out.name}-{stage}")
        overrides += [f"init={init}", "mixed_precision=no", "threads=1", "log_every=1", "eval_batches=2",
                      "warmup_steps=2", "lr=3e-3", "batch_size=8"]
    else:
        # the task tokenizer sits next to the training data it was trained on (data/gsm-pairwise/, data/sudoku/)
        assert Path(full.tokenizer) == Path(full.train_files[0]).parent / "tokenizer"
        assert Path(full.tokenizer).parent.name.startswith(task)
        assert full.architecture["max_position_embeddings"] == full.seq_length
        overrides += [o for o in TINY if not o.startswith("architecture.model_type")] + [
            f"tokenizer={data[task, 'tokenizer']}"]
    cfg = load_train_config(CONFIGS / f"{preset}.yaml", overrides)
    assert (cfg.objective, cfg.sft, cfg.seq_length) == ("sft", full.sft, full.seq_length)
    Trainer(cfg, show_progress=False).train()
    return out / "model"


@pytest.mark.parametrize("preset", ["sft-sudoku-ar", "sft-sudoku-dlm", "sft-sudoku-ar-continued",
                                    "sft-gsm-ar", "sft-gsm-dlm", "sft-gsm-ar-continued"])
def test_presets_train_reload_and_evaluate(tmp_path, data, preset, capsys):
    """Each preset at a tiny size on generated data (the two-stage gsm ones after a tiny AR stage): the
    loss falls, the saved model reloads, and it is scored by its evaluation task (sudoku / gsm8k)."""
    task = preset.split("-")[1]
    _tiny_preset(preset, data, tmp_path / "run")
    tmp_path = tmp_path / "run"
    losses, vals = _losses(tmp_path), [r["val_loss"] for r in _records(tmp_path) if "val_loss" in r]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5 and vals[-1] < vals[0] - 0.5
    lm = load_eval_lm(tmp_path / "model", EvalSettings(max_new_tokens=64, batch_size=4, progress=False))
    assert lm.kind == ("dlm" if preset.endswith("dlm") else "ar")
    result = build_task("sudoku" if task == "sudoku" else "gsm8k", data[task, "test"]).run(lm)
    assert result.n_examples == 4
    assert ("acc" if task == "sudoku" else "exact_match") in result.metrics
    # the saved model knows its task: `difflm generate` takes the task's own input and says how it went
    assert read_model_task(tmp_path / "model") == task
    record = json.loads(Path(data[task, "test"]).read_text().splitlines()[0])
    user_input = record["puzzle"] if task == "sudoku" else record["question"]
    if preset.endswith("dlm"):
        capsys.readouterr()
        steps = "8" if task == "sudoku" else "16"  # the gsm preset is a block diffusion model: a step per block at least
        assert main(["generate", "--model", str(tmp_path / "model"), user_input, "--steps", steps]) == 0
        out = capsys.readouterr().out
        assert "model calls" in out and "Sudoku:" not in out and "Question:" not in out  # the answer alone
        if task == "sudoku":
            assert out.splitlines()[-2].startswith(("solved:", "not solved:"))  # the grid, its verdict, the calls
            assert main(["generate", "--model", str(tmp_path / "model"), "12345"]) == 2
            err = capsys.readouterr().err.strip()
            assert "81 cells" in err and len(err.splitlines()) == 1


# -- LoRA -----------------------------------------------------------------------------------------
def test_lora_adapters_reload_to_identical_logits_and_merge_to_the_same(tmp_path, data):
    from difflm.formats.adapter import load_adapter

    Trainer(load_train_config(None, _args(data) + [f"output_dir={tmp_path / 'base'}", "max_steps=2"]),
            show_progress=False).train()
    base_dir = tmp_path / "base" / "model"
    cfg = load_train_config(None, _args(data) + [f"output_dir={tmp_path / 'lora'}", f"init={base_dir}", "max_steps=4",
                                                 "lora.r=4", "lora.alpha=8", "lora.merge=true", "lr=3e-2"])
    trainer = Trainer(cfg, show_progress=False)
    trainer.train()
    trained = trainer.accelerator.unwrap_model(trainer.wrapped).eval()
    trainable = [n for n, p in trained.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)  # the base is frozen
    x, _, _ = trainer.val_batches.global_batch(0)
    with torch.no_grad():
        expected = trained.logits(x)
        base = DiffusionLM.from_pretrained(base_dir).logits(x)
        assert (expected - base).abs().max() > 1e-3  # the adapters changed the model
        adapter_dir = tmp_path / "lora" / "model"
        assert (adapter_dir / "adapter_model.safetensors").is_file() and not (adapter_dir / "model.safetensors").exists()
        assert torch.equal(load_adapter(adapter_dir).logits(x), expected)  # unmerged: the trained computation
        torch.testing.assert_close(load_adapter(adapter_dir, merge=True).logits(x), expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(DiffusionLM.from_pretrained(adapter_dir).logits(x), expected, rtol=1e-4, atol=1e-5)
        merged = DiffusionLM.from_pretrained(tmp_path / "lora" / "model-merged")
        torch.testing.assert_close(merged.logits(x), expected, rtol=1e-4, atol=1e-5)
    lm = load_eval_lm(adapter_dir, EvalSettings(steps=8, batch_size=4, progress=False))
    assert lm.kind == "dlm" and "LoRA adapter" in lm.layout.reason
    assert "acc" in build_task("sudoku", data["sudoku", "test"]).run(lm).metrics
    puzzle = json.loads(Path(data["sudoku", "test"]).read_text().splitlines()[0])["puzzle"]
    assert main(["generate", "--model", str(adapter_dir), puzzle, "--steps", "2"]) == 0  # an adapter knows its task


def test_lora_on_an_ar_model(tmp_path, data, capsys):
    from difflm.formats.adapter import load_adapter

    ar = _args(data, "gsm", 256) + ["sft.loss=ar"]
    Trainer(load_train_config(None, ar + [f"output_dir={tmp_path / 'base'}", "max_steps=2"]), show_progress=False).train()
    trainer = Trainer(load_train_config(None, ar + [f"output_dir={tmp_path / 'lora'}", f"init={tmp_path / 'base' / 'model'}",
                                                    "max_steps=3", "lora.r=2", "lora.target_modules=[q_proj,v_proj]"]),
                      show_progress=False)
    trainer.train()
    x, _, _ = trainer.val_batches.global_batch(0)
    with torch.no_grad():
        expected = trainer.accelerator.unwrap_model(trainer.wrapped).eval()(input_ids=x).logits
        assert torch.equal(load_adapter(tmp_path / "lora" / "model")(input_ids=x).logits, expected)
    lm = load_eval_lm(tmp_path / "lora" / "model", EvalSettings(max_new_tokens=32, progress=False))
    assert lm.kind == "ar" and "exact_match" in build_task("gsm8k", data["gsm", "test"]).run(lm).metrics
    with pytest.raises(ModelLoadError, match="AR model"):
        DiffusionLM.from_pretrained(tmp_path / "lora" / "model")


# -- chat data ------------------------------------------------------------------------------------
def test_chat_sft_saves_the_template_generation_uses(tmp_path, data):
    from difflm.chat import chat_prompt_ids
    from difflm.tasks.formatting import CHAT_TEMPLATE

    chats = [{"messages": [{"role": "user", "content": f"Add {a} and {b}."},
                           {"role": "assistant", "content": f"{a + b}"}]} for a in range(6) for b in range(6)]
    train = write_jsonl(chats, tmp_path / "chat.jsonl")
    args = TINY + ["architecture.max_position_embeddings=64", "objective=sft", "seq_length=32",
                   f"train_files=[{train}]", f"validation_files=[{train}]"]
    trainer = Trainer(load_train_config(None, args + [f"output_dir={tmp_path / 'run'}", "max_steps=2"]), show_progress=False)
    trainer.train()
    model = DiffusionLM.from_pretrained(tmp_path / "run" / "model")
    assert model.tokenizer.chat_template == CHAT_TEMPLATE
    data_rows = trainer.train_batches.data
    row = 2 * 6 + 3  # "Add 2 and 3."
    prompt = data_rows.ids[row, : data_rows.prompt_lens[row]].tolist()
    assert model.tokenizer.decode(prompt) == "<|bos|>User: Add 2 and 3.\nAssistant:"
    assert chat_prompt_ids(model, "Add 2 and 3.") == prompt  # `difflm generate --chat` builds the trained prompt
    response = data_rows.ids[row, data_rows.prompt_lens[row] : data_rows.lengths[row]].tolist()
    assert model.tokenizer.decode(response) == " 5<|eos|>"


# -- bad input: one line, exit status 2 ---------------------------------------------------------
def test_bad_sft_input_is_one_clear_line(tmp_path, data, capsys):
    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps({"prompt": "Hi.", "response": " ok"}) + "\n"
                    + json.dumps({"prompt": "Hi.", "response": " word" * 300}) + "\n")
    malformed = tmp_path / "bad.jsonl"
    malformed.write_text(json.dumps({"prompt": "a", "response": "b"}) + "\n{not json\n")
    odd = tmp_path / "odd.jsonl"
    odd.write_text(json.dumps({"puzzle": "123", "solution": "456"}) + "\n")
    base = _args(data) + [f"output_dir={tmp_path / 'out'}", "max_steps=1"]
    cases = [
        ([f"train_files=[{long}]"], f"{long}:2: the example is"),
        ([f"train_files=[{malformed}]"], f"{malformed}:2: not valid JSON"),
        ([f"train_files=[{odd}]"], f"{odd}:1: \"puzzle\" must be 81 digits"),
        (["train_files=[bundled]"], "objective sft needs train_files"),
        (["lora.r=4"], "lora needs init"),
        ([f"init={data['sudoku', 'train']}", "lora.rank=4"], "unknown lora setting(s) rank"),
        (["sft.loss=sideways"], "sft.loss must be one of diffusion, ar"),
        (["diffusion.attention=annealed"], "full (bidirectional) attention"),
        (["sft.loss=ar", "token_reweighting.gamma=1"], "token_reweighting weighs the masked-diffusion loss"),
        (["token_reweighting.beta=1"], "unknown token_reweighting setting(s) beta"),
        (["token_reweighting.alpha=0"], "token_reweighting.alpha must be a number > 0"),
        (["diffusion.block_size=8", "diffusion.attention=bidirectional"], "block-causal attention (block diffusion"),
        (["sft.loss=ar", "ar_loss_weight=1"], "ar_loss_weight adds an AR loss to the block diffusion loss"),
        (["ar_loss_weight=-1"], "ar_loss_weight must be a number >= 0"),
        (["diffusion.block_size=8", "ar_loss_weight=1"], "ar_loss_weight needs a block diffusion model with "
                                                         "diffusion.block_context: causal"),
        (["diffusion.block_context=causal"], "block_context 'causal' belongs to a block diffusion model"),
        (["objective=diffusion", "sft.loss=ar"], "sft settings need objective sft"),
        (["noised_blocks=0"], "noised_blocks must be an integer >= 1"),
        (["objective=diffusion", "noised_blocks=2"], "noised_blocks settings need objective sft"),
        (["sft.loss=ar", "noised_blocks=2"], "noised_blocks needs sft.loss diffusion"),
        (["noised_blocks=2"], "noised_blocks needs a block diffusion model: set diffusion.block_size"),
    ]
    for extra, message in cases:
        code = main(["train", *base, *extra])
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (extra, err)


def test_the_generation_section_is_saved_with_the_model_and_its_adapter(tmp_path, data, capsys):
    """`generation:` in the config: the trained model carries those decoding settings (its
    generation_config.json) and decodes with them by default; a LoRA adapter carries its own; a field
    the sampler does not take, or settings for an AR model, fail in one line before any step."""
    section = "generation={max_new_tokens: 12, strategy: topk_margin, cache: none}"
    Trainer(load_train_config(None, _args(data) + [f"output_dir={tmp_path / 'full'}", "max_steps=1", section]),
            show_progress=False).train()
    model = DiffusionLM.from_pretrained(tmp_path / "full" / "model")
    defaults = model.generation_defaults
    assert (defaults.max_new_tokens, defaults.options) == (12, {"strategy": "topk_margin", "cache": "none"})
    prompt = torch.tensor([[model.tokenizer.bos_token_id, 5, 6, 7]])
    out = model.generate(prompt, return_dict=True)  # no length, no strategy: the model's own
    assert len(out.new_tokens[0]) == 12
    assert torch.equal(out.sequences, model.generate(prompt, max_new_tokens=12, strategy="topk_margin"))
    lora = _args(data) + [f"output_dir={tmp_path / 'lora'}", f"init={tmp_path / 'full' / 'model'}", "max_steps=1",
                          "lora.r=2", "generation={strategy: entropy}"]
    Trainer(load_train_config(None, lora), show_progress=False).train()
    adapter = DiffusionLM.from_pretrained(tmp_path / "lora" / "model")
    assert adapter.generation_defaults.options == {"strategy": "entropy"}
    capsys.readouterr()  # the in-process runs' own output
    for extra, message in ((["generation={strategy: sideways}"], "unknown strategy 'sideways'"),
                           (["generation={temperature: hot}"], "generation"),
                           (["sft.loss=ar", "generation={strategy: entropy}"], "this run trains an AR model")):
        assert main(["train", *_args(data), f"output_dir={tmp_path / 'bad'}", "max_steps=1", *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "bad" / "checkpoints").exists()
