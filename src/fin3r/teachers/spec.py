"""Teacher spec strings: ``<kind>:<path>[#key=value,key=value]``, validated at the edge.

Every teacher that reads a local file or folder takes options after a ``#``
(``moge:ckpt/model.pt#resolution_level=7,fp16=0``, ``hf:models/da#kind=metric,size=384x512``).
:func:`parse_options` turns them into typed values against a table of the options a teacher
knows, so a typo or a bad value is a one-line :class:`~fin3r.errors.InputError`, never a traceback.
"""

from __future__ import annotations

from typing import Any, Callable

from fin3r.errors import InputError

__all__ = ["split_path_options", "parse_options", "parse_bool", "parse_size"]


def split_path_options(rest: str, teacher: str) -> tuple[str, str]:
    """``"<path>#opts"`` -> ``(path, opts)``; an empty path is an error naming the teacher."""
    path, _, opts = rest.partition("#")
    if not path:
        raise InputError(f"{teacher} teacher: give the local model path, {teacher}:<path>[#options]")
    return path, opts


def parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{text!r} is not a boolean (1/0, true/false)")


def parse_size(text: str) -> tuple[int, int]:
    """``"384x512"`` -> (384, 512); ``"518"`` -> (518, 518)."""
    h, _, w = text.partition("x")
    size = (int(h), int(w or h))
    if min(size) < 1:
        raise ValueError(f"size {text!r} must be positive")
    return size


def parse_options(opts: str, known: dict[str, Callable[[str], Any]], teacher: str) -> dict[str, Any]:
    """``"a=1,b=x"`` -> ``{"a": known["a"]("1"), "b": known["b"]("x")}``.

    Raises:
        InputError: an option that is not ``key=value``, a key not in ``known`` (the message lists
            the known ones) or a value its parser rejects.
    """
    out: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in opts.split(","))):
        key, sep, value = part.partition("=")
        if not sep:
            raise InputError(f"{teacher} teacher: option {part!r} is not key=value")
        if key not in known:
            raise InputError(f"{teacher} teacher: unknown option {key!r} (known: {', '.join(sorted(known))})")
        try:
            out[key] = known[key](value)
        except (ValueError, TypeError) as e:
            raise InputError(f"{teacher} teacher: option {part!r}: {e}") from None
    return out
