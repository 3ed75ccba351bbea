"""Write a file so that a reader finds the old one or the new one, never half of either.

`atomic_write(path, write)` lets `write` fill a temporary file beside `path`, flushes it to
disk, and renames it into place (a rename within one folder is atomic on POSIX and
Windows). Checkpoints, the registry, GGUF and HF exports and loss plots all write this
way. No torch here: the registry and the exporters use it without loading a model.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a temporary name beside `path`, then rename it into place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        write(tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def link_into_place(path: Path, source: Path) -> None:
    """Put `source`'s bytes at `path` atomically: a hard link where the file system allows
    it (no second write of a large file), else a copy."""
    def link_or_copy(tmp: Path) -> None:
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)

    atomic_write(path, link_or_copy)
