"""Typed, frozen settings of a reproduction per scale.

An experiment defines a frozen dataclass of its settings and one instance per scale; ``SCALES`` (what
:mod:`icgd.experiments.reproduce` reads, writes to ``metrics.json`` and overrides with ``--set key=value``) is
:func:`as_scales` of those instances, and ``run`` / ``render`` get the typed object back with :func:`load`.
"""

from __future__ import annotations

import dataclasses
from typing import TypeVar

from icgd.errors import ConfigError

T = TypeVar("T")


def _tuples(v):
    """JSON lists (also nested) back to the tuples the frozen settings hold."""
    return tuple(_tuples(x) for x in v) if isinstance(v, (list, tuple)) else v


def load(cls: type[T], raw: dict) -> T:
    """`cls` from a settings dict (``metrics.json`` or ``SCALES``); unknown or missing keys are a ConfigError."""
    names = [f.name for f in dataclasses.fields(cls)]
    unknown, missing = sorted(set(raw) - set(names)), [k for k in names if k not in raw]
    if unknown or missing:
        raise ConfigError(f"{cls.__qualname__} settings: unknown {unknown or 'none'}, missing {missing or 'none'}; "
                          f"valid keys: {', '.join(names)} (a metrics.json from an older version needs a rerun)")
    return cls(**{k: _tuples(raw[k]) for k in names})


def _lists(v):
    return [_lists(x) for x in v] if isinstance(v, (list, tuple)) else v


def as_scales(per_scale: dict[str, object]) -> dict[str, dict]:
    """``{"smoke": {...}, ...}``: the settings as the JSON values ``metrics.json`` holds (tuples as lists)."""
    return {scale: {k: _lists(v) for k, v in dataclasses.asdict(s).items()} for scale, s in per_scale.items()}
