"""Argument types shared by the commands: each refuses a bad value with one line naming it.

argparse turns an ``ArgumentTypeError`` into ``fin3r X: error: argument --opt: <message>`` and
exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import math

__all__ = ["positive_int", "nonneg_int", "finite_float", "nonneg_float", "device_name", "check_device",
           "positive_float", "percentage", "add_model_arguments"]


def _number(parse, what: str, minimum: float | None = None):
    """An argparse type: ``parse(text)`` (refused unless finite) and ``>= minimum``."""

    def convert(text: str):
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not allowed: must be a finite number")
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"{text} is not allowed: must be {what} >= {minimum:g}")
        return value

    return convert


#: an integer >= 1
positive_int = _number(int, "an integer", 1)
#: an integer >= 0
nonneg_int = _number(int, "an integer", 0)
#: a finite number (``nan`` and ``inf`` refused)
finite_float = _number(float, "a number")
#: a finite number >= 0
nonneg_float = _number(float, "a number", 0)


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


def add_model_arguments(parser: argparse.ArgumentParser, required: bool = True,
                        adapter_help: str = "LoRA adapter applied to the encoder") -> None:
    """The model-loading options every command that runs a model shares (``fin3r.models.load``'s inputs):
    ``--model``, ``--checkpoint``, ``--random-weights``, ``--adapter``, ``--adapter-base``."""
    parser.add_argument("--model", required=required,
                        help="registry name (e.g. dust3r_512_dpt), official .pth, Hugging Face folder or fin3r "
                             ".safetensors file")
    parser.add_argument("--checkpoint", default=None, help="weights for a registry-name --model (any format)")
    parser.add_argument("--random-weights", action="store_true",
                        help="allow a registry name without --checkpoint: a randomly initialised model "
                             "(smoke tests only)")
    parser.add_argument("--adapter", default=None,
                        help=f"{adapter_help}: .safetensors from `fin3r train`, a PEFT folder, or a released Fin3R "
                             "*_lora.pth")
    parser.add_argument("--adapter-base", default=None,
                        help="the checkpoint a released adapter of another model was trained on (a VGGT adapter on "
                             "π3: VGGT-1B); the two encoders are compared tensor by tensor, a difference is refused")
