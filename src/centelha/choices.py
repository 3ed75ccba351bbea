"""Several answers to one prompt ("choices", OpenAI's `n`), with their log-probabilities.

`complete(engine, tokenizer, ids, sampling, n=, logprobs=)` runs `n` choices of one prompt
on an `Engine` through its add/step/remove calls and returns each one finished: text,
token ids, finish reason and, if asked, the model's log-probabilities. The server runs the
same choices on a shared engine (through its scheduler, asynchronously); both paths build
the choices' settings (`choice_samplings`) and fold their tokens (`Choice.advance`) here,
so a reply cannot differ between the library and the HTTP API.

Design choices a reader should know:
- Choice i samples with `seed + i`: a seeded request is reproducible, yet its choices
  differ. Without a seed each choice draws its own randomness.
- Text is assembled by `generate.TextStream`: a stop string ends its choice at once (its
  row is freed, the other choices go on) and is not part of the text.
- Log-probabilities are the model's own (a log-softmax of the raw logits, before
  temperature and penalties), so they show what the model believed. Each entry's `text`
  is the text its token completes (a character split over two tokens shows on the second),
  so the entries of a choice add up to its text. A stop token gets no entry.
- Entries are plain dataclasses; the OpenAI JSON layouts are the server's business.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from centelha.engine import Engine, Request, Token
from centelha.errors import CentelhaError
from centelha.generate import TextStream
from centelha.sampling import SamplingConfig
from centelha.tokenizer import Tokenizer


# -- settings ---------------------------------------------------------------------------------
def openai_sampling(room: int, max_tokens: int | None = None, temperature: float = 1.0,
                    top_p: float = 1.0, presence_penalty: float = 0.0,
                    frequency_penalty: float = 0.0, seed: int | None = None,
                    stop: Iterable[str] = ()) -> SamplingConfig:
    """OpenAI's sampling parameters as one `SamplingConfig`. `room`: the positions the
    context has left after the prompt; no `max_tokens` means all of them, and more than
    that is clamped to them. `top_p` 1.0 keeps every token, i.e. no top-p filter."""
    return SamplingConfig(max_new_tokens=min(max_tokens or room, room), temperature=temperature,
                          top_p=top_p if top_p < 1.0 else None,
                          presence_penalty=presence_penalty,
                          frequency_penalty=frequency_penalty, seed=seed, stop=list(stop))


def choice_samplings(sampling: SamplingConfig, n: int) -> list[SamplingConfig]:
    """The settings of each of `n` choices: `sampling`, with seed + i for choice i."""
    if sampling.seed is None:
        return [sampling] * n
    return [replace(sampling, seed=sampling.seed + i) for i in range(n)]


# -- what a choice is made of -----------------------------------------------------------------
@dataclass
class Alternative:
    """A token the model could have written, with its log-probability."""
    id: int
    text: str       # its bytes as text (a lone part of a character shows as U+FFFD)
    logprob: float
    raw: bytes      # its bytes as they are


@dataclass
class LogprobEntry(Alternative):
    """A token a choice wrote: `text` is the text it completes; `top`, best first."""
    top: list[Alternative]


@dataclass
class Delta:
    """What one choice gained from one token: text, log-prob entries, maybe its end."""
    index: int
    text: str
    logprobs: list[LogprobEntry]
    finish_reason: str | None
    tokens: int  # the choice's tokens so far (usage)


@dataclass
class Completion:
    """A finished choice."""
    index: int
    text: str
    token_ids: list[int]  # every token generated, a final stop token included
    finish_reason: str    # "stop" (stop token or string) | "length"
    logprobs: list[LogprobEntry] | None  # None unless asked for


def alternative(tokenizer: Tokenizer, token_id: int, logprob: float) -> Alternative:
    raw = tokenizer.token_bytes[token_id]
    return Alternative(token_id, raw.decode("utf-8", errors="replace"), logprob, raw)


def logprob_entry(tokenizer: Tokenizer, token: Token, text: str) -> LogprobEntry:
    return LogprobEntry(token.token, text, token.logprob, tokenizer.token_bytes[token.token],
                        [alternative(tokenizer, i, lp) for i, lp in token.top_logprobs or []])


class Choice:
    """One choice of one prompt: its engine request, and its text as tokens come back."""

    def __init__(self, index: int, ids: list[int], sampling: SamplingConfig,
                 tokenizer: Tokenizer, logprobs: int | None = None):
        self.index, self.tokenizer, self.logprobs = index, tokenizer, logprobs
        self.request = Request(ids, sampling, frozenset(tokenizer.stop_ids), logprobs)
        self.text = TextStream(tokenizer, sampling.stop)
        self.tokens = 0
        self.finish_reason: str | None = None
        self.engine_finished = False

    @property
    def holds_row(self) -> bool:
        """Ended by a stop string while the engine would go on: its row should be freed."""
        return self.finish_reason is not None and not self.engine_finished

    def advance(self, token: Token) -> Delta:
        """Fold one token into the choice: text, log-probs, and whether the choice ended."""
        self.tokens += 1
        self.engine_finished = token.finish_reason is not None
        is_stop_token = token.token in self.tokenizer.stop_ids
        text = self.text.push(token.token) if token.token >= 0 else ""
        entries = []
        if self.logprobs is not None and token.logprob is not None and not is_stop_token:
            entries.append(logprob_entry(self.tokenizer, token, self.text.last_piece))
        if self.text.stopped:
            self.finish_reason = "stop"
        elif token.finish_reason is not None:
            self.finish_reason = token.finish_reason
            text += self.text.finish()
        return Delta(self.index, text, entries, self.finish_reason, self.tokens)


def make_choices(ids: list[int], sampling: SamplingConfig, tokenizer: Tokenizer, n: int = 1,
                 logprobs: int | None = None) -> list[Choice]:
    """`n` choices of the prompt `ids`; `logprobs`: None, or how many alternatives each
    token's entry lists."""
    return [Choice(i, ids, cfg, tokenizer, logprobs)
            for i, cfg in enumerate(choice_samplings(sampling, n))]


