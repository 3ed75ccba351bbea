"""`centelha serve`: an OpenAI-compatible HTTP server with continuous batching, and a web chat.

- `served.py`: a model the server offers, with its own engine and scheduler.
- `scheduler.py`: one engine per model, driven by a worker thread; requests join and leave
  the running batch between decode steps.
- `protocol.py`: OpenAI's request schemas, validated strictly, and its error object.
- `guard.py`: what every request passes first (host, content type, API key, body limit).
- `app.py`: the FastAPI app (routes, prompts, error handlers).
- `runner.py`: the choices of one request on the scheduler (the library's `choices`).
- `reply.py` and `bodies.py`: the whole JSON reply or the event stream, in OpenAI's layouts.
- `server.py`: load the models and run the app under uvicorn.
- `static/`: the web chat (plain HTML, CSS and JavaScript, no build step).
"""

from centelha.serve.app import create_app
from centelha.serve.served import Served, serve_model

__all__ = ["Served", "create_app", "serve_model"]
