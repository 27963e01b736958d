"""The distributed side of training: joining the process group ``torchrun`` describes, and the few
collectives the loop needs (a finite check, a minimum, a gather, a broadcast from rank 0).

One node or many, the launcher is ``torchrun`` (or SLURM's ``srun`` running ``torchrun``): it sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address; this module only reads them.
``rank`` is the global rank (rank 0 is the one writer of checkpoints and logs); ``local_rank``
picks the GPU on the node. Gloo on CPUs, NCCL on GPUs. Every helper is a no-op (or the identity)
in a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: global ``rank`` of ``world_size``, ``local_rank`` on its node,
    ``owns_group``: whether :func:`setup_distributed` created the process group (and
    :func:`teardown` destroys it)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes files and logs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup_distributed(device_kind: str) -> DistContext:
    """Join the process group the launcher describes (``WORLD_SIZE > 1``), else a single process.

    ``device_kind``: ``"cuda"`` (NCCL; the current device becomes ``LOCAL_RANK``) or ``"cpu"`` (gloo).
    """
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_kind == "cuda":  # NCCL collectives use the current device
        torch.cuda.set_device(local_rank)
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
        owns = True
    return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, owns)


def teardown(ctx: DistContext) -> None:
    """Destroy the process group if :func:`setup_distributed` created it."""
    if ctx.owns_group:
        import torch.distributed as dist

        dist.destroy_process_group()


def _collective_device() -> str:
    import torch.distributed as dist

    return "cuda" if dist.get_backend() == "nccl" else "cpu"


def all_finite(value: Tensor, ctx: DistContext) -> bool:
    """Whether ``value`` is finite on every rank (one all-reduce when distributed)."""
    ok = torch.isfinite(value).all().to(torch.float32).reshape(1)
    if ctx.distributed:
        import torch.distributed as dist

        ok = ok.to(_collective_device())
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item() > 0)


def min_across_ranks(n: int, ctx: DistContext) -> int:
    """The smallest ``n`` over all ranks."""
    if not ctx.distributed:
        return n
    import torch.distributed as dist

    t = torch.tensor([n], dtype=torch.int64, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def gather_to_all(obj: Any, ctx: DistContext) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` in a single process)."""
    if not ctx.distributed:
        return [obj]
    import torch.distributed as dist

    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_from_main(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's ``obj`` on every rank: what rank 0 read (e.g. a checkpoint on its local disk)
    reaches the ranks of other nodes, which need not see the same file system."""
    if not ctx.distributed:
        return obj
    import torch.distributed as dist

    box = [obj if ctx.main else None]
    dist.broadcast_object_list(box, src=0, device=torch.device(_collective_device(), torch.cuda.current_device())
                               if _collective_device() == "cuda" else None)
    return box[0]


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        import torch.distributed as dist

        dist.barrier()


def wrap_ddp(module: nn.Module, device: torch.device, ctx: DistContext) -> nn.Module:
    """``module`` under ``DistributedDataParallel`` when distributed (gradients all-reduced), else itself."""
    if not ctx.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                   broadcast_buffers=False)


def resolve_device(name: str, ctx: DistContext) -> torch.device:
    """The training device for a config's ``device`` (``auto`` = CUDA when present; on CUDA the
    process's ``local_rank`` GPU)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", ctx.local_rank)
    return torch.device(name)


__all__ = ["DistContext", "all_finite", "barrier", "broadcast_from_main", "gather_to_all", "min_across_ranks",
           "resolve_device", "setup_distributed", "teardown", "wrap_ddp"]
