"""Learners by name: ``make_learner("ridge", lam=0.1)``."""

from __future__ import annotations

from icgd.errors import SpecError
from icgd.learners.base import Learner
from icgd.learners.direct import DirectTraining
from icgd.learners.kernel import KernelRegression
from icgd.learners.linear import GD, SGD, Averaging, GDPlusPlus, Lasso, LeastSquares, Newton, Ridge
from icgd.learners.neighbors import KNN

LEARNERS: dict[str, type[Learner]] = {
    cls.name: cls
    for cls in (LeastSquares, Ridge, Lasso, GD, GDPlusPlus, Newton, SGD, KNN, Averaging, KernelRegression,
                DirectTraining)
}


def make_learner(name: str, **kwargs) -> Learner:
    """The learner registered as `name` built with `kwargs`; :class:`~icgd.errors.SpecError` on an unknown name or
    arguments the learner does not take."""
    try:
        cls = LEARNERS[name]
    except (KeyError, TypeError):
        raise SpecError(f"unknown learner {name!r}; choose one of {', '.join(LEARNERS)}") from None
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise SpecError(f"cannot build {cls.__name__} ({name!r}) from {kwargs}: {exc}") from exc
