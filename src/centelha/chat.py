"""A chat session: the conversation so far, the settings, and the slash commands.

`centelha chat` is a thin loop around this class (read a line, print what comes back),
so the REPL's behaviour is testable without a terminal. Commands: `/reset`,
`/system TEXT`, `/set NAME VALUE` (any generation setting: temperature, top_p, top_k,
min_p, repetition_penalty, max_new_tokens, seed), `/show`, `/help`, `/exit`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import yaml

from centelha.api import LLM
from centelha.errors import CentelhaError
from centelha.sampling import SamplingConfig

HELP = ("/reset  forget the conversation · /system TEXT  set the system prompt · "
        "/set NAME VALUE  change a setting (temperature, top_p, top_k, min_p, "
        "repetition_penalty, max_new_tokens, seed) · /show  the settings · /exit  leave")


@dataclass
class Reply:
    """What the session answers a line with: streamed text, a notice, or the end."""
    kind: str                       # "stream" | "notice" | "exit"
    text: str = ""
    pieces: Iterator[str] | None = None


class ChatSession:
    def __init__(self, llm: LLM, system: str | None = None, **settings):
        self.llm = llm
        self.system = system
        self.settings = dataclasses.asdict(SamplingConfig(**{"max_new_tokens": 512,
                                                             "temperature": 0.7, **settings}))
        self.history: list[dict] = []

    def messages(self) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.history

    def handle(self, line: str) -> Reply:
        line = line.strip()
        if not line:
            return Reply("notice")
        if line.startswith("/"):
            return self.command(line)
        return Reply("stream", pieces=self.reply(line))

    def reply(self, text: str) -> Iterator[str]:
        """Stream the assistant's answer; the turn is kept only once it is complete."""
        messages = self.messages() + [{"role": "user", "content": text}]
        answer = []
        for piece in self.llm.stream(messages, **self.settings):
            answer.append(piece)
            yield piece
        self.history += [{"role": "user", "content": text},
                         {"role": "assistant", "content": "".join(answer).strip()}]

    def command(self, line: str) -> Reply:
        name, _, rest = line.partition(" ")
        rest = rest.strip()
        if name in ("/exit", "/quit", "/bye"):
            return Reply("exit")
        if name == "/reset":
            self.history = []
            return Reply("notice", "conversation cleared")
        if name == "/system":
            self.system = rest or None
            self.history = []
            return Reply("notice", f"system prompt {'set' if rest else 'removed'}; "
                                   "conversation cleared")
        if name == "/set":
            return Reply("notice", self.set(rest))
        if name == "/show":
            shown = ", ".join(f"{k}={v}" for k, v in self.settings.items() if k != "stop")
            return Reply("notice", f"{shown}; system prompt: {self.system or '(none)'}")
        if name == "/help":
            return Reply("notice", HELP)
        raise CentelhaError(f"unknown command {name} — {HELP}")

    def set(self, text: str) -> str:
        key, _, value = text.partition(" ")
        if key not in self.settings or key == "stop" or not value.strip():
            options = ", ".join(k for k in self.settings if k != "stop")
            raise CentelhaError(f"usage: /set NAME VALUE with NAME one of {options}")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = value.strip()  # not a number, a bool or null: the text itself
        SamplingConfig(**{**self.settings, key: parsed})  # validates: a CentelhaError if bad
        self.settings[key] = parsed
        return f"{key} = {parsed}"
