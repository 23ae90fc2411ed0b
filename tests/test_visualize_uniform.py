"""`DenoisingView` (``--show-steps``) on a uniform-state run: no mask cells, the tokens each step changed marked,
a header that counts changes, and the last frame the result - in the library and through `difflm generate`."""

from __future__ import annotations

import io
import json
import re

import torch
from rich.console import Console

from conftest import tiny_backbone, tiny_tokenizer
from difflm import DiffusionLM, sampling
from difflm.cli import main
from difflm.config import DiffusionConfig
from difflm.visualize import STYLES, DenoisingView

GLYPH = "░░"
MASK_ID = 44  # tiny_tokenizer(with_mask=True)'s <mask>: vocabulary 45


def tiny_uniform() -> DiffusionLM:
    config = DiffusionConfig(mask_token_id=MASK_ID, bos_token_id=1, eos_token_id=2, pad_token_id=0, shift=True,
                             attention="bidirectional", extra={"process": "uniform"})
    return DiffusionLM(tiny_backbone("llama", vocab=45), config, tiny_tokenizer(with_mask=True)).eval()


def plain(panel) -> str:
    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(panel)
    return console.file.getvalue()


def pieces_of(model: DiffusionLM, tokens: list[int]) -> str:
    """Generated tokens as the view writes them: their text, a special token by name."""
    return "".join(model.tokenizer.decode([t], skip_special_tokens=True) or model.tokenizer.decode([t]) for t in tokens)


def test_a_uniform_run_is_drawn_as_changes_without_masks():
    model = tiny_uniform()
    view = DenoisingView(model.tokenizer, console=Console(file=io.StringIO(), width=200, color_system=None))
    steps, panels = [], []
    result = sampling.generate(model, [[1, 5, 6], [1, 7]], max_new_tokens=6, steps=5, temperature=1.0,
                               generator=[torch.Generator().manual_seed(s) for s in (0, 1)], return_dict=True,
                               output_history=True, callback=lambda s: (steps.append(s), panels.append(view.render(s))))
    assert len(panels) == 5
    before = None
    for step, panel, after in zip(steps, panels, result.history):
        drawn = plain(panel)
        assert GLYPH not in drawn  # no cell is masked, even where the noise drew the mask token itself
        changed = int(step.committed.sum())
        if before is not None:  # committed = the generated positions whose token this step changed
            assert changed == int(((after != before) & result.generate_mask).sum())
        assert f"step {step.step + 1}/5  block 1  {changed}/12 tokens changed" in drawn, drawn
        # one span per generated token: the changed ones highlighted, the others kept (or a special's name)
        for b, row in enumerate(panel.renderable.renderables[1:]):
            styles = [span.style for span in row.spans if span.style]
            assert len(styles) == 6
            assert styles.count(STYLES["changed"]) == int(step.committed[b].sum())
            assert all(style in (STYLES["changed"], STYLES["kept"], STYLES["special"]) for style in styles)
            generated = step.canvas[b][step.generate_mask[b]].tolist()
            assert str(row).endswith(pieces_of(model, generated))  # the canvas as it stands
        before = after
    assert any(int(s.committed.sum()) < 12 for s in steps[1:])  # not every step changes everything
    assert torch.equal(steps[-1].canvas, result.sequences)  # the last frame is the result


def test_show_steps_on_a_uniform_model(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    model = tiny_uniform()
    model.save_pretrained(tmp_path / "udlm")
    argv = ["generate", "w1 w2", "--model", str(tmp_path / "udlm"), "--length", "6", "--steps", "4",
            "--temperature", "1.0", "--seed", "5"]
    assert main(argv + ["--json"]) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert main(argv + ["--show-steps"]) == 0
    out = capsys.readouterr().out
    headers = re.findall(r"step (\d)/4  block 1  (\d)/6 tokens changed", out)
    assert [h[0] for h in headers] == ["1", "2", "3", "4"] and GLYPH not in out
    last = out.split("step 4/4")[-1]
    assert pieces_of(model, row["new_tokens"]) in last.replace("│", "").replace(" ", "").replace("\n", "")
