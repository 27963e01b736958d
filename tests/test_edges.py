"""One definition of edge pixels: `fin3r eval world` writes the pixels `fin3r demo` scores."""

import numpy as np
import torch
from PIL import Image

from fin3r.data.world import WorldMonoDataset
from fin3r.data.world_views import blur_depth
from fin3r.eval.world import EDGE_POOL, edge_mask
from fin3r.eval.world_benchmarks import export_world_monodepth


def test_edge_pixels_are_where_the_coarse_depth_misses_detail():
    depth = torch.ones(32, 32)
    depth[:, 16:] = 2.0  # one vertical step
    valid = torch.ones_like(depth, dtype=torch.bool)
    edges = edge_mask(depth, valid, pool=8)
    low = blur_depth(depth, valid, 8)
    assert torch.equal(edges, (low - depth).abs() > 0.05 * depth)
    assert edges[:, 14:18].all() and not edges[:, :8].any() and not edges[:, 24:].any()


def test_eval_world_writes_the_demo_edge_pixels(tmp_path):
    folder = export_world_monodepth(tmp_path, 2, 48, 64, seed=0)
    ds = WorldMonoDataset(2, 48, 64, seed=0, split="test")
    for i in range(2):
        with Image.open(folder / f"{i:04d}" / "edge.png") as im:
            written = np.array(im) > 0
        s = ds[i]
        assert written.any()
        assert np.array_equal(written, edge_mask(s["depth"], s["valid"], EDGE_POOL).numpy())
