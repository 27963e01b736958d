"""Torch device names from configs and command lines, checked where they enter.

:func:`check_device` accepts ``cpu``, ``cuda``, ``cuda:N``, ``mps`` (and ``auto`` where the caller
allows it) and refuses -- one line naming the option, the value and what is allowed -- a name torch
does not know (``tpu``) or a device this machine does not have (``cuda`` without a GPU).
"""

from __future__ import annotations

import re

from fin3r.errors import InputError

__all__ = ["DEVICE_PATTERN", "check_device_name", "check_device"]

#: the device names fin3r accepts (``auto`` only where a caller allows it)
DEVICE_PATTERN = re.compile(r"^(cpu|cuda|cuda:\d{1,3}|mps)$")


def check_device_name(name: object, what: str = "device", allow_auto: bool = False) -> str:
    """``name`` if it is spelled like a device fin3r can use, else :class:`InputError`."""
    allowed = "cpu, cuda, cuda:N, mps" + (" or auto" if allow_auto else "")
    if not isinstance(name, str) or not (DEVICE_PATTERN.match(name) or (allow_auto and name == "auto")):
        raise InputError(f"{what}={name!r}: not a device (allowed: {allowed})")
    return name


def check_device(name: object, what: str = "device", allow_auto: bool = False) -> str:
    """``name`` if this machine has that device (``auto`` always passes), else :class:`InputError`
    saying what is missing."""
    import torch

    name = check_device_name(name, what, allow_auto)
    if name.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(name.split(":")[1]) if ":" in name else 0
        if count == 0:
            raise InputError(f"{what}={name!r}: no CUDA GPU is available on this machine (use cpu)")
        if index >= count:
            raise InputError(f"{what}={name!r}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError(f"{what}={name!r}: MPS is not available on this machine (use cpu)")
    return name
