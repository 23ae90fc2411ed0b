"""Infilling templates: text with ``[MASK:n]`` gaps -> token ids with the mask id at the gaps (the
templates of `template_canvas` / `fill`).

    parse_template("Let there be [MASK:4] and there was light.")
        -> ["Let there be", 4, " and there was light."]
    template_ids("Let there be [MASK:4] and there was light.", tokenizer, mask_id)
        -> [BOS, <Let there be>, mask_id x 4, < and there was light.>]

Nothing here needs torch: a template is parsed (and refused with an `InputError`) before a model
is loaded. A gap's tokens carry their own leading space (byte-level BPE), so the text before a gap
gives up its trailing whitespace and the text after it keeps its leading space.
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import InputError

MASK_PLACEHOLDER = re.compile(r"\[MASK:(\d+)\]")

# A parsed template: text pieces (str) and gap lengths in tokens (int), in reading order.
TemplateParts = list[str | int]


def parse_template(text: str) -> TemplateParts:
    """Split a template into text pieces and gap lengths: "a [MASK:2] b" -> ["a", 2, " b"].

    The result starts and ends with a text piece (possibly empty). `InputError` when the text has
    no placeholder or one asks for no tokens.
    """
    parts: TemplateParts = []
    pos = 0
    for match in MASK_PLACEHOLDER.finditer(text):
        length = int(match.group(1))
        if length < 1:
            raise InputError(f"placeholder {match.group(0)} asks for no tokens; use [MASK:n] with n >= 1")
        parts += [text[pos : match.start()].rstrip(), length]
        pos = match.end()
    if not parts:
        raise InputError("the template has no [MASK:n] placeholder; write e.g. \"Let there be [MASK:4] and there was light\"")
    return parts + [text[pos:]]


def gap_template(prefix: str, suffix: str, length: int) -> TemplateParts:
    """The parts of one gap of ``length`` tokens between ``prefix`` and ``suffix`` (``difflm infill
    --prefix ... --suffix ... --length n``). A suffix that starts with a word gets a separating space,
    as in running text."""
    if length < 1:
        raise InputError(f"a gap needs a length >= 1 (tokens to fill), got {length}")
    suffix = " " + suffix if suffix[:1].isalnum() else suffix
    return [prefix.rstrip(), length, suffix]


def text_ids(tokenizer: Any, text: str, mask_id: int, *, special: bool = True, what: str = "the prompt") -> list[int]:
    """Token ids of ``text`` (with the tokenizer's special tokens such as BOS when ``special``).

    `InputError` when the text spells the mask token (e.g. ``<|mask|>``, which tokenizers read as
    the special token): its positions would be generated instead of read, so text is refused just
    as the mask id given as a number is. ``what`` names the text in the message. Also refused:
    text that is not valid Unicode (a lone UTF-16 surrogate), which tokenizers cannot encode.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(f"{what} is not valid Unicode text (a lone surrogate {text[exc.start]!r} at character "
                         f"{exc.start}); send characters, not unpaired UTF-16 halves") from None
    ids = list(tokenizer(text, add_special_tokens=special)["input_ids"])
    if mask_id in ids:
        name = _token_name(tokenizer, mask_id)
        raise InputError(f"{what} contains the mask token {name} (id {mask_id}) as text; its positions would be "
                         "generated, not read. Remove it (to ask for generated positions, use a [MASK:n] "
                         "template with `difflm infill`, or a suffix)")
    return ids


def _token_name(tokenizer: Any, token_id: int) -> str:
    convert = getattr(tokenizer, "convert_ids_to_tokens", None)
    name = convert(token_id) if convert is not None else None
    return repr(name) if isinstance(name, str) else f"#{token_id}"


def encode_template(tokenizer: Any, parts: TemplateParts, mask_id: int) -> list[int]:
    """Token ids of parsed template parts, gaps as ``mask_id``; only the first piece gets the
    tokenizer's special tokens (BOS), even when it is empty. `InputError` when a text piece spells
    the mask token (`text_ids`)."""
    ids: list[int] = []
    for i, part in enumerate(parts):
        if isinstance(part, int):
            ids += [mask_id] * part
        elif part or i == 0:
            ids += text_ids(tokenizer, part, mask_id, special=i == 0, what="the template")
    return ids


def template_ids(text: str, tokenizer: Any, mask_id: int) -> list[int]:
    """Token ids of a template text, each ``[MASK:n]`` replaced by n mask ids (a row for `fill`)."""
    return encode_template(tokenizer, parse_template(text), mask_id)


def continuation_ids(prompt: str, tokenizer: Any, mask_id: int, length: int) -> list[int]:
    """Token ids of ``prompt`` (with BOS) followed by ``length`` mask ids: a template that continues
    the prompt (what `generate` builds). `InputError` when the prompt spells the mask token (`text_ids`)."""
    if length < 1:
        raise InputError(f"the number of new tokens must be >= 1, got {length}")
    return text_ids(tokenizer, prompt, mask_id) + [mask_id] * length
