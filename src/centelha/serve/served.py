"""`Served`: a model the server offers, with its own engine and scheduler.

Each model gets an engine (a KV cache of `max_batch` rows, as long as the model's context)
and a scheduler that batches the requests of every client of that model (continuous
batching). The HTTP layer reaches the engine only through the scheduler.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from centelha.api import LLM
from centelha.engine import Engine
from centelha.serve.scheduler import Scheduler


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
