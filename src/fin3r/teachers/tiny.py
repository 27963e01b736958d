"""Tiny random teachers in each teacher's real on-disk format -- for tests, benchmarks, smoke runs.

These are NOT models: random weights, a few thousand parameters. Each is built with the real
package's own classes and written exactly as the real weights are distributed, so loading,
preprocessing and output handling run the same code paths as a real teacher:

- :func:`save_tiny_moge` -- MoGe-1 / MoGe-2 (``moge.model.v1/v2.MoGeModel``) as MoGe's
  ``model.pt`` (``{"model_config", "model"}``), on a 2-block, 32-wide DINOv2 built with MoGe's
  own ``DinoVisionTransformer``. MoGe resolves its backbone by name in
  ``moge.model.dinov2.hub.backbones``, which only lists the full-size ViTs, so
  :func:`register_tiny_moge_backbone` adds :data:`TINY_MOGE_BACKBONE` there (in this process);
  full-size configs (``dinov2_vitl14``) need nothing of the kind.
- :func:`save_tiny_depth_anything` -- a transformers Depth Anything folder (relative or metric).
- :func:`save_tiny_depth_pro` -- a transformers Depth Pro folder (with or without its FoV head).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import torch

__all__ = ["TINY_MOGE_BACKBONE", "register_tiny_moge_backbone", "tiny_moge_config", "save_tiny_moge",
           "save_tiny_depth_anything", "save_tiny_depth_pro"]

TINY_MOGE_BACKBONE = "fin3r_tiny_dinov2_14"


def register_tiny_moge_backbone() -> str:
    """Make :data:`TINY_MOGE_BACKBONE` a backbone name MoGe resolves (idempotent); returns it."""
    from moge.model.dinov2.hub import backbones
    from moge.model.dinov2.layers import MemEffAttention, NestedTensorBlock
    from moge.model.dinov2.models.vision_transformer import DinoVisionTransformer

    def build(pretrained: bool = False, **kwargs: Any):
        if pretrained:
            raise ValueError("the tiny test backbone has no pretrained weights")
        return DinoVisionTransformer(img_size=518, patch_size=14, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2,
                                     init_values=1.0, block_chunks=0,
                                     block_fn=functools.partial(NestedTensorBlock, attn_class=MemEffAttention), **kwargs)

    setattr(backbones, TINY_MOGE_BACKBONE, build)
    return TINY_MOGE_BACKBONE


def tiny_moge_config(version: int, normals: bool = True, metric: bool = True) -> dict[str, Any]:
    """A tiny MoGe ``model_config``: MoGe-1 (``version=1``) or MoGe-2 (with optional normal and
    metric-scale heads)."""
    if version == 1:
        return {"encoder": TINY_MOGE_BACKBONE, "intermediate_layers": 2, "dim_proj": 16, "dim_upsample": [16, 8, 8],
                "res_block_norm": "layer_norm", "last_conv_channels": 8, "num_tokens_range": [12, 30],
                "remap_output": "exp"}

    def stack(dim_out: int) -> dict[str, Any]:  # a 5-level head on the neck's (16, 16, 8, 8, 8) features
        return {"dim_in": [None] * 5, "dim_res_blocks": [16, 16, 8, 8, 8], "dim_out": [None] * 4 + [dim_out],
                "resamplers": ["bilinear"] * 4, "res_block_hidden_norm": "layer_norm"}

    config: dict[str, Any] = {
        "encoder": {"backbone": TINY_MOGE_BACKBONE, "intermediate_layers": [0, 1], "dim_out": 16},
        "neck": {"dim_in": [18, 2, 2, 2, 2], "dim_res_blocks": [16, 16, 8, 8, 8], "dim_out": [None] * 5,
                 "resamplers": ["bilinear"] * 4, "res_block_hidden_norm": "layer_norm"},
        "points_head": stack(3), "mask_head": stack(1), "remap_output": "exp", "num_tokens_range": [12, 30],
    }
    if normals:
        config["normal_head"] = stack(3)
    if metric:
        config["scale_head"] = {"dims": [32, 16, 1]}
    return config


def save_tiny_moge(path: str | Path, version: int, config: dict[str, Any] | None = None, seed: int = 0,
                   labelled_fraction: float = 0.7):
    """Write a random MoGe model as MoGe's ``model.pt``; returns the model (eval mode).

    Random heads put the whole mask on one side of its threshold, so the mask logit's bias is set
    to label about ``labelled_fraction`` of a random calibration image."""
    register_tiny_moge_backbone()
    config = config or tiny_moge_config(version)
    if version == 2:
        from moge.model.v2 import MoGeModel
    else:
        from moge.model.v1 import MoGeModel
    torch.manual_seed(seed)
    model = MoGeModel(**config).eval()
    mask_conv = model.head.output_block[1][-1] if version == 1 else model.mask_head.output_blocks[-1]
    threshold = model.mask_threshold if version == 1 else 0.0
    with torch.no_grad():
        calib = torch.rand(1, 3, 28, 28, generator=torch.Generator().manual_seed(seed))
        raw = model.forward(calib, num_tokens=20)["mask"]
        raw = raw if version == 1 else torch.logit(raw.clamp(1e-6, 1 - 1e-6))
        mask_conv.bias += threshold - torch.quantile(raw.flatten(), 1 - labelled_fraction)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model_config": config, "model": model.state_dict()}, path)
    return model


def save_tiny_depth_anything(folder: str | Path, kind: str = "relative", input_size: int = 28, seed: int = 0):
    """A random transformers Depth Anything (``kind`` = ``"relative"`` or ``"metric"``) saved in
    ``folder`` with a DPT processor config at ``input_size``; returns the model."""
    from transformers import AutoModelForDepthEstimation, DepthAnythingConfig, Dinov2Config

    torch.manual_seed(seed)
    backbone = Dinov2Config(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                            patch_size=14, image_size=28, out_features=["stage1", "stage2"],
                            reshape_hidden_states=False)
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=16, neck_hidden_sizes=[8, 16],
                                 reassemble_factors=[2, 1], fusion_hidden_size=8, head_hidden_size=4, patch_size=14,
                                 depth_estimation_type=kind, max_depth=20)
    model = AutoModelForDepthEstimation.from_config(config).eval()
    folder = Path(folder)
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "DPTImageProcessor", "size": {"height": input_size, "width": input_size},
        "keep_aspect_ratio": True, "ensure_multiple_of": 14, "resample": 3, "do_normalize": True,
        "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}))
    return model


def save_tiny_depth_pro(folder: str | Path, fov: bool = True, seed: int = 0):
    """A random transformers Depth Pro (32 x 32 input) saved in ``folder`` with its processor
    config (mean = std = 0.5, bilinear); returns the model."""
    from transformers import DepthProConfig, DepthProForDepthEstimation

    vit = {"model_type": "dinov2", "num_hidden_layers": 2, "hidden_size": 16, "num_attention_heads": 1, "patch_size": 4}
    config = DepthProConfig(patch_size=16, fusion_hidden_size=16, intermediate_hook_ids=[1, 0],
                            intermediate_feature_dims=[10, 8], scaled_images_ratios=[0.5, 1.0],
                            scaled_images_overlap_ratios=[0.0, 0.2], scaled_images_feature_dims=[12, 12],
                            use_fov_model=fov, num_fov_head_layers=1, image_model_config=dict(vit),
                            patch_model_config=dict(vit), fov_model_config=dict(vit))
    torch.manual_seed(seed)
    model = DepthProForDepthEstimation(config).eval()
    folder = Path(folder)
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "DepthProImageProcessor", "size": {"height": 32, "width": 32}, "resample": 2,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "do_normalize": True}))
    return model


def register_tiny_da3(folder: str | Path, variant: str = "mono") -> str:
    """Register a tiny Depth Anything 3 preset (DA3's own ``DepthAnything3Net`` / ``DinoV2`` /
    ``DPT`` classes; a 4-block, 32-wide ViT) in DA3's preset table, in this process; returns its
    name (``da3mono-fin3rtiny`` or ``da3metric-fin3rtiny``: the prefix says the family). Its YAML
    is written to ``folder``. DA3's ``DinoV2`` builds its ViT from a fixed size table, so its
    small-ViT builder is replaced by a tiny one for the process (full-size presets are unaffected
    unless they use ``vits``)."""
    import depth_anything_3.model.dinov2.dinov2 as da3_dinov2
    from depth_anything_3.model.dinov2.vision_transformer import DinoVisionTransformer
    from depth_anything_3.registry import MODEL_REGISTRY

    def tiny_vit(patch_size: int = 14, num_register_tokens: int = 0, depth: int = 12, **kwargs: Any):
        return DinoVisionTransformer(patch_size=patch_size, embed_dim=32, depth=4, num_heads=2, mlp_ratio=2,
                                     num_register_tokens=num_register_tokens, **kwargs)

    da3_dinov2.vit_small = tiny_vit
    name = f"da3{variant}-fin3rtiny"
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    yaml_path = folder / f"{name}.yaml"
    yaml_path.write_text(
        "__object__: {path: depth_anything_3.model.da3, name: DepthAnything3Net, args: as_params}\n"
        "net:\n  __object__: {path: depth_anything_3.model.dinov2.dinov2, name: DinoV2, args: as_params}\n"
        "  name: vits\n  out_layers: [0, 1, 2, 3]\n  alt_start: -1\n  qknorm_start: -1\n  rope_start: -1\n"
        "  cat_token: false\n"
        "head:\n  __object__: {path: depth_anything_3.model.dpt, name: DPT, args: as_params}\n"
        "  dim_in: 32\n  output_dim: 1\n  features: 16\n  out_channels: [8, 8, 16, 16]\n")
    MODEL_REGISTRY[name] = str(yaml_path)
    return name


def save_tiny_da3(folder: str | Path, variant: str = "mono", seed: int = 0, sky_fraction: float = 0.2):
    """A random tiny Depth Anything 3 saved in ``folder`` the way DA3's API saves one
    (``PyTorchModelHubMixin.save_pretrained`` of an object holding the network as ``model`` and
    built from ``model_name``: ``config.json`` + ``model.safetensors`` with ``model.`` keys).
    The sky logit's bias is set so about ``sky_fraction`` of a random image is sky. Returns the
    network (eval mode)."""
    from depth_anything_3.cfg import create_object, load_config
    from depth_anything_3.registry import MODEL_REGISTRY
    from huggingface_hub import PyTorchModelHubMixin

    folder = Path(folder)
    name = register_tiny_da3(folder.parent / "da3_presets", variant)

    class Saved(torch.nn.Module, PyTorchModelHubMixin):  # the API object's shape: .model, built from model_name
        def __init__(self, model_name: str):
            super().__init__()
            self.model = create_object(load_config(MODEL_REGISTRY[model_name]))

    torch.manual_seed(seed)
    wrapper = Saved(model_name=name)
    net = wrapper.model.eval()
    with torch.no_grad():
        x = torch.rand(1, 1, 3, 28, 42, generator=torch.Generator().manual_seed(seed))
        x = (x - torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
        sky = net(x)["sky"].flatten()
        last = [m for m in net.head.modules() if isinstance(m, torch.nn.Conv2d) and m.out_channels == 1][-1]
        last.bias += 0.3 - torch.quantile(sky, 1 - sky_fraction)  # relu(sky): a shift moves the threshold crossing
    wrapper.save_pretrained(folder)
    return net
