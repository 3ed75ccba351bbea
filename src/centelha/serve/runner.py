"""The choices of one HTTP request, run on a shared engine through its scheduler.

`run_choices` submits one engine request per choice (OpenAI's `n`) and yields each
choice's `Delta` as its tokens come back from the scheduler's thread. The settings of the
choices and the folding of tokens into text and log-probs are the library's
(`centelha.choices`), the same that `choices.complete` uses, so the server and the library
cannot drift apart; what is left here is asynchronous plumbing.

Design choices a reader should know:
- Tokens arrive on the scheduler's thread; its callback only hands them to this event
  loop (`call_soon_threadsafe`), so the worker is never held up by a slow client.
- A stop string ends its choice at once: its request is cancelled, its row freed.
- Whatever way the response ends (done, error, a client gone), the `finally` cancels the
  requests still running. A streaming client that disconnects cancels the response task
  (Starlette listens for it); a non-streaming one is polled for while it waits.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from fastapi import Request

from centelha.choices import Delta, make_choices, openai_sampling
from centelha.engine import Token
from centelha.errors import CentelhaError
from centelha.serve.protocol import APIError, Sampling
from centelha.serve.scheduler import Error, QueueFull
from centelha.serve.served import Served

DISCONNECT_POLL = 0.25  # seconds between checks that a non-streaming client is still there


class ClientGone(Exception):
    """The client of a non-streaming response left before its answer was ready."""


async def run_choices(served: Served, ids: list[int], params: Sampling, logprobs: int | None,
                      http: Request | None) -> AsyncIterator[Delta]:
    """Submit `params.n` requests for `ids` and yield their deltas as tokens arrive.
    `http`: poll that client for a disconnect (non-streaming responses)."""
    try:
        sampling = openai_sampling(
            served.context - len(ids), max_tokens=params.limit(),
            temperature=params.temperature, top_p=params.top_p,
            presence_penalty=params.presence_penalty,
            frequency_penalty=params.frequency_penalty, seed=params.seed, stop=params.stops())
        choices = make_choices(ids, sampling, served.llm.tokenizer, params.n, logprobs)
    except CentelhaError as e:
        raise APIError(400, str(e)) from None
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
            delta = choice.advance(item)
            if delta.finish_reason is not None:
                remaining -= 1
                if choice.holds_row:  # a stop string: free the row
                    served.scheduler.cancel(choice.request.id)
            if delta.text or delta.logprobs or delta.finish_reason:
                yield delta
    except QueueFull as e:
        raise APIError(503, str(e), type="server_error", code="server_busy") from None
    finally:
        for choice in choices:
            if choice.finish_reason is None:
                served.scheduler.cancel(choice.request.id)


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
