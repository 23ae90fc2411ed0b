"""`difflm generate` / `difflm infill` end to end on a tiny saved model, and the live view."""

import io
import json

import pytest
from rich.console import Console

from difflm import DiffusionLM
from difflm.cli import main
from difflm.cli.generate import encode_template, parse_template
from difflm.sampling import generate
from difflm.visualize import DenoisingView
from conftest import tiny_backbone, tiny_tokenizer
from test_sampling import single_thread  # noqa: F401 (autouse fixture)

MASK = 63


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "tiny-dlm"
    tok = tiny_tokenizer()
    model = DiffusionLM.from_causal_lm(tiny_backbone("llama"), mask_token=MASK, tokenizer=tok, attention="bidirectional")
    model.save_pretrained(path)
    return str(path)


def _json_lines(capsys):
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_generate_json(model_dir, capsys):
    assert main(["generate", "w1 w2 w3", "w4", "--model", model_dir, "--length", "6", "--block-length", "3",
                 "--strategy", "threshold", "--threshold", "0.5", "--cache", "dual", "--json"]) == 0
    rows = _json_lines(capsys)
    assert [r["prompt"] for r in rows] == ["w1 w2 w3", "w4"]
    assert all(len(r["new_tokens"]) == 6 and r["text"].startswith(r["prompt"]) for r in rows)
    assert rows[0]["options"]["cache"] == "dual" and rows[0]["steps"] <= 6


def test_generate_text_matches_the_api(model_dir, capsys):
    assert main(["generate", "w1 w2", "--model", model_dir, "--length", "4", "--steps", "2"]) == 0
    printed = capsys.readouterr().out.strip()
    model = DiffusionLM.from_pretrained(model_dir)
    ids = generate(model, model.tokenizer("w1 w2")["input_ids"], max_new_tokens=4, steps=2)
    assert printed == model.tokenizer.decode(ids[0], skip_special_tokens=True)


def test_infill_template_with_two_gaps(model_dir, capsys):
    assert main(["infill", "w1 w2 [MASK:2] w7 [MASK:3] w9", "--model", model_dir, "--json", "--seed", "3",
                 "--temperature", "1.0", "--top-p", "0.9"]) == 0
    (row,) = _json_lines(capsys)
    tok = tiny_tokenizer()
    assert len(row["new_tokens"]) == 5
    gap1, gap2 = (tok.decode(ids, skip_special_tokens=True) for ids in (row["new_tokens"][:2], row["new_tokens"][2:]))
    expected = " ".join(w for w in ["w1 w2", gap1, "w7", gap2, "w9"] if w)  # ids outside the tiny vocab decode to ""
    assert row["text"] == expected


def test_infill_prefix_suffix(model_dir, capsys):
    assert main(["infill", "--prefix", "w1 w2", "--suffix", "w8 w9", "--length", "3", "--model", model_dir]) == 0
    words = capsys.readouterr().out.split()
    assert words[:2] == ["w1", "w2"] and words[-2:] == ["w8", "w9"] and len(words) <= 7


def test_template_parsing():
    assert parse_template("a b [MASK:2] c [MASK:1]") == ["a b", 2, " c", 1, ""]
    tok = tiny_tokenizer()
    assert encode_template(tok, ["w1", 2, " w3"], MASK) == [tok.convert_tokens_to_ids("w1"), MASK, MASK, tok.convert_tokens_to_ids("w3")]


@pytest.mark.parametrize("argv, match", [
    (["infill", "no placeholder here"], "no \\[MASK:n\\] placeholder"),
    (["infill", "w1 [MASK:0] w2"], "n >= 1"),
    (["infill", "--prefix", "w1", "--length", "0"], "--length"),
    (["generate", "w1", "--length", "100"], "context"),
    (["generate", "w1", "--strategy", "best"], "unknown strategy"),
    (["generate", "w1", "--strategy", "threshold", "--threshold", "1.5"], "threshold"),
    (["generate", "w1", "--cfg-scale", "-1"], "cfg_scale"),
    (["generate", "w1", "--top-p", "0"], "top_p"),
])
def test_bad_input_is_one_line_exit_2(model_dir, capsys, argv, match):
    import re

    assert main(argv + ["--model", model_dir] + ([] if "--length" in argv else ["--length", "4"])) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("difflm: error:") and re.search(match, err)


def test_missing_model_dir(tmp_path, capsys):
    assert main(["generate", "hi", "--model", str(tmp_path / "nope")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_show_steps_leaves_the_final_text(model_dir, capsys):
    assert main(["generate", "w1 w2", "--model", model_dir, "--length", "4", "--show-steps"]) == 0
    out = capsys.readouterr().out
    assert "step 4/4" in out and "4/4 tokens" in out


def test_denoising_view_renders_masks_then_text():
    model = DiffusionLM.from_causal_lm(tiny_backbone("llama"), mask_token=MASK, tokenizer=tiny_tokenizer(),
                                       attention="bidirectional")
    console = Console(file=io.StringIO(), width=100, color_system=None)
    seen = []
    view = DenoisingView(model.tokenizer, console=console)
    with view:
        generate(model, [[5, 6], [7, 8, 9]], max_new_tokens=4, steps=2,
                 callback=lambda s: (view(s), seen.append(view.render(s))))

    def plain(panel):
        buffer = Console(file=io.StringIO(), width=100, color_system=None)
        buffer.print(panel)
        return buffer.file.getvalue()

    first, last = plain(seen[0]), plain(seen[-1])
    assert "░░" in first and "░░" not in last and "step 2/2" in last
    assert "w1" in first and "w2" in first and "<pad>" not in first
    final = console.file.getvalue()
    assert "8/8 tokens" in final.split("step 2/2")[-1]  # the view ends on the final state
