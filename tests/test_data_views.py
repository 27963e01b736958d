"""Sample contract helpers: consistent crops/resizes of images, depth, masks and K."""

import pytest
import torch

from fin3r.data.views import (
    check_view,
    crop_box_for,
    crop_resize_view,
    crop_view,
    make_view,
    resize_view,
    stack_views,
)
from fin3r.errors import InputError


def _view(h=12, w=16):
    img = torch.rand(h, w, 3)
    depth = torch.rand(h, w) + 1.0
    depth[0, 0] = float("nan")
    depth[1, 1] = -1.0
    K = torch.tensor([[20.0, 0, (w - 1) / 2], [0, 20.0, (h - 1) / 2], [0, 0, 1]])
    return make_view(img, depth, K, source="test", depth_kind="scale")


def test_make_view_marks_invalid_and_checks():
    v = _view()
    check_view(v)
    assert v["img"].shape == (3, 12, 16)
    assert not v["valid"][0, 0] and not v["valid"][1, 1] and v["depth"][0, 0] == 0
    assert torch.equal(v["cam2world"], torch.eye(4))
    with pytest.raises(InputError):
        make_view(torch.rand(3, 12, 16), torch.rand(12, 15), torch.eye(3))
    with pytest.raises(InputError):
        make_view(torch.rand(3, 12, 16), torch.rand(12, 16), torch.eye(3), depth_kind="relative")
    bad = dict(v, depth=v["depth"].clone())
    bad["depth"][0, 0] = 3.0
    with pytest.raises(InputError):
        check_view(bad)


def test_uint8_image_scaled():
    v = make_view(torch.full((4, 4, 3), 255, dtype=torch.uint8), torch.ones(4, 4), torch.eye(3))
    assert torch.allclose(v["img"], torch.ones(3, 4, 4))


def test_crop_and_resize_keep_pixels_and_K_consistent():
    v = _view(12, 16)
    c = crop_view(v, 3, 2, 6, 8)
    assert torch.equal(c["depth"], v["depth"][2:8, 3:11])
    assert torch.allclose(c["K"][:2, 2], v["K"][:2, 2] - torch.tensor([3.0, 2.0]))
    # exact 2x upsample: every output pixel takes the depth of its source pixel (nearest)
    up = resize_view(v, 24, 32)
    assert torch.equal(up["depth"][::2, ::2], v["depth"]) and torch.equal(up["depth"][1::2, 1::2], v["depth"])
    assert up["valid"].dtype == torch.bool
    # K maps the same 3D ray to the matching pixel: centre of input pixel (u, v) -> 2u + 0.5
    ray = torch.linalg.inv(v["K"]) @ torch.tensor([5.0, 4.0, 1.0])
    uv = up["K"] @ ray
    assert torch.allclose(uv[:2] / uv[2], torch.tensor([10.5, 8.5]), atol=1e-5)
    with pytest.raises(InputError):
        crop_view(v, 10, 0, 6, 8)


def test_crop_resize_any_aspect_and_multiview():
    v = _view(12, 16)
    out = crop_resize_view(v, 8, 8)
    check_view(out)
    assert out["img"].shape == (3, 8, 8)
    assert 0 <= out["img"].min() and out["img"].max() <= 1
    mv = stack_views([_view(12, 16), _view(12, 16)])
    assert mv["source"] == "test" and mv["img"].shape == (2, 3, 12, 16)
    g = torch.Generator().manual_seed(0)
    out = crop_resize_view(mv, 6, 10, mode="random", generator=g, max_zoom=1.5)
    check_view(out, num_views=2)
    assert out["K"].shape == (2, 3, 3)
    x0, y0, w, h, s = crop_box_for((12, 16), (6, 10), "center")
    assert abs(w / h - 10 / 6) < 0.2 and x0 >= 0 and y0 >= 0
