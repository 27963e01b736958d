"""Soak check of ``fin3r label``: kill -9 at random, broken inputs of eight kinds, same final cache.

Builds an image collection of ``--images`` tiny synthetic-world pictures (a folder and four
``sa_*.tar`` shards), ``--broken-fraction`` of them broken in eight ways:

  truncated_png    a PNG cut in half                     (folder)
  not_an_image     random bytes named .png               (shard)
  too_small        an 8x8 picture (< --min-size 16)      (folder)
  no_world_key     a PNG without the oracle's key chunk  (shard)
  bad_world_key    a key chunk that is not a world key   (folder)
  dotdot_member    a member ``../escape/x.png``          (shard)
  link_member      a symbolic-link member                (shard)
  absolute_member  a member ``/tmp/x.png``               (shard)

then labels it with the oracle teacher twice: once uninterrupted (the reference), once killed with
SIGKILL ``--kills`` times at random points (a random number of finished entries, plus a random
delay, so kills land inside writes) and restarted each time until it completes. It prints the
figures side by side and checks that

- the interrupted cache is byte-for-byte the reference cache (every label file, same SHA-256);
- no temporary file is left once the last run finished, nothing was written outside ``--out``;
- every broken input is listed in the final report with its kind, and nothing else is.

    python benchmarks/soak_label.py [--images 1000] [--kills 3] [--seed 0] [--keep DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
KINDS = ("truncated_png", "not_an_image", "too_small", "no_world_key", "bad_world_key", "dotdot_member",
         "link_member", "absolute_member")
#: the report kind each broken input must be listed under
REPORTED_AS = {"truncated_png": "unreadable", "not_an_image": "unreadable", "too_small": "too_small",
               "no_world_key": "no_world_key", "bad_world_key": "teacher_refused", "dotdot_member": "listing",
               "link_member": "listing", "absolute_member": "listing"}
SHARDS = 4


def _png_bytes(img, key: str | None) -> bytes:
    """A world image as PNG bytes, with ``key`` in the oracle's text chunk (or none)."""
    from PIL import Image, PngImagePlugin

    from fin3r.data.world import WORLD_KEY_PNG_CHUNK

    arr = (img.permute(1, 2, 0).clamp(0, 1) * 255 + 0.5).byte().numpy()
    buf = io.BytesIO()
    info = PngImagePlugin.PngInfo()
    if key is not None:
        info.add_text(WORLD_KEY_PNG_CHUNK, key)
    Image.fromarray(arr).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def build_collection(root: Path, n_images: int, broken_fraction: float, seed: int, height: int = 24,
                     width: int = 32) -> dict:
    """Write the collection under ``root`` (``photos/`` + ``sa_00000{0..3}.tar``); returns
    ``{"sources": [...], "good": n, "broken": {description: kind}}``."""
    from fin3r.data.world import WorldMonoDataset

    rng = random.Random(seed)
    n_broken = round(n_images * broken_fraction)
    kinds = [KINDS[i % len(KINDS)] for i in range(n_broken)]
    rng.shuffle(kinds)
    ds = WorldMonoDataset(n_images, height, width, seed=seed)
    tiny = WorldMonoDataset(1, 8, 8, seed=seed)[0]
    photos = root / "photos"
    photos.mkdir(parents=True)
    members: list[list[tuple[str, bytes | None, str | None]]] = [[] for _ in range(SHARDS)]
    broken: dict[str, str] = {}
    folder_kinds = {"truncated_png", "too_small", "bad_world_key"}
    for i in range(n_images):
        kind = kinds[i] if i < n_broken else None
        in_folder = kind in folder_kinds if kind else i % 5 == 0
        name = f"img_{i:05d}.png"
        if kind is None:
            s = ds[i]
            data = _png_bytes(s["img"], s["key"])
        elif kind == "truncated_png":
            s = ds[i]
            full = _png_bytes(s["img"], s["key"])
            data = full[: len(full) // 2]
        elif kind == "too_small":
            data = _png_bytes(tiny["img"], tiny["key"])
        elif kind == "bad_world_key":
            data = _png_bytes(ds[i]["img"], '{"scene_seed": "not a number"')
        elif kind == "not_an_image":
            data = rng.randbytes(300)
        elif kind == "no_world_key":
            data = _png_bytes(ds[i]["img"], None)
        elif kind == "dotdot_member":
            name, data = f"../escape/img_{i:05d}.png", _png_bytes(ds[i]["img"], ds[i]["key"])
        elif kind == "absolute_member":
            name, data = f"/tmp/fin3r_soak_escape/img_{i:05d}.png", _png_bytes(ds[i]["img"], ds[i]["key"])
        elif kind == "link_member":
            name, data = f"img_{i:05d}.png", None
        if in_folder:
            (photos / name).write_bytes(data)
            if kind:
                broken[str(photos / name)] = kind
        else:
            shard = i % SHARDS
            members[shard].append((name, data, kind))
            if kind:
                broken[f"{root / f'sa_{shard:06d}.tar'}::{name}"] = kind
    for shard, items in enumerate(members):
        with tarfile.open(root / f"sa_{shard:06d}.tar", "w") as tar:
            for name, data, kind in items:
                info = tarfile.TarInfo(name)
                if kind == "link_member":
                    info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                    tar.addfile(info)
                else:
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    sources = [str(photos)] + [str(root / f"sa_{s:06d}.tar") for s in range(SHARDS)]
    return {"sources": sources, "good": n_images - n_broken, "broken": broken}


def _label_cmd(sources: list[str], out: Path) -> list[str]:
    return [sys.executable, "-m", "fin3r.cli", "label", "--teacher", "oracle", "--images", *sources,
            "--out", str(out), "--batch-size", "4"]


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    return env


def _count_entries(out: Path) -> int:
    return sum(1 for p in out.rglob("*.json") if not p.name.startswith("label_report"))


def snapshot(out: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file of the cache but the run reports."""
    return {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file() and not p.name.startswith("label_report")}


def run_killed(sources: list[str], out: Path, kills: int, total: int, rng: random.Random) -> list[dict]:
    """Run the label command, SIGKILL it ``kills`` times at random points, then let it finish."""
    events = []
    for k in range(kills + 1):
        done = _count_entries(out)
        proc = subprocess.Popen(_label_cmd(sources, out), env=_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        if k < kills:
            remaining = total - done
            target = done + rng.randint(1, max(1, remaining * 2 // (kills + 1 - k) // 2))
            while proc.poll() is None and _count_entries(out) < target:
                time.sleep(0.005)
            time.sleep(rng.uniform(0, 0.05))  # land anywhere, also inside a write
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait()
            temps = sum(1 for p in out.rglob("*.fin3r-tmp"))
            events.append({"run": k, "killed": True, "entries_before": done, "entries_after": _count_entries(out),
                           "temp_files_left": temps})
        else:
            rc = proc.wait()
            events.append({"run": k, "killed": False, "returncode": rc, "entries_before": done,
                           "entries_after": _count_entries(out)})
    return events


def soak(root: Path, n_images: int = 1000, kills: int = 3, seed: int = 0, broken_fraction: float = 0.1) -> dict:
    """Build, label uninterrupted and killed, compare; returns the figures (``ok`` says it all held)."""
    rng = random.Random(seed)
    t0 = time.time()
    coll = build_collection(root / "data", n_images, broken_fraction, seed)
    t_build = time.time() - t0
    outside_before = {p for p in root.rglob("*") if p.is_file()}

    t0 = time.time()
    ref_out = root / "reference"
    rc_ref = subprocess.run(_label_cmd(coll["sources"], ref_out), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL).returncode
    t_ref = time.time() - t0
    t0 = time.time()
    out = root / "killed"
    events = run_killed(coll["sources"], out, kills, coll["good"], rng)
    t_killed = time.time() - t0

    ref, got = snapshot(ref_out), snapshot(out)
    report = json.loads((out / "label_report_0of1.json").read_text())
    listed = {b["image"]: b.get("kind") for b in report["bad"]}
    expected = {img: REPORTED_AS[kind] for img, kind in coll["broken"].items()}
    outside = {p for p in root.rglob("*") if p.is_file()} - outside_before
    outside = {p for p in outside if not (p.is_relative_to(ref_out) or p.is_relative_to(out))}
    escaped = Path("/tmp/fin3r_soak_escape").exists()
    figures = {
        "images": n_images, "good": coll["good"], "broken": len(coll["broken"]),
        "broken_per_kind": {k: sum(1 for v in coll["broken"].values() if v == k) for k in KINDS},
        "reference_returncode": rc_ref, "reference_entries": _count_entries(ref_out),
        "killed_runs": events, "final_entries": _count_entries(out),
        "files_reference": len(ref), "files_killed": len(got),
        "files_differing": sum(1 for k in ref.keys() | got.keys() if ref.get(k) != got.get(k)),
        "temp_files_left": sum(1 for _ in out.rglob("*.fin3r-tmp")),
        "broken_listed": sum(1 for img in expected if img in listed),
        "broken_listed_with_right_kind": sum(1 for img, kind in expected.items() if listed.get(img) == kind),
        "listed_but_not_broken": sorted(set(listed) - set(expected))[:5],
        "files_written_outside_out": len(outside) + int(escaped),
        "seconds": {"build": round(t_build, 1), "reference": round(t_ref, 1), "killed_and_restarted": round(t_killed, 1)},
    }
    figures["ok"] = (rc_ref == 0 and figures["reference_entries"] == coll["good"] and ref == got
                     and figures["temp_files_left"] == 0 and figures["broken_listed_with_right_kind"] == len(expected)
                     and not figures["listed_but_not_broken"] and figures["files_written_outside_out"] == 0
                     and all(e["killed"] for e in events[:-1]) and events[-1]["returncode"] == 0)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--broken-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", default=None, help="work in this (new) folder and keep it")
    args = parser.parse_args()
    sys.path.insert(0, str(SRC))
    if args.keep:
        root = Path(args.keep)
        root.mkdir(parents=True)
        figures = soak(root, args.images, args.kills, args.seed, args.broken_fraction)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            figures = soak(Path(tmp), args.images, args.kills, args.seed, args.broken_fraction)
    print(json.dumps(figures, indent=1))
    print(f"\n{figures['images']} images ({figures['broken']} broken, 8 kinds), killed {args.kills}x with SIGKILL: "
          f"{figures['final_entries']} entries vs {figures['reference_entries']} uninterrupted, "
          f"{figures['files_differing']} of {figures['files_reference']} files differ, "
          f"{figures['temp_files_left']} temp files left, {figures['broken_listed_with_right_kind']}/{figures['broken']} "
          f"broken inputs listed with their kind, {figures['files_written_outside_out']} files outside --out "
          f"-> {'OK' if figures['ok'] else 'FAILED'}")
    sys.exit(0 if figures["ok"] else 1)


if __name__ == "__main__":
    main()
