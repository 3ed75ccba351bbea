"""`Scheduler`: one engine, one worker thread, many concurrent requests (continuous batching).

The HTTP handlers never touch the engine. They `submit` a request with a callback and get
tokens back through it; the worker thread owns the engine and loops: drop the requests
whose clients went away, let waiting requests join free rows (prefill), run one decode
step for every active row, hand each new token to its request's callback. A request joins
or leaves the running batch between any two steps.

Design choices a reader should know:
- Only the worker (`drive`) calls the engine, so the engine needs no locking against the
  server; `cancel` only records the wish, and the worker acts on it before its next step,
  so a disconnected client's row is free for the next request at once.
- The waiting line is bounded (`max_queue`): past it `submit` raises `QueueFull`, and the
  server answers 503 instead of letting latency grow without limit.
- Callbacks run on the worker thread and must be quick: the server's hands the token to
  its event loop (`loop.call_soon_threadsafe`) and returns.
- A request that fails (a prompt too long for the context, discovered at prefill) gets
  an `Error` through its callback instead of tokens; the worker goes on with the others.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from centelha.engine import Engine, Request, Token
from centelha.errors import CentelhaError


class QueueFull(CentelhaError):
    """More requests are waiting than the scheduler accepts."""


@dataclass
class Error:
    """Delivered instead of a token when a request cannot be served."""
    request_id: int
    message: str


Callback = Callable[[Token | Error], None]


class Scheduler:
    """`thread=True` starts a worker thread for this scheduler; with False the caller drives
    it (`drive`), as `centelha serve` does from the main thread (see `drive`)."""

    def __init__(self, engine: Engine, max_queue: int = 32, thread: bool = True,
                 wake: threading.Condition | None = None):
        self.engine = engine
        self.max_queue = max_queue
        self.waiting: deque[tuple[Request, Callback]] = deque()
        self.callbacks: dict[int, Callback] = {}
        self.cancelled: set[int] = set()
        self.wake = wake or threading.Condition()  # shared by schedulers driven together
        self.running = True
        self.peak = 0  # the most requests decoded together in one step (tests, metrics)
        self.thread = None
        if thread:
            self.thread = threading.Thread(target=drive, args=([self],), daemon=True,
                                           name="centelha-scheduler")
            self.thread.start()

    # -- what the server calls (any thread) ---------------------------------------------
    def submit(self, request: Request, callback: Callback) -> None:
        """Queue a request; its tokens (or an Error) arrive through `callback`."""
        self.engine.check(request)
        with self.wake:
            if len(self.waiting) >= self.max_queue:
                raise QueueFull(f"the server is busy: {len(self.waiting)} requests are waiting")
            self.waiting.append((request, callback))
            self.wake.notify_all()

    def cancel(self, request_id: int) -> None:
        """Stop a request (its client went away, or a stop string ended it)."""
        with self.wake:
            self.cancelled.add(request_id)
            self.wake.notify_all()

    def close(self) -> None:
        with self.wake:
            self.running = False
            self.wake.notify_all()
        if self.thread is not None:
            self.thread.join(timeout=10)

    @property
    def active(self) -> int:
        return len(self.engine.active)

    @property
    def queued(self) -> int:
        return len(self.waiting)

    # -- the worker ---------------------------------------------------------------------
    @property
    def idle(self) -> bool:
        return not (self.waiting or self.engine.active or self.cancelled)

    def run_once(self) -> None:
        """Drop cancelled requests, admit waiting ones, decode one step."""
        with self.wake:
            cancelled, self.cancelled = self.cancelled, set()
            self.waiting = deque(w for w in self.waiting if w[0].id not in cancelled)
        for request_id in cancelled:
            self.engine.remove(request_id)
            self.callbacks.pop(request_id, None)
        try:
            self.admit()
            if self.engine.active:
                self.peak = max(self.peak, len(self.engine.active))
                tokens = self.engine.step()
                for token in tokens:
                    self.deliver(token)
        except Exception as e:  # noqa: BLE001 - a bug must fail its requests, not the server
            self.fail_all(f"internal error: {type(e).__name__}: {e}")

    def fail_all(self, message: str) -> None:
        for state in list(self.engine.active):
            request_id = state.request.id
            self.engine.remove(request_id)
            callback = self.callbacks.pop(request_id, None)
            if callback is not None:
                callback(Error(request_id, message))

    def admit(self) -> None:
        """Prefill waiting requests into free rows."""
        while self.engine.free_rows:
            with self.wake:
                if not self.waiting:
                    return
                request, callback = self.waiting.popleft()
            self.callbacks[request.id] = callback
            try:
                first = self.engine.add(request)
            except Exception as e:  # noqa: BLE001 - this request fails, the others go on
                self.callbacks.pop(request.id, None)
                message = str(e) if isinstance(e, CentelhaError) else \
                    f"internal error: {type(e).__name__}: {e}"
                callback(Error(request.id, message))
                continue
            if first is None:  # a budget of 0 tokens: finished before it began
                self.callbacks.pop(request.id, None)
                callback(Token(request.id, -1, "length"))
                continue
            self.deliver(first)

    def deliver(self, token: Token) -> None:
        callback = self.callbacks.get(token.request_id)
        if callback is None:
            return
        if token.finish_reason is not None:
            del self.callbacks[token.request_id]
        callback(token)


def drive(schedulers: list[Scheduler]) -> None:
    """Run `schedulers` (sharing one `wake` condition) in this thread until all are closed,
    sleeping while none has work.

    `centelha serve` calls this from the main thread, with the HTTP server in another: on
    Linux, OpenMP parallel regions (the C++ kernels' threads) started from a thread other
    than the process's first one stop spin-waiting between regions, and a decode step of
    SmolLM2 at int4 went from ~5.5 ms to ~14 ms that way (docs/LOG.md, 2026-11-23)."""
    wake = schedulers[0].wake
    while True:
        with wake:
            while all(s.idle or not s.running for s in schedulers) \
                    and any(s.running for s in schedulers):
                wake.wait()
            if not any(s.running for s in schedulers):
                return
        for scheduler in schedulers:
            if scheduler.running and not scheduler.idle:
                scheduler.run_once()
