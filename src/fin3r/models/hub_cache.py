"""Models by Hugging Face hub id, from the local Hugging Face cache only (never a download).

A user who has run ``huggingface-cli download naver/DUSt3R_ViTLarge_BaseDecoder_512_dpt`` (or any
``from_pretrained``) has the files in the hub cache::

    <cache>/models--naver--DUSt3R_ViTLarge_BaseDecoder_512_dpt/
        refs/main                      the commit hash of the snapshot ``main`` points to
        snapshots/<commit>/config.json, model.safetensors, ...   (links into blobs/)

``<cache>`` is ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``.
:func:`cached_snapshot` returns the snapshot folder (``refs/main``'s, else the only one, else the
most recently modified) for :func:`fin3r.models.load` to read like any Hugging Face folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from fin3r.errors import CheckpointError

__all__ = ["hub_cache_dir", "looks_like_hub_id", "cached_snapshot"]

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def hub_cache_dir() -> Path:
    """The hub cache folder: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path.home() / ".cache" / "huggingface" / "hub"


def looks_like_hub_id(name: str) -> bool:
    """``owner/name`` with hub-legal characters (no ``..``, no absolute path)."""
    return bool(_HUB_ID.match(name)) and ".." not in name


def cached_snapshot(repo_id: str, cache: str | os.PathLike | None = None) -> Path:
    """The cached snapshot folder of model ``repo_id`` (see the module doc).

    Raises:
        CheckpointError: not in the cache (one line naming where it looked and how to fetch it).
    """
    if not looks_like_hub_id(repo_id):
        raise CheckpointError(f"{repo_id!r} is not a Hugging Face hub id (owner/name)")
    root = Path(cache) if cache is not None else hub_cache_dir()
    repo = root / ("models--" + repo_id.replace("/", "--"))
    snapshots = repo / "snapshots"
    hint = (f"not in the local Hugging Face cache ({repo}); fin3r never downloads -- fetch it first, e.g. "
            f"`huggingface-cli download {repo_id}` (the cache is $HF_HUB_CACHE, else $HF_HOME/hub)")
    if not snapshots.is_dir():
        raise CheckpointError(f"{repo_id}: {hint}")
    ref = repo / "refs" / "main"
    if ref.is_file():
        commit = ref.read_text().strip()
        if re.fullmatch(r"[0-9a-f]{7,64}", commit) and (snapshots / commit).is_dir():
            return snapshots / commit
    found = sorted((p for p in snapshots.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    if not found:
        raise CheckpointError(f"{repo_id}: {hint}")
    return found[-1]
