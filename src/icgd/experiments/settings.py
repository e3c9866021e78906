"""Typed, frozen settings of a reproduction per scale: the one loader and the one JSON form.

An experiment defines a frozen dataclass of its settings and one instance per scale (``SETTINGS``); ``SCALES``
(what :mod:`icgd.experiments.reproduce` reads, writes to ``metrics.json`` and overrides with ``--set key=value``)
is :func:`as_scales` of those instances, and ``run`` / ``render`` get the typed object back with :func:`load`.

:func:`load` checks every value against the type annotation of its field:

* ``int`` takes an int (not a bool); ``float`` takes a float or an int (not a bool); ``bool``, ``str`` and ``dict``
  take exactly that;
* ``tuple[T, ...]`` takes a list (or tuple) of T, ``tuple[A, B]`` one of length 2 with an A and a B, a bare
  ``tuple`` any list; lists become tuples, nested lists too;
* a nested settings dataclass takes a JSON object, loaded by the same rules (or an instance of it);
* ``X | None`` takes an X or null.

Unknown keys, keys without a default that are missing, and values of the wrong type are a ConfigError naming the
setting; the dataclass's own ``__post_init__`` checks (ranges, consistency) run afterwards.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import TypeVar

from icgd.errors import ConfigError

T = TypeVar("T")


def _name(cls: type) -> str:
    """``wu2025.WuSettings``: the experiment module and the class, for error messages."""
    return f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__qualname__}"


def load(cls: type[T], raw: Mapping, *, name: str | None = None) -> T:
    """`cls` (a frozen settings dataclass) from the JSON values of a ``metrics.json`` or ``SCALES`` entry with
    ``--set`` overrides applied. See the module docstring for the rules; every violation is a ConfigError naming
    `name` (default: the module and class of `cls`), the setting and, for unknown keys, the valid ones."""
    name = name or _name(cls)
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{name}: settings must be a JSON object of {_keys(cls)}, got {raw!r}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise ConfigError(f"{name}: unknown setting(s) {', '.join(map(str, unknown))}; valid settings: "
                          f"{', '.join(names)} (a metrics.json from an older version needs a rerun)")
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in raw
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{name}: missing setting(s) {', '.join(missing)}; valid settings: {', '.join(names)}")
    hints = typing.get_type_hints(cls)
    return cls(**{key: _typed(raw[key], hints[key], name, key) for key in names if key in raw})


def _keys(cls: type) -> str:
    return "{" + ", ".join(f.name for f in dataclasses.fields(cls)) + "}"


def _typed(value, tp, name: str, where: str):
    """`value` checked against the annotation `tp` (lists become tuples); ConfigError naming `where` otherwise."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _typed(value, option, name, where)
            except ConfigError:
                pass
        raise _wrong(value, tp, name, where)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise _wrong(value, tp, name, where)
        return load(tp, value, name=f"{name} {where}")
    if tp is tuple or origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise _wrong(value, tp, name, where)
        if not args:
            return _tuples(value)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_typed(v, args[0], name, f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise _wrong(value, tp, name, where)
        return tuple(_typed(v, a, name, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(tp, type):
        ok = isinstance(value, origin or tp)
    else:  # an annotation the rules above do not cover (typing.Any …): taken as it is
        ok = True
    if not ok:
        raise _wrong(value, tp, name, where)
    return value


def _describe(tp) -> str:
    """The expected type in words: ``an int``, ``a list of float``, ``a list [int, float]``, …"""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _describe(a) for a in args)
    if dataclasses.is_dataclass(tp):
        return f"an object {_keys(tp)}"
    if tp is tuple or origin is tuple:
        if not args:
            return "a list"
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe(args[0]).split(' ', 1)[1]}"
        return f"a list [{', '.join(_describe(a).split(' ', 1)[1] for a in args)}]"
    if tp is float:
        return "a float (or int)"
    if tp is int:
        return "an int"
    if tp is dict:
        return "an object"
    return f"a {getattr(tp, '__name__', tp)}"


def _wrong(value, tp, name: str, where: str) -> ConfigError:
    return ConfigError(f"{name}: setting {where!r} must be {_describe(tp)}, got {value!r}")


def _tuples(v):
    """JSON lists (also nested) back to tuples."""
    return tuple(_tuples(x) for x in v) if isinstance(v, (list, tuple)) else v


def _plain(v):
    """Tuples (also nested, also inside dicts) as the lists JSON holds."""
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def as_dict(settings) -> dict:
    """One settings instance as the JSON values ``metrics.json`` holds (tuples as lists, nested dataclasses as
    objects); ``load(type(s), as_dict(s)) == s``."""
    return _plain(dataclasses.asdict(settings))


def as_scales(per_scale: Mapping[str, object]) -> dict[str, dict]:
    """``{"smoke": {...}, ...}``: :func:`as_dict` of every scale's settings."""
    return {scale: as_dict(s) for scale, s in per_scale.items()}
