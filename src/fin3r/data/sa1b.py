"""SA-1B images (and any image collection): folders or ``sa_*.tar`` shards of jpg (+ json).

SA-1B ships as tar shards ``sa_000000.tar ...``, each holding ``sa_<id>.jpg`` (shorter side
1500 px) and ``sa_<id>.json`` (``{"image": {image_id, width, height, file_name}, "annotations":
[...]}``); the annotations (masks) are unused by Fin3R, the json is used only to check the image.
Fin3R needs just the pictures: the teacher labels them (``fin3r label``), and
:class:`fin3r.data.labels.LabelledImages` pairs them with the cached labels.

Keys: every image gets a stable key, ``<folder-name-or-tar-stem>/<relative path without
extension>`` (e.g. ``sa_000000/sa_1``), a normalised relative path which names its label files.
A member or file whose path is absolute or contains ``..`` (it would leave its shard), a link
member, a second image with the same key and the unreadable tail of a truncated shard are left
out and reported with the reason (:func:`scan_images`), never followed. Image sources are listed
in sorted order, so shards (``index % n == i``) are reproducible.

Pixels (:func:`fin3r.media.to_rgb8`, the one decoder of fin3r): 8-bit images of any PIL mode are
converted to RGB; 16-bit (and 32-bit integer) greyscale is scaled to 8 bits (``value / 257``), not
clipped; float and other modes are refused with the reason (:class:`BadImage`).
"""

from __future__ import annotations

import json
import logging
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from fin3r.errors import InputError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
__all__ = ["ImageRef", "BadImage", "list_images", "scan_images", "scan_tar", "normalise_key", "ImageReader",
           "SA1BImages", "IMAGE_EXTENSIONS"]


class BadImage(InputError):
    """An image (or its sidecar) that cannot be used: corrupt, truncated, inconsistent."""


@dataclass(frozen=True)
class ImageRef:
    """Where an image lives: a file (``member`` None) or a member of the tar file ``path``."""

    key: str
    path: str
    member: str | None = None

    def describe(self) -> str:
        return f"{self.path}::{self.member}" if self.member else self.path


def normalise_key(key: str) -> str:
    """``key`` as a clean relative POSIX path (``a/./b`` -> ``a/b``; ``\\`` counts as a separator),
    or :class:`BadImage` saying why it cannot name files under an output folder: empty, absolute
    (``/x``, ``C:x``), climbing out (a ``..`` part) or holding control characters."""
    text = str(key).replace("\\", "/")
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise BadImage(f"key {key!r}: control characters in the name")
    if text.startswith("/") or re.match(r"^[A-Za-z]:", text):
        raise BadImage(f"key {key!r}: absolute path")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise BadImage(f"key {key!r}: contains '..' (would leave its shard or folder)")
    if not parts:
        raise BadImage(f"key {key!r}: empty")
    return "/".join(parts)


def _stem_key(prefix: str, rel: str) -> str:
    """``<prefix>/<rel without extension>``, normalised; :class:`BadImage` when ``rel`` is absolute,
    climbs out of its source (``..``) or is otherwise unusable as a key."""
    rel_key = normalise_key(rel)
    stem = rel_key.rsplit(".", 1)[0] if "." in rel_key.rsplit("/", 1)[-1] else rel_key
    return normalise_key(f"{prefix}/{stem}" if prefix else stem)


def _source_name(src: Path) -> str:
    """The key prefix of a folder source: its own name (resolved, so ``.`` and ``..`` name the
    real folder, never a path step)."""
    return src.resolve().name or "root"


def scan_tar(path: str | Path) -> tuple[list[tarfile.TarInfo], str | None]:
    """The members of a tar shard that could be read, in archive order, and ``None`` -- or the
    reason the listing stopped early (a truncated or corrupt shard still yields the members before
    the damage). Raises nothing for damaged archives; a shard that cannot be opened at all gives
    ``([], reason)``."""
    members: list[tarfile.TarInfo] = []
    try:
        tar = tarfile.open(path)
    except (tarfile.TarError, OSError, EOFError) as e:
        return members, f"cannot open the tar shard ({type(e).__name__}: {e})"
    try:
        while True:
            try:
                m = tar.next()
            except (tarfile.TarError, OSError, EOFError) as e:
                return members, f"truncated or corrupt after {len(members)} members ({type(e).__name__}: {e})"
            if m is None:
                return members, None
            members.append(m)
    finally:
        tar.close()


