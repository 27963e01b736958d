"""Safe file reads and atomic file writes.

Reads: :func:`safe_torch_load` is the one ``torch.load`` of fin3r (``weights_only=True``: tensors,
containers and the globals a caller allows explicitly, nothing else is unpickled);
:func:`read_safetensors` reads a safetensors file and its metadata. Both turn every failure into
one :class:`~fin3r.errors.CheckpointError` naming the file.

Writes: a run killed mid-write never leaves a half-written file behind.

Every checkpoint, adapter, export, label and result file of fin3r is written through
:func:`atomic_write`: the content goes to a temporary file in the destination's folder, which then
replaces the destination in one ``os.replace`` (atomic on POSIX and Windows within a filesystem).

Temporary files are named ``.<name>.<host>.<pid>.<random>.fin3r-tmp``. A run killed by ``kill -9``
cannot remove its own; :func:`sweep_temp_files` removes the abandoned ones (their process is gone,
or they are older than an hour) at the start of the next run on the same output folder.

Every JSON file fin3r writes goes through :func:`write_json_atomic`: strict JSON
(``allow_nan=False``); a non-finite number is written as ``null`` with the reason beside it.
"""

from __future__ import annotations

import csv
import json
import math
import os
import pickle
import socket
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import safe_open

from fin3r.errors import CheckpointError, InputError

#: the suffix of every temporary file fin3r writes (what :func:`sweep_temp_files` looks for)
TEMP_SUFFIX = ".fin3r-tmp"


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


def first_nonfinite(tensors: dict[str, torch.Tensor]) -> str | None:
    """The first key (in order) whose floating-point tensor holds a NaN or an infinity, or None."""
    for key, value in tensors.items():
        if isinstance(value, torch.Tensor) and (value.is_floating_point() or value.is_complex()) and value.numel() \
                and value.device.type != "meta":
            if not bool(torch.isfinite(value).all()):
                return key
    return None


def check_finite(tensors: dict[str, torch.Tensor], source: str, what: str = "weights") -> None:
    """:class:`CheckpointError` naming the first tensor of ``tensors`` that is not finite."""
    key = first_nonfinite(tensors)
    if key is not None:
        t = tensors[key].detach()
        bad = int((~torch.isfinite(t)).sum())
        raise CheckpointError(f"{source}: {what} are not finite: '{key}' holds {bad} NaN/inf value(s) "
                              f"of {t.numel()}")


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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_owner()}.", suffix=TEMP_SUFFIX)
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


def _owner() -> str:
    """``<host>.<pid>`` of this process, as temp-file names carry it (dots in the host name -> '-')."""
    return f"{socket.gethostname().replace('.', '-') or 'host'}.{os.getpid()}"


def _abandoned(name: str, max_age_s: float, mtime: float, now: float) -> bool:
    """Whether the temp file ``name`` belongs to no running writer: its process (same host) is
    gone, or the file is older than ``max_age_s`` (any host, any name)."""
    if now - mtime > max_age_s:
        return True
    parts = name[: -len(TEMP_SUFFIX)].split(".")
    if len(parts) < 4:  # not a name this module made: only age decides
        return False
    host, pid = parts[-3], parts[-2]
    if host != (socket.gethostname().replace(".", "-") or "host") or not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError, OSError):
        return False
    return False


