"""`Guard`: the ASGI middleware every request passes before any handler runs.

- Host: while the server listens on loopback, only loopback host names are served (plus
  `allowed_hosts`), so a web page whose DNS name was rebound to 127.0.0.1 cannot talk to
  it (DNS rebinding; Ollama's CVE-2024-28224). `allowed_hosts=None`: any.
- Content type: a body must be `application/json`. Browsers send text/plain, form and
  untyped bodies cross-origin without asking (a "simple" request); JSON needs a CORS
  preflight, which this server refuses unless an origin was allowed.
- The API key on /v1 routes, compared in constant time.
- The body size limit: the body is read here (413 as soon as it passes the limit, whatever
  Content-Length claims) and replayed to the app, whose later reads then see the client's
  own messages, a disconnect included.

A refusal is OpenAI's error object (`error_response`), as the app's own errors are.
"""

from __future__ import annotations

import ipaddress
import secrets

from fastapi.responses import JSONResponse

from centelha.serve.protocol import APIError


def error_response(e: APIError) -> JSONResponse:
    """OpenAI's error object with its status (and the scheme to use, after a 401)."""
    headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


class Guard:
    """ASGI middleware: host, content type, API key and body size (see the module)."""

    def __init__(self, app, api_key: str | None, max_body: int,
                 allowed_hosts: frozenset[str] | None = None):
        self.app, self.max_body, self.allowed_hosts = app, max_body, allowed_hosts
        self.api_key = api_key.encode("utf-8") if api_key is not None else None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v for k, v in scope.get("headers", [])}
        try:
            check_host(headers.get("host", b""), self.allowed_hosts)
            if scope["path"].startswith("/v1"):
                check_key(headers.get("authorization", b""), self.api_key)
            if scope["method"] in ("POST", "PUT", "PATCH"):
                check_json(headers.get("content-type", b""))
                declared = headers.get("content-length", b"").decode("latin-1")
                body = await read_limited(receive, declared, self.max_body)
                receive = replay(body, receive)
        except APIError as e:
            return await error_response(e)(scope, receive, send)
        return await self.app(scope, receive, send)


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address to bind or to reach) means this machine only."""
    host = host.strip("[]").lower().rstrip(".")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(header: bytes) -> str:
    """The name in a Host header, without its port: `[::1]:8000` → `::1`."""
    text = header.decode("latin-1").strip().lower()
    if text.startswith("["):
        return text[1:text.find("]")] if "]" in text else text
    name, _, port = text.rpartition(":")
    return name.rstrip(".") if port.isdigit() and name else text.rstrip(".")


def check_host(header: bytes, allowed: frozenset[str] | None) -> None:
    if allowed is None:
        return
    name = host_name(header)
    if name in allowed or is_loopback(name):
        return
    raise APIError(403, f"the host name {name!r} is not served here (it can be allowed with "
                        "--allowed-host)", type="permission_error", code="host_not_allowed")


def check_json(content_type: bytes) -> None:
    media = content_type.decode("latin-1").split(";")[0].strip().lower()
    if media != "application/json":
        raise APIError(415, "the request body must be JSON, sent with "
                            "'Content-Type: application/json'", code="unsupported_media_type")


def check_key(given: bytes, api_key: bytes | None) -> None:
    if api_key is None:
        return
    scheme, _, token = given.partition(b" ")
    # bytes, not str: compare_digest refuses non-ASCII strings, and a header may hold any byte
    if scheme.lower() != b"bearer" or not secrets.compare_digest(token.strip(), api_key):
        raise APIError(401, "a valid API key is needed: Authorization: Bearer <key>",
                       type="authentication_error", code="invalid_api_key")


async def read_limited(receive, declared: str, limit: int) -> bytes:
    """The whole body, or a 413 as soon as it passes `limit` bytes."""
    too_large = APIError(413, f"the request body is larger than {limit} bytes")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise APIError(400, "the client went away before sending its request")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def replay(body: bytes, receive):
    """A receive that gives `body` once, then the client's own messages."""
    sent = False

    async def receive_again():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return receive_again