def _scan_shard(src: Path, refs: list[ImageRef], skipped: list[dict[str, str]]) -> None:
    """Add the usable images of one tar shard to ``refs`` (keys ``<tar stem>/<member path>``) and
    what is left out of it, with the reason, to ``skipped``."""
    members, damage = scan_tar(src)
    if damage is not None:
        skipped.append({"image": str(src), "error": damage})
    images = sorted((m for m in members if Path(m.name).suffix.lower() in IMAGE_EXTENSIONS), key=lambda m: m.name)
    for m in images:
        ref_name = f"{src}::{m.name}"
        if not m.isfile():  # symbolic / hard links, devices, folders: never followed
            skipped.append({"image": ref_name, "error": "not a regular file member (link or special file)"})
            continue
        try:
            refs.append(ImageRef(_stem_key(src.stem, m.name), str(src), m.name))
        except BadImage as e:
            skipped.append({"image": ref_name, "error": str(e)})


def scan_images(sources: Iterable[str | Path]) -> tuple[list[ImageRef], list[dict[str, str]]]:
    """``(refs, skipped)``: every usable image in ``sources`` (folders, searched recursively;
    ``.tar`` files; single images), in sorted order per source, and one ``{"image", "error"}``
    per image or shard left out, with the reason: a member whose path is absolute or contains
    ``..`` (it would leave its shard), a link member, a second image with an existing key, an
    unreadable or truncated shard (its readable members are kept). Raises :class:`InputError`
    only for a source that does not exist or is not a folder / tar / image."""
    refs: list[ImageRef] = []
    skipped: list[dict[str, str]] = []
    for source in sources:
        src = Path(source)
        if src.is_dir():
            prefix = _source_name(src)
            entries = sorted(p for p in src.rglob("*") if p.is_file())
            for f in (p for p in entries if p.suffix.lower() in IMAGE_EXTENSIONS):
                try:
                    refs.append(ImageRef(_stem_key(prefix, f.relative_to(src).as_posix()), str(f)))
                except BadImage as e:
                    skipped.append({"image": str(f), "error": str(e)})
            for shard in (p for p in entries if p.suffix == ".tar"):  # SA-1B as downloaded: a folder of shards
                _scan_shard(shard, refs, skipped)
        elif src.is_file() and src.suffix == ".tar":
            _scan_shard(src, refs, skipped)
        elif src.is_file() and src.suffix.lower() in IMAGE_EXTENSIONS:
            try:
                refs.append(ImageRef(normalise_key(src.stem), str(src)))
            except BadImage as e:
                skipped.append({"image": str(src), "error": str(e)})
        else:
            raise InputError(f"image source {src} is not a folder, a .tar shard or an image file")
    seen: dict[str, ImageRef] = {}
    unique: list[ImageRef] = []
    for r in refs:
        if r.key in seen:
            skipped.append({"image": r.describe(), "error": f"key {r.key!r} already names {seen[r.key].describe()}"})
            continue
        seen[r.key] = r
        unique.append(r)
    return unique, skipped


def list_images(sources: Iterable[str | Path], skipped: list[dict[str, str]] | None = None) -> list[ImageRef]:
    """The usable images of ``sources`` (see :func:`scan_images`). Images left out are appended
    to ``skipped`` when given, else logged as warnings (one line each, naming path and reason)."""
    refs, left_out = scan_images(sources)
    if skipped is not None:
        skipped.extend(left_out)
    else:
        for s in left_out:
            log.warning("image left out: %s: %s", s["image"], s["error"])
    return refs


