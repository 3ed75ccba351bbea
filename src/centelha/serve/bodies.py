"""OpenAI's response bodies: choices and stream chunks of both endpoints, usage, log-probs.

Pure functions from the library's results (`choices.Completion`, `choices.Delta`,
`choices.LogprobEntry`) to the JSON that OpenAI's clients read; nothing here runs a model
or touches HTTP. Each endpoint's layouts are gathered in an `Endpoint`, so the code that
answers (`reply.respond`) is one for both.

Layouts a reader should know:
- Chat log-probs are `{"content": [entry, …]}`, each entry with its token text, log-prob,
  bytes and `top_logprobs`; the completions endpoint keeps OpenAI's older layout of
  parallel lists (`tokens`, `token_logprobs`, `top_logprobs`, `text_offset`).
- A chat stream opens with one chunk per choice giving the assistant role; a chunk's
  `delta` is empty when a token added no text (a stop token, a held-back character).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from centelha.choices import Alternative, Completion, Delta, LogprobEntry


def usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


# -- log-probabilities -------------------------------------------------------------------------
def alternative_json(alternative: Alternative) -> dict:
    return {"token": alternative.text, "logprob": alternative.logprob,
            "bytes": list(alternative.raw)}


def logprob_json(entry: LogprobEntry) -> dict:
    return {**alternative_json(entry), "top_logprobs": [alternative_json(a) for a in entry.top]}


def legacy_logprobs(entries: list[LogprobEntry]) -> dict:
    """The completions endpoint's older log-prob layout."""
    offsets, at = [], 0
    for entry in entries:
        offsets.append(at)
        at += len(entry.text)
    return {"tokens": [e.text for e in entries],
            "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{a.text: a.logprob for a in e.top} for e in entries],
            "text_offset": offsets}


# -- chat --------------------------------------------------------------------------------------
def chat_choice(completion: Completion) -> dict:
    entries = completion.logprobs
    return {"index": completion.index,
            "message": {"role": "assistant", "content": completion.text},
            "logprobs": {"content": [logprob_json(e) for e in entries]}
            if entries is not None else None,
            "finish_reason": completion.finish_reason}


def chat_chunk(delta: Delta, logprobs: int | None) -> dict:
    return {"index": delta.index, "delta": {"content": delta.text} if delta.text else {},
            "logprobs": {"content": [logprob_json(e) for e in delta.logprobs]}
            if delta.logprobs else None,
            "finish_reason": delta.finish_reason}


def chat_opening(n: int) -> list[dict]:
    return [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
             "finish_reason": None} for i in range(n)]


# -- completions -------------------------------------------------------------------------------
def completion_body(index: int, text: str, finish_reason: str | None,
                    entries: list[LogprobEntry] | None) -> dict:
    return {"index": index, "text": text, "finish_reason": finish_reason,
            "logprobs": legacy_logprobs(entries) if entries is not None else None}


def completion_choice(completion: Completion) -> dict:
    return completion_body(completion.index, completion.text, completion.finish_reason,
                           completion.logprobs)


def completion_chunk(delta: Delta, logprobs: int | None) -> dict:
    return completion_body(delta.index, delta.text, delta.finish_reason,
                           delta.logprobs if logprobs is not None else None)


# -- the two endpoints -------------------------------------------------------------------------
@dataclass(frozen=True)
class Endpoint:
    """How one endpoint lays out its answers."""
    prefix: str        # of the response id: "chatcmpl-…"
    whole: str         # the "object" of a whole response …
    chunk_object: str  # … and of a stream chunk
    choice: Callable[[Completion], dict]
    chunk: Callable[[Delta, int | None], dict]
    opening: Callable[[int], list[dict]]  # the chunks a stream of n choices opens with


CHAT = Endpoint("chatcmpl", "chat.completion", "chat.completion.chunk", chat_choice,
                chat_chunk, chat_opening)
COMPLETIONS = Endpoint("cmpl", "text_completion", "text_completion", completion_choice,
                       completion_chunk, lambda n: [])
