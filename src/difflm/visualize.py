"""A live terminal view of denoising: masked positions fill in step by step.

`DenoisingView` is a sampler callback and a context manager around a `rich.live.Live` display::

    with DenoisingView(model.tokenizer) as view:
        model.generate(ids, max_new_tokens=64, callback=view)

Prompt text is shown plain, tokens still masked as dim blocks, tokens committed at this step
highlighted, and earlier commits in green. A uniform-state run (UDLM, Duo, difflm's ``objective:
uniform``) has no mask: every generated position holds a token from the first step on and a step
*changes* some of them, so its frames show the tokens changed at this step highlighted, the others
kept, special tokens by name (noise draws them too), and a header that counts changes. A sampler says
its canvas has no mask by passing ``mask_token_id=None`` in its `SamplerStep`. On a terminal (or in Jupyter) one frame is redrawn in
place at every step; written to a file or a pipe, every step's frame is printed in turn, so the
output is a record of the denoising. Used by ``difflm generate --show-steps``,
``difflm infill --show-steps`` and ``difflm demo``.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.text import Text

from .sampling import SamplerStep

STYLES = {"prompt": "", "masked": "dim", "new": "bold black on bright_green", "done": "green",
          "changed": "bold black on yellow", "kept": "cyan", "special": "dim"}


class DenoisingView:
    """Render `SamplerStep`s of a sampler run in the terminal, one frame per step.

    Args:
        tokenizer: decodes single token ids (``decode([id])``).
        rows: which batch rows to show (default: all).
        console: a `rich.console.Console` (default: stdout).
        title: panel title.
        mask_glyph: what a masked position looks like.
        delay: seconds to pause after each step on a terminal, so fast runs stay watchable (no
            pause when the frames go to a file).
        transient: clear the view when the run ends (on a file: print no frames).
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        rows: list[int] | None = None,
        console: Console | None = None,
        title: str = "denoising",
        mask_glyph: str = "░░",
        delay: float = 0.0,
        transient: bool = False,
    ) -> None:
        self.tokenizer = tokenizer
        self.rows = rows
        self.console = console or Console()
        self.title = title
        self.mask_glyph = mask_glyph
        self.delay = delay
        self.transient = transient
        self.last_step: SamplerStep | None = None
        self._live: Live | None = None
        self._printing_frames = False  # inside the context on a console that cannot redraw
        self._token_text: dict[int, str] = {}
        self._special_text: dict[int, str] = {}

    @property
    def redraws_in_place(self) -> bool:
        """Whether the console can redraw one frame in place (a terminal or Jupyter)."""
        return (self.console.is_terminal and not self.console.is_dumb_terminal) or self.console.is_jupyter

    # -- context manager ------------------------------------------------------------------------
    def __enter__(self) -> "DenoisingView":
        if self.redraws_in_place:
            self._live = Live(Text(f"{self.title}: starting ..."), console=self.console, refresh_per_second=20,
                              transient=self.transient)
            self._live.__enter__()
        else:
            self._printing_frames = not self.transient
        return self

    def __exit__(self, *exc: Any) -> None:
        self._printing_frames = False
        if self._live is not None:
            if self.last_step is not None:
                self._live.update(self.render(self.last_step))
            self._live.__exit__(*exc)
            self._live = None

    # -- callback -------------------------------------------------------------------------------
    def __call__(self, step: SamplerStep) -> None:
        self.last_step = step
        if self._live is not None:
            self._live.update(self.render(step), refresh=True)  # every step is drawn, however fast
            if self.delay:
                time.sleep(self.delay)
        elif self._printing_frames:
            self.console.print(self.render(step))

    def render(self, step: SamplerStep) -> Panel:
        """The view of one step: one block of text per shown row under a progress line."""
        if step.mask_token_id is None:
            return self._render_uniform(step)
        canvas, generated, committed = step.canvas.cpu(), step.generate_mask.cpu(), step.committed.cpu()
        real = step.attention_mask.cpu().bool() if step.attention_mask is not None else torch.ones_like(generated)
        masked = generated & (canvas == step.mask_token_id) if step.mask_token_id is not None else torch.zeros_like(generated)
        rows = self.rows if self.rows is not None else range(canvas.shape[0])
        done, total = int((generated & ~masked).sum()), int(generated.sum())
        header = Text(f"step {step.step + 1}/{step.total_steps}  block {step.block + 1}  {done}/{total} tokens", style="bold")
        texts = []
        for b in rows:
            text = Text()
            for pos in real[b].nonzero().flatten().tolist():
                if masked[b, pos]:
                    text.append(self.mask_glyph, style=STYLES["masked"])
                    continue
                piece = self._text_of(int(canvas[b, pos]))
                style = STYLES["new"] if committed[b, pos] else STYLES["done"] if generated[b, pos] else STYLES["prompt"]
                text.append(piece, style=style)
            texts.append(text)
        return Panel(Group(header, *texts), title=self.title, title_align="left")

    def _render_uniform(self, step: SamplerStep) -> Panel:
        """A step of a canvas without masks: ``step.committed`` holds the positions this step changed."""
        canvas, generated = step.canvas.cpu(), step.generate_mask.cpu()
        changed = step.committed.cpu() & generated
        real = step.attention_mask.cpu().bool() if step.attention_mask is not None else torch.ones_like(generated)
        rows = self.rows if self.rows is not None else range(canvas.shape[0])
        header = Text(f"step {step.step + 1}/{step.total_steps}  block {step.block + 1}  "
                      f"{int(changed.sum())}/{int(generated.sum())} tokens changed", style="bold")
        texts = []
        for b in rows:
            text = Text()
            for pos in real[b].nonzero().flatten().tolist():
                token = int(canvas[b, pos])
                if not generated[b, pos]:
                    text.append(self._text_of(token), style=STYLES["prompt"])
                    continue
                piece = self._text_of(token)
                if not piece:  # a special token (EOS, pad, even the mask token) drawn as noise: shown by name
                    piece, style = self._special_of(token), STYLES["special"]
                else:
                    style = STYLES["kept"]
                text.append(piece, style=STYLES["changed"] if changed[b, pos] else style)
            texts.append(text)
        return Panel(Group(header, *texts), title=self.title, title_align="left")

    def _special_of(self, token: int) -> str:
        """The name of a token that decodes to no text (special tokens), e.g. ``<|eos|>`` (cached)."""
        if token not in self._special_text:
            self._special_text[token] = self.tokenizer.decode([token], skip_special_tokens=False) or f"<{token}>"
        return self._special_text[token]

    def _text_of(self, token: int) -> str:
        """Text of one token (cached; special tokens such as BOS show as nothing)."""
        if token not in self._token_text:
            self._token_text[token] = self.tokenizer.decode([token], skip_special_tokens=True)
        return self._token_text[token]
