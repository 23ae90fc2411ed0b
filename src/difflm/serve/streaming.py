"""From denoising steps to text: what a choice may show after each step, and the SSE wire format.

A diffusion LM commits tokens anywhere in its canvas, but a reader reads left to right: the text
that is *final* after a step is the generated region up to its first still-masked position.
`ChoiceText` turns each step's canvas into the delta of that final prefix (what ordinary OpenAI
clients get), cut at a stop token (EOS, end of turn) or a stop string, and says when the choice
has ended - often before the canvas is full, so the scheduler can stop denoising it. The
non-streamed answer is the same object's text after the last step, so both always agree.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from ..sampling.templates import text_ids

REPLACEMENT = "\ufffd"  # what decoding shows for the first bytes of a character split across tokens


class TokenText:
    """The model's tokenizer behind one lock: a fast tokenizer used from the event loop and the
    scheduler thread at once can fail ("Already borrowed"). Decoding never cleans up spaces, so
    the text of a longer prefix always extends the text of a shorter one.

    Args:
        tokenizer: a transformers tokenizer.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._lock = threading.Lock()
        self._pieces: dict[int, str] = {}

    def encode(self, text: str, *, special: bool = True) -> list[int]:
        """Token ids of ``text`` (with the tokenizer's BOS when ``special``)."""
        with self._lock:
            return list(self.tokenizer(text, add_special_tokens=special)["input_ids"])

    def prompt_ids(self, text: str, mask_id: int, *, special: bool = True, what: str = "the prompt") -> list[int]:
        """`encode`, refusing text that spells the mask token or is not valid Unicode
        (`difflm.sampling.templates.text_ids`: `InputError`)."""
        with self._lock:
            return text_ids(self.tokenizer, text, mask_id, special=special, what=what)

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids`` without special tokens."""
        with self._lock:
            return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def chat_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of ``messages`` in the tokenizer's chat template, with the generation prompt."""
        with self._lock:
            out = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        ids = out["input_ids"] if hasattr(out, "keys") else out
        return [int(i) for i in (ids[0] if ids and isinstance(ids[0], list) else ids)]

    def piece(self, token: int) -> str:
        """One token's text as a canvas cell shows it (special tokens by name), cached."""
        if token not in self._pieces:
            with self._lock:
                self._pieces[token] = self.tokenizer.decode([token], skip_special_tokens=False,
                                                            clean_up_tokenization_spaces=False)
        return self._pieces[token]


class ChoiceText:
    """The readable text of one choice, step after step.

    Args:
        text: the shared `TokenText`.
        mask_id: the mask token id (marks positions not yet generated); None for a canvas without masks (a
            uniform-state model's, whose text is final only when its run ends).
        stop_ids: token ids that end the text (EOS, pad, a chat end of turn).
        stops: stop strings; the text ends before the first one.
    """

    def __init__(self, text: TokenText, mask_id: int | None, stop_ids: list[int], stops: list[str]) -> None:
        self.text, self.mask_id = text, mask_id
        self.stop_ids, self.stops = set(stop_ids), stops
        self.sent = ""  # text emitted so far
        self.finish_reason: str | None = None  # "stop" or "length" once ended
        self.tokens: list[int] = []  # the final tokens of the answer, once ended
        self._prefix_length = -1

    @property
    def ended(self) -> bool:
        return self.finish_reason is not None

    def update(self, generated: list[int], *, final: bool = False) -> str:
        """The new text after a step, given the generated positions' tokens (mask id where still
        masked); ``final``: the canvas is complete (ends the choice by length if nothing else did).
        Returns the delta to send (possibly empty)."""
        if self.ended:
            return ""
        cut = next((i for i, tok in enumerate(generated) if tok == self.mask_id), len(generated))
        prefix = generated[:cut]
        stop_at = next((i for i, tok in enumerate(prefix) if tok in self.stop_ids), None)
        if stop_at is None and cut == self._prefix_length and not final and cut < len(generated):
            return ""  # nothing new is final
        self._prefix_length = cut
        tokens = prefix if stop_at is None else prefix[:stop_at]
        text = self.text.decode(tokens)
        reason = "stop" if stop_at is not None else ("length" if final or cut == len(generated) else None)
        found = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if found:
            text, reason = text[: min(found)], "stop"
        if reason is None:
            text = self._holdback(text)
        else:
            self.finish_reason, self.tokens = reason, tokens
        if not text.startswith(self.sent):  # cannot happen with space clean-up off; never resend
            return ""
        delta, self.sent = text[len(self.sent):], text
        return delta

    def _holdback(self, text: str) -> str:
        """``text`` without what may still change: a character whose bytes are not all there yet,
        and an ending that could be the start of a stop string."""
        text = text.rstrip(REPLACEMENT)
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:k]):
                    text = text[:-k]
                    break
        return text


def canvas_cells(text: TokenText, tokens: list[int], mask_id: int | None) -> list[str | None]:
    """The generated positions as the step stream sends them: each token's text, None if masked (never, with
    ``mask_id`` None)."""
    return [None if tok == mask_id else text.piece(tok) for tok in tokens]


def sse(payload: dict[str, Any] | str) -> bytes:
    """One server-sent event: ``data: <json>`` (or a literal such as [DONE]) and a blank line."""
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return f"data: {data}\n\n".encode()
