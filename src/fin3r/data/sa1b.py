"""SA-1B images (and any image collection): folders or ``sa_*.tar`` shards of jpg (+ json).

SA-1B ships as tar shards ``sa_000000.tar ...``, each holding ``sa_<id>.jpg`` (shorter side
1500 px) and ``sa_<id>.json`` (``{"image": {image_id, width, height, file_name}, "annotations":
[...]}``); the annotations (masks) are unused by Fin3R, the json is used only to check the image.
Fin3R needs just the pictures: the teacher labels them (``fin3r label``), and
:class:`fin3r.data.labels.LabelledImages` pairs them with the cached labels.

Keys: every image gets a stable key, ``<root-or-tar-stem>/<relative path without extension>``
(e.g. ``sa_000000/sa_1``), which names its label files. Image sources are listed in sorted order,
so shards (``index % n == i``) are reproducible.
"""

from __future__ import annotations

import json
import logging
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from fin3r.errors import InputError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
__all__ = ["ImageRef", "BadImage", "list_images", "ImageReader", "SA1BImages", "IMAGE_EXTENSIONS"]


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


def _stem_key(prefix: str, rel: str) -> str:
    rel_path = Path(rel)
    return f"{prefix}/{rel_path.with_suffix('').as_posix()}" if prefix else rel_path.with_suffix("").as_posix()


def _tar_images(src: Path) -> list[ImageRef]:
    """The images of one tar shard, keyed ``<tar stem>/<member path without extension>``."""
    try:
        with tarfile.open(src) as tar:
            names = sorted(m.name for m in tar.getmembers()
                           if m.isfile() and Path(m.name).suffix.lower() in IMAGE_EXTENSIONS)
    except (tarfile.TarError, OSError) as e:
        raise InputError(f"cannot read the tar shard {src}: {e}") from e
    return [ImageRef(_stem_key(src.stem, n), str(src), n) for n in names]


def list_images(sources: Iterable[str | Path]) -> list[ImageRef]:
    """Every image in ``sources``, in sorted order per source: a folder is searched recursively for
    image files (keys ``<folder name>/<relative path>``) **and** ``.tar`` shards (each keyed by its
    own stem, exactly as if the shard were given directly -- SA-1B as downloaded is a folder of
    ``sa_*.tar``); a ``.tar`` file; a single image. Raises :class:`InputError` for a source that does
    not exist or two images with the same key."""
    refs: list[ImageRef] = []
    for source in sources:
        src = Path(source)
        if src.is_dir():
            entries = sorted(p for p in src.rglob("*") if p.is_file())
            refs += [ImageRef(_stem_key(src.name, p.relative_to(src).as_posix()), str(p)) for p in entries
                     if p.suffix.lower() in IMAGE_EXTENSIONS]
            for shard in (p for p in entries if p.suffix == ".tar"):
                refs += _tar_images(shard)
        elif src.is_file() and src.suffix == ".tar":
            refs += _tar_images(src)
        elif src.is_file() and src.suffix.lower() in IMAGE_EXTENSIONS:
            refs.append(ImageRef(src.stem, str(src)))
        else:
            raise InputError(f"image source {src} is not a folder, a .tar shard or an image file")
    seen: dict[str, ImageRef] = {}
    for r in refs:
        if r.key in seen:
            raise InputError(f"two images share the key {r.key!r}: {seen[r.key].describe()} and {r.describe()}")
        seen[r.key] = r
    return refs


class ImageReader:
    """Reads :class:`ImageRef` images, keeping tar shards open (one reader per worker process)."""

    def __init__(self, check_sa1b_json: bool = True):
        self._tars: dict[str, tarfile.TarFile] = {}
        self.check_sa1b_json = check_sa1b_json

    def _bytes(self, path: str, member: str | None) -> bytes | None:
        if member is None:
            p = Path(path)
            return p.read_bytes() if p.is_file() else None
        tar = self._tars.get(path)
        if tar is None:
            tar = self._tars[path] = tarfile.open(path)
        try:
            f = tar.extractfile(member)
        except KeyError:
            return None
        return None if f is None else f.read()

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
        except (OSError, tarfile.TarError):
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

    def __getstate__(self):  # open tar handles do not cross process boundaries
        return {"check_sa1b_json": self.check_sa1b_json, "_tars": {}}


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
