"""bench/tasks.py's pure parts: the stand-in configs of --random-models, the targets and the table."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
tasks_bench = pytest.importorskip("tasks")


@pytest.mark.parametrize("role", sorted(["gsm-dlm", "gsm-ar", "sudoku-dlm", "sudoku-ar"]))
def test_every_preset_gives_a_stand_in_config(role):
    """--random-models builds each preset's model without its init, under the DLM settings SFT trains
    it with (full attention, or block-causal with the preset's block size)."""
    cfg, diffusion = tasks_bench.stand_in_config(tasks_bench.CONFIGS[role])
    assert (diffusion is not None) == role.endswith("dlm")
    assert cfg.init is None and cfg.architecture
    if diffusion is not None:
        assert diffusion["anneal_steps"] == 1
        assert diffusion["attention"] == ("block_causal" if cfg.diffusion.get("block_size") else "bidirectional")


def _row(kind, method, em, tps, tpc, strategy=None):
    return {"kind": kind, "method": method, "strategy": strategy, "em": em, "em_stderr": 0.4,
            "tokens_per_second": tps, "tokens_per_call": tpc, "calls": 10}


def test_gsm_targets_need_the_accuracy_and_the_speed():
    ar = _row("ar", "AR", 99.0, 700, 1.0)
    ref = _row("dlm", "DLM one", 98.7, 450, 0.96, strategy="low_confidence")
    fast_ok = _row("dlm", "DLM 0.99", 98.6, 2150, 6.1, strategy="threshold")
    fast_bad = _row("dlm", "DLM 0.5", 90.5, 2300, 7.2, strategy="threshold")
    lines = tasks_bench.gsm_targets([ar, ref, fast_ok, fast_bad])
    assert lines[0].startswith("PASS") and "6.10 tokens/call" in lines[0]
    assert lines[1].startswith("PASS") and "DLM 0.99" in lines[1]  # 0.5 is faster but 8.5 points under
    fast_ok["em"] = 97.9  # one tenth under AR - 1: no method at equal EM
    assert tasks_bench.gsm_targets([ar, ref, fast_ok, fast_bad])[1].startswith("MISS")


def test_gsm_table_shows_the_paired_comparison():
    ar = _row("ar", "AR", 99.0, 700, 1.0)
    dlm = {**_row("dlm", "DLM 0.99", 98.6, 2150, 6.1, strategy="threshold"),
           "vs_ar": {"only_this": 8, "only_ar": 12, "p_value": 0.503}}
    result = {"machine": "m", "torch": "t", "threads": 1, "clock": "cpu",
              "gsm": {"command": "c", "when": "d", "n": 1000, "canvas": 128, "capped": 0, "context": 208,
                      "block_length": 8, "block_model": True, "rows": [ar, dlm], "targets": ["PASS x"]}}
    text = tasks_bench.markdown(result)
    assert "| DLM 0.99 | 98.6 ± 0.4 | 6.10 | 2150 | 3.07 | 10 | 8 / 12, p 0.50 |" in text
    assert "| AR | 99.0 ± 0.4 | 1.00 | 700 | 1.00 | 10 | - |" in text


class _LM:
    """What gsm_items reads of an EvalLM: BOS ids and an encoder (one id per character: lengths are known)."""

    bos = [0]

    def encode(self, text):
        return [1] * len(text)


def test_the_long_gsm_set_is_held_out_longer_and_fits_the_context():
    """gsm-long: test-split problems of LONG_STEPS steps (one past the training data's 2-4), only those
    whose prompt and whole answer (and EOS) fit the context, each given the rest of the context."""
    from difflm.tasks import keyed_examples
    from difflm.tasks.splits import split_of

    models = {"ar": _LM(), "dlm": _LM()}
    context = 520
    items, drawn = tasks_bench.gsm_items(models, 20, context, long=True)
    assert 0 < len(items) <= 20 and drawn >= len(items)
    keyed = keyed_examples("gsm", drawn, seed=0, split="test", steps=(tasks_bench.LONG_STEPS,) * 2)
    kept = [r for _, r in keyed if 1 + len(tasks_bench.sft_texts(r)[0]) + len(tasks_bench.sft_texts(r)[1]) + 1 <= context]
    assert len(kept) >= len(items) and len(kept) < len(keyed)  # the context really drops some
    assert all(split_of(k) == "test" for k, _ in keyed)
    for (prompts, budget, answer), record in zip(items, kept):
        assert budget == context - len(prompts["dlm"]) and answer == tasks_bench.gsm8k_final_answer(record["answer"])
        assert record["answer"].count("\n") >= tasks_bench.LONG_STEPS  # 5 lines of reasoning, then '#### n'
    standard, _ = tasks_bench.gsm_items(models, 5, context, long=False)
    assert all(b == min(tasks_bench.CANVAS, context - len(p["dlm"])) for p, b, _ in standard)
