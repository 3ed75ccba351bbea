"""The HTTP server: OpenAI's chat and completions API over the scheduler, and the web UI.

`create_app(models, ...)` returns a FastAPI app serving one or more loaded models, each with
its own engine and scheduler (continuous batching). `centelha serve` runs it with uvicorn.

Routes: `GET /health`, `GET /v1/models`, `GET /v1/models/{id}`, `POST /v1/chat/completions`,
`POST /v1/completions`, and the web chat at `/` (static files, no build step).

Design choices a reader should know:
- Handlers only translate: they validate (`protocol`), turn messages into prompt ids
  (chat template in a sandbox), submit one engine request per choice (`n`), and turn the
  tokens that come back into OpenAI's JSON or server-sent events.
- Text is assembled per choice by `generate.TextStream`: a stop string found in the text
  ends that choice at once (its request is cancelled, its row freed) and is not returned.
- A streaming client that disconnects cancels the response task (Starlette listens for
  the disconnect); the `finally` below cancels its requests. A non-streaming one is
  polled for while it waits.
- Log-probabilities are the model's own (a log-softmax of the raw logits, before
  temperature and penalties), so "look inside" shows what the model believed. Each token's
  `token` text is the text that token completes (a character split over two tokens shows on
  the second), so a reply's tokens add up to its text.
- Presence and frequency penalties count generated tokens only (the convention of vLLM).
- Every failure is OpenAI's error object with a fitting status: 400 invalid, 401 key,
  403 a host name not served (DNS rebinding), 404 unknown model or route, 405 method,
  413 body too large, 415 a body that is not JSON, 503 queue full, 500 a bug.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import secrets
import threading
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from centelha.api import LLM
from centelha.engine import Engine, Token
from centelha.engine import Request as EngineRequest
from centelha.errors import CentelhaError
from centelha.generate import TextStream, prompt_ids
from centelha.sampling import SamplingConfig
from centelha.serve.protocol import APIError, ChatRequest, CompletionRequest, Sampling, parse
from centelha.serve.scheduler import Error, QueueFull, Scheduler

STATIC = Path(__file__).with_name("static")
DEFAULT_MAX_BODY = 1 << 20  # 1 MiB of JSON is ~250k tokens of text: far past any context


@dataclass
class Served:
    """A model the server offers: its tokenizer, engine and scheduler."""
    name: str
    llm: LLM
    scheduler: Scheduler
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def context(self) -> int:
        return self.scheduler.engine.context

    def card(self) -> dict:
        return {"id": self.name, "object": "model", "created": self.created,
                "owned_by": "centelha", "context_length": self.context}


def serve_model(llm: LLM, name: str, max_batch: int = 8, max_queue: int = 32,
                thread: bool = True, wake: threading.Condition | None = None) -> Served:
    """`llm` behind its own engine and scheduler; `thread=False` leaves the scheduler to be
    driven by the caller (`scheduler.drive`), as `centelha serve` does from the main thread."""
    engine = Engine(llm.model, max_batch=max_batch, max_len=llm.max_context,
                    vocab_size=llm.tokenizer.vocab_size)
    return Served(name, llm, Scheduler(engine, max_queue, thread=thread, wake=wake))


# -- one choice of one request ----------------------------------------------------------------
@dataclass
class Choice:
    index: int
    request: EngineRequest
    text: TextStream
    tokens: int = 0
    finish_reason: str | None = None


@dataclass
class Event:
    """What one choice gained from one token: text, log-prob entries, maybe its end."""
    index: int
    text: str
    logprobs: list[dict]
    finish_reason: str | None
    tokens: int  # the choice's tokens so far (usage)


class ClientGone(Exception):
    pass


async def run_choices(served: Served, ids: list[int], params: Sampling, logprobs: int | None,
                      http: Request | None) -> AsyncIterator[Event]:
    """Submit `params.n` requests for `ids` and yield their events as tokens arrive.
    `http`: poll that client for a disconnect (non-streaming responses)."""
    tokenizer = served.llm.tokenizer
    room = served.context - len(ids)
    budget = min(params.limit() or room, room)
    choices = []
    for i in range(params.n):
        seed = None if params.seed is None else params.seed + i
        try:
            sampling = SamplingConfig(max_new_tokens=budget, temperature=params.temperature,
                                      top_p=params.top_p if params.top_p < 1.0 else None,
                                      presence_penalty=params.presence_penalty,
                                      frequency_penalty=params.frequency_penalty, seed=seed,
                                      stop=params.stops())
        except CentelhaError as e:
            raise APIError(400, str(e)) from None
        request = EngineRequest(ids, sampling, frozenset(tokenizer.stop_ids), logprobs)
        choices.append(Choice(i, request, TextStream(tokenizer, params.stops())))
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Token | Error] = asyncio.Queue()

    def deliver(item: Token | Error) -> None:  # on the scheduler's thread
        loop.call_soon_threadsafe(queue.put_nowait, item)

    by_id = {c.request.id: c for c in choices}
    try:
        for choice in choices:
            served.scheduler.submit(choice.request, deliver)
        remaining = len(choices)
        while remaining:
            item = await next_item(queue, http)
            choice = by_id.get(item.request_id)
            if choice is None or choice.finish_reason is not None:
                continue
            if isinstance(item, Error):
                raise APIError(500, item.message, type="server_error")
            event = advance(choice, item, tokenizer, logprobs)
            if event.finish_reason is not None:
                remaining -= 1
                if choice.text.stopped and item.finish_reason is None:
                    served.scheduler.cancel(choice.request.id)  # a stop string: free the row
            if event.text or event.logprobs or event.finish_reason:
                yield event
    except QueueFull as e:
        raise APIError(503, str(e), type="server_error", code="server_busy") from None
    finally:
        for choice in choices:
            if choice.finish_reason is None:
                served.scheduler.cancel(choice.request.id)


DISCONNECT_POLL = 0.25  # seconds between checks that a non-streaming client is still there


async def next_item(queue: asyncio.Queue, http: Request | None) -> Token | Error:
    """The next token or error; with `http`, raises ClientGone once that client has left
    (checked every DISCONNECT_POLL seconds, whether tokens are flowing or not)."""
    if http is None:
        return await queue.get()
    state = http.state
    while True:
        now = time.monotonic()
        if now - getattr(state, "checked", 0.0) >= DISCONNECT_POLL:
            state.checked = now
            if await http.is_disconnected():
                raise ClientGone
        try:
            return await asyncio.wait_for(queue.get(), timeout=DISCONNECT_POLL)
        except asyncio.TimeoutError:  # noqa: UP041 - not the builtin TimeoutError before 3.11
            continue


def advance(choice: Choice, token: Token, tokenizer, logprobs: int | None) -> Event:
    """Fold one token into its choice: text, log-probs, and whether the choice ended."""
    choice.tokens += 1
    is_stop_token = token.token in tokenizer.stop_ids
    text = choice.text.push(token.token) if token.token >= 0 else ""
    entries = []
    if logprobs is not None and token.logprob is not None and not is_stop_token:
        entries.append(logprob_entry(tokenizer, token, choice.text.last_piece))
    if choice.text.stopped:
        choice.finish_reason = "stop"
    elif token.finish_reason is not None:
        choice.finish_reason = token.finish_reason
        text += choice.text.finish()
    return Event(choice.index, text, entries, choice.finish_reason, choice.tokens)


def token_text(tokenizer, token_id: int) -> str:
    return tokenizer.token_bytes[token_id].decode("utf-8", errors="replace")


def logprob_entry(tokenizer, token: Token, text: str) -> dict:
    return {
        "token": text,
        "logprob": token.logprob,
        "bytes": list(tokenizer.token_bytes[token.token]),
        "top_logprobs": [{"token": token_text(tokenizer, i), "logprob": lp,
                          "bytes": list(tokenizer.token_bytes[i])}
                         for i, lp in token.top_logprobs or []],
    }


# -- building prompts ---------------------------------------------------------------------------
def chat_ids(served: Served, request: ChatRequest) -> list[int]:
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                for m in request.messages]
    try:
        ids = served.llm.chat_ids(messages)
    except CentelhaError as e:
        raise APIError(400, str(e), param="messages") from None
    return checked(served, ids)


def completion_ids(served: Served, request: CompletionRequest) -> list[int]:
    prompt = request.prompt
    tokenizer = served.llm.tokenizer
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
        if any(not 0 <= i < tokenizer.vocab_size for i in prompt):
            raise APIError(400, f"prompt token ids must be in 0…{tokenizer.vocab_size - 1}",
                           param="prompt")
        return checked(served, list(prompt))
    text = prompt[0] if isinstance(prompt, list) else prompt
    if not text:
        raise APIError(400, "the prompt is empty", param="prompt")
    return checked(served, prompt_ids(tokenizer, text))


def checked(served: Served, ids: list[int]) -> list[int]:
    if len(ids) >= served.context:
        raise APIError(400, f"the prompt is {len(ids)} tokens long and this model's context "
                            f"holds {served.context}: shorten it to leave room for the reply",
                       param="messages", code="context_length_exceeded")
    return ids


# -- responses ---------------------------------------------------------------------------------
def usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def sse(payload: dict | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


async def chat_response(served: Served, request: ChatRequest, http: Request):
    logprobs = (request.top_logprobs or 0) if request.logprobs else None

    def choice(i: int, text: str, entries: list[dict], reason: str) -> dict:
        return {"index": i, "message": {"role": "assistant", "content": text},
                "logprobs": {"content": entries} if logprobs is not None else None,
                "finish_reason": reason}

    def chunk(event: Event) -> dict:
        return {"index": event.index, "delta": {"content": event.text} if event.text else {},
                "logprobs": {"content": event.logprobs} if event.logprobs else None,
                "finish_reason": event.finish_reason}

    opening = [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                "finish_reason": None} for i in range(request.n)]
    return await respond(served, request, http, chat_ids(served, request), logprobs,
                         "chatcmpl", ("chat.completion", "chat.completion.chunk"), choice,
                         chunk, opening)


async def completion_response(served: Served, request: CompletionRequest, http: Request):
    logprobs = request.logprobs

    def choice(i: int, text: str, entries: list[dict], reason: str) -> dict:
        return {"index": i, "text": text, "finish_reason": reason,
                "logprobs": legacy_logprobs(entries) if logprobs is not None else None}

    def chunk(event: Event) -> dict:
        return choice(event.index, event.text, event.logprobs, event.finish_reason)

    return await respond(served, request, http, completion_ids(served, request), logprobs,
                         "cmpl", ("text_completion", "text_completion"), choice, chunk, [])


async def respond(served: Served, request: Sampling, http: Request, ids: list[int],
                  logprobs: int | None, prefix: str, kinds: tuple[str, str], choice, chunk,
                  opening):
    """The whole JSON reply (`choice` makes each choice), or the event stream (`chunk`
    makes each event's choice, after the `opening` ones); `kinds`: their "object" names."""
    head = {"id": f"{prefix}-{secrets.token_hex(12)}", "created": int(time.time()),
            "model": served.name}
    if request.stream:
        events = run_choices(served, ids, request, logprobs, None)
        first = await first_event(events)
        stream = event_stream({**head, "object": kinds[1]}, request, len(ids), first, events,
                              chunk, opening)
        return StreamingResponse(stream, media_type="text/event-stream")
    try:
        texts, entries, reasons, counts = await collect(served, ids, request, logprobs, http)
    except ClientGone:  # nobody is left to read an answer; its requests are cancelled
        return Response(status_code=499)
    return {**head, "object": kinds[0],
            "choices": [choice(i, texts[i], entries[i], reasons[i]) for i in range(request.n)],
            "usage": usage(len(ids), sum(counts))}


async def first_event(events: AsyncIterator[Event]) -> Event | None:
    """The first event, awaited before the response starts, so that a full queue or a
    failure is still an HTTP error status rather than an error inside a 200 stream."""
    try:
        return await events.__anext__()
    except StopAsyncIteration:
        return None


async def after(first: Event | None, events: AsyncIterator[Event]) -> AsyncIterator[Event]:
    """`first` (already taken from `events`), then the rest of `events`."""
    if first is not None:
        yield first
    async for event in events:
        yield event


async def collect(served: Served, ids: list[int], params: Sampling, logprobs: int | None,
                  http: Request) -> tuple[list[str], list[list[dict]], list[str], list[int]]:
    n = params.n
    texts, entries = [""] * n, [[] for _ in range(n)]
    reasons, counts = ["length"] * n, [0] * n
    async for event in run_choices(served, ids, params, logprobs, http):
        texts[event.index] += event.text
        entries[event.index] += event.logprobs
        counts[event.index] = event.tokens
        if event.finish_reason:
            reasons[event.index] = event.finish_reason
    return texts, entries, reasons, counts


def legacy_logprobs(entries: list[dict]) -> dict:
    """The completions endpoint's older log-prob layout."""
    offsets, at = [], 0
    for e in entries:
        offsets.append(at)
        at += len(e["token"])
    return {"tokens": [e["token"] for e in entries],
            "token_logprobs": [e["logprob"] for e in entries],
            "top_logprobs": [{t["token"]: t["logprob"] for t in e["top_logprobs"]}
                             for e in entries],
            "text_offset": offsets}


async def event_stream(head: dict, request: Sampling, prompt_tokens: int, first: Event | None,
                       events: AsyncIterator[Event], chunk, opening: list[dict]
                       ) -> AsyncIterator[str]:
    """Server-sent events: the opening choices, one chunk per event, usage if asked, then
    `[DONE]`. An error after the stream began becomes an error event (the status line is
    already sent)."""
    include_usage = bool(request.stream_options and request.stream_options.include_usage)
    extra = {"usage": None} if include_usage else {}
    for choice in opening:
        yield sse({**head, "choices": [choice], **extra})
    counts = [0] * request.n
    try:
        async for event in after(first, events):
            counts[event.index] = event.tokens
            yield sse({**head, "choices": [chunk(event)], **extra})
    except APIError as e:
        yield sse(e.body())
    if include_usage:
        yield sse({**head, "choices": [], "usage": usage(prompt_tokens, sum(counts))})
    yield sse("[DONE]")


# -- the app -------------------------------------------------------------------------------------
def create_app(models: list[Served], api_key: str | None = None,
               max_body: int = DEFAULT_MAX_BODY,
               allowed_hosts: Iterable[str] | None = (),
               cors_origins: Iterable[str] = ()) -> FastAPI:
    """The app serving `models`. `allowed_hosts`: the Host names answered besides loopback
    ones (None: any, for a server bound to a public address); `cors_origins`: web origins
    whose pages may call the API from a browser (none by default)."""
    app = FastAPI(title="centelha", docs_url=None, redoc_url=None, openapi_url=None)
    by_name = {m.name: m for m in models}
    app.state.models = by_name

    def error(e: APIError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
        return JSONResponse(e.body(), status_code=e.status, headers=headers)

    @app.exception_handler(APIError)
    async def api_error(_: Request, e: APIError) -> JSONResponse:
        return error(e)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
        kinds = {404: "not_found_error", 405: "invalid_request_error"}
        return error(APIError(e.status_code, str(e.detail), kinds.get(e.status_code,
                                                                        "invalid_request_error")))

    @app.exception_handler(Exception)
    async def bug(_: Request, e: Exception) -> JSONResponse:
        return error(APIError(500, f"internal error: {type(e).__name__}", type="server_error"))

    hosts = None if allowed_hosts is None else frozenset(h.lower() for h in allowed_hosts)
    app.add_middleware(Guard, api_key=api_key, max_body=max_body, allowed_hosts=hosts)
    if cors_origins:  # outermost, so that it answers the browser's preflight itself
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins),
                           allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])

    def model_for(name: str) -> Served:
        if name not in by_name:
            raise APIError(404, f"the model {name!r} does not exist here (models: "
                                f"{', '.join(by_name)})", param="model", code="model_not_found")
        return by_name[name]

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "models": [{"id": m.name, "active": m.scheduler.active,
                                            "queued": m.scheduler.queued} for m in models]}

    @app.get("/v1/models")
    async def list_models() -> dict:
        return {"object": "list", "data": [m.card() for m in models]}

    @app.get("/v1/models/{name:path}")
    async def one_model(name: str) -> dict:
        return model_for(name).card()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = parse(ChatRequest, await request.body())
        return await chat_response(model_for(body.model), body, request)

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = parse(CompletionRequest, await request.body())
        return await completion_response(model_for(body.model), body, request)

    @app.get("/")
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


