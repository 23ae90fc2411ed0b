"""The OpenAI wire format: request bodies, difflm's extra fields, and OpenAI-style errors.

Bodies are validated here, before anything reaches the model: a wrong type, an unknown field (a
typo such as ``stepz`` would otherwise be ignored silently), or an OpenAI feature difflm cannot
honour (logprobs, echo, best_of, penalties, logit_bias, tools) is a 400 with an error body
``{"error": {"message", "type", "param", "code"}}`` that names the field.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, create_model

from ..errors import InputError
from ..sampling.options import SamplerOptions

Int = Annotated[int, Strict()]  # "32" or true is not a number of tokens
Bool = Annotated[bool, Strict()]

# difflm's decoding options accepted as extra body fields: every `SamplerOptions` field, by name, read off the
# dataclass (a new sampler option is a request field without a second list to keep in step) - but temperature and
# top_p, OpenAI's own fields (`CommonFields`), and speculative, which the batcher cannot run (refused).
DECODING_FIELDS = tuple(name for name in SamplerOptions.names() if name not in ("temperature", "top_p", "speculative"))
# the request type of a `SamplerOptions` annotation ("int | None" -> Int); SamplerOptions checks values again
_FIELD_TYPES: dict[str, Any] = {"int": Int, "float": float, "bool": Bool, "str": str}


class APIError(Exception):
    """An error answered with ``status`` and an OpenAI-style body."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _DecodingBase(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def _request_type(spec: dataclasses.Field) -> Any:
    """The type a request may send for the `SamplerOptions` field ``spec``: its one kind of value besides None
    ("str | Strategy": a strategy's name), strict for numbers and booleans ("32" and true are no numbers)."""
    kinds = [k.strip() for k in str(spec.type).split("|") if k.strip() != "None"]
    return _FIELD_TYPES.get(kinds[0], Any) if kinds else Any


# difflm's extras: the `SamplerOptions` a request may set (each optional: None = the model's or the sampler's
# default), `speculative` (refused in `CommonFields.check_unsupported`) and the step stream switch. Numbers must
# be finite (``Infinity``, ``NaN`` and ``1e400`` are refused).
DecodingFields = create_model(
    "DecodingFields", __base__=_DecodingBase,
    **{spec.name: (_request_type(spec) | None, None) for spec in dataclasses.fields(SamplerOptions) if spec.name in DECODING_FIELDS},
    speculative=(Bool | None, None),
    stream_steps=(Bool, False),  # stream every denoising step (canvas, commits) for visualisers
)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: Bool = False  # usage is always in the final chunk; accepted for compatibility


class CommonFields(DecodingFields):  # type: ignore[misc,valid-type]
    """Fields both endpoints share (OpenAI's names and meanings)."""

    model: str
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: Int | None = Field(default=None, ge=0, lt=2**63)
    stop: str | list[str] | None = None
    n: Int = Field(default=1, ge=1)
    stream: Bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # OpenAI features a diffusion sampler does not have: accepted only at their neutral values
    logprobs: Any = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None

    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4:
            raise APIError(400, "stop takes at most 4 sequences", param="stop")
        if any(not s for s in stops):
            raise APIError(400, "stop sequences must not be empty", param="stop")
        return stops

    def check_unsupported(self) -> None:
        """400 for an OpenAI feature set to anything but its neutral value."""
        neutral = {"logprobs": (None, False, 0), "presence_penalty": (None, 0), "frequency_penalty": (None, 0),
                   "logit_bias": (None, {}), "echo": (None, False), "best_of": (None, 1)}
        for name, values in neutral.items():
            if getattr(self, name, None) not in values:
                raise APIError(400, f"{name} is not supported by difflm's diffusion sampler", param=name,
                               code="unsupported_parameter")
        if self.speculative:
            raise APIError(400, "speculative decoding is not available in the server's batched sampler; "
                           "use `difflm generate --speculative`", param="speculative", code="unsupported_parameter")

    def sampler_overrides(self) -> dict[str, Any]:
        """The `SamplerOptions` fields this request sets (temperature and top_p included)."""
        names = (*DECODING_FIELDS, "temperature", "top_p")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


class CompletionRequest(CommonFields):
    """POST /v1/completions. ``suffix`` turns the request into infilling: ``max_tokens`` tokens
    are generated between ``prompt`` and ``suffix``."""

    prompt: str | list[str] | list[int] | list[list[int]]
    suffix: str | None = None
    max_tokens: Int | None = Field(default=None, ge=1)
    echo: Bool | None = None
    best_of: Int | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict[str, Any]]
    name: str | None = None

    def text(self) -> str:
        """The message's text; content parts other than text are refused."""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise APIError(400, "only text content parts are supported", param="messages")
            parts.append(part["text"])
        return "".join(parts)


class ChatRequest(CommonFields):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: Int | None = Field(default=None, ge=1)
    max_completion_tokens: Int | None = Field(default=None, ge=1)


def parse_body(raw: bytes, model_class: type[BaseModel]) -> Any:
    """A validated request from raw JSON bytes; `APIError` 400 naming the first bad field."""
    try:
        data = json.loads(raw)
    except RecursionError:
        raise APIError(400, "the request body is nested too deeply to be a request", code="invalid_json") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer past Python's digit limit
        raise APIError(400, f"the request body is not valid JSON ({exc})", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_json")
    if b"\\u" in raw:  # only an escape can make a lone UTF-16 surrogate (raw UTF-8 cannot encode one)
        _refuse_surrogates(data)
    try:
        request = model_class.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None
    request.check_unsupported()
    return request


def _refuse_surrogates(data: dict[str, Any]) -> None:
    """400 naming the top-level field whose strings hold a lone UTF-16 surrogate ("a\\ud800b"):
    JSON allows the escape, but it is no character, and no tokenizer can encode it."""
    for name, value in data.items():
        try:
            json.dumps([name, value], ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            bad = exc.object[exc.start:exc.end].encode("utf-8", "backslashreplace").decode()
            raise APIError(400, f"{name}: the text holds a lone UTF-16 surrogate ({bad}), which is not a character; "
                           "send valid Unicode (a high surrogate must be followed by a low one)", param=name,
                           code="invalid_value") from None


def validation_error(exc: ValidationError) -> APIError:
    """The first error of a pydantic validation as a 400 that names the field."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    # unions report one error per alternative (loc ends with the type name): name the field
    loc = [str(p) for p in first["loc"] if not any(c in str(p) for c in "[]") and str(p) not in ("str", "int")]
    param = ".".join(loc) or None
    if first["type"] == "extra_forbidden":
        return APIError(400, f"unknown field {param!r}; see docs/serving.md for the fields difflm accepts",
                        param=param, code="unknown_field")
    if first["type"] == "missing":
        return APIError(400, f"missing required field {param!r}", param=param, code="missing_field")
    return APIError(400, f"{param}: {first['msg']}", param=param, code="invalid_value")


def sampler_error(exc: InputError) -> APIError:
    """A `SamplerOptions` / canvas `InputError` as a 400; the field is the first option its
    message names."""
    message = str(exc)
    found = [(m.start(), name) for name in (*DECODING_FIELDS, "temperature", "top_p")
             if (m := re.search(rf"\b{name}\b", message))]
    return APIError(400, message, param=min(found)[1] if found else None, code="invalid_value")
