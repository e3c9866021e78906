"""Input validation shared by the public functions (internal)."""

from __future__ import annotations

import math

import torch

from icgd.errors import DeviceError, DTypeError, NonFiniteError, ShapeError, SpecError

INT64_MAX = (1 << 63) - 1


def as_float_tensor(value, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Turn `value` into a floating tensor (numpy arrays and lists accepted) and reject NaN/inf, complex numbers and
    tensors on the ``meta`` device (they hold no numbers)."""
    _check_kind(value, name)
    if not isinstance(value, torch.Tensor):
        try:
            # convert straight to the requested dtype: a list of floats would otherwise pass through float32
            value = torch.as_tensor(value, dtype=dtype) if dtype is not None else torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ShapeError(f"{name} must be a tensor or array of numbers, got {type(value).__name__}") from exc
        _check_kind(value, name)
    if not value.is_floating_point():
        value = value.to(dtype or torch.get_default_dtype())
    elif dtype is not None:
        value = value.to(dtype)
    if not all_finite(value):
        raise NonFiniteError(f"{name} contains NaN or inf; clean or impute the data before calling icgd")
    return value


def _check_kind(value, name: str) -> None:
    """Refuse what a cast to float would silently mangle: complex values (the imaginary part would be dropped) and
    meta tensors (no values at all)."""
    if isinstance(value, torch.Tensor):
        if value.device.type == "meta":
            raise DeviceError(f"{name} is a tensor on the meta device, which holds a shape but no numbers; pass a "
                              f"tensor with data (e.g. on 'cpu')")
        complex_ = value.is_complex()
    else:
        complex_ = getattr(getattr(value, "dtype", None), "kind", "") == "c" or isinstance(value, complex)
    if complex_:
        raise DTypeError(f"{name} holds complex numbers; icgd computes with real numbers only: pass the real part "
                         f"(x.real) or split real and imaginary parts into separate features")


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
        if t.shape[0] == 0:
            raise ShapeError(f"{name} is a batch of zero prompts (shape {tuple(t.shape)}); pass at least one")
        return t, False
    raise ShapeError(
        f"{name} must have {core_dims} dimensions (one prompt) or {core_dims + 1} (a batch), got shape {tuple(t.shape)}"
    )


def positive_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SpecError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value > INT64_MAX:
        raise SpecError(f"{name} = {value} does not fit in a 64-bit integer (at most {INT64_MAX})")
    return value


def finite_float(value, name: str) -> float:
    """A finite real number (any sign); a bool is not a number here (``eta=True`` is refused, not read as 1)."""
    _not_bool(value, name)
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise SpecError(f"{name} must be a number, got {value!r}") from exc
    if not math.isfinite(v):
        raise SpecError(f"{name} must be a finite number, got {value!r}")
    return v


def _not_bool(value, name: str) -> None:
    if isinstance(value, bool) or type(value).__name__ in ("bool_", "bool"):  # numpy's bool too
        raise SpecError(f"{name} must be a number, got the bool {value!r}")


def positive_float(value, name: str, allow_zero: bool = False) -> float:
    _not_bool(value, name)
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise SpecError(f"{name} must be a number, got {value!r}") from exc
    if not (v == v and abs(v) != float("inf")) or v < 0 or (v == 0 and not allow_zero):
        raise SpecError(f"{name} must be a finite number {'>=' if allow_zero else '>'} 0, got {value!r}")
    return v
