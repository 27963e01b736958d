"""``ensemble:<spec>,<spec>,...``: several teachers, one label with a per-pixel confidence.

Every member labels the image; each member after the first is aligned to the first (the
*reference*) per image, in the reference's space; the label is the per-pixel **median** of the
aligned members (for an even count, the mean of the two middle ones), and its **confidence** is how well they agree:

    spread_p = mean_m | a_m,p - median_p | / scale        (a_m = aligned member m)
    conf_p   = exp(-spread_p / tau)                          (in (0, 1]; tau = 0.05 by default)

``scale`` is the label itself for depth kinds (so the spread is a relative disagreement: 0.05 =
members 5% apart) and the image's mean absolute label for ``affine_disparity``. The label is
defined where at least half the members (rounded up) define it; ``extras["confidence"]
(B, H, W)`` holds ``conf`` (the label cache stores it as ``<key>.conf.png``; the distillation loss
weights each pixel's term by it, so pixels where the members disagree count less).

Alignment to the reference (``depth_kind`` of the ensemble = the reference's):

=========================  ==========================  ============================================
reference                  member                      fit, per image, on pixels both define
=========================  ==========================  ============================================
``metric`` / ``scale``     ``metric`` / ``scale``      scale: exp(median of log ratios) (robust)
``metric`` / ``scale``     ``affine``                  scale + shift in depth (least squares)
``affine``                 any depth kind              scale + shift in depth
``affine_disparity``       ``affine_disparity``        scale + shift in disparity
``affine_disparity``       any depth kind              scale + shift of the member's ``1 / depth``
any depth kind             ``affine_disparity``        **refused**: a disparity known up to a shift
                                                       has no depth without inventing that shift
=========================  ==========================  ============================================

Members are separated by commas that start another teacher spec (``oracle``, ``moge:``, ``hf:``,
``da3:``, ``depthpro:``), so member options keep their own commas:
``ensemble:oracle:noise=0.05,seed=1,oracle:blur=1.5,seed=2,moge:ckpt/model.pt``.
"""

from __future__ import annotations

import contextlib
import math
import re
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from fin3r.errors import InputError
from fin3r.geometry import align_scale_shift
from fin3r.teachers.base import Teacher, TeacherOutput

__all__ = ["EnsembleTeacher", "split_member_specs", "alignment_between", "align_to_reference",
           "median_and_confidence"]

MEMBER_KINDS = ("oracle", "moge", "hf", "da3", "depthpro")
_MEMBER_START = re.compile(r",(?=(?:%s)(?::|,|$))" % "|".join(MEMBER_KINDS))
DEPTH_LIKE = ("metric", "scale", "affine")


def split_member_specs(rest: str) -> list[str]:
    """``"oracle:noise=0.1,seed=1,moge:a.pt"`` -> ``["oracle:noise=0.1,seed=1", "moge:a.pt"]``."""
    members = [m for m in _MEMBER_START.split(rest) if m]
    if not members:
        raise InputError("ensemble teacher: give the members, ensemble:<spec>,<spec>[,...]")
    return members


def alignment_between(reference_kind: str, member_kind: str) -> str:
    """How a member is aligned to the reference: ``"scale"``, ``"affine"`` (in depth),
    ``"affine_disparity"`` (in disparity; depth members are inverted first); raises for a
    combination that cannot be aligned."""
    if reference_kind == "affine_disparity":
        return "affine_disparity"
    if member_kind == "affine_disparity":
        raise InputError(f"ensemble teacher: a member with depth_kind 'affine_disparity' (inverse depth up to scale "
                         f"and shift) cannot be aligned to a {reference_kind!r} reference: its unknown shift has no "
                         "depth equivalent. Put the disparity teacher first (the ensemble is then affine_disparity).")
    if reference_kind == "affine" or member_kind == "affine":
        return "affine"
    return "scale"


def align_to_reference(member: Tensor, member_mask: Tensor, member_kind: str, reference: Tensor,
                       reference_mask: Tensor, reference_kind: str) -> tuple[Tensor, Tensor]:
    """A member's label ``(B, H, W)`` in the reference's space: ``(aligned, mask)``.

    The fit uses the pixels both define; the aligned values are kept where the member defines
    them (and, for depth kinds, stay positive)."""
    how = alignment_between(reference_kind, member_kind)
    both = member_mask & reference_mask
    if how == "scale":
        ratio = torch.where(both, torch.log(reference.clamp_min(1e-12)) - torch.log(member.clamp_min(1e-12)),
                            torch.full_like(member, float("nan")))
        log_scale = torch.nan_to_num(torch.nanmedian(ratio.flatten(1), dim=1).values, nan=0.0)
        return member * torch.exp(log_scale).view(-1, 1, 1), member_mask
    values = member
    if how == "affine_disparity" and member_kind in DEPTH_LIKE:
        values = torch.where(member_mask, 1.0 / member.clamp_min(1e-12), torch.zeros_like(member))
    scale, shift = align_scale_shift(values, reference, both)
    aligned = scale.view(-1, 1, 1) * values + shift.view(-1, 1, 1)
    mask = member_mask if how == "affine_disparity" else member_mask & (aligned > 0)
    return aligned, mask


