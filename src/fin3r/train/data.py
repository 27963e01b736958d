"""The training data plumbing: the data sets a config names, the per-epoch plan of single-source
batches (the mixture sampler, one share per rank), and the loader that turns a plan into batches.

A plan is ``[(source, [index, ...]), ...]``: ``source`` is ``"mono"`` (teacher-labelled single
images) or a replay source (``"replay"`` for the synthetic world, ``"hypersim"``, ``"tartanair"``).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor

from fin3r.data.skips import skipped_of
from fin3r.errors import Fin3rError
from fin3r.train.config import TrainConfig
from fin3r.train.distributed import DistContext, gather_to_all, min_across_ranks

#: the sample keys a batch needs (others, e.g. ``normals`` or ``key``, are not collated)
BATCH_KEYS = ("img", "depth", "valid", "K", "cam2world", "teacher_conf")

#: the real multi-view readers ``data.replay_roots`` may name: ``name -> (module, class)``
REPLAY_READERS = {"hypersim": ("fin3r.data.hypersim", "HypersimViews"),
                  "tartanair": ("fin3r.data.tartanair", "TartanAirViews")}

Plan = list[tuple[str, list[int]]]


def build_datasets(config: TrainConfig) -> dict[str, Any]:
    """``{"mono": Dataset, "replay": Dataset | None, "heldout": Tensor (N, 3, H, W) | None, <replay
    set>: Dataset ...}`` from ``config.data`` (see :class:`fin3r.train.config.DataConfig`)."""
    d = config.data
    out: dict[str, Any] = {}
    if d.mono == "world":
        from fin3r.data.world import WorldMonoDataset

        out["mono"] = WorldMonoDataset(d.world_mono_scenes, d.height, d.width, seed=config.seed, split="train",
                                       cache_size=min(d.world_mono_scenes, 2048))
        heldout = WorldMonoDataset(d.heldout_images, d.height, d.width, seed=config.seed, split="test")
        out["heldout"] = torch.stack([heldout[i]["img"] for i in range(len(heldout))]) if d.heldout_images else None
    else:
        from fin3r.data.labels import LabelledImages

        if not d.images_root or not d.labels_root:
            raise Fin3rError("data.mono=labels needs data.images_root and data.labels_root")
        mono = LabelledImages(d.images_root, d.labels_root, d.height, d.width, crop=d.mono_crop,
                              max_zoom=d.mono_max_zoom, seed=config.seed, strict=d.strict)
        out["mono"] = mono
        n = min(d.heldout_images, len(mono))
        out["heldout"] = torch.stack([mono[len(mono) - 1 - i]["img"] for i in range(n)]) if n else None
    if d.replay == "world":
        from fin3r.data.world import WorldViewsDataset

        out["replay"] = WorldViewsDataset(d.world_replay_scenes, d.num_views, d.height, d.width, seed=config.seed,
                                          split="train", cache_size=min(d.world_replay_scenes, 1024))
    else:
        out["replay"] = None
    for name, root in d.replay_roots.items():
        if name not in REPLAY_READERS:
            raise Fin3rError(f"data.replay_roots: unknown replay set {name!r} (known: {', '.join(REPLAY_READERS)})")
        out[name] = _replay_reader(name, root, REPLAY_READERS[name], config)
    return out


def _replay_reader(name: str, root: Any, reader: tuple[str, str], config: TrainConfig):
    """One real replay set, validated: a one-line :class:`Fin3rError` naming ``data.replay_roots.<name>``
    for a root that is not a folder, cannot be read, or holds no sequence of ``num_views`` frames."""
    d = config.data
    where = f"data.replay_roots.{name}={root}"
    if not isinstance(root, str) or not root:
        raise Fin3rError(f"{where}: expected a folder path")
    if not Path(root).is_dir():
        raise Fin3rError(f"{where}: no such folder")
    module, cls = reader
    try:
        dataset = getattr(importlib.import_module(module), cls)(root, d.num_views, d.height, d.width, seed=config.seed)
    except Fin3rError as e:
        raise Fin3rError(f"{where}: {e}") from None
    except (OSError, ValueError, KeyError, IndexError) as e:  # unreadable metadata files
        raise Fin3rError(f"{where}: cannot read the {name} layout ({type(e).__name__}: {e})") from None
    if len(dataset) == 0:
        raise Fin3rError(f"{where}: no {name} sequence with {d.num_views} usable frames found (the raw layout "
                         f"is described in docs/data.md)")
    return dataset


def check_same_data(datasets: dict[str, Any], ctx: DistContext) -> None:
    """Every rank must index the same samples (the mixture deals indices, not files): compare the
    data set sizes across ranks and name the first difference."""
    sizes = {k: len(v) for k, v in datasets.items() if k != "heldout" and v is not None}
    for rank, other in enumerate(gather_to_all(sizes, ctx)):
        if other != sizes:
            raise Fin3rError(f"rank {rank} sees other data than rank {ctx.rank} ({other} vs {sizes} samples): every "
                             "node needs the same images and label cache (a shared file system or full copies)")


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the tensors of :data:`BATCH_KEYS` (``(B, ...)``); ``depth_kind``/``source`` as lists."""
    batch: dict[str, Any] = {k: torch.stack([torch.as_tensor(s[k]) for s in samples]) for k in BATCH_KEYS if k in samples[0]}
    batch["depth_kind"] = [s.get("depth_kind", "metric") for s in samples]
    batch["source"] = [s.get("source", "") for s in samples]
    batch["skipped"] = skipped_of(samples)  # bad entries the data set passed over (SkipLedger)
    return batch


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch's tensors on ``device`` (other values unchanged)."""
    return {k: (v.to(device, non_blocking=True) if isinstance(v, Tensor) else v) for k, v in batch.items()}


