"""The interface every reconstruction model offers, and its prediction records.

Conventions: images enter as float ``(B, 3, H, W)`` in ``[0, 1]`` and each model
normalises them itself; cameras are OpenCV (x right, y down, z forward); depth is planar z;
confidences are ``>= 1`` (``1 + exp``).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor, nn

from fin3r.errors import InputError
from fin3r.models.io import load_state_dict_strict


@dataclass
class MonoPrediction:
    """A single-image prediction.

    Attributes:
        depth: ``(B, H, W)`` planar depth in the model's own scale convention.
        conf: ``(B, H, W)`` confidence, ``>= 1``.
        pts3d: ``(B, H, W, 3)`` points in the image's own camera frame.
        depth_aux: optional extra depth predictions of the same image that training supervises
            too, each ``(B, H, W)`` -- DUSt3R/MASt3R: the second head of the duplicated pair
            (z of ``pts3d_in_other_view``).
        conf_aux: the confidences of ``depth_aux``, each ``(B, H, W)``.
    """

    depth: Tensor
    conf: Tensor
    pts3d: Tensor
    depth_aux: list[Tensor] = field(default_factory=list)
    conf_aux: list[Tensor] = field(default_factory=list)


@dataclass
class ViewsPrediction:
    """A multi-view prediction for ``S`` views.

    Attributes:
        pts3d: ``(B, S, H, W, 3)`` points of every view in the camera frame of view 0.
        conf: ``(B, S, H, W)`` confidence of ``pts3d``, ``>= 1``.
        cam2world: optional ``(B, S, 4, 4)`` predicted camera-to-view-0 poses.
        intrinsics: optional ``(B, S, 3, 3)`` predicted intrinsics in pixels.
        desc: optional ``(B, S, H, W, D)`` dense descriptors (MASt3R).
        desc_conf: optional ``(B, S, H, W)`` descriptor confidence (MASt3R).
        depth: optional ``(B, S, H, W)`` per-view planar depth (VGGT depth head; CUT3R self view).
        depth_conf: optional ``(B, S, H, W)``.
        extras: model-specific raw outputs the replay losses need (documented by each model).
    """

    pts3d: Tensor
    conf: Tensor
    cam2world: Tensor | None = None
    intrinsics: Tensor | None = None
    desc: Tensor | None = None
    desc_conf: Tensor | None = None
    depth: Tensor | None = None
    depth_conf: Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)


class Reconstructor(nn.Module):
    """Base class of DUSt3R, MASt3R, CUT3R and VGGT re-implementations.

    Subclasses set the class attributes and implement the abstract methods. The state_dict keys
    of a subclass are identical to the official ones (tests compare them with the official key
    lists in ``tests/fixtures``).
    """

    #: registry family name, e.g. "dust3r", "mast3r", "cut3r", "vggt"
    family: ClassVar[str] = ""
    #: image sizes must be multiples of this
    patch_size: ClassVar[int] = 16
    #: state_dict prefixes of the image encoder (the only part Fin3R adapts)
    encoder_prefixes: ClassVar[tuple[str, ...]] = ()
    #: default LoRA targets among the encoder's linear layers (glob patterns on module names)
    default_lora_targets: ClassVar[tuple[str, ...]] = ()
    #: dotted names of the ``nn.ModuleList``s of blocks :meth:`checkpoint_blocks` returns
    checkpoint_block_lists: ClassVar[tuple[str, ...]] = ()

    # --- inputs ---------------------------------------------------------------------------
    def check_images(self, img: Tensor, ndim: int = 4) -> None:
        """Raise :class:`InputError` unless ``img`` is ``(B, 3, H, W)`` (or ``(B, S, 3, H, W)`` for
        ``ndim=5``) with H and W multiples of the patch size."""
        if not isinstance(img, Tensor) or img.ndim != ndim or img.shape[-3] != 3:
            want = "(B, 3, H, W)" if ndim == 4 else "(B, S, 3, H, W)"
            got = tuple(img.shape) if isinstance(img, Tensor) else type(img).__name__
            raise InputError(f"{type(self).__name__}: expected images of shape {want}, got {got}")
        h, w = img.shape[-2:]
        p = self.patch_size
        if h % p or w % p or h == 0 or w == 0:
            raise InputError(
                f"{type(self).__name__}: image size {h}x{w} (HxW) is not a multiple of the patch "
                f"size {p}; resize or crop to e.g. {max(p, h // p * p)}x{max(p, w // p * p)}"
            )
        if not img.is_floating_point():
            raise InputError(f"{type(self).__name__}: images must be float in [0, 1], got {img.dtype}")

    # --- the interface ----------------------------------------------------------------------
    def predict_mono(self, img: Tensor) -> MonoPrediction:
        """Monocular prediction of ``img (B, 3, H, W)`` in ``[0, 1]``."""
        raise NotImplementedError

    def predict_views(self, imgs: Tensor) -> ViewsPrediction:
        """Multi-view prediction of ``imgs (B, S, 3, H, W)`` in ``[0, 1]``; points in view 0's frame."""
        raise NotImplementedError

    def encode(self, img: Tensor) -> Tensor:
        """Encoder tokens the decoder consumes, ``(B, N, C)`` (after the encoder's final norm)."""
        raise NotImplementedError

    def encode_prenorm(self, img: Tensor) -> Tensor:
        """Encoder tokens before the encoder's final norm layer, ``(B, N, C)``."""
        raise NotImplementedError

    def encoder_linear_names(self, targets: tuple[str, ...] | list[str] | None = None) -> list[str]:
        """Qualified names of the encoder's ``nn.Linear`` modules matching ``targets``.

        ``targets`` are glob patterns on the full module name or on its last component
        (``"qkv"``, ``"mlp.fc*"``, ``"enc_blocks.0.attn.qkv"``); default: ``default_lora_targets``.
        """
        targets = tuple(targets or self.default_lora_targets)
        names = []
        for name, module in self.named_modules():
            if not isinstance(module, nn.Linear):
                continue
            if not any(name.startswith(p) for p in self.encoder_prefixes):
                continue
            if any(fnmatch.fnmatchcase(name, t) or fnmatch.fnmatchcase(name, f"*.{t}") for t in targets):
                names.append(name)
        return names

    def checkpoint_blocks(self) -> list[nn.Module]:
        """The transformer blocks between the image and the heads, in order: the encoder's and the
        decoder's (the frozen decoder blocks are on the gradient's way back to the encoder). Each
        family lists them in :attr:`checkpoint_block_lists`; activation checkpointing and the
        trainer's bf16 frozen weights act on them."""
        return [block for name in self.checkpoint_block_lists for block in self.get_submodule(name)]

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Activation checkpointing of :meth:`checkpoint_blocks` while gradients are computed
        (``torch.utils.checkpoint``, non-reentrant: outputs and gradients unchanged)."""
        for block in self.checkpoint_blocks():
            block.grad_checkpointing = enabled

    def encoder_parameters(self) -> dict[str, nn.Parameter]:
        """The encoder's parameters by state_dict name."""
        return {n: p for n, p in self.named_parameters() if n.startswith(self.encoder_prefixes)}

    # --- checkpoints ----------------------------------------------------------------------
    def official_state_dict(self) -> dict[str, Tensor]:
        """The state_dict in the official layout (alias keys included where the official code has
        them), loadable by the original repository's ``load_state_dict``."""
        return self.state_dict()

    def config_dict(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this architecture (stored in exported files)."""
        raise NotImplementedError

    def load_weights(self, state_dict: dict[str, Tensor], source: str = "state_dict", assign: bool = False) -> None:
        """Load a state_dict with our keys strictly (:func:`~fin3r.models.io.load_state_dict_strict`);
        families whose official files hold parts fin3r does not build drop them here."""
        load_state_dict_strict(self, state_dict, source, assign=assign)


def freeze(model: nn.Module) -> nn.Module:
    """``requires_grad=False`` on every parameter of ``model``."""
    for p in model.parameters():
        p.requires_grad_(False)
    return model


__all__ = ["MonoPrediction", "ViewsPrediction", "Reconstructor", "freeze"]
