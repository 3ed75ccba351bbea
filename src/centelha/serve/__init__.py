"""`centelha serve`: an OpenAI-compatible HTTP server with continuous batching, and a web chat.

- `scheduler.py`: one engine per model, driven by a worker thread; requests join and leave
  the running batch between decode steps.
- `protocol.py`: OpenAI's request schemas, validated strictly, and its error object.
- `app.py`: the FastAPI app (routes, streaming, errors, API key, body limit).
- `static/`: the web chat (plain HTML, CSS and JavaScript, no build step).
"""

from centelha.serve.app import Served, create_app, serve_model

__all__ = ["Served", "create_app", "serve_model"]
