"""Read a JSON object from a file, or the objects of a JSON Lines file, or fail with one
line that names the file (and the line).

Every JSON file centelha reads (config.json, tokenizer_config.json, generation_config.json,
the registry, a prepared folder's meta.json) must hold an object; a file that is not
UTF-8, not JSON, nested past Python's recursion limit, or some other JSON value gets the
same one-line `CentelhaError`, whichever module reads it. JSON Lines files (corpora,
labelled texts, conversations) are read by `json_lines`: errors start `path:N:` (the form
editors jump to), and lines are split at "\n" only, because `str.splitlines` also cuts at
U+2028, which a JSON string may hold raw.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from centelha.errors import CentelhaError


def read_json_object(path: str | Path, missing_ok: bool = False) -> dict[str, Any] | None:
    """The object in `path`; with `missing_ok`, None when there is no such file."""
    path = Path(path)
    if not path.is_file():
        if missing_ok:
            return None
        raise CentelhaError(f"file not found: {path}")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CentelhaError(f"{path} is not valid JSON: {e}") from None
    except RecursionError:
        raise CentelhaError(f"{path} is not valid JSON: nested too deeply") from None
    if not isinstance(value, dict):
        raise CentelhaError(f"{path} must hold a JSON object")
    return value


def json_lines(path: str | Path, text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of `text`, the contents of `path`."""
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise CentelhaError(f"{where}: not valid JSON ({e.msg})") from None
        except RecursionError:
            raise CentelhaError(f"{where}: not valid JSON (nested too deeply)") from None
        if not isinstance(record, dict):
            raise CentelhaError(f"{where}: expected a JSON object, got {type(record).__name__}")
        yield number, record
