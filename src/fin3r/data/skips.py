"""Bad samples in training: skipped, counted per epoch, and fatal only past a set fraction.

A data set that meets a bad entry (corrupt image, bad label, sidecar of the wrong shape) serves
the next good sample instead and lists the entries it passed over in the sample's ``skipped``
field (``[(path, reason), ...]``; see :class:`fin3r.data.labels.LabelledImages`). The collate
function concatenates them into ``batch["skipped"]``, so the count survives DataLoader worker
processes. The training loop hands every batch to a :class:`SkipLedger` and asks it for the
epoch's figures at the end of each epoch.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable

from fin3r.errors import InputError

log = logging.getLogger(__name__)

__all__ = ["SkipLedger", "TooManyBadSamples", "skipped_of"]


class TooManyBadSamples(InputError):
    """More bad samples in an epoch than ``data.max_bad_fraction`` allows."""


def skipped_of(samples: Iterable[dict[str, Any]]) -> list[tuple[str, str]]:
    """The ``skipped`` entries of a list of samples, concatenated (for a collate function)."""
    return [tuple(entry) for s in samples for entry in (s.get("skipped") or ())]


class SkipLedger:
    """Counts the samples served and the bad entries passed over, per epoch.

    Args:
        max_fraction: abort (:class:`TooManyBadSamples`) once ``bad / (bad + served)`` exceeds
            this in an epoch -- checked after every batch once ``min_seen`` entries were seen,
            and at the end of the epoch. 1.0 never aborts.
        min_seen: entries to see before the fraction is checked mid-epoch (a few bad files among
            the first ones should not end a run).
        report: how many of an epoch's bad entries are logged (all are counted).
    """

    def __init__(self, max_fraction: float = 0.05, min_seen: int = 64, report: int = 20):
        if not 0.0 <= max_fraction <= 1.0:
            raise ValueError(f"max_fraction must be in [0, 1], got {max_fraction}")
        self.max_fraction, self.min_seen, self.report = float(max_fraction), int(min_seen), int(report)
        self.served = 0
        self.bad: list[tuple[str, str]] = []
        self.total_bad = 0

    def fraction(self) -> float:
        seen = self.served + len(self.bad)
        return len(self.bad) / seen if seen else 0.0

    def _check(self, epoch: int | None) -> None:
        if self.fraction() > self.max_fraction:
            where = f" in epoch {epoch}" if epoch is not None else ""
            path, reason = self.bad[-1]
            raise TooManyBadSamples(
                f"{len(self.bad)} bad samples of {self.served + len(self.bad)}{where} "
                f"({self.fraction():.1%} > data.max_bad_fraction {self.max_fraction:g}); last: {path}: {reason}")

    def observe(self, batch: dict[str, Any], epoch: int | None = None) -> None:
        """Count one batch (its ``img`` rows served, its ``skipped`` entries bad)."""
        img = batch.get("img")
        self.served += int(img.shape[0]) if img is not None else 0
        new = [tuple(e) for e in batch.get("skipped") or ()]
        self.bad.extend(new)
        self.total_bad += len(new)
        if self.served + len(self.bad) >= self.min_seen:
            self._check(epoch)

    def watch(self, batches: Iterable[tuple[str, dict[str, Any]]], epoch: int | None = None):
        """Pass ``(source, batch)`` pairs through, observing each batch (:meth:`observe`)."""
        for source, batch in batches:
            self.observe(batch, epoch)
            yield source, batch

    def end_epoch(self, epoch: int) -> dict[str, Any]:
        """The epoch's figures ``{"bad_samples", "bad_fraction"}`` (logged with the first bad
        entries); raises :class:`TooManyBadSamples` past the fraction; then starts a new count."""
        figures = {"bad_samples": len(self.bad), "bad_fraction": self.fraction()}
        if self.bad:
            log.warning("epoch %d: %d bad samples skipped (%.2f%%)", epoch, len(self.bad), 100 * self.fraction())
            for path, reason in self.bad[: self.report]:
                log.warning("  bad sample: %s: %s", path, reason)
        try:
            self._check(epoch)
        finally:
            self.served, self.bad = 0, []
        return figures
