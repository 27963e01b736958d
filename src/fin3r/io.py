"""Safe file reads and atomic file writes.

Reads: :func:`safe_torch_load` is the one ``torch.load`` of fin3r (``weights_only=True``: tensors,
containers and the globals a caller allows explicitly, nothing else is unpickled);
:func:`read_safetensors` reads a safetensors file and its metadata. Both turn every failure into
one :class:`~fin3r.errors.CheckpointError` naming the file.

Writes: a run killed mid-write never leaves a half-written file behind.

Every checkpoint, adapter, export, label and result file of fin3r is written through
:func:`atomic_write`: the content goes to a temporary file in the destination's folder, which then
replaces the destination in one ``os.replace`` (atomic on POSIX and Windows within a filesystem).
"""

from __future__ import annotations

import csv
import os
import pickle
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import safe_open

from fin3r.errors import CheckpointError


def safe_torch_load(path: str | os.PathLike, allowed_globals: Iterable[Any] = (), mmap: bool = False,
                    what: str = "a torch checkpoint") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, allowing only ``allowed_globals``
    (classes or ``(stand-in, "module.Name")`` pairs) beyond tensors and containers.

    ``mmap=True`` memory-maps zip files (legacy files are read normally). A file that asks for
    any other global, a truncated file or a file that is no torch file raises
    :class:`CheckpointError` naming ``path``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        with torch.serialization.safe_globals(list(allowed_globals)):
            if mmap:
                try:
                    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
                except RuntimeError as e:  # legacy (non-zip) files cannot be memory-mapped
                    if "mmap" not in str(e):
                        raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = str(e).strip().splitlines()
        detail = next((ln for ln in lines if "Unsupported global" in ln or "GLOBAL" in ln), lines[0] if lines else "")
        raise CheckpointError(f"{path}: refusing to unpickle a non-weights object (torch.load(weights_only=True): "
                              f"{detail.strip()}); only "
                              "tensors, containers and allow-listed configuration objects are read") from None
    except (RecursionError, MemoryError) as e:
        raise CheckpointError(f"{path}: cannot read as {what} ({type(e).__name__}: nested too deeply)") from None
    except Exception as e:  # truncated zip, not a torch file, ...
        raise CheckpointError(f"{path}: cannot read as {what} ({type(e).__name__}: {e})") from None


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """``(metadata, tensors)`` of a safetensors file (CPU); :class:`CheckpointError` if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{path}: not a safetensors file ({e})") from None
    return metadata, tensors


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


def atomic_torch_save(obj: Any, path: str | os.PathLike, fsync: bool = True) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (flushed to disk unless ``fsync=False``)."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp), fsync=fsync)


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

