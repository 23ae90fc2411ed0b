"""``objective: continuous`` through the shared trainer and the command line: it learns, resume
retraces the uninterrupted run, the model directory is what `difflm generate` / `infill` / `eval`
take, bad configs are one-line errors."""

import json

import pytest
import torch
from test_training import _interrupted_and_resumed, _train, data  # noqa: F401 (data: the corpus fixture)

from difflm.cli import main
from difflm.continuous.seq2seq import bleu, distinct_words, mbr_select, self_bleu, verse_pairs
from difflm.errors import ConfigError
from difflm.training import Trainer, load_train_config

TINY = [
    "objective=continuous", "architecture.model_type=llama", "architecture.hidden_size=32",
    "architecture.intermediate_size=64", "architecture.num_hidden_layers=2", "architecture.num_attention_heads=2",
    "architecture.num_key_value_heads=2", "architecture.max_position_embeddings=64", "seq_length=32", "batch_size=4",
    "warmup_steps=2", "lr=3e-3", "eval_batches=2", "log_every=1", "mixed_precision=no", "threads=1",
    "continuous.embed_dim=8",
]


def test_resume_retraces_the_uninterrupted_run_and_the_bound_falls(tmp_path, data):
    args = TINY + data + [f"output_dir={tmp_path}", "max_steps=6", "save_every=3", "eval_every=3", "keep_checkpoints=3"]
    full, resumed = _interrupted_and_resumed(args, tmp_path)
    assert [r["step"] for r in resumed] == [r["step"] for r in full]
    for a, b in zip(full, resumed):
        for key in ("train_loss", "val_loss"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-5), (a["step"], key)
    vals = [r["val_loss"] for r in full if "val_loss" in r]
    assert vals[-1] < vals[0]  # the NLL bound (nats/token) of the validation blocks falls


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, data):
    out = tmp_path_factory.mktemp("run")
    _train(TINY + data + [f"output_dir={out}", "max_steps=3", "eval_every=3", "save_every=3"])
    return out / "model"


def test_generate_infill_and_eval_take_a_continuous_model(model_dir, capsys, tmp_path):
    assert main(["generate", "ROMEO:", "--model", str(model_dir), "--length", "6", "--steps", "3", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert len(record["new_tokens"]) == 6 and record["options"]["family"] == "continuous"
    assert main(["infill", "And God said, Let there be [MASK:3] and there was light.", "--model", str(model_dir),
                 "--steps", "3", "--eta", "1", "--clamp"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("And God said, Let there be") and text.rstrip().endswith("and there was light.")
    doc = tmp_path / "doc.txt"
    doc.write_text("In the beginning God created the heaven and the earth.")
    report = tmp_path / "report.json"
    assert main(["eval", "--model", str(model_dir), "--tasks", f"perplexity={doc}", "--n-samples", "4",
                 "--output", str(report), "--no-progress"]) == 0
    result = json.loads(report.read_text())
    task = result["tasks"][0] if isinstance(result.get("tasks"), list) else next(iter(result["tasks"].values()))
    assert task["protocol"]["likelihood"] == "upper bound (ELBO)"
    assert task["metrics"]["nll_per_token"]["value"] > 0


def test_a_masked_sampler_flag_is_refused_for_a_continuous_model(model_dir, capsys):
    assert main(["generate", "ROMEO:", "--model", str(model_dir), "--strategy", "threshold"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--strategy" in err


def test_bad_continuous_configs_are_one_line_errors():
    with pytest.raises(ConfigError, match="unknown continuous setting"):
        load_train_config(None, TINY + ["continuous.embeddim=16"])
    with pytest.raises(ConfigError, match="need objective continuous"):
        load_train_config(None, TINY[1:] + ["objective=diffusion", "continuous.embed_dim=16"])
    with pytest.raises(ConfigError, match="trains from scratch"):
        load_train_config(None, TINY + ["init=dlm-scratch"])
    with pytest.raises(ConfigError, match="seq2seq needs train_files"):
        load_train_config(None, TINY + ["continuous.seq2seq=true"])


def test_seq2seq_training_keeps_the_source_clean(tmp_path):
    """DiffuSeq: verse -> next verse rows; the source positions are clean (never scored)."""
    pairs = [p for p in verse_pairs("validation", max_chars=90)][:24]
    assert pairs and all(p["prompt"][0].isdigit() and p["response"][0].isdigit() for p in pairs)
    for name, rows in (("train", pairs[:16]), ("val", pairs[16:])):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(p) + "\n" for p in rows))
    args = TINY + [f"train_files=[{tmp_path / 'train.jsonl'}]", f"validation_files=[{tmp_path / 'val.jsonl'}]",
                   "continuous.seq2seq=true", "seq_length=64", f"output_dir={tmp_path / 'run'}", "max_steps=2",
                   "eval_every=2", "save_every=2"]
    trainer = Trainer(load_train_config(None, args), show_progress=False)
    (batch,) = trainer.micro_batches(0)
    x, draws = batch.x, batch.draws
    _, src, _ = trainer.train_batches.global_batch(0)
    assert torch.equal(draws.clean, src | (torch.arange(x.shape[1]) == 0))
    assert trainer.train()["val_loss"] > 0


def test_seq2seq_metrics():
    assert bleu("the cat sat on the mat", ["the cat sat on the mat"]) == pytest.approx(1.0)
    assert bleu("a b c d", ["w x y z"]) == 0.0
    assert mbr_select(["and god said", "and god said unto", "zebra"]) in (0, 1)
    assert self_bleu(["x y z w", "x y z w"]) == pytest.approx(1.0)
    assert distinct_words(["a b a b"], 2) == pytest.approx(2 / 3)
