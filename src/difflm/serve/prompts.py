"""From a request to the rows the sampler denoises: prompts as token templates, limits, options,
seeds.

A completion row is ``[BOS] prompt [MASK] * max_tokens`` (``suffix``: ``... [MASK] * max_tokens
suffix``, infilling - the text pieces follow `difflm infill --prefix/--suffix`: the prefix loses
its trailing whitespace and a suffix that starts with a letter or digit gets a separating space,
because byte-level BPE tokens carry their own leading space). A chat row is the model's chat
template with the generation prompt; a model without one (the bundled models are base models)
gets a plain transcript, ``USER: ...`` / ``ASSISTANT: ...`` lines ending in ``ASSISTANT:``, in the
style of the speaker tags of the bundled corpus, and its reply also ends at the next ``\\nUSER:``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..chat import end_of_turn_ids
from ..errors import InputError
from ..sampling import SamplerOptions, stop_token_ids
from ..sampling.options import model_length, over_model
from .config import ServerConfig
from .protocol import APIError, ChatRequest, CommonFields, CompletionRequest, sampler_error
from .streaming import TokenText

COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for legacy completions
CHAT_DEFAULT_MAX_TOKENS = 64
TRANSCRIPT_STOP = "\nUSER:"
SEED_STEP = 0x9E3779B97F4A7C15  # choice i of a seeded request uses seed + i * this, mod 2**63


@dataclass
class RowSpec:
    """One row to denoise: its template ids (mask id at the generated positions), the number of
    prompt tokens, the token ids and strings that end its text, and its seed."""

    template: list[int]
    prompt_tokens: int
    stop_ids: list[int]
    stops: list[str]
    seed: int | None


def choice_seed(seed: int, index: int) -> int:
    """The seed of choice ``index`` of a request seeded with ``seed`` (choice 0: ``seed`` itself)."""
    return (seed + index * SEED_STEP) % 2**63


def check_model(request: CommonFields, config: ServerConfig) -> None:
    if request.model != config.served_name:
        raise APIError(404, f"the model {request.model!r} does not exist; this server serves {config.served_name!r} "
                       "(GET /v1/models)", param="model", code="model_not_found")


def sampler_options(request: CommonFields, base: SamplerOptions | None = None) -> SamplerOptions:
    """The request's `SamplerOptions` over ``base``, the served model's own defaults (its
    generation_config.json, `model_options`; None: the sampler's): a field the request sets wins
    (400 on a bad value)."""
    try:
        options = over_model(base, **request.sampler_overrides())
    except InputError as exc:
        raise sampler_error(exc) from None
    if options.speculative:  # a model's generation_config.json may ask for it; the batcher cannot run it
        raise APIError(400, "speculative decoding is not available in the server's batched sampler; "
                       "use `difflm generate --speculative`", param="speculative", code="unsupported_parameter")
    return options


def _check_lengths(prompt_tokens: int, max_tokens: int, model: Any, config: ServerConfig, param: str) -> None:
    limit = config.max_prompt_tokens or model.max_length
    if limit is not None and prompt_tokens > limit:
        raise APIError(400, f"the prompt is {prompt_tokens} tokens, more than this server's limit of {limit}; "
                       "shorten it", param=param, code="context_length_exceeded")
    if max_tokens > config.max_tokens_limit:
        raise APIError(400, f"max_tokens is {max_tokens}, more than this server's limit of {config.max_tokens_limit}",
                       param="max_tokens", code="invalid_value")
    context = model.max_length
    if context is not None and prompt_tokens + max_tokens > context:
        raise APIError(400, f"the prompt ({prompt_tokens} tokens) plus max_tokens ({max_tokens}) is longer than "
                       f"the model's context of {context} tokens; shorten the prompt or ask for fewer tokens",
                       param="max_tokens", code="context_length_exceeded")


def _encode(text: TokenText, value: str, model: Any, param: str, *, special: bool = True) -> list[int]:
    """Token ids of a text field; 400 when it spells the mask token or is not valid Unicode."""
    what = {"prompt": "the prompt", "suffix": "the suffix", "messages": "the chat transcript"}[param]
    try:
        return text.prompt_ids(value, model.config.mask_token_id, special=special, what=what)
    except InputError as exc:
        raise APIError(400, str(exc), param=param, code="invalid_value") from None


def _check_ids(ids: list[int], model: Any) -> list[int]:
    vocab, mask_id = model.vocab_size, model.config.mask_token_id
    if any(not 0 <= i < vocab or i == mask_id for i in ids):
        raise APIError(400, f"token ids must lie in [0, {vocab}) and not be the mask token {mask_id}",
                       param="prompt", code="invalid_value")
    return ids


def completion_rows(request: CompletionRequest, model: Any, text: TokenText, config: ServerConfig) -> list[RowSpec]:
    """The rows of a completion request: every prompt times ``n``, choice index = prompt * n + j."""
    prompts = request.prompt if isinstance(request.prompt, list) and request.prompt and not isinstance(
        request.prompt[0], int) else [request.prompt]
    if not prompts:
        raise APIError(400, "prompt is an empty list", param="prompt", code="invalid_value")
    if len(prompts) > config.max_n or request.n > config.max_n:
        raise APIError(400, f"at most {config.max_n} prompts and n <= {config.max_n} per request", param="n"
                       if request.n > config.max_n else "prompt", code="invalid_value")
    max_tokens = request.max_tokens or model_length(model) or COMPLETION_DEFAULT_MAX_TOKENS  # else the model's
    mask_id = model.config.mask_token_id
    rows = []
    for prompt in prompts:
        if isinstance(prompt, str):
            prefix = _encode(text, prompt.rstrip() if request.suffix is not None else prompt, model, "prompt")
        else:
            prefix = _check_ids(list(prompt), model)
        suffix_text = request.suffix or ""
        suffix_text = " " + suffix_text if suffix_text[:1].isalnum() else suffix_text
        suffix = _encode(text, suffix_text, model, "suffix", special=False) if suffix_text else []
        _check_lengths(len(prefix) + len(suffix), max_tokens, model, config, "prompt")
        template = prefix + [mask_id] * max_tokens + suffix
        rows += [RowSpec(template, len(prefix) + len(suffix), _stop_ids(model), request.stops(), None)
                 for _ in range(request.n)]
    return _seeded(rows, request.seed)


def chat_rows(request: ChatRequest, model: Any, text: TokenText, config: ServerConfig) -> list[RowSpec]:
    """The ``n`` rows of a chat request."""
    if request.n > config.max_n:
        raise APIError(400, f"n must be <= {config.max_n}", param="n", code="invalid_value")
    max_tokens = (request.max_completion_tokens or request.max_tokens or model_length(model)
                  or CHAT_DEFAULT_MAX_TOKENS)
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in request.messages]
    stops, stop_ids = request.stops(), _stop_ids(model)
    tokenizer = text.tokenizer
    if getattr(tokenizer, "chat_template", None):
        try:
            prompt = text.chat_ids(messages)
        except Exception as exc:  # jinja errors, e.g. a template that rejects a system turn
            raise APIError(400, f"the chat template could not format the messages: {exc}", param="messages") from None
        if model.config.mask_token_id in prompt:
            raise APIError(400, f"the messages contain the mask token (id {model.config.mask_token_id}) as text; its "
                           "positions would be generated, not read. Remove it", param="messages", code="invalid_value")
        stop_ids = list(dict.fromkeys([*end_of_turn_ids(model), *stop_ids]))
    else:
        lines = [m["content"] if m["role"] == "system" else f"{m['role'].upper()}: {m['content']}" for m in messages]
        prompt = _encode(text, "\n".join(lines) + "\nASSISTANT:", model, "messages")
        stops = [*stops, TRANSCRIPT_STOP]
    _check_lengths(len(prompt), max_tokens, model, config, "messages")
    template = prompt + [model.config.mask_token_id] * max_tokens
    return _seeded([RowSpec(template, len(prompt), stop_ids, stops, None) for _ in range(request.n)], request.seed)


def _stop_ids(model: Any) -> list[int]:
    return stop_token_ids(model)


def _seeded(rows: list[RowSpec], seed: int | None) -> list[RowSpec]:
    for i, row in enumerate(rows):
        row.seed = None if seed is None else choice_seed(seed, i)
    return rows