class Gathered:
    """Deltas folded into whole choices (the non-streaming answer)."""

    def __init__(self, n: int, logprobs: int | None = None):
        self.logprobs = logprobs
        self.texts, self.entries = [""] * n, [[] for _ in range(n)]
        self.ids: list[list[int]] = [[] for _ in range(n)]
        self.reasons, self.counts = ["length"] * n, [0] * n

    def add(self, delta: Delta, token: int = -1) -> None:
        """`token`: the id that made `delta`, for the token ids (-1: none)."""
        i = delta.index
        self.texts[i] += delta.text
        self.entries[i] += delta.logprobs
        self.counts[i] = delta.tokens
        if token >= 0:
            self.ids[i].append(token)
        if delta.finish_reason:
            self.reasons[i] = delta.finish_reason

    @property
    def total_tokens(self) -> int:
        return sum(self.counts)

    def completions(self) -> list[Completion]:
        return [Completion(i, self.texts[i], self.ids[i], self.reasons[i],
                           self.entries[i] if self.logprobs is not None else None)
                for i in range(len(self.texts))]


# -- the synchronous runner -------------------------------------------------------------------
class _Run:
    """The choices of one `complete` call while the engine runs them."""

    def __init__(self, engine: Engine, choices: list[Choice], logprobs: int | None):
        self.engine, self.waiting = engine, list(choices)
        self.by_id = {c.request.id: c for c in choices}
        self.gathered = Gathered(len(choices), logprobs)

    def take(self, token: Token) -> None:
        choice = self.by_id[token.request_id]
        if choice.finish_reason is not None:
            return
        self.gathered.add(choice.advance(token), token.token)
        if choice.holds_row:  # a stop string ended it: free the row for the next choice
            self.engine.remove(choice.request.id)

    def admit(self) -> None:
        """Prefill waiting choices into free rows; each gives its first token."""
        while self.waiting and self.engine.free_rows:
            choice = self.waiting.pop(0)
            first = self.engine.add(choice.request)
            if first is None:  # a budget of 0 tokens: finished before it began
                choice.finish_reason = "length"
            else:
                self.take(first)


def complete(engine: Engine, tokenizer: Tokenizer, ids: list[int],
             sampling: SamplingConfig | None = None, n: int = 1,
             logprobs: int | None = None) -> list[Completion]:
    """`n` finished choices of the prompt `ids` (choice i samples with `sampling.seed + i`);
    `logprobs`: None for none, k ≥ 0 for each token's log-probability and its k most likely
    alternatives. They run together as far as the engine has free rows. The engine must be
    idle: requests of others would lose their tokens to this loop."""
    if n < 1:
        raise CentelhaError(f"n must be at least 1, not {n}")
    if engine.active or engine.driver is not None:
        raise CentelhaError("complete needs the engine to itself, and it is busy; share an "
                            "engine through serve.Scheduler")
    choices = make_choices(ids, sampling or SamplingConfig(), tokenizer, n, logprobs)
    engine.check(choices[0].request)
    run = _Run(engine, choices, logprobs)
    try:
        while run.waiting or engine.active:
            run.admit()
            for token in engine.step():
                run.take(token)
    finally:
        for choice in choices:
            engine.remove(choice.request.id)
    return run.gathered.completions()
