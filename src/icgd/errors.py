"""Every error icgd raises. The CLI turns any of them into one line on stderr and exit code 2.

Each class also derives from the built-in exception a Python user would expect (``ValueError`` for bad values,
``ArithmeticError`` for numerical trouble), so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class ICGDError(Exception):
    """Base class of every error raised on purpose by icgd."""


class ShapeError(ICGDError, ValueError):
    """A tensor has the wrong number of dimensions or the wrong size along one of them."""


class SpecError(ICGDError, ValueError):
    """A network specification or construction hyper-parameter is invalid (depth < 1, negative width, ...)."""


class UnknownActivationError(SpecError, KeyError):
    """An activation name that icgd does not know."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class NonFiniteError(ICGDError, ValueError):
    """An input holds NaN or infinity."""


class RangeError(ICGDError, ArithmeticError):
    """A value left the range on which a construction is exact or accurate: the result would be wrong."""


class FitRangeError(RangeError):
    """A pre-activation left the interval on which a sum-of-ReLU fit is valid: the result would be wrong."""


class ConfigError(ICGDError, ValueError):
    """A training or experiment configuration is invalid (unknown key, wrong type, conflicting resume)."""


class DataError(ICGDError, ValueError):
    """A data file cannot be used: unreadable, not numbers, rows of the wrong length, NaN/inf, missing arrays."""


class CheckpointError(ICGDError, OSError):
    """A checkpoint is missing, corrupt (checksum mismatch) or does not belong to this run."""


class ResourceError(ICGDError, MemoryError):
    """A request would need more memory than the limit (the machine's RAM or ``ICGD_MEMORY_LIMIT``); refused up front,
    before anything is allocated or written, with the estimate and what to reduce."""


class TrainingError(ICGDError, RuntimeError):
    """Training had to stop (e.g. a non-finite loss); the last good checkpoint is kept."""


class LayoutError(ICGDError, KeyError):
    """A token slot name that the layout does not have, or a slot defined twice."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class DeviceError(ICGDError, ValueError):
    """A device that this machine does not have (``cuda`` without CUDA), or data that live on no device at all
    (the ``meta`` device holds shapes, not numbers)."""


class DTypeError(ICGDError, ValueError):
    """An input holds values of a kind icgd cannot compute with: complex numbers, strings, or a bool where a number is
    meant."""


class RunLockedError(ICGDError, RuntimeError):
    """Another process holds the run folder (``icgd train`` or ``--resume`` is running in it)."""


class ConvergenceWarning(ICGDError, UserWarning):
    """An iterative solver (e.g. :class:`icgd.learners.Lasso`) stopped at its iteration cap before reaching its
    tolerance: the answer is returned but is not converged. Raise the cap or loosen the tolerance."""
