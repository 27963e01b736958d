"""Argument types shared by the commands: each refuses a bad value with one line naming it.

argparse turns an ``ArgumentTypeError`` into ``fin3r X: error: argument --opt: <message>`` and
exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import math

__all__ = ["positive_int", "nonneg_int", "finite_float", "nonneg_float", "device_name", "check_device"]


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def positive_int(text: str) -> int:
    """An integer >= 1."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not allowed: must be an integer >= 1")
    return value


def nonneg_int(text: str) -> int:
    """An integer >= 0."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is not allowed: must be an integer >= 0")
    return value


def finite_float(text: str) -> float:
    """A finite number (``nan`` and ``inf`` refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed: must be a finite number")
    return value


def nonneg_float(text: str) -> float:
    """A finite number >= 0."""
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed: must be a finite number >= 0")
    return value


def device_name(text: str) -> str:
    """A torch device name (cpu, cuda, cuda:N, mps); availability is checked by :func:`check_device`."""
    from fin3r.devices import check_device_name
    from fin3r.errors import InputError

    try:
        return check_device_name(text, "device")
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("device=")) from None


def check_device(name: str, what: str = "--device") -> str:
    """``name`` if this machine has the device, else :class:`fin3r.errors.InputError` (one line)."""
    from fin3r.devices import check_device as check

    return check(name, what)


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed: must be a finite number > 0")
    return value


def percentage(text: str) -> float:
    """A finite number in [0, 100]."""
    value = nonneg_float(text)
    if value > 100:
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed: must be a number in [0, 100]")
    return value