class ImageReader:
    """Reads :class:`ImageRef` images, keeping tar shards open (one reader per worker process)."""

    def __init__(self, check_sa1b_json: bool = True):
        self._tars: dict[str, tarfile.TarFile] = {}
        self._members: dict[str, dict[str, tarfile.TarInfo]] = {}
        self.check_sa1b_json = check_sa1b_json

    def _bytes(self, path: str, member: str | None) -> bytes | None:
        if member is None:
            p = Path(path)
            return p.read_bytes() if p.is_file() else None
        tar = self._tars.get(path)
        if tar is None:
            # the readable members (a truncated shard keeps those before the damage); members are
            # looked up here, never through TarFile.getmember, which reads the whole (maybe broken) index
            self._members[path] = {m.name: m for m in scan_tar(path)[0] if m.isfile()}
            tar = self._tars[path] = tarfile.open(path)
        info = self._members[path].get(member)
        if info is None:
            return None
        f = tar.extractfile(info)
        if f is None:
            return None
        data = f.read()
        if len(data) != info.size:
            raise BadImage(f"{path}::{member}: truncated member ({len(data)} of {info.size} bytes)")
        return data

    def read_bytes(self, ref: ImageRef) -> bytes:
        """The encoded file of an image; :class:`BadImage` if missing or unreadable."""
        try:
            data = self._bytes(ref.path, ref.member)
        except (OSError, tarfile.TarError) as e:
            raise BadImage(f"{ref.describe()}: cannot read ({e})") from e
        if data is None:
            raise BadImage(f"{ref.describe()}: missing")
        return data

    def read(self, ref: ImageRef) -> np.ndarray:
        """``(H, W, 3)`` uint8 RGB. Raises :class:`BadImage` (naming the path) if the image is
        missing, corrupt or truncated, or disagrees with its SA-1B json (width/height)."""
        return self.read_at_least(ref, None)[0]

    def read_at_least(self, ref: ImageRef, min_hw: tuple[int, int] | None) -> tuple[np.ndarray, tuple[int, int]]:
        """(RGB uint8 array, the file's full (H, W)), upright (EXIF orientation applied by
        :func:`fin3r.media.open_rgb`, as everywhere in fin3r). With ``min_hw``, JPEGs are decoded at
        the smallest of 1/1, 1/2, 1/4, 1/8 scale that still covers ``min_hw`` (PIL draft mode: a
        1500-px SA-1B photo read for a 512-px label decodes several times faster). Same errors
        as :meth:`read`."""
        from fin3r.media import open_rgb

        data = self.read_bytes(ref)
        try:
            arr, full, stored = open_rgb(data, min_hw)
        except InputError as e:  # a pixel format open_rgb refuses (it names the reason)
            raise BadImage(f"{ref.describe()}: {e}") from None
        except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for bad files
            raise BadImage(f"{ref.describe()}: corrupt or truncated image ({type(e).__name__}: {e})") from e
        if self.check_sa1b_json:
            self._check_json(ref, stored)
        return arr, full

    def _check_json(self, ref: ImageRef, hw: tuple[int, int]) -> None:
        try:
            if ref.member is not None:
                raw = self._bytes(ref.path, Path(ref.member).with_suffix(".json").as_posix())
            else:
                raw = self._bytes(str(Path(ref.path).with_suffix(".json")), None)
        except (OSError, tarfile.TarError, BadImage):
            raw = None
        if raw is None:
            return
        try:
            info = json.loads(raw)["image"]
            w, h = int(info["width"]), int(info["height"])
        except Exception:
            return  # not an SA-1B json: nothing to check against
        if (h, w) != tuple(hw):
            raise BadImage(f"{ref.describe()}: image is {hw[1]}x{hw[0]} but its json says {w}x{h}")

    def close(self) -> None:
        for tar in self._tars.values():
            tar.close()
        self._tars.clear()
        self._members.clear()

    def __getstate__(self):  # open tar handles do not cross process boundaries
        return {"check_sa1b_json": self.check_sa1b_json, "_tars": {}, "_members": {}}


class SA1BImages(torch.utils.data.Dataset):
    """The images of SA-1B folders / tar shards, unlabelled: ``{"img" (3, H, W) float [0, 1],
    "key", "path"}`` at their own resolution (what the label command feeds the teacher).
    Bad images raise :class:`BadImage` naming the path (the label command counts and skips them)."""

    def __init__(self, sources: Iterable[str | Path], shard: tuple[int, int] = (0, 1)):
        i, n = shard
        if not 0 <= i < n:
            raise InputError(f"shard {i}/{n}: need 0 <= i < n")
        self.refs = list_images(sources)[i::n]
        self.reader = ImageReader()

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, index: int) -> dict:
        ref = self.refs[index]
        arr = self.reader.read(ref)
        return {"img": torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255.0, "key": ref.key,
                "path": ref.describe()}
