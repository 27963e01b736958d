"""Training metrics: one JSON object a line (``metrics.jsonl``), a CSV of the same records
(``metrics_<kind>.csv``, ``kind`` = ``step`` or ``epoch``; new columns widen the header), and TensorBoard scalars when
the ``tensorboard`` package is installed. Only rank 0 writes.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

from fin3r.io import json_text, write_csv_atomic, write_text_atomic

log = logging.getLogger(__name__)


class MetricsLogger:
    """Append metric records of a run to ``out_dir``.

    Each record is a flat dict of numbers (plus ``kind``: ``"step"`` or ``"epoch"``). A resumed run
    appends to the same files. ``close()`` flushes everything.
    """

    def __init__(self, out_dir: str | Path, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.out_dir = Path(out_dir)
        self._csv_fields: dict[str, list[str]] = {}
        self._tb = None
        if not enabled:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = self.out_dir / "metrics.jsonl"
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

                self._tb = SummaryWriter(str(self.out_dir / "tensorboard"))
            except Exception:  # not installed: JSONL/CSV only
                log.debug("tensorboard not installed; logging to JSONL/CSV only")

    def log(self, record: dict[str, Any]) -> None:
        """Write one record (``kind`` and ``step`` keys expected)."""
        if not self.enabled:
            return
        record = {k: (float(v) if hasattr(v, "item") else v) for k, v in record.items()}
        with open(self.jsonl_path, "a") as f:
            f.write(json_text(record, indent=None) + "\n")
        kind = str(record.get("kind", "step"))
        self._write_csv(self.out_dir / f"metrics_{kind}.csv", kind, record)
        if self._tb is not None:
            step = int(record.get("step", 0))
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "epoch"):
                    self._tb.add_scalar(f"{kind}/{k}", v, step)

    def _write_csv(self, path: Path, kind: str, record: dict[str, Any]) -> None:
        """Append ``record``; when it brings new columns, rewrite the file with the union header."""
        fields = self._csv_fields.get(kind)
        if fields is None and path.is_file():  # resumed run: continue the existing file
            with open(path, newline="") as f:
                fields = next(csv.reader(f), None) or None
        if fields is None:
            fields = list(record)
            with open(path, "w", newline="") as f:
                csv.writer(f).writerow(fields)
        elif any(k not in fields for k in record):
            fields = fields + [k for k in record if k not in fields]
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
            write_csv_atomic(path, fields, rows)
        self._csv_fields[kind] = fields
        with open(path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=fields, extrasaction="ignore").writerow(record)

    def truncate(self, step: int, epoch: int) -> None:
        """Cut the logs back to a checkpoint: keep step records up to ``step`` and epoch records of
        epochs before ``epoch`` (a resumed run re-runs and re-logs what came after). A torn last
        line (a run killed mid-write) is dropped too. TensorBoard event files are left as they are."""
        if not self.enabled:
            return

        def keep(record: dict[str, Any]) -> bool:
            try:
                if record.get("kind", "step") == "epoch":
                    return int(float(record["epoch"])) < epoch
                return int(float(record["step"])) <= step
            except (KeyError, TypeError, ValueError):
                return False

        if self.jsonl_path.is_file():
            kept = []
            for line in self.jsonl_path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and keep(record):
                    kept.append(line + "\n")
            write_text_atomic(self.jsonl_path, "".join(kept))
        for path in self.out_dir.glob("metrics_*.csv"):
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                rows = [{k: v for k, v in r.items() if k is not None} for r in reader if keep(r)]
                fields = list(reader.fieldnames or [])
            write_csv_atomic(path, fields, rows)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
            self._tb = None


__all__ = ["MetricsLogger"]
