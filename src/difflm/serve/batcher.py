"""The request batcher: one thread that owns the model and runs every request's rows in `RowBatch`es.

(Not a "scheduler" in the diffusers sense - that is the sampler's step, `difflm.sampling.DecodingStep`;
this is the HTTP side's continuous batching.)

Requests (`Job`s: one row per choice) wait in a bounded queue; between two denoising steps the
batcher admits waiting rows into a batch of their options (`difflm.sampling.batch_key`), so
rows that arrive together share one model call per step and a request arriving later joins at
the next step - continuous batching. After each step every row's `ChoiceText` says what became
final (`Row.settled_tokens`: with token editing or remasking the current block is final only once
it ends); a row leaves as soon as its text has ended (stop token, stop string, complete canvas), its
client went away, or its request timed out. Results go back to the request's asyncio queue with
``loop.call_soon_threadsafe``: the event loop never waits on the model.

A job of a model that the masked row loop cannot decode (a uniform-state model: ``Job.options`` set,
its choices `WholeRow`s) runs whole instead, between two rounds of the batches, through the sampler's
own `denoise` (`difflm.serve.whole.WholeRun`): its callback posts each step and stops the run on a
cancel, a timeout or shutdown.
"""

from __future__ import annotations

import asyncio
import collections
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from ..errors import InputError
from ..sampling import Row, RowBatch, SamplerOptions
from .protocol import APIError, sampler_error
from .streaming import ChoiceText, TokenText, canvas_cells
from .whole import Stopped, WholeRow, WholeRun


@dataclass
class Choice:
    """One row of a request: its `Row` (difflm.sampling; a `WholeRow` in a job run whole), its text, and its
    step count."""

    index: int
    row: Row | WholeRow
    text: ChoiceText
    prompt_tokens: int
    model_calls: int = 0


@dataclass
class Job:
    """A request in flight. Messages put on ``queue`` (in the event loop's thread):
    ("delta", choice, text, step_info or None), ("end", choice), ("error", APIError). ``options``: set for
    a job run whole through `denoise` (its choices' rows are `WholeRow`s), None for `RowBatch` rows."""

    choices: list[Choice]
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    deadline: float
    stream_steps: bool = False
    options: SamplerOptions | None = None
    cancelled: bool = False
    finished: bool = False
    submitted: float = field(default_factory=time.perf_counter)

    def post(self, *message: Any) -> None:
        """Deliver a message from any thread (the loop may be closed during shutdown)."""
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, message)
        except RuntimeError:
            pass


