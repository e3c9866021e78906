"""Reference learners: the ground truth that every construction is checked against.

* :func:`empirical_risk`, :func:`gd_trajectory` — projected GD on Wu's N-layer network (autograd).
* Batched in-context baselines with one interface, ``learner.predict(X, Y, x_query)`` and
  ``learner.prefix_predictions(X, Y)`` (see :mod:`icgd.learners.base`): :class:`LeastSquares`, :class:`Ridge`,
  :class:`Lasso`, :class:`GD`, :class:`GDPlusPlus`, :class:`Newton`, :class:`SGD`, :class:`KNN`,
  :class:`Averaging`, :class:`KernelRegression`, :class:`DirectTraining`, :class:`NetworkGD` (GD on Wu's network); by name via :func:`make_learner`.
"""

from icgd.learners.base import Learner
from icgd.learners.direct import DirectTraining, EpochScores, r2_per_position
from icgd.learners.gd import NetworkGD, empirical_risk, gd_trajectory
from icgd.learners.kernel import KernelRegression
from icgd.learners.linear import GD, SGD, Averaging, GDPlusPlus, Lasso, LeastSquares, LineSearch, Newton, Ridge
from icgd.learners.neighbors import KNN
from icgd.learners.registry import LEARNERS, make_learner

__all__ = [
    "LEARNERS",
    "GD",
    "KNN",
    "SGD",
    "Averaging",
    "DirectTraining",
    "EpochScores",
    "GDPlusPlus",
    "KernelRegression",
    "Lasso",
    "Learner",
    "LeastSquares",
    "LineSearch",
    "NetworkGD",
    "Newton",
    "Ridge",
    "empirical_risk",
    "gd_trajectory",
    "make_learner",
    "r2_per_position",
]