def sweep_temp_files(folder: str | os.PathLike, max_age_s: float = 3600.0, recursive: bool = True,
                     prefix: str = "") -> list[Path]:
    """Remove abandoned fin3r temp files (``*.fin3r-tmp``, names starting with ``prefix``) under
    ``folder`` (recursively unless ``recursive=False``, not following links); returns the
    removed paths. Temp files of writers still running (same host, live process, younger than
    ``max_age_s``) are left alone, so shards sharing an output folder can start at any time.
    Nothing else is touched."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    now = time.time()
    stack = [str(folder)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for e in entries:
            try:
                if e.is_dir(follow_symlinks=False):
                    if recursive:
                        stack.append(e.path)
                elif e.name.endswith(TEMP_SUFFIX) and e.name.startswith(prefix) and e.is_file(follow_symlinks=False):
                    if _abandoned(e.name, max_age_s, e.stat(follow_symlinks=False).st_mtime, now):
                        os.unlink(e.path)
                        removed.append(Path(e.path))
            except OSError:
                continue
    return removed


def json_ready(value: Any, _key: str | None = None) -> Any:
    """A copy of ``value`` that strict JSON accepts: every non-finite float becomes ``None``; in
    a dict, ``"<key>_null_reason"`` says why (unless the dict already explains it under that
    name). Tuples become lists; zero-dimensional numpy/torch values become Python numbers; other
    values are returned as they are."""
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        out: dict = {}
        for k, v in value.items():
            out[k] = json_ready(v, k)
            reason_key = f"{k}_null_reason"
            if reason_key in value:
                continue
            if out[k] is None and v is not None:
                out[reason_key] = f"not a finite number ({v})"
            elif isinstance(v, (list, tuple)) and _has_nonfinite(v):
                out[reason_key] = "non-finite entries written as null"
        return out
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def _has_nonfinite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return any(_has_nonfinite(v) for v in value)
    return False


def json_restore(value: Any) -> Any:
    """The inverse of :func:`json_ready` for what it can invert: in every dict, a ``None`` whose
    ``"<key>_null_reason"`` sibling exists becomes ``nan`` again and the reason is dropped (so
    code that averages figures read back keeps NaN semantics)."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if isinstance(k, str) and k.endswith("_null_reason") and value.get(k[: -len("_null_reason")], 0) is None:
                continue
            reason = f"{k}_null_reason" in value
            out[k] = float("nan") if v is None and reason else _nan_lists(v) if reason else json_restore(v)
        return out
    if isinstance(value, list):
        return [json_restore(v) for v in value]
    return value


def _nan_lists(value: Any) -> Any:
    if value is None:
        return float("nan")
    return [_nan_lists(v) for v in value] if isinstance(value, list) else json_restore(value)


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file written by :func:`write_json_atomic` (nulls with a reason back to NaN)."""
    return json_restore(json.loads(Path(path).read_text()))


def json_text(value: Any, indent: int | None = 1, **kwargs: Any) -> str:
    """Strict JSON text of ``value`` (see :func:`json_ready`; ``allow_nan=False``)."""
    return json.dumps(json_ready(value), indent=indent, allow_nan=False, **kwargs)


def write_json_atomic(path: str | os.PathLike, value: Any, indent: int | None = 1, **kwargs: Any) -> Path:
    """Write ``value`` as strict JSON (:func:`json_text`) to ``path`` atomically."""
    return write_text_atomic(path, json_text(value, indent=indent, **kwargs))


def check_output_dir(path: str | os.PathLike, what: str = "--out") -> Path:
    """``path`` as an output folder: refused (:class:`~fin3r.errors.InputError`, one line) when it
    or one of its parents is an existing file. Does not create it."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists() and not p.is_dir():
            raise InputError(f"{what} {path}: {p} is an existing file, not a folder")
    return path


def prepare_output_dir(path: str | os.PathLike, what: str = "--out") -> Path:
    """:func:`check_output_dir`, then remove the temp files a killed earlier run left in it
    (:func:`sweep_temp_files`); logs how many."""
    import logging

    path = check_output_dir(path, what)
    removed = sweep_temp_files(path)
    if removed:
        logging.getLogger(__name__).info("%s: removed %d abandoned temp file(s) of an earlier run", path, len(removed))
    return path


def check_output_file(path: str | os.PathLike, what: str = "--out") -> Path:
    """``path`` as an output file: refused when it is an existing folder or a parent is a file."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{what} {path}: is an existing folder, expected a file name")
    for p in path.parents:
        if p.exists() and not p.is_dir():
            raise InputError(f"{what} {path}: {p} is an existing file, not a folder")
    sweep_temp_files(path.parent, recursive=False, prefix=f".{path.name}.")  # a killed earlier write of it
    return path


def inside(root: str | os.PathLike, path: str | os.PathLike) -> bool:
    """Whether ``path`` stays inside the folder ``root`` once both are resolved (``..`` and
    symbolic links followed)."""
    root_r, path_r = os.path.realpath(root), os.path.realpath(path)
    return os.path.commonpath([root_r, path_r]) == root_r


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