class Guard:
    """ASGI middleware: what every request must pass before any handler runs.

    - Host: while the server listens on loopback, only loopback host names are served
      (plus `allowed_hosts`), so a web page whose DNS name was rebound to 127.0.0.1 cannot
      talk to it (DNS rebinding; Ollama's CVE-2024-28224). `allowed_hosts=None`: any.
    - Content type: a body must be `application/json`. Browsers send text/plain, form and
      untyped bodies cross-origin without asking (a "simple" request); JSON needs a CORS
      preflight, which this server refuses unless an origin was allowed.
    - The API key on /v1 routes.
    - The body size limit: the body is read here (413 as soon as it passes the limit,
      whatever Content-Length claims) and replayed to the app, whose later reads then see
      the client's own messages, a disconnect included."""

    def __init__(self, app, api_key: str | None, max_body: int,
                 allowed_hosts: frozenset[str] | None = None):
        self.app, self.max_body, self.allowed_hosts = app, max_body, allowed_hosts
        self.api_key = api_key.encode("utf-8") if api_key is not None else None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v for k, v in scope.get("headers", [])}
        try:
            check_host(headers.get("host", b""), self.allowed_hosts)
            if scope["path"].startswith("/v1"):
                check_key(headers.get("authorization", b""), self.api_key)
            if scope["method"] in ("POST", "PUT", "PATCH"):
                check_json(headers.get("content-type", b""))
                declared = headers.get("content-length", b"").decode("latin-1")
                body = await read_limited(receive, declared, self.max_body)
                receive = replay(body, receive)
        except APIError as e:
            extra = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
            return await JSONResponse(e.body(), e.status, extra)(scope, receive, send)
        return await self.app(scope, receive, send)


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address to bind or to reach) means this machine only."""
    host = host.strip("[]").lower().rstrip(".")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(header: bytes) -> str:
    """The name in a Host header, without its port: `[::1]:8000` → `::1`."""
    text = header.decode("latin-1").strip().lower()
    if text.startswith("["):
        return text[1:text.find("]")] if "]" in text else text
    name, _, port = text.rpartition(":")
    return name.rstrip(".") if port.isdigit() and name else text.rstrip(".")


def check_host(header: bytes, allowed: frozenset[str] | None) -> None:
    if allowed is None:
        return
    name = host_name(header)
    if name in allowed or is_loopback(name):
        return
    raise APIError(403, f"the host name {name!r} is not served here (it can be allowed with "
                        "--allowed-host)", type="permission_error", code="host_not_allowed")


def check_json(content_type: bytes) -> None:
    media = content_type.decode("latin-1").split(";")[0].strip().lower()
    if media != "application/json":
        raise APIError(415, "the request body must be JSON, sent with "
                            "'Content-Type: application/json'", code="unsupported_media_type")


def check_key(given: bytes, api_key: bytes | None) -> None:
    if api_key is None:
        return
    scheme, _, token = given.partition(b" ")
    # bytes, not str: compare_digest refuses non-ASCII strings, and a header may hold any byte
    if scheme.lower() != b"bearer" or not secrets.compare_digest(token.strip(), api_key):
        raise APIError(401, "a valid API key is needed: Authorization: Bearer <key>",
                       type="authentication_error", code="invalid_api_key")


async def read_limited(receive, declared: str, limit: int) -> bytes:
    too_large = APIError(413, f"the request body is larger than {limit} bytes")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise APIError(400, "the client went away before sending its request")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def replay(body: bytes, receive):
    """A receive that gives `body` once, then the client's own messages."""
    sent = False

    async def receive_again():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return receive_again
