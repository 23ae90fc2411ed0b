"""The FastAPI application of `difflm serve`: OpenAI's completions, chat and models endpoints, the
health and metrics endpoints, and the live web page at ``/``.

Every answer to a bad request is a 4xx with OpenAI's error body; an unexpected failure is a 500
whose body names no internals (the traceback goes to the server's log). The model runs in the
`RequestBatcher`'s thread; handlers only parse, validate, queue and forward what it posts. The model
is loaded through `difflm.formats.load` (the one loader), never through the command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
import uuid
from pathlib import Path
from typing import Any, AsyncIterator

import torch
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from .. import formats
from ..errors import InputError, ModelLoadError
from ..sampling import Row, SamplerOptions
from ..sampling.options import model_options
from .batcher import Choice, Job, RequestBatcher
from .config import ServerConfig
from .guards import MAX_BODY_BYTES, HostCheck, read_body, require_json
from .metrics import Metrics
from .prompts import chat_rows, check_model, completion_rows, sampler_options
from .protocol import APIError, ChatRequest, CompletionRequest, parse_body, sampler_error
from .streaming import ChoiceText, TokenText, sse
from .whole import WholeRow, check_fields, decodes_whole, whole_choice_text

STATIC_DIR = Path(__file__).resolve().parent / "static"


def load_model(config: ServerConfig) -> Any:
    """The `DiffusionLM` that ``config.model`` names (a bundled name or a directory), on ``config.device``;
    `ModelLoadError` for anything but a discrete diffusion LM with a tokenizer - masked, or uniform-state
    (`difflm.formats.load_diffusion_lm`) - told from the directory's configs before any weights load
    (`difflm.formats.survey`)."""
    found = formats.survey(config.model)
    if found.autoregressive or found.kind not in ("dlm", "adapter"):
        what = ("a plain causal LM" if found.kind == "causal-lm" else
                f"an adapter of a causal LM ({found.reason})" if found.kind == "adapter" else
                f"a {found.kind} model (its {found.reason.partition(' (')[0]} says so), not a discrete DLM")
        advice = ("adapt it to a masked DLM first (`difflm train --objective adapt`)" if found.autoregressive else
                  f"decode it with `difflm generate --model {config.model}`")
        raise ModelLoadError("difflm serve serves discrete diffusion LMs, masked diffusion or uniform-state (a DLM "
                             f"checkpoint or a DLM adapter); {config.model} is {what}: {advice}")
    return formats.load_diffusion_lm(config.model, device=config.device)


class Server:
    """What the routes share: config, model, tokenizer, request batcher, metrics."""

    def __init__(self, config: ServerConfig, model: Any = None) -> None:
        self.config, self.model = config, model
        self.metrics = Metrics()
        self.text: TokenText | None = None
        self.defaults: SamplerOptions | None = None
        self.batcher: RequestBatcher | None = None
        self.whole = False  # the model's requests run whole through `denoise` (a uniform-state model)
        self.started = time.time()

    @contextlib.asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        if self.model is None:
            self.model = load_model(self.config)
        if self.model.tokenizer is None:
            raise InputError("the model has no tokenizer; the server needs one to read and write text")
        # the model's own decoding settings (generation_config.json), under every request's fields; a bad file
        # fails the start, not each request
        self.defaults = model_options(self.model)
        self.text = TokenText(self.model.tokenizer)
        self.whole = decodes_whole(self.model)
        self.batcher = RequestBatcher(self.model, self.text, max_batch=self.config.max_batch,
                                      max_queue=self.config.max_queue, metrics=self.metrics,
                                      batch_window=self.config.batch_window_ms / 1000)
        self.batcher.start()
        try:
            yield
        finally:
            self.batcher.stop()

    def drain(self, seconds: float) -> None:
        """The server began to shut down: new requests get 503, and those still running ``seconds``
        from now end with a 503 (a stream: an error event, then [DONE])."""
        if self.batcher is not None:
            self.batcher.drain(seconds)

    def authorize(self, request: Request) -> None:
        key = self.config.api_key
        if key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise APIError(401, "incorrect or missing API key; send Authorization: Bearer <key>",
                           code="invalid_api_key")

    def make_job(self, request: Any, specs: list, loop: asyncio.AbstractEventLoop) -> Job:
        """A `Job` with one `Row` per spec (400 on a bad option or template); of a model whose requests run
        whole, one `WholeRow` per spec."""
        options = sampler_options(request, self.defaults)
        if self.whole:
            check_fields(self.model, request.sampler_overrides(), options)
        choices = []
        for index, spec in enumerate(specs):
            generator = torch.Generator()
            if spec.seed is None:
                generator.seed()  # a fresh, non-deterministic stream
            else:
                generator.manual_seed(spec.seed)
            if self.whole:
                text = whole_choice_text(self.text, spec.stop_ids, spec.stops)
                choices.append(Choice(index, WholeRow(spec.template, generator), text, spec.prompt_tokens))
                continue
            try:
                row = Row(self.model, spec.template, options, generator=generator)
            except InputError as exc:
                raise sampler_error(exc) from None
            text = ChoiceText(self.text, self.model.config.mask_token_id, spec.stop_ids, spec.stops)
            choices.append(Choice(index, row, text, spec.prompt_tokens))
        return Job(choices, loop, asyncio.Queue(), time.perf_counter() + self.config.request_timeout,
                   stream_steps=request.stream_steps, options=options if self.whole else None)

    async def respond(self, request: Request, body: Any, specs: list, endpoint: str) -> Response:
        job = self.make_job(body, specs, asyncio.get_running_loop())
        self.batcher.submit(job)
        answer = Answer(self, job, body, endpoint)
        if body.stream:
            return StreamingResponse(answer.stream(), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        collect = asyncio.ensure_future(answer.collect())
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({collect, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:  # also when this handler is cancelled: no task is left behind, none with an unread error
            answered = collect.done()
            for task in (collect, gone):
                if task.done():
                    task.cancelled() or task.exception()  # marks an error as retrieved
                else:
                    task.cancel()
            if not answered:  # the client went away (or the handler was cancelled): stop denoising its rows
                self.batcher.cancel(job)
        if not answered:
            return Response(status_code=499)
        return JSONResponse(collect.result())


async def _disconnected(request: Request) -> None:
    """Returns when the client closes the connection (the body has been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


class Answer:
    """The response to one job, streamed or whole, in OpenAI's shape for ``endpoint``
    ("completions" or "chat")."""

    def __init__(self, server: Server, job: Job, body: Any, endpoint: str) -> None:
        self.server, self.job, self.body, self.endpoint = server, job, body, endpoint
        self.chat = endpoint == "chat"
        self.id = ("chatcmpl-" if self.chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.first_text: float | None = None

    async def messages(self) -> AsyncIterator[tuple]:
        """The batcher's messages until every choice ended; an error message ends it too."""
        open_choices = len(self.job.choices)
        while open_choices:
            message = await self.job.queue.get()
            if message[0] == "delta" and message[2] and self.first_text is None:
                self.first_text = time.perf_counter()
                self.server.metrics.first_text.labels(self.endpoint).observe(self.first_text - self.job.submitted)
            if message[0] == "error":
                raise message[1]
            open_choices -= message[0] == "end"
            yield message
        self._record()

    def usage(self) -> dict[str, int]:
        prompt = sum(c.prompt_tokens for c in self.job.choices)
        completion = sum(len(c.text.tokens) for c in self.job.choices)
        calls = max(c.model_calls for c in self.job.choices)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                "model_calls": calls}

    def _record(self) -> None:
        metrics, usage = self.server.metrics, self.usage()
        metrics.prompt_tokens.inc(usage["prompt_tokens"])
        metrics.completion_tokens.inc(usage["completion_tokens"])
        metrics.latency.labels(self.endpoint).observe(time.perf_counter() - self.job.submitted)

    def _envelope(self, choices: list[dict], *, chunk: bool) -> dict[str, Any]:
        kind = ("chat.completion.chunk" if chunk else "chat.completion") if self.chat else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.server.config.served_name,
                "choices": choices}

    async def collect(self) -> dict[str, Any]:
        async for _ in self.messages():
            pass
        choices = []
        for c in self.job.choices:
            if self.chat:
                choices.append({"index": c.index, "message": {"role": "assistant", "content": c.text.sent},
                                "finish_reason": c.text.finish_reason})
            else:
                choices.append({"index": c.index, "text": c.text.sent, "logprobs": None,
                                "finish_reason": c.text.finish_reason})
        return {**self._envelope(choices, chunk=False), "usage": self.usage()}

    def _choice_chunk(self, choice: Choice, delta: str, finish: str | None, info: dict | None) -> dict[str, Any]:
        if self.chat:
            out = {"index": choice.index, "delta": {"content": delta} if delta or finish is None else {},
                   "finish_reason": finish}
        else:
            out = {"index": choice.index, "text": delta, "logprobs": None, "finish_reason": finish}
        if info is not None:
            out["denoising"] = info
        return out

    async def stream(self) -> AsyncIterator[bytes]:
        ended = 0
        try:
            if self.chat:
                yield sse(self._envelope([{"index": c.index, "delta": {"role": "assistant", "content": ""},
                                           "finish_reason": None} for c in self.job.choices], chunk=True))
            async for message in self.messages():
                if message[0] == "delta":
                    _, choice, delta, info = message
                    yield sse(self._envelope([self._choice_chunk(choice, delta, None, info)], chunk=True))
                else:
                    choice = message[1]
                    ended += 1
                    chunk = self._envelope([self._choice_chunk(choice, "", choice.text.finish_reason, None)],
                                           chunk=True)
                    if ended == len(self.job.choices):
                        chunk["usage"] = self.usage()
                    yield sse(chunk)
            yield sse("[DONE]")
        except APIError as exc:
            yield sse(exc.body())
            yield sse("[DONE]")
        finally:  # also when the client disconnected and the response task was cancelled
            if ended < len(self.job.choices):
                self.server.batcher.cancel(self.job)


