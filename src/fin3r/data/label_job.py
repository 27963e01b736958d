"""One labelling job: images in, teacher labels out, every bad image skipped, counted and reported.

:class:`LabelJob` is what ``fin3r label`` runs per shard: it reads each image, refuses the ones it
cannot label (unreadable, truncated, an unsupported pixel format, smaller than ``min_size``, an
oracle image without a valid world key), batches same-size images for the teacher (up to 8 sizes
pending at once; the fullest group goes first when more arrive), and writes each
label entry through :func:`fin3r.data.labels.write_label` (depth and mask first, the sidecar with
their hashes last; nothing outside the output folder). A teacher that refuses a batch
(:class:`~fin3r.errors.InputError`) has its images retried one by one, so one bad image never
costs its batch neighbours their labels. Every failure is one ``{"image", "kind", "error"}``
entry in :attr:`LabelJob.bad`; ``strict=True`` raises the first one instead.
"""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from fin3r.data.labels import write_label
from fin3r.data.sa1b import BadImage, ImageReader, ImageRef
from fin3r.errors import Fin3rError, InputError

__all__ = ["LabelJob"]


class LabelJob:
    """Label images one at a time (:meth:`add`), in teacher batches of ``batch_size``.

    Args:
        teacher: a :class:`fin3r.teachers.base.Teacher`.
        out: the label cache folder.
        fmt: ``"png"`` or ``"npy"`` (see :func:`fin3r.data.labels.write_label`).
        max_size: shrink images so the long side is at most this (0 = never; not for the oracle,
            which labels at the rendered resolution).
        min_size: images whose short side is smaller are skipped (kind ``too_small``).
        batch_size: images per teacher call (same-size images; up to 8 sizes wait at once).
        strict: raise the first failure (:class:`Fin3rError`) instead of recording it.
        shard: ``"i/n"``, recorded in every sidecar.
    """

    def __init__(self, teacher: Any, out: str | Path, fmt: str = "png", max_size: int = 1024, min_size: int = 16,
                 batch_size: int = 1, strict: bool = False, shard: str = "0/1"):
        self.teacher, self.out, self.fmt = teacher, Path(out), fmt
        self.max_size, self.min_size, self.batch_size = int(max_size), int(min_size), int(batch_size)
        self.strict, self.shard = strict, shard
        self.bad: list[dict[str, str]] = []
        self.labelled = 0
        self._pending: dict[tuple[int, ...], list] = {}  # same-size images waiting for a batch

    def fail(self, ref: ImageRef, kind: str, reason: str) -> None:
        """Record (or, strict, raise) one image that cannot be labelled."""
        if self.strict:
            raise Fin3rError(f"bad input (--strict): {ref.describe()}: {reason}")
        self.bad.append({"image": ref.describe(), "kind": kind, "error": reason})

    def counts(self, listing: list[dict[str, str]] = ()) -> dict[str, int]:
        """Bad images per kind (``listing``: entries left out while listing the sources)."""
        return dict(Counter([b.get("kind", "listing") for b in listing] + [b["kind"] for b in self.bad]))

    def add(self, reader: ImageReader, ref: ImageRef) -> None:
        """Read ``ref``, check it and queue it for the teacher (labels written when a batch fills)."""
        try:
            arr, _ = reader.read_at_least(ref, None)
        except BadImage as e:
            self.fail(ref, "unreadable", str(e).removeprefix(f"{ref.describe()}: "))
            return
        H, W = arr.shape[:2]
        if min(H, W) < self.min_size:
            self.fail(ref, "too_small", f"{W}x{H} image, smaller than --min-size {self.min_size}")
            return
        x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255.0
        key = None
        if self.teacher.needs_ground_truth:
            key = self._world_key(reader, ref)
            if key is None:
                return
        elif self.max_size and max(H, W) > self.max_size:
            s = self.max_size / max(H, W)
            x = F.interpolate(x[None], size=(max(1, round(H * s)), max(1, round(W * s))), mode="bilinear",
                              align_corners=False, antialias=True)[0].clamp(0, 1)
        bucket = self._pending.setdefault(tuple(x.shape), [])
        bucket.append((ref, x, key, (H, W)))
        if len(bucket) >= self.batch_size:
            self._label(self._pending.pop(tuple(x.shape)))
        elif len(self._pending) > 8:  # many sizes: label the fullest group
            self._label(self._pending.pop(max(self._pending, key=lambda k: len(self._pending[k]))))

    def _world_key(self, reader: ImageReader, ref: ImageRef) -> str | None:
        from PIL import Image

        from fin3r.data.world import WORLD_KEY_PNG_CHUNK

        try:
            with Image.open(io.BytesIO(reader.read_bytes(ref))) as im:
                key = (getattr(im, "text", None) or {}).get(WORLD_KEY_PNG_CHUNK)
        except Exception as e:  # read before: only odd text chunks get here
            self.fail(ref, "unreadable", f"cannot read its text chunks ({type(e).__name__}: {e})")
            return None
        if not isinstance(key, str):
            self.fail(ref, "no_world_key", "the oracle teacher labels only images exported from the synthetic "
                                           "world (PNG with a fin3r_world_key chunk)")
            return None
        return key

    def flush(self) -> None:
        """Label every queued image."""
        groups, self._pending = list(self._pending.values()), {}
        for group in groups:
            self._label(group)

    def _label(self, batch: list) -> None:
        """Label one same-size group (one teacher call; one call per image if the group is refused)."""
        if not batch:
            return
        try:
            pred = self._predict(batch)
        except InputError as e:
            if len(batch) == 1:
                self.fail(batch[0][0], "teacher_refused", str(e))
                return
            for item in batch:  # find the one(s) the teacher refuses; label the rest
                self._label([item])
            return
        for b, (ref, _, _, orig_hw) in enumerate(batch):
            meta = dict(self.teacher.metadata())
            meta.update(image=ref.describe(), image_size=list(orig_hw), source_shard=self.shard)
            if "intrinsics" in pred.extras:
                meta["intrinsics"] = pred.extras["intrinsics"][b].tolist()
            channels = {k: pred.extras[k][b] for k in ("normals", "confidence") if k in pred.extras}
            try:
                write_label(self.out, ref.key, pred.depth[b], pred.mask[b], meta, fmt=self.fmt, **channels)
            except InputError as e:
                self.fail(ref, "unwritable", str(e))
                continue
            self.labelled += 1

    def _predict(self, batch):
        imgs = torch.stack([b[1] for b in batch])
        kwargs = {"keys": [b[2] for b in batch]} if self.teacher.needs_ground_truth else {}
        return self.teacher.predict(imgs, **kwargs)
