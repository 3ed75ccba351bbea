"""Text generation, the text side: prompt ids, and tokens back into text as they stream.

`prompt_ids` turns a prompt into ids (BOS where the model wants it); `TextStream` turns the
engine's token ids into text pieces as they arrive, holding back an incomplete character
or text that could still become a stop string. Stop strings are matched on the decoded
text, not on ids (a stop string may straddle tokens), and are not part of the output.

The one way to generate from Python is `centelha.LLM` (`stream`, `generate`, `chat`,
`complete`), built on these pieces and the engine; sampling settings are
`sampling.SamplingConfig`.
"""

from __future__ import annotations

from collections.abc import Iterator

from centelha.tokenizer import Tokenizer


def _held_back(text: str, stops: list[str]) -> int:
    """Length of the longest end of `text` that begins some stop string."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:n]):
                longest = max(longest, n)
                break
    return longest


def prompt_ids(tokenizer: Tokenizer, prompt: str, special: bool = False) -> list[int]:
    """Ids of a prompt: BOS first where the model expects it; `special` parses special-token
    text (chat templates write `<|im_start|>` and friends as text)."""
    return with_bos(tokenizer, tokenizer.encode(prompt, allow_special=special))


def with_bos(tokenizer: Tokenizer, ids: list[int]) -> list[int]:
    """`ids` with BOS in front where the model expects it and it is not there yet."""
    if tokenizer.add_bos and (not ids or ids[0] != tokenizer.bos_id):
        ids = [tokenizer.bos_id, *ids]
    return ids


class TextStream:
    """Token ids in, text out, for one generation: `push` returns the text a token makes
    final, holding back what could still become a stop string, and reports when a stop
    token or stop string ends the text (the stop itself is not part of it)."""

    def __init__(self, tokenizer: Tokenizer, stop: list[str] = ()):
        self.tokenizer = tokenizer
        self.stops = [s for s in stop if s]
        self.decoder = tokenizer.stream_decoder()
        self.pending = ""
        self.stopped = False
        self.last_piece = ""  # the text the last token completed, before any holding back

    def push(self, token: int) -> str:
        self.last_piece = ""
        if self.stopped:
            return ""
        if token in self.tokenizer.stop_ids:
            self.stopped = True
            return self.finish()
        self.last_piece = self.decoder.push(token)
        self.pending += self.last_piece
        hits = [self.pending.find(s) for s in self.stops if s in self.pending]
        if hits:
            self.stopped = True
            text, self.pending = self.pending[:min(hits)], ""
            return text
        keep = _held_back(self.pending, self.stops)
        cut = len(self.pending) - keep
        text, self.pending = self.pending[:cut], self.pending[cut:]
        return text

    def finish(self) -> str:
        """What is left when the generation ends without a stop string."""
        text = self.pending + self.decoder.flush()
        self.pending = ""
        return text


def stream_text(tokenizer: Tokenizer, tokens: Iterator[int], stop: list[str]) -> Iterator[str]:
    """Decode a token stream into text pieces, ending at a stop token or stop string.
    The stop string itself is not part of the output."""
    text = TextStream(tokenizer, stop)
    for token in tokens:
        piece = text.push(token)
        if piece:
            yield piece
        if text.stopped:
            return
    rest = text.finish()
    if rest:
        yield rest

