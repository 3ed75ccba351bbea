"""`Engine`: owns a model and a preallocated KV cache, and turns requests into token streams.

Requests join and leave a running batch between decode steps (continuous batching):
`add` prefills a request's prompt into a free cache row (in chunks, so a long prompt
never needs one huge attention matrix), `step` decodes one token for every active row in
a single forward pass, and a finished row is freed at once. `stream` and
`generate_batch` are the simple front doors built on those three calls; `centelha
chat`, `generate` and the server use them.

Design choices a reader should know:
- Active requests always occupy cache rows 0…n-1: when one finishes, the last row's
  keys and values move into its place. A forward pass then works on one contiguous
  range of rows, i.e. on views of the cache, never on gathered copies.
- Each row keeps its own length, positions and sampling state (settings, seed,
  repetition history), so a request's output does not depend on who shares the batch:
  the same greedy request gives the same tokens alone or in a crowd.
- `vocab_size`: the tokenizer's size. Models often pad their embedding past it (Qwen2:
  151,665 tokens in 151,936 rows); ids beyond it mean nothing, so they are never sampled
  and log-probabilities are over the real tokens only.
- `stream` and `generate_batch` drive the engine alone: each refuses to start while
  other requests are active, and `add` refuses newcomers while one of them runs, because
  the tokens of a request they did not add would have nowhere to go. Sharing an engine
  between callers is the scheduler's job (`serve.Scheduler`), through add/step/remove.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from centelha.errors import CentelhaError
from centelha.model import Transformer
from centelha.sampling import SamplingConfig, choose_token, make_generator, process_logits


@dataclass
class Request:
    """One generation asked of the engine: a prompt already in token ids, and how to go on."""

    prompt_ids: list[int]
    """The prompt, BOS and chat template applied (see `generate.prompt_ids`)."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """How each token is chosen, and when the text ends (max_new_tokens; stop strings are
    the caller's, who sees the text)."""
    stop_ids: frozenset[int] = frozenset()
    """Token ids that end the generation (the tokenizer's end-of-turn tokens)."""
    logprobs: int | None = None
    """None: no log-probabilities; k ≥ 0: each token's, and the k most likely alternatives'."""
    id: int = field(default_factory=itertools.count().__next__)
    """Unique in the process: tokens and `remove` name their request by it."""


@dataclass
class Active:
    """A request in a cache row, with its own sampling state."""
    request: Request
    budget: int
    generator: torch.Generator
    seen: torch.Tensor
    counts: torch.Tensor | None = None  # generated tokens per vocabulary entry, if needed
    last_token: int = -1
    produced: int = 0
    finish_reason: str | None = None


@dataclass
class Token:
    """One step's result for one request."""
    request_id: int
    token: int
    finish_reason: str | None    # "stop" | "length" | None while it goes on
    # With Request.logprobs: the model's log-probability of this token (before any sampling
    # setting: what the model believes), and the most likely tokens' [(id, logprob), …].
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None


def log_probabilities(logits: torch.Tensor, token: int,
                      top: int) -> tuple[float, list[tuple[int, float]]]:
    """log p(token) under the model, and the `top` most likely (id, log p), best first."""
    logp = torch.log_softmax(logits, dim=-1)
    if top <= 0:
        return float(logp[token]), []
    best = torch.topk(logp, min(top, logp.numel()))
    return float(logp[token]), list(zip(best.indices.tolist(), best.values.tolist(), strict=True))


class Engine:
    """A model with a KV cache of `max_batch` rows of `max_len` positions, decoding every
    active request one token per `step` (see the module docstring for the design)."""

    def __init__(self, model: Transformer, max_batch: int = 8, max_len: int | None = None,
                 prefill_chunk: int = 512, vocab_size: int | None = None):
        self.model = model.eval()
        self.max_batch = max_batch
        self.cache = model.new_cache(max_batch, max_len)
        self.prefill_chunk = prefill_chunk
        rows = model.cfg.vocab_size
        self.vocab_size = rows if vocab_size is None else min(vocab_size, rows)
        self.active: list[Active] = []
        self.lock = threading.Lock()  # one forward pass at a time
        self.driver: str | None = None  # the front door driving the engine alone, if any

    @property
    def context(self) -> int:
        return self.cache.max_len

    @property
    def free_rows(self) -> int:
        return self.max_batch - len(self.active)

    # -- joining ------------------------------------------------------------------------
    def check(self, request: Request) -> None:
        n = len(request.prompt_ids)
        if n == 0:
            raise CentelhaError("the prompt is empty")
        if n >= self.context:
            raise CentelhaError(f"the prompt is {n} tokens long; this model's context holds "
                                f"{self.context}, leaving no room to generate")

    def add(self, request: Request) -> Token | None:
        """Prefill `request` into a free row and return its first token (None if its budget
        is 0). Raises CentelhaError when the prompt does not fit, the batch is full, or
        `stream`/`generate_batch` is driving the engine."""
        if self.driver is not None:
            raise CentelhaError(f"this engine is running {self.driver}, which drives it "
                                "alone; share an engine through serve.Scheduler")
        return self._add(request)

    def _claim(self, driver: str) -> None:
        if self.driver is not None or self.active:
            busy = self.driver or f"{len(self.active)} other request(s)"
            raise CentelhaError(f"{driver} needs the engine to itself, and it is busy with "
                                f"{busy}; share an engine through serve.Scheduler")
        self.driver = driver

    @torch.inference_mode()
    def _add(self, request: Request) -> Token | None:
        self.check(request)
        if not self.free_rows:
            raise CentelhaError("the engine's batch is full")
        prompt = request.prompt_ids
        budget = min(request.sampling.max_new_tokens, self.context - len(prompt))
        row = len(self.active)
        state = Active(request, budget, make_generator(request.sampling.seed),
                       torch.tensor(prompt, dtype=torch.long))
        if budget <= 0:
            return None
        self.cache.reset(slice(row, row + 1))
        device = self.cache.k.device
        with self.lock:
            for start in range(0, len(prompt), self.prefill_chunk):
                chunk = torch.tensor([prompt[start:start + self.prefill_chunk]], device=device)
                logits = self.model(chunk, cache=self.cache, rows=slice(row, row + 1),
                                    last_only=True)
            self.active.append(state)
        return self.emit(state, logits[0, -1])

    # -- decoding -----------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> list[Token]:
        """One new token for every active request; finished ones leave the batch."""
        if not self.active:
            return []
        with self.lock:
            n = len(self.active)
            tokens = torch.tensor([[a.last_token] for a in self.active],
                                  device=self.cache.k.device)
            logits = self.model(tokens, cache=self.cache, rows=slice(0, n))[:, -1]
            return [self.emit(state, logits[i]) for i, state in enumerate(list(self.active))]

    def emit(self, state: Active, logits: torch.Tensor) -> Token:
        sampling = state.request.sampling
        logits = logits[:self.vocab_size].float().cpu()
        processed = process_logits(logits, state.seen, sampling, state.counts)
        token = choose_token(processed, sampling, state.generator)
        state.last_token = token
        state.produced += 1
        if sampling.repetition_penalty != 1.0:
            state.seen = torch.cat([state.seen, torch.tensor([token])])
        if sampling.counts_tokens:
            if state.counts is None:
                state.counts = torch.zeros(logits.shape[-1])
            state.counts[token] += 1
        logprob = top = None
        if state.request.logprobs is not None:
            logprob, top = log_probabilities(logits, token, state.request.logprobs)
        if token in state.request.stop_ids:
            state.finish_reason = "stop"
        elif state.produced >= state.budget:
            state.finish_reason = "length"
        if state.finish_reason:
            self.remove(state.request.id)
        return Token(state.request.id, token, state.finish_reason, logprob, top)

    # -- leaving ------------------------------------------------------------------------
    def remove(self, request_id: int) -> None:
        """Free a request's row (finished, or its client went away)."""
        rows = [i for i, a in enumerate(self.active) if a.request.id == request_id]
        if not rows:
            return
        row, last = rows[0], len(self.active) - 1
        if row != last:  # keep active rows contiguous: the last row moves into the hole
            length = self.cache.lengths[last]
            self.cache.k[:, row, :, :length] = self.cache.k[:, last, :, :length]
            self.cache.v[:, row, :, :length] = self.cache.v[:, last, :, :length]
            self.cache.lengths[row] = length
            self.active[row] = self.active[last]
        self.active.pop()
        self.cache.lengths[last] = 0

    # -- front doors --------------------------------------------------------------------
    def stream(self, request: Request) -> Iterator[Token]:
        """Tokens of one request as they are made; the engine is this request's alone
        until the stream ends (or is closed)."""
        self._claim("a stream")
        try:
            first = self._add(request)
            if first is None:
                return
            yield first
            done = first.finish_reason is not None
            while not done:
                (token,) = self.step()
                yield token
                done = token.finish_reason is not None
        finally:
            self.remove(request.id)
            self.driver = None

    def generate_batch(self, requests: list[Request]) -> list[list[int]]:
        """Run many requests to completion together; their new token ids, in order."""
        for request in requests:
            self.check(request)
        self._claim("generate_batch")
        results: dict[int, list[int]] = {r.id: [] for r in requests}
        waiting = list(requests)
        try:
            while waiting or self.active:
                while waiting and self.free_rows:
                    first = self._add(waiting.pop(0))
                    if first is not None:
                        results[first.request_id].append(first.token)
                for token in self.step():
                    results[token.request_id].append(token.token)
        finally:
            for state in list(self.active):
                self.remove(state.request.id)
            self.driver = None
        return [results[r.id] for r in requests]


def generate_ids(model: Transformer, prompt_ids: list[int], cfg: SamplingConfig,
                 stop_ids: set[int] | frozenset = frozenset(),
                 vocab_size: int | None = None) -> Iterator[int]:
    """Yield new token ids one at a time: the prompt is prefilled once, then each step
    feeds only the newest token through the model, reading the rest from the KV cache.
    This is the engine's single-request path, with a cache just long enough for it: the
    ids-level piece under `LLM.stream` for tests and benchmarks that compare token ids.
    `vocab_size`: the tokenizer's, when the model's embedding is padded past it."""
    length = len(prompt_ids) + max(1, cfg.max_new_tokens)
    engine = Engine(model, max_batch=1, max_len=min(model.cfg.block_size, length),
                    vocab_size=vocab_size)
    for token in engine.stream(Request(list(prompt_ids), cfg, frozenset(stop_ids))):
        yield token.token
