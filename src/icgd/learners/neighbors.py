"""Non-parametric learners that look the query up in the context: k-nearest neighbours."""

from __future__ import annotations

import torch

from icgd._checks import positive_int
from icgd.errors import SpecError
from icgd.learners.base import Learner


class KNN(Learner):
    """k-nearest-neighbour regression (Akyürek et al. 2023, §4.3), = sklearn ``KNeighborsRegressor``.

    Euclidean distances. ``weights="uniform"``: the mean of the k nearest targets; ``weights="distance"``: weights
    ``1/‖x_q − x_j‖`` (sklearn's, not the paper's 1/‖·‖²), and when some neighbours coincide with the query
    (distance 0) those get weight 1 and the others 0, as in sklearn. With fewer than k context pairs all of them
    are used; the empty context predicts 0.

    Ties: the neighbours are the first k pairs of a *stable* sort by distance, so among pairs at the same distance
    the earlier one in the context (lower index) is taken (= the first k of ``np.argsort(dist, kind="stable")``).
    sklearn and Garg et al.'s ``argsort`` leave the choice to the sorting algorithm.
    """

    name = "knn"

    def __init__(self, k: int = 3, weights: str = "uniform"):
        self.k = positive_int(k, "k")
        if weights not in ("uniform", "distance"):
            raise SpecError(f"weights must be 'uniform' or 'distance' (as in sklearn), got {weights!r}")
        self.weights = weights

    def _combine(self, dist: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        """Predictions ``(B, m, d_out)`` from distances ``(B, m, n)`` (inf = pair not in the context)."""
        B, m, n = dist.shape
        k = min(self.k, n)
        dist, idx = torch.sort(dist, dim=-1, stable=True)  # ties: the earlier pair first
        dist, idx = dist[..., :k], idx[..., :k]
        valid = torch.isfinite(dist)
        neigh = torch.gather(Y[:, None].expand(B, m, n, Y.shape[-1]), 2,
                             idx[..., None].expand(B, m, k, Y.shape[-1]))  # (B, m, k, d_out)
        if self.weights == "uniform":
            w = valid.to(Y.dtype)
        else:
            zero = valid & (dist == 0)
            inv = torch.where(valid & ~zero, 1.0 / torch.where(zero | ~valid, torch.ones_like(dist), dist),
                              torch.zeros_like(dist))
            w = torch.where(zero.any(-1, keepdim=True), zero.to(Y.dtype), inv)
        total = w.sum(-1, keepdim=True)
        pred = (w[..., None] * neigh).sum(-2) / torch.where(total > 0, total, torch.ones_like(total))
        return pred

    @staticmethod
    def _dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        # exact differences (the matrix-product shortcut would make duplicates look a little apart)
        return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")

    def _predict(self, X, Y, x_query):
        return self._combine(self._dist(x_query, X), Y)

    def _prefix(self, X, Y):
        n = X.shape[1]
        later = torch.ones(n, n, dtype=torch.bool, device=X.device).triu()  # pair j is not in prefix i when j ≥ i
        dist = self._dist(X, X).masked_fill(later, float("inf"))
        return self._combine(dist, Y)

    def _hparams(self):
        return {"k": self.k, "weights": self.weights}