def median_and_confidence(aligned: Tensor, masks: Tensor, kind: str, tau: float,
                          min_members: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per-pixel median label, its mask and its agreement confidence.

    Args:
        aligned: ``(M, B, H, W)`` members in the reference's space.
        masks: ``(M, B, H, W)`` bool, where each member is defined.
        kind: the reference's ``depth_kind``.
        tau: the disagreement at which the confidence is ``1/e``.
        min_members: pixels defined by fewer members are not labelled.

    Returns:
        ``label (B, H, W)`` (0 where undefined), ``mask (B, H, W)``, ``confidence (B, H, W)``
        (0 where undefined).
    """
    nan = torch.full_like(aligned, float("nan"))
    values = torch.where(masks, aligned, nan)
    count = masks.sum(0)
    # the median of the defined members: the mean of the two middle ones for an even count
    ordered = torch.sort(torch.where(masks, aligned, torch.full_like(aligned, float("inf"))), dim=0).values
    lo = ((count - 1).clamp_min(0) // 2)[None]
    hi = (count // 2).clamp_max(aligned.shape[0] - 1)[None]
    label = 0.5 * (ordered.gather(0, lo) + ordered.gather(0, hi))[0]
    label = torch.where(count > 0, label, torch.full_like(label, float("nan")))
    mask = (count >= min_members) & torch.isfinite(label)
    if kind != "affine_disparity":
        mask &= label > 0
    dev = torch.nanmean((values - label[None]).abs(), dim=0)
    if kind == "affine_disparity":
        norm = torch.where(mask, label.abs(), torch.zeros_like(label)).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp_min(1)
        spread = dev / norm.clamp_min(1e-12).view(-1, 1, 1)
    else:
        spread = dev / label.abs().clamp_min(1e-12)
    conf = torch.exp(-torch.nan_to_num(spread, nan=math.inf) / tau)
    zero = torch.zeros_like(label)
    return torch.where(mask, label, zero), mask, torch.where(mask, conf, zero)


class EnsembleTeacher(Teacher):
    """Median of aligned members, with their agreement as confidence (see the module docstring).

    Args:
        members: two or more teachers; the first is the reference.
        tau: relative disagreement at which the confidence is ``1/e``.
    """

    def __init__(self, members: Sequence[Teacher], tau: float = 0.05):
        if len(members) < 2:
            raise InputError("ensemble teacher: needs at least two members")
        if not tau > 0:
            raise InputError(f"ensemble teacher: tau must be positive, got {tau}")
        self.members = list(members)
        self.depth_kind = self.members[0].depth_kind
        for m in self.members[1:]:
            alignment_between(self.depth_kind, m.depth_kind)  # refuse early
        self.tau = float(tau)
        self.needs_ground_truth = any(m.needs_ground_truth for m in self.members)
        self.name = "ensemble(" + ",".join(m.name for m in self.members) + ")"
        self.version = "1"

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        meta.update(ensemble={"tau": self.tau, "members": [m.metadata() for m in self.members],
                              "label": "per-pixel median after aligning each member to the first",
                              "confidence": "exp(-mean |member - median| / scale / tau)"})
        meta["is_oracle"] = any(m.needs_ground_truth for m in self.members)
        return meta

    def set_precision(self, precision: str) -> "EnsembleTeacher":
        for m in self.members:
            m.set_precision(precision)
        self.precision = precision
        return self

    def _autocast(self):
        return contextlib.nullcontext()  # each member runs under its own precision

    def to(self, device: Any) -> "EnsembleTeacher":
        for m in self.members:
            m.to(device)
        self.device = torch.device(device)
        return self

    def _predict(self, img: Tensor, **ground_truth: Any) -> TeacherOutput:
        outs = [m.predict(img, **(ground_truth if m.needs_ground_truth else {})) for m in self.members]
        ref = outs[0]
        ref_depth, ref_mask = ref.depth.float().cpu(), ref.mask.bool().cpu()
        aligned, masks = [ref_depth], [ref_mask]
        for out in outs[1:]:
            a, m = align_to_reference(out.depth.float().cpu(), out.mask.bool().cpu(), out.depth_kind,
                                      ref_depth, ref_mask, self.depth_kind)
            aligned.append(a)
            masks.append(m)
        label, mask, conf = median_and_confidence(torch.stack(aligned), torch.stack(masks), self.depth_kind,
                                                  self.tau, min_members=math.ceil(len(outs) / 2))
        extras: dict[str, Any] = {"confidence": conf, "members_aligned": torch.stack(aligned),
                                  "members_mask": torch.stack(masks)}
        for key in ("intrinsics", "normals"):  # the first member that has them
            for out in outs:
                if key in out.extras:
                    extras[key] = out.extras[key]
                    break
        return TeacherOutput(label, mask, self.depth_kind, extras)


def ensemble_from_spec(rest: str, load: Callable[[str], Teacher]) -> EnsembleTeacher:
    """``"<spec>,<spec>,..."`` with ``load`` turning one member spec into a teacher."""
    members = split_member_specs(rest)
    if any(m.startswith("ensemble") for m in members):
        raise InputError("ensemble teacher: members cannot be ensembles")
    return EnsembleTeacher([load(m) for m in members])
