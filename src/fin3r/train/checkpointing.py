"""Resumable training state: adapter + optimizer + scheduler + sampler position + RNG, written atomically.

A checkpoint is one ``torch.save`` file holding only tensors, numbers, strings and dicts, so it
loads with ``weights_only=True`` (nothing in it is executed). It is written to a temporary file
in the same folder, flushed and fsync'd, then ``os.replace``'d over the old one: a run killed at
any moment (SIGKILL included) leaves either the previous or the new checkpoint, never a torn one.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fin3r.errors import CheckpointError
from fin3r.io import atomic_torch_save, safe_torch_load

FORMAT = "fin3r-train-state-v1"


def capture_rng() -> dict[str, Any]:
    """The state of every random generator training may touch (python, numpy, torch CPU/CUDA)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": repr(random.getstate()),  # a tuple of ints; stored as text, parsed back below
        "numpy": {
            "name": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _parse_python_state(text: str) -> tuple:
    """Parse ``repr(random.getstate())`` -- nested tuples of ints and None -- without ``eval``."""
    import ast

    value = ast.literal_eval(text)  # literals only: never executes code
    if not isinstance(value, tuple):
        raise CheckpointError("training checkpoint: malformed python RNG state")
    return value


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`."""
    random.setstate(_parse_python_state(state["python"]))
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(path: str | Path, state: dict[str, Any]) -> None:
    """Write a resumable training checkpoint (``state`` as built by the engine) atomically."""
    atomic_torch_save({"format": FORMAT, **state}, path)


def load_training_state(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_training_state` (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"training checkpoint not found: {path}")
    state = safe_torch_load(path, what="a fin3r training checkpoint")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a fin3r training checkpoint (format {state.get('format') if isinstance(state, dict) else '?'})")
    return state


__all__ = ["capture_rng", "load_training_state", "restore_rng", "save_training_state"]
