"""Chatting with instruct checkpoints: the prompt their chat template builds, and where a reply ends.

A diffusion sampler fills a canvas of fixed length, so "stopping at the end of the turn" means
cutting the generated tokens at the first end-of-turn id (LLaDA: <|eot_id|>, then the
<|endoftext|> padding it was trained to emit; Dream: <|im_end|>):
``trim_at_stop(new_tokens, end_of_turn_ids(model))`` (`difflm.sampling.trim_at_stop`). The
formats record those ids in ``config.extra["end_of_turn_ids"]``; models without them stop at EOS.
"""

from __future__ import annotations

from typing import Any

from .errors import InputError


def chat_prompt_ids(model: Any, user_text: str, *, system: str | None = None) -> list[int]:
    """Token ids of a one-turn conversation, ending where the assistant's reply begins.

    Args:
        model: a `DiffusionLM` whose tokenizer ships a chat template.
        user_text: the user's message.
        system: optional system message (only if the template accepts one).
    Returns:
        list[int] of prompt ids (the template's own BOS included; nothing is added twice).
    """
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise InputError("this model has no tokenizer, so no chat template; drop --chat and pass token ids")
    if not getattr(tokenizer, "chat_template", None):
        raise InputError("this checkpoint's tokenizer ships no chat template (a base model?); run without --chat")
    if not user_text:
        raise InputError("the chat message is empty; give some text")
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user_text}]
    try:
        out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    except Exception as exc:  # jinja errors, e.g. a template that rejects a system turn
        raise InputError(f"the chat template could not format the message: {exc}") from None
    ids = out["input_ids"] if hasattr(out, "keys") else out  # transformers 5 returns a BatchEncoding
    if ids and isinstance(ids[0], list):
        ids = ids[0]
    mask_id = getattr(model.config, "mask_token_id", None)
    if mask_id is not None and mask_id in ids:  # its positions would be generated, not read
        raise InputError(f"the chat message contains the mask token (id {mask_id}) as text; its positions would be "
                         "generated, not read: remove it")
    return [int(i) for i in ids]


def end_of_turn_ids(model: Any) -> list[int]:
    """Ids that end an assistant turn: the family's end-of-turn tokens, then EOS. Possibly empty."""
    config = model.config
    ids = list(config.extra.get("end_of_turn_ids", []))
    if config.eos_token_id is not None:
        ids.append(config.eos_token_id)
    return list(dict.fromkeys(int(i) for i in ids))  # unique, order kept