class RequestBatcher:
    """Runs jobs on the model in a background thread, their rows batched between steps.

    Args:
        model: a `DiffusionLM`.
        text: the shared `TokenText`.
        max_batch: rows per model call at most (1 = every request alone, in arrival order).
        max_queue: jobs waiting for a slot at most; `submit` answers 429 beyond.
        metrics: a `Metrics` (or None).
        batch_window: seconds a new cached cohort waits for more rows before its first step (it takes
            none once it has stepped) while other batches are in flight; a full cohort, one of rows that
            need no cache, or one on an idle server never waits.
    """

    def __init__(self, model: Any, text: TokenText, *, max_batch: int = 64, max_queue: int = 256,
                 metrics: Any = None, batch_window: float = 0.0) -> None:
        self.model, self.text = model, text
        self.max_batch, self.max_queue = max_batch, max_queue
        self.metrics = metrics
        self.batch_window = batch_window
        self._born: dict[int, float] = {}  # id(batch) -> when it was made (for the cohort window)
        self._pending: collections.deque[Job] = collections.deque()
        self._whole: collections.deque[Job] = collections.deque()  # admitted jobs to run whole, in order
        self._running: Job | None = None  # the job run whole now
        self._stop_reason = "the server is shutting down"
        self._batches: list[RowBatch] = []
        self._jobs: dict[int, Job] = {}  # id(row) -> job, for rows in a batch
        self._wake = threading.Condition()
        self._stopping = False
        self._drain_deadline: float | None = None  # set when shutdown began (`drain`)
        self._thread = threading.Thread(target=self._loop, name="difflm-batcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, reason: str = "the server is shutting down") -> None:
        """Cancel everything in flight (each job gets a 503 error) and end the thread."""
        with self._wake:
            self._stopping, self._stop_reason = True, reason
            self._wake.notify()
        self._thread.join(timeout=30)
        with self._wake:
            for job in self._in_flight():
                if not job.finished:
                    job.finished = True
                    job.post("error", APIError(503, reason, type="server_error", code="shutting_down"))

    def drain(self, seconds: float) -> None:
        """Shutdown began: refuse new jobs (503) and end every job still in flight ``seconds`` from
        now with a 503 (checked between steps)."""
        with self._wake:
            self._drain_deadline = time.perf_counter() + seconds
            self._wake.notify()

    def submit(self, job: Job) -> None:
        """Queue ``job``; `APIError` 429 when the queue is full, 503 when shutting down."""
        with self._wake:
            if self._stopping or self._drain_deadline is not None:
                raise APIError(503, "the server is shutting down", type="server_error", code="shutting_down")
            if len(self._pending) >= self.max_queue:
                raise APIError(429, f"the server is busy: {len(self._pending)} requests are waiting; retry later",
                               type="rate_limit_error", code="queue_full")
            self._pending.append(job)
            self._gauges()
            self._wake.notify()

    def cancel(self, job: Job) -> None:
        """The client went away: stop denoising the job's rows (at the next step)."""
        job.cancelled = True
        with self._wake:
            self._wake.notify()

    # -- the thread ----------------------------------------------------------------------------
    def _in_flight(self) -> list[Job]:
        """Every job queued, admitted or running, once each."""
        jobs = [*self._pending, *self._jobs.values(), *self._whole, *([self._running] if self._running else [])]
        return list({id(job): job for job in jobs}.values())

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._stopping and not self._pending and not self._batches and not self._whole:
                    self._wake.wait()
                if self._stopping:
                    return
                self._expire(time.perf_counter())
                self._admit()
                whole = self._whole.popleft() if self._whole else None
                ready, wait = self._ready(time.perf_counter())
                if whole is None and not ready and wait is not None:  # only young cohorts: let more rows arrive
                    self._wake.wait(wait)
                    continue
            if whole is not None and whole.cancelled:  # its client went away while it waited
                whole.finished = True
            elif whole is not None and not whole.finished:
                self._run_whole(whole)
            for batch in ready:
                try:
                    self._step(batch)
                except Exception as exc:  # a bug or out of memory: fail this batch's requests, keep serving
                    traceback.print_exc(file=sys.stderr)
                    self._fail(batch, exc)
            self._batches = [b for b in self._batches if len(b)]
            self._born = {id(b): self._born[id(b)] for b in self._batches if id(b) in self._born}
            self._gauges()

    def _ready(self, now: float) -> tuple[list[RowBatch], float | None]:
        """The batches to step now, and (when none is) the seconds until the first young cohort's
        window ends. A cohort that has not stepped waits `batch_window` from its making for more rows
        while the server is busy (other batches in flight: more requests are likely to come), unless it
        is full; a request alone on an idle server starts at once."""
        ready, waits = [], []
        for batch in self._batches:
            age = now - self._born.get(id(batch), now - self.batch_window)
            busy = any(len(other) for other in self._batches if other is not batch)
            young = (batch.lockstep and not batch.started and len(batch) < self.max_batch and busy
                     and age < self.batch_window)
            if young:
                waits.append(self.batch_window - age)
            else:
                ready.append(batch)
        return ready, (min(waits) if waits else None)

    def _active_rows(self) -> int:
        return sum(len(b) for b in self._batches) + (len(self._running.choices) if self._running else 0)

    def _admit(self) -> None:
        """Move waiting jobs into batches, oldest first, while their rows fit (a job's rows join
        together: they share options, so they share batches)."""
        while self._pending:
            job = self._pending[0]
            if job.cancelled:
                self._pending.popleft()
                job.finished = True
                continue
            if job.options is not None:  # runs whole, in its turn (`_run_whole`); its rows never join a batch
                self._whole.append(self._pending.popleft())
                continue
            if self._active_rows() and self._active_rows() + len(job.choices) > self.max_batch:
                return
            self._pending.popleft()
            for choice in job.choices:
                batch = next((b for b in self._batches if b.accepts(choice.row)
                              and len(b) < self.max_batch), None)
                if batch is None:
                    batch = RowBatch(self.model, choice.row.key)
                    self._batches.append(batch)
                    self._born[id(batch)] = time.perf_counter()
                batch.add(choice.row)
                self._jobs[id(choice.row)] = job

    def _expire(self, now: float) -> None:
        """Jobs past their deadline end with a timeout error; cancelled ones just leave. Past the
        shutdown deadline (`drain`) every job ends with a 503."""
        if self._drain_deadline is not None and now > self._drain_deadline:
            error = APIError(503, "the server is shutting down; the request did not finish within "
                             "--shutdown-timeout", type="server_error", code="shutting_down")
            for job in self._in_flight():
                if not job.finished:
                    job.cancelled = job.finished = True
                    job.post("error", error)
        for job in self._in_flight():
            if not job.finished and now > job.deadline:
                job.cancelled = job.finished = True
                job.post("error", APIError(408, "the request timed out before it finished; ask for fewer tokens or "
                                                "steps, or raise --request-timeout", type="timeout_error",
                                           code="timeout"))

    def _step(self, batch: RowBatch) -> None:
        """One model call of ``batch``; the text of each row that stepped (or finished) is updated and sent."""
        for row in list(batch.rows):
            job = self._jobs.get(id(row))
            if job is None or job.cancelled:
                self._leave(batch, row)
        rows = list(batch.rows)
        start = time.perf_counter()
        stepped = batch.step()
        seconds = time.perf_counter() - start
        if self.metrics is not None and stepped:
            self.metrics.step(len(stepped), seconds)
        events = {id(row): event for row, event in stepped}
        mask_id = self.model.config.mask_token_id
        for row in rows:
            event = events.get(id(row))
            job = self._jobs.get(id(row))
            if job is None or (event is None and not row.done):  # a row can finish between steps (a block's end)
                continue
            choice = next(c for c in job.choices if c.row is row)
            choice.model_calls += event is not None
            generated = row.settled_tokens
            delta = choice.text.update(generated, final=row.done or mask_id not in generated)
            info = None
            if job.stream_steps and event is not None:
                mask = event.generate_mask[0]
                info = {"step": event.step, "total_steps": event.total_steps, "block": event.block,
                        "canvas": canvas_cells(self.text, row.new_tokens, mask_id),
                        "committed": event.committed[0][mask].nonzero().flatten().tolist(),
                        "model_calls": choice.model_calls, "batch_size": len(stepped),
                        "step_ms": round(seconds * 1000, 3)}
            if delta or info:
                job.post("delta", choice, delta, info)
            if choice.text.ended:
                job.post("end", choice)
                job.finished = all(c.text.ended for c in job.choices)
                self._leave(batch, row)

    def _run_whole(self, job: Job) -> None:
        """Run ``job`` through `denoise`, ``max_batch`` choices at a time (`WholeRun`); a cancel, its deadline
        or shutdown ends it after the step in progress. An `InputError` of the sampler (an option it refuses)
        is the job's 400; anything else its 500, as a failed batch's."""

        def should_stop() -> bool:
            with self._wake:
                if self._stopping and not job.finished:
                    job.cancelled = job.finished = True
                    job.post("error", APIError(503, self._stop_reason, type="server_error", code="shutting_down"))
                self._expire(time.perf_counter())
            return job.cancelled or job.finished

        self._running = job
        self._gauges()
        try:
            for start in range(0, len(job.choices), self.max_batch):
                WholeRun(self.model, self.text, job, job.choices[start:start + self.max_batch],
                         should_stop=should_stop, metrics=self.metrics).run()
                if should_stop():
                    break
        except Stopped:
            pass
        except InputError as exc:
            job.cancelled = job.finished = True
            job.post("error", sampler_error(exc))
        except Exception as exc:  # a bug or out of memory: fail this request, keep serving
            traceback.print_exc(file=sys.stderr)
            job.cancelled = job.finished = True
            job.post("error", APIError(500, f"internal error while denoising ({type(exc).__name__}); see the server "
                                       "log", type="server_error", code="internal_error"))
        finally:
            with self._wake:
                self._running = None

    def _fail(self, batch: RowBatch, exc: Exception) -> None:
        error = APIError(500, f"internal error while denoising ({type(exc).__name__}); see the server log",
                         type="server_error", code="internal_error")
        for row in list(batch.rows):
            job = self._jobs.pop(id(row), None)
            if job is not None and not job.finished:
                job.cancelled = job.finished = True
                job.post("error", error)
            batch.cancel(row)
        batch.rows.clear()

    def _leave(self, batch: RowBatch, row: Row) -> None:
        batch.cancel(row)
        self._jobs.pop(id(row), None)

    def _gauges(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(len(self._pending))
            self.metrics.active_rows.set(self._active_rows())

