"""Two "nodes" on this machine: two ``torchrun`` launchers (``--nnodes 2 --node_rank 0/1``, one
process each, gloo), each with its own output folder standing for a node-local disk. Rank 0 is
the one writer; a resume reads rank 0's checkpoint only and reaches the other node by broadcast."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

TESTS = Path(__file__).parent
SRC = TESTS.parent / "src"

NODE_RUNNER = textwrap.dedent("""
    import os, sys
    import torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    import test_train_engine as T
    from fin3r.lora import adapter_state_dict
    from fin3r.train import train
    out_dir, epochs, resume, adapters = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4]
    result = train(T.tiny_config(out_dir, f"optim.epochs={{epochs}}", "ckpt_every=0", "data.replay_per_epoch=8"),
                   resume=resume)
    torch.save(adapter_state_dict(result.model), os.path.join(adapters, f"rank{{os.environ['RANK']}}.pt"))
    # resumed at step 4 (epoch 0 alone: 4 batches); on 2 ranks an epoch is 2 steps: total 3 x 2 = 6
    assert result.steps == 6, result.steps
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_nodes(script: Path, tmp_path: Path, epochs: int, resume: bool) -> None:
    port = _free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(SRC))
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(node),
                               "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port),
                               str(script), str(tmp_path / f"node{node}"), str(epochs), "1" if resume else "0",
                               str(tmp_path / "adapters")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for node in (0, 1)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]


def _same_adapters(tmp_path: Path) -> dict[str, torch.Tensor]:
    r0 = torch.load(tmp_path / "adapters" / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "adapters" / "rank1.pt", weights_only=True)
    assert r0.keys() == r1.keys()
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    return r0


def test_two_nodes_one_writer_and_resume_from_rank0_disk(tmp_path):
    import test_train_engine as T
    from fin3r.lora import adapter_state_dict
    from fin3r.train import train

    node0, node1 = tmp_path / "node0", tmp_path / "node1"
    # epoch 0 in this process: the checkpoint lies on "node 0's disk" only
    first = adapter_state_dict(train(T.tiny_config(node0, "optim.epochs=1", "ckpt_every=0",
                                                   "data.replay_per_epoch=8")).model)
    script = tmp_path / "node_run.py"
    script.write_text(NODE_RUNNER.format(tests=str(TESTS)))
    (tmp_path / "adapters").mkdir()
    # epoch 1 on two "nodes": node 1 never sees the checkpoint, it gets it from rank 0 by broadcast
    _two_nodes(script, tmp_path, epochs=3, resume=True)
    second = _same_adapters(tmp_path)
    assert second.keys() == first.keys() and any(not torch.equal(first[k], second[k]) for k in first)
    assert torch.load(node0 / "checkpoints" / "last.pt", weights_only=True)["step"] == 6
    for name in ("config.yaml", "metrics.jsonl", "adapter_epoch001.safetensors", "adapter.safetensors"):
        assert (node0 / name).is_file(), name
    assert not node1.exists() or not any(node1.rglob("*"))  # rank 1 wrote nothing
