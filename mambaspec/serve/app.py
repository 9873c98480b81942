"""The OpenAI-compatible HTTP server: Starlette routes over one ``GenerationQueue``, run by uvicorn.

    POST /v1/chat/completions, /v1/completions   (``"stream": true``: server-sent events)
    GET  /v1/models, /health, /metrics

Handlers check a request and tokenize its prompt on the event loop (with their own copy of the tokenizer),
then queue it; the engine's worker thread runs one generation at a time and hands text back piece by piece.
A client that disconnects, streaming or not, has its generation ended before the next round.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import socket
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from ..core.sampling import SamplingConfig
from ..errors import MambaspecError
from ..loading.pipeline import Pipeline
from ..loading.trees import DEFAULT_TREE
from . import protocol
from .metrics import Metrics
from .protocol import ApiError, ChatRequest, CompletionRequest, GenerationRequest
from .worker import GenerationQueue, Job

log = logging.getLogger("mambaspec.serve")


class Service:
    """What the routes share: the served model's name, the queue, the metrics and the front end's tokenizer."""

    def __init__(self, pipe: Pipeline, model: str, tree=DEFAULT_TREE, max_tokens: int = 128, max_queue: int = 64):
        self.model, self.max_tokens = model, max_tokens
        self.metrics = Metrics()
        self.queue = GenerationQueue(pipe, self.metrics, tree, max_queue)
        self.tokenizer = copy.deepcopy(pipe.target.tokenizer)  # tokenizers are not shared across threads
        self.context = pipe.generator.context_length
        self.vocab_size = pipe.generator.vocab_size

    def request(self, body: dict, kind: str) -> GenerationRequest:
        """A checked request with its prompt's token ids, or ``ApiError``."""
        req = protocol.parse(ChatRequest if kind == "chat" else CompletionRequest, body)
        if req.model is not None and req.model != self.model:
            raise ApiError(404, f"model '{req.model}' does not exist here; this server serves '{self.model}' "
                                f"(GET /v1/models)", param="model", code="model_not_found")
        self.queue.check_drafter(req.drafter)
        try:
            sampling = SamplingConfig(temperature=req.temperature, top_p=req.top_p, top_k=req.top_k)
            ids = (protocol.chat_prompt(self.tokenizer, req.messages) if kind == "chat"
                   else protocol.text_prompt(self.tokenizer, req.prompt, self.vocab_size))
        except MambaspecError as e:
            raise ApiError(400, str(e)) from None
        max_tokens = req.max_tokens if req.max_tokens is not None else getattr(req, "max_completion_tokens", None)
        budget = protocol.budget(len(ids), max_tokens, self.max_tokens, self.context,
                                 "messages" if kind == "chat" else "prompt")
        return GenerationRequest(
            kind=kind, prompt_ids=ids, max_new_tokens=budget,
            sampling=sampling, seed=req.seed, stop=protocol.stop_strings(req.stop), tree=protocol.check_tree(req.tree),
            drafter=req.drafter, stream=req.stream, model=self.model,
            include_usage=bool(req.stream_options and req.stream_options.include_usage))


def error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status)


async def read_json(request: Request) -> object:
    try:
        return json.loads(await request.body())
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON ({e})") from None


