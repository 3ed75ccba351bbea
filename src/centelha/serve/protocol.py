"""The OpenAI wire format: request schemas, their validation, and error bodies.

Requests are validated by pydantic models in strict mode, so `"max_tokens": "5"` or
`"stream": 1` are refused as OpenAI refuses them, not quietly converted. Fields we do not
know are ignored (clients send many); fields we know but cannot honour (images, tools,
`echo`) are refused with a message that says so.

Every refusal is an `APIError` carrying an HTTP status and OpenAI's error object:
`{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

MAX_INT = 2**31 - 1
MAX_SEED = 2**63 - 1  # a signed 64-bit seed, as OpenAI's clients send; n choices add 0…n-1
MAX_STOP_CHARS = 256  # every stop string is searched for in the text after each token


class APIError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = \
            status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


class Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class TextPart(Strict):
    type: str
    text: str | None = None

    @field_validator("type")
    @classmethod
    def text_only(cls, value: str) -> str:
        if value != "text":
            raise ValueError(f"content parts of type {value!r} are not supported: text only")
        return value


class Message(Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text or "" for part in self.content)


class StreamOptions(Strict):
    include_usage: bool = False


StopString = Annotated[str, Field(max_length=MAX_STOP_CHARS)]
Stop = StopString | Annotated[list[StopString], Field(max_length=4)] | None


class Sampling(Strict):
    """What both endpoints accept."""
    model: str
    max_tokens: Annotated[int, Field(ge=1, le=MAX_INT)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 1.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    n: Annotated[int, Field(ge=1, le=8)] = 1
    stop: Stop = None
    seed: Annotated[int, Field(ge=-MAX_SEED - 1, le=MAX_SEED)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] = 0.0
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] = 0.0
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatRequest(Sampling):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1, le=MAX_INT)] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    tools: list | None = None

    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(Sampling):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)] | \
        Annotated[list[int], Field(min_length=1)]
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    echo: bool = False
    suffix: str | None = None

    def limit(self) -> int | None:
        return self.max_tokens


def parse(kind: type[Strict], body: bytes) -> Strict:
    """The request in `body` (JSON), or an APIError 400 naming the first bad field."""
    try:
        request = kind.model_validate_json(body)
    except ValidationError as e:
        raise invalid(e) from None
    check_supported(request)
    return request


def invalid(e: ValidationError) -> APIError:
    errors = e.errors()
    error = errors[0]
    if error["type"] in ("json_invalid", "json_type"):
        return APIError(400, "the request body is not valid JSON: " + error["msg"])
    if not error["loc"]:
        return APIError(400, "the request body must be a JSON object")
    # A value that fits no member of a union fails once per member; the deepest failure
    # is the telling one (`stop[1]` too long, rather than "stop is not a string").
    error = max(errors, key=lambda err: len(field_path(err["loc"])))
    param = ".".join(field_path(error["loc"]))
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "missing":
        message = "a required field is missing"
    return APIError(400, f"{param}: {message}", param=param)


def field_path(loc: tuple) -> list[str]:
    """A pydantic error location without its union-member tags ("constrained-str",
    "list[str]", "int", …), which name types, not fields."""
    tags = {"str", "int", "float", "bool", "list", "dict", "none"}
    return [str(part) for part in loc
            if isinstance(part, int) or (part.isidentifier() and part not in tags)]


def check_supported(request: Strict) -> None:
    if isinstance(request, ChatRequest):
        if request.tools:
            raise APIError(400, "tools are not supported by this server", param="tools")
        if request.top_logprobs is not None and not request.logprobs:
            raise APIError(400, "top_logprobs needs logprobs to be true", param="top_logprobs")
    if isinstance(request, CompletionRequest):
        if request.echo:
            raise APIError(400, "echo is not supported by this server", param="echo")
        if request.suffix:
            raise APIError(400, "suffix is not supported by this server", param="suffix")
    if request.stream_options is not None and not request.stream:
        raise APIError(400, "stream_options is only allowed with stream: true",
                       param="stream_options")
