"""Load the models and run the app under uvicorn: what `centelha serve` does.

Binds 127.0.0.1 unless told otherwise: a model server answers anyone who can reach it,
so exposing it on a network is a decision the user makes with `--host`. While bound to
loopback it answers only loopback host names (`--allowed-host` adds more), and no web
origin may call it from a browser unless `--cors-origin` names it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from centelha.api import DEFAULT_CONTEXT, load
from centelha.errors import CentelhaError
from centelha.registry import entries
from centelha.serve.app import DEFAULT_MAX_BODY, create_app
from centelha.serve.guard import is_loopback
from centelha.serve.scheduler import drive
from centelha.serve.served import Served, serve_model


def model_name(source: str) -> str:
    """The id clients use: a registry name as given, else the file or folder's name."""
    if source in entries():
        return source
    path = Path(source)
    return path.stem if path.suffix.lower() == ".gguf" else path.name or source


def load_served(sources: list[str], dtype: str = "fp32", max_batch: int = 8,
                max_queue: int = 32, max_context: int = DEFAULT_CONTEXT,
                thread: bool = True) -> list[Served]:
    """The models, each with an engine and a scheduler; `thread=False`: schedulers that the
    caller drives together (`scheduler.drive`)."""
    if max_batch < 1 or max_queue < 0:
        raise CentelhaError("--max-batch must be at least 1 and --max-queue at least 0")
    served, names = [], set()
    wake = threading.Condition()
    for source in sources:
        name = model_name(source)
        if name in names:
            raise CentelhaError(f"two models would both be called {name!r}")
        names.add(name)
        llm = load(source, dtype=dtype, max_context=max_context)
        served.append(serve_model(llm, name, max_batch=max_batch, max_queue=max_queue,
                                  thread=thread, wake=wake))
    return served


def allowed_hosts_for(host: str, extra: list[str] = ()) -> frozenset[str] | None:
    """The Host names to answer besides loopback ones (which always are): bound to
    loopback, `extra`; bound to another address (the user exposed the server), any name
    (None) unless `extra` lists them."""
    if is_loopback(host) or extra:
        return frozenset(name.lower() for name in extra)
    return None


def run(sources: list[str], host: str = "127.0.0.1", port: int = 8000,
        api_key: str | None = None, dtype: str = "fp32", max_batch: int = 8,
        max_queue: int = 32, max_context: int = DEFAULT_CONTEXT,
        max_body: int = DEFAULT_MAX_BODY, allowed_hosts: list[str] = (),
        cors_origins: list[str] = (), on_ready=None) -> None:
    """Serve until Ctrl-C. The HTTP server runs in a thread; the engines run here, in the
    main thread, where their OpenMP threads stay fast (see `scheduler.drive`)."""
    import uvicorn

    served = load_served(sources, dtype, max_batch, max_queue, max_context, thread=False)
    app = create_app(served, api_key=api_key, max_body=max_body,
                     allowed_hosts=allowed_hosts_for(host, allowed_hosts),
                     cors_origins=cors_origins)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    http = threading.Thread(target=server.run, name="centelha-http", daemon=True)
    http.start()
    while not server.started:
        if not http.is_alive():
            raise CentelhaError(f"could not serve on {host}:{port} (is the port in use?)")
        time.sleep(0.02)
    if on_ready is not None:
        on_ready(served)
    stopper = threading.Thread(target=stop_with, args=(http, served), daemon=True)
    stopper.start()
    try:
        drive([model.scheduler for model in served])
    finally:
        server.should_exit = True
        for model in served:
            model.scheduler.close()
        http.join(timeout=10)


def stop_with(http: threading.Thread, served: list[Served]) -> None:
    """When the HTTP server ends (it failed), end the engines too, so `run` returns."""
    http.join()
    for model in served:
        model.scheduler.close()