async def cancel_on_disconnect(request: Request, job: Job) -> None:
    """Cancel ``job`` when the client goes away (the body is read already: what comes next is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    job.cancel()


def generation_endpoint(kind: str):
    async def endpoint(request: Request) -> Response:
        service: Service = request.app.state.service
        try:
            req = service.request(await read_json(request), kind)
            response = await respond(request, service, req)
        except ApiError as err:
            service.metrics.request(kind, err.status)
            return error_response(err)
        service.metrics.request(kind, response.status_code)
        return response
    return endpoint


async def respond(request: Request, service: Service, req: GenerationRequest) -> Response:
    """Queue the request; answer with the whole completion, or stream it once its generation has begun."""
    job = Job(req, asyncio.get_running_loop())
    service.queue.submit(job)
    watcher = asyncio.create_task(cancel_on_disconnect(request, job))
    streaming = False
    try:
        kind, payload = await job.events.get()  # waits for its turn: the status is known before headers go out
        if req.stream and kind not in ("error", "cancelled"):
            streaming = True  # the stream's events() cancels the job and the watcher when it ends
            return StreamingResponse(events(req, job, (kind, payload), watcher), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        while kind == "text":
            kind, payload = await job.events.get()
        if kind == "error":
            raise payload
        if kind == "cancelled":
            return Response(status_code=499)  # nobody is listening any more (nginx's code for it)
        return JSONResponse(protocol.completion(req, payload, job.queue_s))
    finally:
        if not streaming:
            job.cancel()  # a no-op once done; ends the generation of a handler that was interrupted
            watcher.cancel()


def sse(data: object) -> str:
    return f"data: {json.dumps(data) if not isinstance(data, str) else data}\n\n"


async def events(req: GenerationRequest, job: Job, first: tuple, watcher: asyncio.Task):
    """Server-sent events: a chunk per piece of text, the final chunk(s) with usage and speculation, ``[DONE]``."""
    try:
        if req.kind == "chat":
            yield sse(protocol.chunk(req, first=True))
        kind, payload = first
        while kind == "text":
            yield sse(protocol.chunk(req, payload))
            kind, payload = await job.events.get()
        if kind == "done":
            for data in protocol.final_chunks(req, payload, job.queue_s):
                yield sse(data)
            yield sse("[DONE]")
        elif kind == "error":
            yield sse(payload.body())
    finally:
        job.cancel()  # a no-op once done; ends the generation when the stream was cut
        watcher.cancel()


async def models(request: Request) -> Response:
    service: Service = request.app.state.service
    return JSONResponse({"object": "list", "data": [{"id": service.model, "object": "model", "created": 0,
                                                     "owned_by": "mambaspec"}]})


async def health(request: Request) -> Response:
    service: Service = request.app.state.service
    q = service.queue
    return JSONResponse({"status": "ok", "model": service.model, "drafter": q.drafter,
                         "drafters": list(q.pipelines), "queue_length": q.jobs.qsize(), "busy": q.busy})


async def metrics(request: Request) -> Response:
    service: Service = request.app.state.service
    return PlainTextResponse(service.metrics.render(service.queue.jobs.qsize(), service.queue.busy),
                             media_type="text/plain; version=0.0.4")


async def http_error(request: Request, exc: HTTPException) -> Response:
    """Unknown paths and methods answer in OpenAI's error shape too."""
    return error_response(ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                                   code="not_found" if exc.status_code == 404 else None))


async def server_error(request: Request, exc: Exception) -> Response:
    log.exception("request failed")
    return error_response(ApiError(500, f"internal error: {type(exc).__name__}", kind="server_error"))


def make_app(pipe: Pipeline, model: str, tree=DEFAULT_TREE, max_tokens: int = 128, max_queue: int = 64) -> Starlette:
    """The ASGI app serving ``pipe`` under the name ``model``; ``tree`` and ``max_tokens``: the defaults of requests
    that name none; ``max_queue``: waiting requests beyond which new ones get HTTP 429."""
    service = Service(pipe, model, tree, max_tokens, max_queue)

    @asynccontextmanager
    async def lifespan(app):
        service.queue.start()
        yield
        service.queue.stop()

    app = Starlette(routes=[
        Route("/v1/chat/completions", generation_endpoint("chat"), methods=["POST"]),
        Route("/v1/completions", generation_endpoint("text"), methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ], exception_handlers={HTTPException: http_error, Exception: server_error}, lifespan=lifespan)
    app.state.service = service
    return app


def make_server(app: Starlette, log_level: str = "info"):
    """A uvicorn server for ``app``; run it with ``server.run(sockets=[bind(host, port)])``."""
    import uvicorn

    return uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="on", timeout_graceful_shutdown=5))


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (port 0: any free one), not yet listening; ``MambaspecError`` if it cannot be."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except (OSError, OverflowError) as e:
        raise MambaspecError(f"cannot listen on {host}:{port} ({getattr(e, 'strerror', None) or e}); pick another "
                             f"--host or --port") from None
    return sock


def url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"
