"""One engine, one generation at a time, requests served first come first served.

The speculative engine keeps one target KV cache and one drafter state: a generation owns them from its
prefill to its last round, so requests do not run side by side; they wait in a FIFO queue and a single
worker thread runs them in turn (on a CPU two generations at once would share the same cores anyway). Each
round's tokens are counted as they come, and a request whose client went away is ended before its next
round begins.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field

from ..core.engine import SpeculativeGenerator
from ..errors import MambaspecError
from ..loading.pipeline import Pipeline, load_drafter
from ..loading.trees import DEFAULT_TREE
from .metrics import Metrics
from .protocol import ApiError, GenerationRequest

log = logging.getLogger("mambaspec.serve")
PER_REQUEST_DRAFTERS = ("none", "lookup")  # cheap to hold besides the server's own drafter: no model to load


class Cancelled(Exception):
    """The request's client went away; its generation ends before the next round."""


@dataclass
class Job:
    """A request in the queue, and the way its events reach the request's handler on the event loop.

    Events: ``("text", piece)``, then ``("done", result)``; or ``("error", ApiError)``, or ``("cancelled", None)``.
    """

    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    enqueued: float = field(default_factory=time.perf_counter)
    queue_s: float = 0.0

    def cancel(self) -> None:
        self.cancelled.set()

    def emit(self, kind: str, payload: object = None) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, payload))
        except RuntimeError:  # the event loop is gone: the server is shutting down
            self.cancel()


class WatchedRounds:
    """The engine's rounds, one by one: ``on_round`` sees each round's tokens, and once ``cancelled()`` the
    generation ends before the next round starts (``Cancelled``). Stands in for a pipeline's generator."""

    def __init__(self, generator: SpeculativeGenerator, on_round, cancelled) -> None:
        self.generator, self.on_round, self.cancelled = generator, on_round, cancelled

    def stream(self, *args, **kwargs):
        rounds = self.generator.stream(*args, **kwargs)
        while True:
            if self.cancelled():
                rounds.close()
                raise Cancelled()
            try:
                new = next(rounds)
            except StopIteration as done:
                return done.value
            self.on_round(len(new))
            yield new


class GenerationQueue:
    """Runs jobs one at a time, in the order they came, on one worker thread."""

    def __init__(self, pipe: Pipeline, metrics: Metrics, default_tree=DEFAULT_TREE, max_queue: int = 64) -> None:
        self.metrics, self.default_tree, self.max_queue = metrics, default_tree, max_queue
        self.pipelines = {pipe.drafter.name: pipe}
        for name in PER_REQUEST_DRAFTERS:  # the same target with another drafter: made now, nothing loaded
            if name not in self.pipelines:
                drafter = load_drafter(name, pipe.target)
                self.pipelines[name] = Pipeline(pipe.target, drafter, SpeculativeGenerator(
                    pipe.target.model, drafter, tokenizer=pipe.target.tokenizer, target_options=pipe.target.optimized))
        self.drafter = pipe.drafter.name
        self.jobs: queue.Queue = queue.Queue()
        self.current: Job | None = None  # the job whose generation runs
        self.thread: threading.Thread | None = None

    @property
    def busy(self) -> bool:
        return self.current is not None

    def check_drafter(self, name: str | None) -> None:
        if name is not None and name not in self.pipelines:
            raise ApiError(400, f"drafter '{name}' is not served here: send '{self.drafter}' (this server's), or "
                                f"{' or '.join(repr(n) for n in self.pipelines if n != self.drafter)}",
                           param="drafter")

    def submit(self, job: Job) -> None:
        if self.jobs.qsize() >= self.max_queue:
            raise ApiError(429, f"{self.jobs.qsize()} requests are already waiting; retry later or send this one "
                                f"to another replica", code="queue_full", kind="server_busy")
        self.jobs.put(job)

    def start(self) -> None:
        self.thread = threading.Thread(target=self.work, name="mambaspec-engine", daemon=True)
        self.thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel what waits and what runs, and let the worker finish its round."""
        while not self.jobs.empty():
            self.jobs.get_nowait().cancel()
        if (running := self.current) is not None:
            running.cancel()
        self.jobs.put(None)
        if self.thread is not None:
            self.thread.join(timeout)

    def work(self) -> None:
        while (job := self.jobs.get()) is not None:
            if job.cancelled.is_set():
                job.emit("cancelled")
                continue
            self.current = job
            try:
                self.run(job)
            finally:
                self.current = None

    def tree(self, name: str | None):
        """A request's tree: the server's default when it names none, or names ``auto`` and the server runs a bandit
        over its own arms (``--tree auto --arms``); else the name (the pipeline keeps its ``dynamic`` and ``auto``)."""
        if name is None or (name.strip().lower() == "auto" and hasattr(self.default_tree, "arms")):
            return self.default_tree
        return name

    def run(self, job: Job) -> None:
        req, base = job.request, self.pipelines[job.request.drafter or self.drafter]
        job.queue_s = time.perf_counter() - job.enqueued
        self.metrics.started(len(req.prompt_ids), job.queue_s)
        pipe = Pipeline(base.target, base.drafter, WatchedRounds(base.generator, self.metrics.round,
                                                                 job.cancelled.is_set), policies=base.policies,
                        calibration_key=base.calibration_key)
        try:
            stream = pipe.stream(req.prompt_ids, max_new_tokens=req.max_new_tokens, tree=self.tree(req.tree),
                                 sampling=req.sampling, seed=req.seed, stop=req.stop)
            for piece in stream:
                job.emit("text", piece)
            self.metrics.finished(stream.result.stats)
            job.emit("done", stream.result)
        except Cancelled:
            self.metrics.add("requests_cancelled_total")
            job.emit("cancelled")
        except MambaspecError as e:
            job.emit("error", ApiError(400, str(e)))
        except Exception as e:  # a bug: keep serving, say so, and keep the traceback for whoever fixes it
            log.exception("generation failed")
            job.emit("error", ApiError(500, f"the generation failed: {type(e).__name__}: {e}", kind="server_error"))
