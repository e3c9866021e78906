"""Input validation shared by the public functions (internal)."""

from __future__ import annotations

import math

import torch

from icgd.errors import NonFiniteError, ShapeError, SpecError


def as_float_tensor(value, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Turn `value` into a floating tensor (numpy arrays and lists accepted) and reject NaN/inf."""
    if not isinstance(value, torch.Tensor):
        try:
            # convert straight to the requested dtype: a list of floats would otherwise pass through float32
            value = torch.as_tensor(value, dtype=dtype) if dtype is not None else torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ShapeError(f"{name} must be a tensor or array of numbers, got {type(value).__name__}") from exc
    if not value.is_floating_point():
        value = value.to(dtype or torch.get_default_dtype())
    elif dtype is not None:
        value = value.to(dtype)
    if not all_finite(value):
        raise NonFiniteError(f"{name} contains NaN or inf; clean or impute the data before calling icgd")
    return value


def all_finite(t: torch.Tensor) -> bool:
    """Whether every entry is finite, in one reduction: NaN and ±inf propagate through a sum, so a finite sum means
    finite entries; only a non-finite sum (a bad entry, or an overflow of large finite ones) is checked entry by
    entry. Several times faster than ``isfinite(t).all()`` on large inputs."""
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def check_last_dim(t: torch.Tensor, name: str, size: int, what: str) -> None:
    if t.shape[-1] != size:
        raise ShapeError(f"{name} has last dimension {t.shape[-1]} but {what} is {size}; shape is {tuple(t.shape)}")


def batched(t: torch.Tensor, name: str, core_dims: int) -> tuple[torch.Tensor, bool]:
    """Return `t` with a leading batch dimension and whether one was added.

    `core_dims` is the number of dimensions of one unbatched item (1 for a vector, 2 for a matrix).
    """
    if t.dim() == core_dims:
        return t.unsqueeze(0), True
    if t.dim() == core_dims + 1:
        return t, False
    raise ShapeError(
        f"{name} must have {core_dims} dimensions (one prompt) or {core_dims + 1} (a batch), got shape {tuple(t.shape)}"
    )


def positive_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SpecError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def finite_float(value, name: str) -> float:
    """A finite real number (any sign)."""
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise SpecError(f"{name} must be a number, got {value!r}") from exc
    if not math.isfinite(v):
        raise SpecError(f"{name} must be a finite number, got {value!r}")
    return v


def positive_float(value, name: str, allow_zero: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise SpecError(f"{name} must be a number, got {value!r}") from exc
    if not (v == v and abs(v) != float("inf")) or v < 0 or (v == 0 and not allow_zero):
        raise SpecError(f"{name} must be a finite number {'>=' if allow_zero else '>'} 0, got {value!r}")
    return v
