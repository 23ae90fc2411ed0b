"""`difflm demo` end to end on the bundled models, shortened (4 adaptation steps, 2 validation
blocks), checked against the models themselves: the texts it shows are what the bundled models
produce for its seed, the ELBO curve is the one its run logged, the table's numbers are finite and
ordered as the models' own validation orders them."""

import json
import math
import re
import subprocess
import sys

import pytest
import torch

from difflm.bundled import MODELS
from difflm.cli import demo, main

needs_bundled_models = pytest.mark.skipif(not all((p / "model.safetensors").is_file() for p in MODELS.values()),
                                          reason="bundled models not built")
SEED = 3


def _normalized(text: str) -> str:
    return " ".join(text.split())


def _sections(out: str) -> dict[str, str]:
    """The demo's output split at its five rules ("─── 1/5  The autoregressive base ───")."""
    parts = re.split(r"^─+ ([1-5])/5 .*$", out, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def _last_frames(section: str) -> dict[str, str]:
    """Panel title -> canvas text of the last frame drawn under that title (header line dropped)."""
    frames, title, lines = {}, None, []
    for line in section.splitlines():
        if line.startswith("╭"):
            title, lines = line.strip("╭╮─ "), []
        elif line.startswith("╰"):
            frames[title] = "\n".join(lines[1:])
        elif title is not None:
            lines.append(line.strip()[1:-1])  # "│ text   │" -> " text   "
    return frames


def _table_rows(section: str) -> dict[str, tuple[float, float, float]]:
    """model -> (NLL or bound, its standard error (0 for the exact NLL), perplexity) as printed."""
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if len(cells) == 5 and cells[0] in MODELS:
            value, _, stderr = cells[2].partition(" ± ")
            rows[cells[0]] = (float(value), float(stderr or 0), float(cells[3].replace(",", "")))
    return rows


@needs_bundled_models
def test_demo_shows_what_the_bundled_models_produce(tmp_path, capsys, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from difflm import DiffusionLM
    from difflm.sampling import generate, infill

    monkeypatch.setenv("COLUMNS", "400")  # no wrapped lines in panels and table
    run_dir = tmp_path / "run"
    assert main(["demo", "--adapt-steps", "4", "--eval-blocks", "2", "--output-dir", str(run_dir), "--seed", str(SEED)]) == 0
    sections = _sections(capsys.readouterr().out)
    assert sorted(sections) == ["1", "2", "3", "4", "5"]

    # 1/5: the AR base's text is transformers' sample of the bundled AR model for this seed
    tok = AutoTokenizer.from_pretrained(MODELS["ar-base"])
    ar = AutoModelForCausalLM.from_pretrained(MODELS["ar-base"], dtype=torch.float32).eval()
    torch.manual_seed(SEED)
    sample = ar.generate(tok(demo.PROMPT, return_tensors="pt")["input_ids"], pad_token_id=tok.pad_token_id,
                         **demo.AR_SAMPLING)[0]
    assert _normalized(tok.decode(sample, skip_special_tokens=True)) in _normalized(sections["1"])

    # 2/5: the falling curve is the validation ELBO the adaptation run logged
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 4 and (run_dir / "model" / "difflm_config.json").is_file()
    logged = "  ->  ".join(f"{r['val_loss']:.2f}" for r in records if "val_loss" in r)
    assert f"validation ELBO (nats/token): {logged}" in sections["2"]

    # 3/5: the last frame of each live view is what the public sampler writes with the bundled DLM
    dlm = DiffusionLM.from_pretrained(MODELS["dlm-adapted"]).eval()
    dlm_tok = dlm.tokenizer
    continued = generate(dlm, dlm_tok(demo.PROMPT)["input_ids"], max_new_tokens=48, generator=torch.Generator().manual_seed(SEED),
                         **demo.GENERATE_OPTIONS)[0]
    prefix, gap, suffix = re.fullmatch(r"(.*) \[MASK:(\d+)\](.*)", demo.INFILL).groups()
    filled = infill(dlm, dlm_tok(prefix)["input_ids"], dlm_tok(suffix, add_special_tokens=False)["input_ids"],
                    middle_length=int(gap), generator=torch.Generator().manual_seed(SEED), **demo.INFILL_OPTIONS)[0]
    frames = _last_frames(sections["3"])
    shown = {title.split(":")[0]: text for title, text in frames.items()}
    assert sorted(shown) == ["generate", "infill"]
    assert "generate: 48 tokens after the prompt, blocks of 16, 24 steps" in frames
    for name, ids in (("generate", continued), ("infill", filled)):
        expected = "".join(dlm_tok.decode([t], skip_special_tokens=True) for t in ids.tolist())  # what the view draws
        assert _normalized(shown[name]) == _normalized(expected), name
    assert _normalized(dlm_tok.decode(filled, skip_special_tokens=True)).startswith(prefix)

    # 4/5: finite numbers, perplexity = exp(value), ordered as the models' own validation orders them
    rows = _table_rows(sections["4"])
    assert sorted(rows) == sorted(demo.TABLE_MODELS)
    for name, (value, stderr, perplexity) in rows.items():
        assert math.isfinite(value) and math.isfinite(stderr) and 0 < value < math.log(dlm.vocab_size), name
        assert (stderr == 0) == (name == "ar-base")
        assert perplexity == pytest.approx(math.exp(value), rel=2e-3, abs=1), name
    final_validation = {name: json.loads((path / "training_summary.json").read_text())["validation_nats_per_token"][-1][1]
                        for name, path in MODELS.items() if name in demo.TABLE_MODELS}
    assert sorted(rows, key=lambda name: rows[name][0]) == sorted(final_validation, key=final_validation.get)

    # 5/5: the puzzle shown is one the DLM solves and its AR twin does not - checked again here
    _check_task_section(sections["5"])


def _check_task_section(section: str) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from difflm.cli import demo_tasks
    from difflm.tasks import make_examples
    from difflm.tasks.model_task import sudoku_verdict
    from difflm.tasks.sudoku import sudoku_prompt

    found = re.search(r"dlm-sudoku on held-out puzzle (\d+) \((\d+) blanks\)", section)
    assert found, "no puzzle where the DLM wins was shown"
    record = make_examples("sudoku", int(found[1]), seed=0, split="test", blanks=demo_tasks.SUDOKU_BLANKS)[-1]
    assert record["puzzle"].count("0") == int(found[2])
    assert "dlm-sudoku: solved: a valid grid" in section and "ar-sudoku: not solved" in section
    ar = AutoModelForCausalLM.from_pretrained(MODELS["ar-sudoku"], dtype=torch.float32).eval()
    ar_text = demo_tasks.ar_answer(ar, AutoTokenizer.from_pretrained(MODELS["ar-sudoku"]),
                                    sudoku_prompt(record["puzzle"]), 90)
    assert sudoku_verdict(record["puzzle"], ar_text).startswith("not solved")
    calls = re.search(r"answer (\d+) \((correct|wrong: \d+)\); (\d+) tokens in (\d+) model calls = ([\d.]+) tokens per call",
                      section)
    assert calls, "the GSM answer and its tokens per call are missing"
    assert float(calls[5]) == pytest.approx(int(calls[3]) / int(calls[4]), abs=0.05)
    # the self-speculative run: exactly the DLM's own AR greedy answer, in fewer calls than tokens
    spec = re.search(r"answer (\d+) \((correct|wrong: \d+)\), exactly its own AR greedy answer; (\d+) tokens in (\d+) "
                     r"model calls", section)
    assert spec, "the self-speculative GSM answer is missing"
    from difflm.model import DiffusionLM
    from difflm.sampling.speculative import ar_greedy
    from difflm.sampling.templates import continuation_ids
    from difflm.tasks.formatting import GSM_PROMPT

    gsm = DiffusionLM.from_pretrained(MODELS["dlm-gsm"]).eval()
    question = make_examples("gsm", 1, seed=0, split="test")[0]["question"]
    prompt = [t for t in continuation_ids(GSM_PROMPT.format(question=question), gsm.tokenizer, gsm.mask_token_id, 1)
              if t != gsm.mask_token_id]
    answer = gsm.tokenizer.decode(ar_greedy(gsm, prompt, demo_tasks.GSM_LENGTH).tokens, skip_special_tokens=True)
    assert re.search(r"#### (\d+)", answer)[1] == spec[1]
    assert int(spec[4]) < int(spec[3])  # several tokens per call


def test_demo_bad_arguments_are_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "difflm", "demo", "--adapt-steps", "-1"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("difflm: error: --adapt-steps")
    assert len(done.stderr.strip().splitlines()) == 1