class CountRequests:
    """ASGI middleware: counts answers by route and status (`Metrics.requests`). Plain ASGI rather
    than Starlette's BaseHTTPMiddleware, which gets between a streamed response and the client's
    disconnect."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = {"code": 500}

        async def send_status(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            self.metrics.requests.labels(getattr(route, "path", "unknown"), str(status["code"])).inc()


def create_app(config: ServerConfig, model: Any = None) -> FastAPI:
    """The application; ``model`` (a `DiffusionLM` with a tokenizer) is loaded from
    ``config.model`` at startup when not given."""
    server = Server(config, model)
    app = FastAPI(title="difflm", lifespan=server.lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])

    if config.api_key is None:
        app.add_middleware(HostCheck, bound_host=config.host)
    app.add_middleware(CountRequests, metrics=server.metrics)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        # the traceback goes to the log (uvicorn prints it), never into the response
        return JSONResponse(APIError(500, "internal server error; see the server log", type="server_error",
                                     code="internal_error").body(), status_code=500)

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        message = {404: (f"no route {request.url.path}", "unknown_route"),
                   405: (f"method {request.method} not allowed here", "method_not_allowed")}
        text, code = message.get(exc.status_code, (str(exc.detail), None))
        return JSONResponse(APIError(exc.status_code, text, code=code).body(), status_code=exc.status_code)

    async def request_body(request: Request) -> bytes:
        server.authorize(request)
        require_json(request)
        return await read_body(request, MAX_BODY_BYTES)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        body = parse_body(await request_body(request), CompletionRequest)
        check_model(body, config)
        specs = completion_rows(body, server.model, server.text, config)
        return await server.respond(request, body, specs, "completions")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        body = parse_body(await request_body(request), ChatRequest)
        check_model(body, config)
        specs = chat_rows(body, server.model, server.text, config)
        return await server.respond(request, body, specs, "chat")

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        server.authorize(request)
        # "process" (difflm's): "masked" or "uniform" - the page draws the canvas of each its own way
        return {"object": "list", "data": [{"id": config.served_name, "object": "model", "created": int(server.started),
                                            "owned_by": "difflm", "process": "uniform" if server.whole else "masked"}]}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": config.served_name}

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        server.authorize(request)
        return Response(server.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/")
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
