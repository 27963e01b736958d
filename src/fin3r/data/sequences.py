"""Multi-view replay samples from frame sequences (Hypersim camera trajectories, TartanAir videos).

Frame-interval sampling follows CUT3R's practice (research notes B.7): from a start frame, with
probability ``video_prob`` the views are an ordered "video" -- with probability
``fix_interval_prob`` at one random fixed interval in ``[1, max_interval]``, otherwise with
random per-step intervals in ``[1, max_interval]`` -- capped so the sequence fits; otherwise
``num_views`` distinct frames within ``max_interval * (num_views - 1)`` of the start, in random
order ("collection"). Everything is drawn from ``(seed, epoch, index)``.

:class:`SequenceViewsDataset` is the shared machinery: ``len`` = ``samples_per_start x`` the
number of valid start frames; a sample is ``num_views`` views with the sample-dict keys stacked on
a leading ``S`` axis, every view cropped/resized with the same box (images bilinear, depth
nearest, ``K`` consistently). Bad frames (missing or corrupt files, depth of the wrong size, no
valid depth) are logged with their path, recorded in ``errors`` and the sample is replaced by the
next index (``strict``: raised).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from fin3r.data.views import crop_resize_view, stack_views
from fin3r.errors import InputError

log = logging.getLogger(__name__)

__all__ = ["sample_frame_ids", "SequenceViewsDataset", "BadFrame"]


class BadFrame(InputError):
    """A frame whose files are missing, corrupt or inconsistent."""


def sample_frame_ids(num_frames: int, num_views: int, start: int, rng: np.random.Generator,
                     max_interval: int = 4, video_prob: float = 0.5, fix_interval_prob: float = 0.5) -> list[int]:
    """``num_views`` frame indices in ``[0, num_frames)`` starting at ``start`` (see the module
    docstring). Needs ``num_frames >= num_views``; ``start`` is moved back if the views do not fit."""
    if num_frames < num_views:
        raise InputError(f"a sequence of {num_frames} frames cannot give {num_views} views")
    steps = num_views - 1
    max_interval = max(1, min(int(max_interval), (num_frames - 1) // max(steps, 1) if steps else 1))
    if rng.uniform() < video_prob:
        if rng.uniform() < fix_interval_prob:
            gaps = np.full(steps, rng.integers(1, max_interval + 1))
        else:
            gaps = rng.integers(1, max_interval + 1, size=steps)
        offsets = np.concatenate([[0], np.cumsum(gaps)]).astype(int)
        start = min(start, num_frames - 1 - int(offsets[-1]))
        return [int(start + o) for o in offsets]
    span = min(num_frames, max_interval * steps + 1)
    start = min(start, num_frames - span)
    others = start + 1 + rng.choice(span - 1, size=steps, replace=False)  # already in random order
    return [int(start)] + [int(i) for i in others]


class SequenceViewsDataset(torch.utils.data.Dataset):
    """Base class: subclasses fill ``self.sequences`` (a list of ``(name, frames)``) and implement
    ``load_frame(name, frame) -> view dict`` (native resolution, contract keys)."""

    source = "sequence"

    def __init__(self, num_views: int, height: int, width: int, seed: int = 0, max_interval: int = 4,
                 video_prob: float = 0.5, fix_interval_prob: float = 0.5, samples_per_start: int = 1,
                 crop: str = "center", strict: bool = False):
        self.num_views, self.height, self.width = int(num_views), int(height), int(width)
        self.seed, self.epoch = int(seed), 0
        self.max_interval, self.video_prob, self.fix_interval_prob = max_interval, video_prob, fix_interval_prob
        self.samples_per_start, self.crop, self.strict = int(samples_per_start), crop, strict
        self.sequences: list[tuple[Any, list[Any]]] = []
        self.errors: list[tuple[str, str]] = []
        self._starts: list[tuple[int, int]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def starts(self) -> list[tuple[int, int]]:
        if self._starts is None:
            self._starts = [(s, f) for s, (_, frames) in enumerate(self.sequences) if len(frames) >= self.num_views
                            for f in range(len(frames))]
        return self._starts

    def __len__(self) -> int:
        return len(self.starts) * self.samples_per_start

    def load_frame(self, name: Any, frame: Any) -> dict:
        raise NotImplementedError

    def views_of(self, index: int) -> tuple[Any, list[Any]]:
        """(sequence name, frame ids) of sample ``index`` (deterministic per seed and epoch)."""
        seq, start = self.starts[index // self.samples_per_start]
        name, frames = self.sequences[seq]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        ids = sample_frame_ids(len(frames), self.num_views, start, rng, self.max_interval, self.video_prob,
                               self.fix_interval_prob)
        return name, [frames[i] for i in ids]

    def load(self, index: int) -> dict:
        name, frames = self.views_of(index)
        views = [self.load_frame(name, f) for f in frames]
        shapes = {tuple(v["img"].shape) for v in views}
        if len(shapes) != 1:
            raise BadFrame(f"{name}: frames {frames} differ in size {sorted(shapes)}")
        sample = stack_views(views)
        g = torch.Generator().manual_seed(hash((self.seed, self.epoch, index)) % (2**63)) if self.crop == "random" else None
        sample = crop_resize_view(sample, self.height, self.width, mode=self.crop, generator=g)
        sample["source"] = self.source
        sample["depth_kind"] = "metric"
        return sample

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(index)
        for attempt in range(min(len(self), 16)):
            i = (index + attempt) % len(self)
            try:
                return self.load(i)
            except InputError as e:
                if self.strict:
                    raise
                self.errors.append((str(self.views_of(i)[0]), str(e)))
                log.warning("skipping a bad %s sample: %s", self.source, e)
        raise InputError(f"16 consecutive bad {self.source} samples from index {index} (last: {self.errors[-1][1]})")
