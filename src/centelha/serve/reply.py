"""The reply to a generation request: one whole JSON body, or server-sent events.

`respond` runs the request's choices (`runner.run_choices`) and lays their deltas out
with the endpoint's layouts (`bodies.Endpoint`).

Design choices a reader should know:
- A stream's first delta is awaited before the response starts, so that a full queue or
  a bad setting is still an HTTP error status rather than an error inside a 200 stream;
  a failure after that becomes an error event (the status line is already sent).
- A stream ends with `data: [DONE]`, after a usage chunk when `stream_options` asks.
- A non-streaming client that left gets a 499 (nobody reads it) and its requests end.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator, Callable

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from centelha.choices import Delta, Gathered
from centelha.serve.bodies import Endpoint, usage
from centelha.serve.protocol import APIError, Sampling
from centelha.serve.runner import ClientGone, run_choices
from centelha.serve.served import Served


async def respond(served: Served, request: Sampling, http: Request, ids: list[int],
                  logprobs: int | None, endpoint: Endpoint):
    """The whole JSON reply, or the event stream, to `request` for the prompt `ids`."""
    head = {"id": f"{endpoint.prefix}-{secrets.token_hex(12)}", "created": int(time.time()),
            "model": served.name}
    if request.stream:
        deltas = run_choices(served, ids, request, logprobs, None)
        first = await first_delta(deltas)

        def chunk(delta: Delta) -> dict:
            return endpoint.chunk(delta, logprobs)

        stream = event_stream({**head, "object": endpoint.chunk_object}, request, len(ids),
                              after(first, deltas), chunk, endpoint.opening(request.n))
        return StreamingResponse(stream, media_type="text/event-stream")
    try:
        gathered = await collect(served, ids, request, logprobs, http)
    except ClientGone:  # nobody is left to read an answer; its requests are cancelled
        return Response(status_code=499)
    return {**head, "object": endpoint.whole,
            "choices": [endpoint.choice(c) for c in gathered.completions()],
            "usage": usage(len(ids), gathered.total_tokens)}


async def first_delta(deltas: AsyncIterator[Delta]) -> Delta | None:
    """The first delta (None if there is none), taken before the response starts."""
    try:
        return await deltas.__anext__()
    except StopAsyncIteration:
        return None


async def after(first: Delta | None, deltas: AsyncIterator[Delta]) -> AsyncIterator[Delta]:
    """`first` (already taken from `deltas`), then the rest of `deltas`."""
    if first is not None:
        yield first
    async for delta in deltas:
        yield delta


async def collect(served: Served, ids: list[int], params: Sampling, logprobs: int | None,
                  http: Request) -> Gathered:
    gathered = Gathered(params.n, logprobs)
    async for delta in run_choices(served, ids, params, logprobs, http):
        gathered.add(delta)
    return gathered


def sse(payload: dict | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


async def event_stream(head: dict, request: Sampling, prompt_tokens: int,
                       deltas: AsyncIterator[Delta], chunk: Callable[[Delta], dict],
                       opening: list[dict]) -> AsyncIterator[str]:
    """Server-sent events: the opening choices, one chunk per delta, usage if asked, then
    `[DONE]`; an error on the way becomes an error event."""
    include_usage = bool(request.stream_options and request.stream_options.include_usage)
    extra = {"usage": None} if include_usage else {}
    for choice in opening:
        yield sse({**head, "choices": [choice], **extra})
    counts = [0] * request.n
    try:
        async for delta in deltas:
            counts[delta.index] = delta.tokens
            yield sse({**head, "choices": [chunk(delta)], **extra})
    except APIError as e:
        yield sse(e.body())
    if include_usage:
        yield sse({**head, "choices": [], "usage": usage(prompt_tokens, sum(counts))})
    yield sse("[DONE]")
