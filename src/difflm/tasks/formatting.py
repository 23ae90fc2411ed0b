"""Supervised fine-tuning records -> (prompt text, response text), and the bundled tokenizer's chat template.

A line of an SFT JSONL file is one of:

| layout | fields | prompt | response |
|---|---|---|---|
| chat | ``{"messages": [{"role", "content"}, ...]}`` | the chat template on every message but the last, ending with the assistant header | the last message (role ``assistant``) and its end of turn |
| pair | ``{"prompt": ..., "response": ...}`` | the prompt as written | the response as written |
| gsm | ``{"question", "answer"}`` (GSM8K, ``difflm data make gsm``) | ``"Question: {question}\\nAnswer:"`` - the ``gsm8k`` evaluation's prompt | ``" " + answer`` |
| sudoku | ``{"puzzle", "solution"}`` (``difflm data make sudoku``) | `difflm.tasks.sudoku.sudoku_prompt` - the ``sudoku`` evaluation's prompt | the solved grid |
| countdown | ``{"numbers", "target", "solution"}`` (``difflm data make countdown``) | `difflm.tasks.countdown.countdown_prompt` - the ``countdown`` evaluation's prompt | the steps |

The task layouts use exactly the prompts their evaluation tasks use, so a model fine-tuned on a
generated file is scored by ``difflm eval --tasks gsm8k=FILE`` / ``sudoku=FILE`` the way it was trained.

Chat: tokenizers that ship a chat template use their own; one without (the bundled tokenizer) gets
`CHAT_TEMPLATE`, which is saved with the fine-tuned model so that ``difflm generate --chat`` builds
the same prompt::

    <|bos|>System text
    User: Hello
    Assistant: Hi there.<|eos|>User: And now?
    Assistant:

(the system line only when there is a system message; an assistant turn ends with EOS).
"""

from __future__ import annotations

from typing import Any

from ..errors import InputError
from . import countdown
from .sudoku import check_record, sudoku_prompt, sudoku_response

GSM_PROMPT = "Question: {question}\nAnswer:"  # = difflm.evaluation.text_tasks.GSM8KTask's prompt
ROLES = ("system", "user", "assistant")
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n"
    "{% elif message['role'] == 'user' %}User: {{ message['content'] }}\n"
    "{% elif message['role'] == 'assistant' %}Assistant: {{ message['content'] }}{{ eos_token }}"
    "{% else %}{{ raise_exception('unknown role: ' + message['role']) }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
LAYOUTS = {"chat": ("messages",), "pair": ("prompt", "response"), "gsm": ("question", "answer"),
           "sudoku": ("puzzle", "solution"), "countdown": ("numbers", "target", "solution")}


def ensure_chat_template(tokenizer: Any) -> bool:
    """Give ``tokenizer`` difflm's `CHAT_TEMPLATE` if it has none; True when it was added."""
    if getattr(tokenizer, "chat_template", None):
        return False
    tokenizer.chat_template = CHAT_TEMPLATE
    return True


def layout_of(record: dict[str, Any]) -> str | None:
    """Which SFT layout a record is in (None: none of them)."""
    return next((name for name, fields in LAYOUTS.items() if all(f in record for f in fields)), None)


def _text(value: Any, field: str, where: str) -> str:
    if not isinstance(value, str):
        raise InputError(f"{where}: \"{field}\" must be a string, got {type(value).__name__}")
    return value


def _chat(record: dict[str, Any], tokenizer: Any, where: str) -> tuple[str, str]:
    messages = record["messages"]
    if not isinstance(messages, list) or len(messages) < 2:
        raise InputError(f"{where}: \"messages\" must be a list of at least two messages (a user turn, then the "
                         "assistant's reply)")
    for n, message in enumerate(messages):
        if not isinstance(message, dict) or not {"role", "content"} <= set(message):
            raise InputError(f"{where}: message {n} must be an object with \"role\" and \"content\"")
        if message["role"] not in ROLES:
            raise InputError(f"{where}: message {n} has role {message['role']!r}; use one of {', '.join(ROLES)}")
        _text(message["content"], f"messages[{n}].content", where)
    if messages[-1]["role"] != "assistant":
        raise InputError(f"{where}: the last message must be the assistant's reply (the response trained on), "
                         f"got role {messages[-1]['role']!r}")
    if tokenizer is None:
        raise InputError(f"{where}: a chat record needs a tokenizer (its chat template)")
    ensure_chat_template(tokenizer)
    clean = [{"role": m["role"], "content": m["content"]} for m in messages]
    try:
        prompt = tokenizer.apply_chat_template(clean[:-1], add_generation_prompt=True, tokenize=False)
        full = tokenizer.apply_chat_template(clean, add_generation_prompt=False, tokenize=False)
    except Exception as exc:  # jinja errors: a template that rejects a role order, ...
        raise InputError(f"{where}: the chat template could not format the messages: {exc}") from None
    if not full.startswith(prompt):
        raise InputError(f"{where}: the chat template does not render the conversation as its prompt followed by "
                         "the reply; use {\"prompt\", \"response\"} records instead")
    return prompt, full[len(prompt):]


def sft_texts(record: dict[str, Any], *, tokenizer: Any = None, where: str = "") -> tuple[str, str]:
    """(prompt, response) texts of one SFT record; `InputError` naming ``where`` (file:line) when the
    record is in no layout or malformed. Special tokens in them (a chat template's BOS and end of
    turn) are written as their text."""
    layout = layout_of(record)
    if layout is None:
        layouts = "; ".join(f"{name}: {', '.join(fields)}" for name, fields in LAYOUTS.items())
        raise InputError(f"{where}: not an SFT record (fields {', '.join(sorted(record)) or 'none'}); "
                         f"expected one of the layouts {layouts}")
    if layout == "chat":
        return _chat(record, tokenizer, where)
    if layout == "pair":
        prompt, response = _text(record["prompt"], "prompt", where), _text(record["response"], "response", where)
        if not response:
            raise InputError(f"{where}: empty \"response\"")
        return prompt, response
    if layout == "gsm":
        question = _text(record["question"], "question", where).strip()
        answer = _text(record["answer"], "answer", where).strip()
        if "####" not in answer:
            raise InputError(f"{where}: the answer has no final '#### <number>' line (GSM8K layout)")
        return GSM_PROMPT.format(question=question), " " + answer
    if layout == "countdown":
        numbers, target, steps = countdown.check_record(record["numbers"], record["target"], record["solution"],
                                                        where=where)
        return countdown.countdown_prompt(numbers, target), steps
    puzzle, solution = check_record(record["puzzle"], record["solution"], where=where)
    return sudoku_prompt(puzzle), sudoku_response(solution)
