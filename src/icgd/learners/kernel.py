"""Kernel regression / Gaussian-process posterior mean with the kernels of kernel attention."""

from __future__ import annotations

import torch

from icgd._checks import positive_float
from icgd.errors import SpecError
from icgd.layers.attention import KERNELS
from icgd.learners.base import Learner
from icgd.learners.linear import pd_solve


class KernelRegression(Learner):
    """Kernel ridge regression, ``ŷ(x_q) = k_qᵀ (K + λI)⁻¹ Y`` with ``K_ij = κ(x_i, x_j)``, ``(k_q)_j = κ(x_q, x_j)``.

    This is the posterior mean of a GP with covariance κ and noise variance λ; λ = 0 (the default) is the
    noiseless GP posterior mean ``k_qᵀ K⁺ Y``, the Bayes predictor of Cheng, Chen & Sra 2024 (Prop. 2) when the
    data come from the κ-GP (pseudo-inverse, so singular K is fine). The kernels are those of
    :data:`icgd.layers.attention.KERNELS`: ``linear`` ⟨x,x'⟩, ``relu`` relu⟨x,x'⟩, ``exp`` exp⟨x,x'⟩ and ``rbf``
    exp(−‖x−x'‖²/(2·bandwidth²)) (sklearn ``KernelRidge(alpha=λ, kernel="rbf", gamma=1/(2·bandwidth²))``).
    λ > 0 solves by Cholesky, or by LU where that fails (``relu`` need not be positive semi-definite).

    Prefixes with λ > 0 take one Cholesky factor ``L`` of the full ``K + λI``: the factor of a leading block is
    the leading block of ``L``, so with ``z = L⁻¹Y`` the prediction at ``x_i`` from pairs ``< i`` is
    ``Σ_{l<i} L_il z_l``. When the factorisation fails (indefinite K) or λ = 0, they loop over the prefix length.
    """

    name = "kernel"

    def __init__(self, kernel: str = "rbf", bandwidth: float = 1.0, lam: float = 0.0):
        if kernel not in KERNELS:
            raise SpecError(f"unknown kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
        self.kernel = kernel
        self.bandwidth = positive_float(bandwidth, "bandwidth")
        self.lam = positive_float(lam, "lam", allow_zero=True)

    def gram(self, A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
        """``κ(a_i, b_j)`` for ``A (..., p, d)``, ``B (..., q, d)`` → ``(..., p, q)``; the function of
        :data:`~icgd.layers.attention.KERNELS`, with the rbf distances from one batched product
        (``‖a‖² + ‖b‖² − 2⟨a, b⟩``, what ``torch.cdist`` does for large inputs, at a fraction of its cost)."""
        if self.kernel == "rbf":
            sq = (A * A).sum(-1)[..., :, None] + (B * B).sum(-1)[..., None, :] - 2 * (A @ B.transpose(-1, -2))
            return torch.exp(sq.clamp_(min=0) / (-2 * self.bandwidth * self.bandwidth))
        return KERNELS[self.kernel](A, B, self.bandwidth)

    def _solve(self, K: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        if self.lam == 0:
            return torch.linalg.pinv(K, hermitian=True) @ Y
        return pd_solve(K + self.lam * torch.eye(K.shape[-1], dtype=K.dtype, device=K.device), Y)

    def _kernel_matrix(self, X: torch.Tensor) -> torch.Tensor:
        return self.gram(X, X)  # Cholesky and the symmetric pseudo-inverse read its lower triangle only

    def _predict(self, X, Y, x_query):
        return self.gram(x_query, X) @ self._solve(self._kernel_matrix(X), Y)

    def _prefix(self, X, Y):
        K = self._kernel_matrix(X)
        B, n, _ = X.shape
        if self.lam > 0:
            L, info = torch.linalg.cholesky_ex(K + self.lam * torch.eye(n, dtype=K.dtype, device=K.device))
            if not bool((info != 0).any()):
                z = torch.linalg.solve_triangular(L, Y, upper=False)
                return torch.tril(L, diagonal=-1) @ z
        out = X.new_zeros(B, n, Y.shape[-1])
        for i in range(1, n):
            out[:, i] = (K[:, i:i + 1, :i] @ self._solve(K[:, :i, :i], Y[:, :i]))[:, 0]
        return out

    def _hparams(self):
        return {"kernel": self.kernel, "bandwidth": self.bandwidth, "lam": self.lam}
