"""The HTTP server: OpenAI's chat and completions API over the scheduler, and the web UI.

`create_app(models, ...)` returns a FastAPI app serving one or more loaded models
(`served.serve_model`), each with its own engine and scheduler (continuous batching).
`centelha serve` runs it with uvicorn.

Routes: `GET /health`, `GET /v1/models`, `GET /v1/models/{id}`, `POST /v1/chat/completions`,
`POST /v1/completions`, and the web chat at `/` (static files, no build step).

Design choices a reader should know:
- Handlers only translate: they validate (`protocol`), turn messages into prompt ids (the
  library's chat template, in a sandbox; roles pass through as sent), and hand the rest
  to `reply.respond`, which runs the choices (`runner`) and lays out OpenAI's JSON or
  server-sent events (`bodies`). What every request must pass first is `guard.Guard`.
- Every failure is OpenAI's error object with a fitting status: 400 invalid, 401 key,
  403 a host name not served (DNS rebinding), 404 unknown model or route, 405 method,
  413 body too large, 415 a body that is not JSON, 503 queue full, 500 a bug.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from centelha.errors import CentelhaError
from centelha.generate import prompt_ids
from centelha.serve.bodies import CHAT, COMPLETIONS
from centelha.serve.guard import Guard, error_response
from centelha.serve.protocol import APIError, ChatRequest, CompletionRequest, parse
from centelha.serve.reply import respond
from centelha.serve.served import Served

STATIC = Path(__file__).with_name("static")
DEFAULT_MAX_BODY = 1 << 20  # 1 MiB of JSON is ~250k tokens of text: far past any context


# -- prompts -----------------------------------------------------------------------------------
def chat_ids(served: Served, request: ChatRequest) -> list[int]:
    messages = [{"role": m.role, "content": m.text()} for m in request.messages]
    try:
        ids = served.llm.chat_ids(messages)
    except CentelhaError as e:
        raise APIError(400, str(e), param="messages") from None
    return checked(served, ids)


def completion_ids(served: Served, request: CompletionRequest) -> list[int]:
    prompt = request.prompt
    tokenizer = served.llm.tokenizer
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
        if any(not 0 <= i < tokenizer.vocab_size for i in prompt):
            raise APIError(400, f"prompt token ids must be in 0…{tokenizer.vocab_size - 1}",
                           param="prompt")
        return checked(served, list(prompt))
    text = prompt[0] if isinstance(prompt, list) else prompt
    if not text:
        raise APIError(400, "the prompt is empty", param="prompt")
    return checked(served, prompt_ids(tokenizer, text))


def checked(served: Served, ids: list[int]) -> list[int]:
    if len(ids) >= served.context:
        raise APIError(400, f"the prompt is {len(ids)} tokens long and this model's context "
                            f"holds {served.context}: shorten it to leave room for the reply",
                       param="messages", code="context_length_exceeded")
    return ids


# -- the two generation endpoints --------------------------------------------------------------
async def chat_response(served: Served, request: ChatRequest, http: Request):
    logprobs = (request.top_logprobs or 0) if request.logprobs else None
    return await respond(served, request, http, chat_ids(served, request), logprobs, CHAT)


async def completion_response(served: Served, request: CompletionRequest, http: Request):
    return await respond(served, request, http, completion_ids(served, request),
                         request.logprobs, COMPLETIONS)


# -- the app -----------------------------------------------------------------------------------
def create_app(models: list[Served], api_key: str | None = None,
               max_body: int = DEFAULT_MAX_BODY,
               allowed_hosts: Iterable[str] | None = (),
               cors_origins: Iterable[str] = ()) -> FastAPI:
    """The app serving `models`. `allowed_hosts`: the Host names answered besides loopback
    ones (None: any, for a server bound to a public address); `cors_origins`: web origins
    whose pages may call the API from a browser (none by default)."""
    app = FastAPI(title="centelha", docs_url=None, redoc_url=None, openapi_url=None)
    by_name = {m.name: m for m in models}
    app.state.models = by_name
    answer_errors_as_openai(app)

    hosts = None if allowed_hosts is None else frozenset(h.lower() for h in allowed_hosts)
    app.add_middleware(Guard, api_key=api_key, max_body=max_body, allowed_hosts=hosts)
    if cors_origins:  # outermost, so that it answers the browser's preflight itself
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins),
                           allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])

    def model_for(name: str) -> Served:
        if name not in by_name:
            raise APIError(404, f"the model {name!r} does not exist here (models: "
                                f"{', '.join(by_name)})", param="model", code="model_not_found")
        return by_name[name]

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "models": [{"id": m.name, "active": m.scheduler.active,
                                            "queued": m.scheduler.queued} for m in models]}

    @app.get("/v1/models")
    async def list_models() -> dict:
        return {"object": "list", "data": [m.card() for m in models]}

    @app.get("/v1/models/{name:path}")
    async def one_model(name: str) -> dict:
        return model_for(name).card()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = parse(ChatRequest, await request.body())
        return await chat_response(model_for(body.model), body, request)

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = parse(CompletionRequest, await request.body())
        return await completion_response(model_for(body.model), body, request)

    @app.get("/")
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def answer_errors_as_openai(app: FastAPI) -> None:
    """Our errors, Starlette's (unknown route, wrong method) and bugs, all as OpenAI's
    error object."""
    @app.exception_handler(APIError)
    async def api_error(_: Request, e: APIError) -> JSONResponse:
        return error_response(e)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
        kinds = {404: "not_found_error", 405: "invalid_request_error"}
        return error_response(APIError(e.status_code, str(e.detail),
                                       kinds.get(e.status_code, "invalid_request_error")))

    @app.exception_handler(Exception)
    async def bug(_: Request, e: Exception) -> JSONResponse:
        return error_response(APIError(500, f"internal error: {type(e).__name__}",
                                       type="server_error"))
