"""Typed dataclass configs: load from YAML, override from the command line, save back.

Each command owns its config dataclass (next to the code that uses it); this module holds the
machinery they share:

- ``from_dict(cls, data)`` builds a (nested) dataclass from a plain dict, checking every key and
  value type. An unknown key is a :class:`ConfigError` naming the dotted key.
- ``load_config(cls, path, overrides)`` reads a YAML file (or nothing) and applies overrides
  written as ``a.b.c=value``; the value is parsed as YAML (``lr=1e-4``, ``targets=[qkv,proj]``,
  ``mode=null``).
- ``to_dict`` / ``save_config`` write a config back (the training engine stores it beside every
  checkpoint, so a run can be reproduced).
- ``bounded(default, ge=.., gt=.., le=.., lt=.., device=..)`` declares a field's allowed range next
  to its type in the dataclass; ``from_dict`` checks it. Every float must be finite unless the
  field says ``finite=False``. A value outside is a :class:`ConfigError` of one line naming the
  dotted key, the value and what is allowed (``optim.lr=-1.0: not allowed (must be > 0)``).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

from fin3r.errors import Fin3rError
from fin3r.io import write_text_atomic

T = TypeVar("T")


class ConfigError(Fin3rError, ValueError):
    """A config file or override that does not fit its dataclass."""


def bounded(default: Any = dataclasses.MISSING, *, ge: float | None = None, gt: float | None = None,
            le: float | None = None, lt: float | None = None, finite: bool = True, device: bool = False,
            default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field whose value :func:`from_dict` checks: ``ge``/``gt``/``le``/``lt`` bounds
    (numbers, or every item of a list/tuple of numbers), ``finite`` floats, ``device`` a torch
    device name (``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``auto``)."""
    rules = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    rules.update(finite=finite, device=device)
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata={"rules": rules})
    return dataclasses.field(default=default, metadata={"rules": rules})


_BOUND_TEXT = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
_BOUND_OK = {"ge": lambda v, b: v >= b, "gt": lambda v, b: v > b, "le": lambda v, b: v <= b, "lt": lambda v, b: v < b}


def _check_rules(value: Any, rules: dict, key: str) -> None:
    """Raise :class:`ConfigError` when ``value`` breaks the ``rules`` of :func:`bounded`."""
    if rules.get("device") and value is not None:
        from fin3r.devices import check_device_name
        from fin3r.errors import InputError

        try:
            check_device_name(value, key, allow_auto=True)
        except InputError as e:
            raise ConfigError(str(e)) from None
    items = value if isinstance(value, (list, tuple)) else [value]
    for v in items:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if rules.get("finite", True) and not math.isfinite(v):
            raise ConfigError(f"{key}={value!r}: not allowed (must be a finite number)")
        broken = [f"{_BOUND_TEXT[k]} {b:g}" for k, b in rules.items() if k in _BOUND_OK and not _BOUND_OK[k](v, b)]
        if broken:
            allowed = " and ".join(f"{_BOUND_TEXT[k]} {b:g}" for k, b in rules.items() if k in _BOUND_OK)
            raise ConfigError(f"{key}={value!r}: not allowed (must be {allowed})")


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check/convert ``value`` to the annotated type ``tp``; ``key`` names it in errors."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: {value!r} fits none of {tp}: {'; '.join(errors)}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{key}: expected {len(args)} items, got {len(value)}")
            return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        out = [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {k: _convert(v, vt, f"{key}.{k}") for k, v in value.items()}
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping for {tp.__name__}, got {value!r}")
        return _from_dict(tp, value, prefix=f"{key}.")
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads '1e-4' (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key}={value!r}: not allowed (must be a finite number)")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{key}: expected a path, got {value!r}")
        return Path(value)
    return value


def _from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ConfigError(
            f"unknown config key '{prefix}{unknown[0]}' for {cls.__name__} "
            f"(known: {', '.join(sorted(fields))})"
        )
    kwargs = {k: _convert(v, hints[k], prefix + k) for k, v in data.items()}
    for k, v in kwargs.items():
        rules = fields[k].metadata.get("rules")
        if rules:
            _check_rules(v, rules, prefix + k)
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field left out
        raise ConfigError(f"{cls.__name__}: {e}") from None


def from_dict(cls: type[T], data: dict | None) -> T:
    """Build dataclass ``cls`` from a (nested) dict, type-checked; unknown keys are an error."""
    return _from_dict(cls, dict(data or {}))


def to_dict(config: Any) -> dict:
    """A plain, YAML-safe dict of a (nested) dataclass config."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v

    return plain(config)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"train.lr=1e-4"`` -> ``(["train", "lr"], 1e-4)``; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value")
    key, raw = text.split("=", 1)
    key = key.strip().lstrip("-").replace("-", "_")
    if not key:
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``key=value`` overrides (dotted keys) to a nested dict, in order; returns a copy."""
    import copy

    out = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override '{text}': '{part}' is not a section")
            node = nxt
        node[path[-1]] = value
    return out


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Load ``cls`` from a YAML file (defaults when ``path`` is None), then apply overrides.

    Every key is checked: the defaults of ``cls`` fill what the file leaves out, and an unknown
    key (in the file or in an override) raises :class:`ConfigError` naming it.
    """
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(_yaml_error(path, e)) from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: cannot read ({e})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
        data = loaded or {}
    base = to_dict(from_dict(cls, data))  # validates the file and fills defaults
    return from_dict(cls, apply_overrides(base, overrides or []))


def _yaml_error(path: Path, error: Exception) -> str:
    """One line for a YAML syntax error: file, line, column, the problem (tabs named as such)."""
    mark = getattr(error, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    if "'\\t'" in str(error) or "\t" in problem:
        problem = "a tab character (YAML indents with spaces only)"
    return f"{where}: YAML syntax error: {problem}"


def save_config(config: Any, path: str | Path) -> None:
    """Write a config as YAML (atomically: temp file, then rename)."""
    write_text_atomic(path, yaml.safe_dump(to_dict(config), sort_keys=False))