def replay_sources(datasets: dict[str, Any]) -> list[str]:
    """The replay sources of ``datasets``: every key but ``mono`` and ``heldout`` whose data set is
    not ``None`` (``replay`` for the synthetic world; e.g. ``hypersim``, ``tartanair``)."""
    return sorted(k for k, v in datasets.items() if k not in ("mono", "heldout") and v is not None)


def make_sampler(datasets: dict[str, Any], config: TrainConfig, ctx: DistContext):
    """The mixture sampler (``fin3r.data.mixture.MixtureSampler``): ``data.mono_per_epoch`` mono
    samples and ``data.replay_per_epoch`` samples of each replay source per epoch, this rank's share."""
    from fin3r.data.mixture import MixtureSampler

    sizes = {"mono": len(datasets["mono"])}
    counts = {"mono": config.data.mono_per_epoch}
    for name in replay_sources(datasets):
        if config.data.replay_per_epoch > 0:
            sizes[name] = len(datasets[name])
            counts[name] = config.data.replay_per_epoch
    if (len(counts) == 1 or config.replay.weight <= 0) and counts["mono"] > 0 and not config.data.allow_no_replay:
        raise Fin3rError(
            "no multi-view replay (data.replay=none, data.replay_roots empty, data.replay_per_epoch=0 or "
            "replay.weight=0): distillation alone is naive LoRA, which forgets multi-view geometry; give "
            "data.replay_roots.hypersim=... data.replay_roots.tartanair=... (docs/data.md), or set "
            "data.allow_no_replay=true to train without replay on purpose")
    return MixtureSampler(sizes, counts, config.data.batch_size, config.seed, rank=ctx.rank, world_size=ctx.world_size)


def _normalise_batch_keys(batch: Any) -> tuple[str, list[int]]:
    """A sampler batch -> ``(source, indices)``: accepts ``[(source, index), ...]`` or
    ``(source, [indices])``."""
    if isinstance(batch, tuple) and len(batch) == 2 and isinstance(batch[0], str):
        return batch[0], [int(i) for i in batch[1]]
    sources = {s for s, _ in batch}
    if len(sources) != 1:
        raise Fin3rError(f"the mixture sampler gave a batch mixing sources {sorted(sources)}")
    return next(iter(sources)), [int(i) for _, i in batch]


def epoch_plan(sampler: Any, epoch: int, ctx: DistContext | None = None) -> Plan:
    """The batches of ``epoch`` in order (deterministic). When distributed, every rank keeps the
    same number of batches (the smallest share), so the ranks take the same number of steps."""
    sampler.set_epoch(epoch)
    plan = [_normalise_batch_keys(b) for b in sampler]
    if ctx is not None:
        plan = plan[: min_across_ranks(len(plan), ctx)]
    return plan


def set_data_epoch(datasets: dict[str, Any], epoch: int) -> None:
    """Per-epoch augmentation draws (e.g. random crops): ``set_epoch`` on every data set that has one."""
    for ds in datasets.values():
        if hasattr(ds, "set_epoch"):
            ds.set_epoch(epoch)


def load_batches(datasets: dict[str, Any], plan: Plan, num_workers: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(source, batch)`` for every entry of ``plan``, in order, read by ``num_workers``
    DataLoader workers (0 = in this process). Order and content do not depend on the worker count."""
    if num_workers <= 0:
        for source, indices in plan:
            ds = datasets[source]
            yield source, collate([ds[i] for i in indices])
        return
    from torch.utils.data import DataLoader

    from fin3r.data.mixture import MixtureDataset

    keyed = MixtureDataset({k: v for k, v in datasets.items() if k != "heldout" and v is not None})
    loader = DataLoader(keyed, batch_sampler=[[(s, i) for i in idx] for s, idx in plan],
                        num_workers=num_workers, collate_fn=collate, persistent_workers=False)
    for (source, _), batch in zip(plan, loader):
        yield source, batch


def accumulation_windows(batches: Iterator[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive groups of ``size`` items of ``batches`` (the micro-batches of one optimizer
    step); the last group may be shorter. An item is read only when its group is being filled."""
    window: list[Any] = []
    for item in batches:
        window.append(item)
        if len(window) == size:
            yield window
            window = []
    if window:
        yield window


__all__ = ["BATCH_KEYS", "accumulation_windows", "check_same_data", "REPLAY_READERS", "build_datasets", "collate", "epoch_plan", "load_batches", "make_sampler",
           "replay_sources", "set_data_epoch", "to_device"]
