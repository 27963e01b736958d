"""Atomic file writes: a run killed mid-write never leaves a half-written file behind.

Every checkpoint, adapter, export, label and result file of fin3r is written through
:func:`atomic_write`: the content goes to a temporary file in the destination's folder, which then
replaces the destination in one ``os.replace`` (atomic on POSIX and Windows within a filesystem).
"""

from __future__ import annotations

import csv
import os
import tempfile
from pathlib import Path
from typing import Callable


def atomic_write(path: str | os.PathLike, write: Callable[[str], object], fsync: bool = False) -> Path:
    """Call ``write(tmp_path)`` then move the temporary file over ``path``; returns ``path``.

    The parent folder is created. On any error (or interruption) the temporary file is removed
    and ``path`` keeps its previous content. ``fsync=True`` flushes the file to disk before the
    rename (checkpoints that must survive a power loss).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        # mkstemp makes the file private (0600); give it the mode a plain open() would have given
        # (or the mode of the file it replaces), so checkpoints stay readable on shared machines
        os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_umask())
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _umask() -> int:
    """The process's umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_csv_atomic(path: str | os.PathLike, fields: list[str], rows: list[dict]) -> Path:
    """Write ``rows`` (dicts; missing keys left empty) under the header ``fields`` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields, restval="")
            w.writeheader()
            w.writerows(rows)

    return atomic_write(path, write)

