"""`difflm generate` / `difflm infill` end to end on a tiny saved model, and the live view."""

import io
import json
import re

import pytest
from rich.console import Console

from difflm import DiffusionLM
from difflm.cli import main
from difflm.sampling import generate
from difflm.sampling.templates import continuation_ids, encode_template, gap_template, parse_template, template_ids
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
    assert gap_template("w1 ", "w8", 3) == ["w1", 3, " w8"] and gap_template("w1", ", w8", 2) == ["w1", 2, ", w8"]
    tok = tiny_tokenizer()
    w1, w3 = tok.convert_tokens_to_ids(["w1", "w3"])
    assert encode_template(tok, ["w1", 2, " w3"], MASK) == [w1, MASK, MASK, w3]
    assert template_ids("w1 [MASK:2] w3", tok, MASK) == [w1, MASK, MASK, w3]
    assert continuation_ids("w1 w3", tok, MASK, 2) == [w1, w3, MASK, MASK]


@pytest.mark.parametrize("argv, match", [
    (["infill", "no placeholder here"], "no \\[MASK:n\\] placeholder"),
    (["infill", "w1 [MASK:0] w2"], "n >= 1"),
    (["infill", "--prefix", "w1", "--length", "0"], "--length"),
    (["generate", "w1", "--length", "100"], "context"),
    (["generate", "w1", "--strategy", "best"], "unknown strategy"),
    (["generate", "w1", "--strategy", "threshold", "--threshold", "1.5"], "threshold"),
    (["generate", "w1", "--cfg-scale", "-1"], "argument --cfg-scale: must be a number >= 0"),
    (["generate", "w1", "--top-p", "0"], r"argument --top-p: must be a number in \(0, 1\]"),
])
def test_bad_input_is_one_line_exit_2(model_dir, capsys, argv, match):
    import re

    assert main(argv + ["--model", model_dir] + ([] if "--length" in argv else ["--length", "4"])) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("difflm: error:") and re.search(match, err)


def test_missing_model_dir(tmp_path, capsys):
    assert main(["generate", "hi", "--model", str(tmp_path / "nope")]) == 2
    assert "no model at" in capsys.readouterr().err


GLYPH = "░░"


def _frames(out: str) -> list[tuple[str, str]]:
    """The panels `DenoisingView` printed, as (header line, canvas text) pairs."""
    frames, lines = [], None
    for line in out.splitlines():
        if line.startswith("╭"):
            lines = []
        elif line.startswith("╰"):
            frames.append((lines[0], "".join(lines[1:])))
            lines = None
        elif lines is not None:
            lines.append(line.strip()[1:-1].strip())  # "│ text   │" -> "text"
    return frames


def test_show_steps_draws_every_step_and_ends_on_the_json_result(model_dir, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    argv = ["generate", "w1 w2", "--model", model_dir, "--length", "6", "--block-length", "3", "--steps", "4",
            "--temperature", "1.0", "--seed", "5"]
    assert main(argv + ["--json"]) == 0
    (row,) = _json_lines(capsys)
    assert main(argv + ["--show-steps"]) == 0
    frames = _frames(capsys.readouterr().out)

    # one frame per model call, blocks of 3 finished in order (2 steps each: 2 + 1 commits)
    headers = [re.fullmatch(r"step (\d)/4  block (\d)  (\d)/6 tokens", header).groups() for header, _ in frames]
    assert headers == [("1", "1", "2"), ("2", "1", "3"), ("3", "2", "5"), ("4", "2", "6")]
    assert row["steps"] == 4
    # masked positions fill in: each frame shows every position either masked or holding its final token
    tok = tiny_tokenizer()
    final_pieces = [tok.decode([t], skip_special_tokens=True) for t in row["new_tokens"]]
    shape = "w1w2" + "".join(f"(?:{re.escape(GLYPH)}|{re.escape(piece)})" for piece in final_pieces)
    for (_, canvas), (_, _, done) in zip(frames, headers):
        assert canvas.count(GLYPH) == 6 - int(done)
        assert re.fullmatch(shape, canvas), canvas
    # the last frame is the --json result of the same seed
    assert frames[-1][1] == "w1w2" + "".join(final_pieces)


def test_denoising_view_on_a_terminal_draws_every_step():
    model = DiffusionLM.from_causal_lm(tiny_backbone("llama"), mask_token=MASK, tokenizer=tiny_tokenizer(),
                                       attention="bidirectional")
    console = Console(file=io.StringIO(), width=100, force_terminal=True, color_system=None)
    with DenoisingView(model.tokenizer, console=console) as view:
        generate(model, [[5, 6]], max_new_tokens=4, steps=4, callback=view)
    drawn = console.file.getvalue()
    assert all(f"step {i}/4  block 1  {i}/4 tokens" in drawn for i in range(1, 5))


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
