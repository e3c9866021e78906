"""The common interface of the reference learners, and the input checks they share.

Every learner maps a context of ``n`` pairs ``(x_i, y_i)`` and query points to predictions, for a whole batch of
prompts at once:

* ``learner.predict(X, Y, x_query)``: ``X (B, n, d)``, ``Y (B, n, d_out)``, ``x_query (B, m, d)`` → ``(B, m, d_out)``;
* ``learner.prefix_predictions(X, Y)`` → ``(B, n, d_out)``; row ``i`` (0-based) is the prediction at ``x_i`` from the
  pairs ``0 … i−1`` alone, the quantity behind the error-vs-context-length curves of Garg et al. 2022, Akyürek et
  al. 2023 and Wu et al. 2025. Row 0 comes from the empty context and is 0 (the prior mean) for every learner.

Unbatched inputs ``(n, d)``, ``(n, d_out)``, ``(m, d)`` give unbatched outputs. The targets always carry their
output axis: scalar targets are ``(B, n, 1)``, never ``(B, n)``. Computations run in the dtype and on the device of
``X``; ``Y`` and ``x_query`` are converted to them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch

from icgd._checks import as_float_tensor
from icgd.errors import ShapeError
from icgd.tokens import check_prompt


def _to_like(value, name: str, like: torch.Tensor) -> torch.Tensor:
    return as_float_tensor(value, name, like.dtype).to(like.device)


def check_context(X, Y, x_query=None, *, min_pairs: int = 1
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, bool]:
    """Validate a context (and queries) with :func:`icgd.tokens.check_prompt`: returns ``X (B, n, d)``,
    ``Y (B, n, d_out)``, ``x_query (B, m, d)`` or None, and whether the inputs were unbatched."""
    return tuple(check_prompt(X, Y, x_query, min_pairs=min_pairs))


def check_targets(y, name: str, x_query: torch.Tensor, d_out: int) -> torch.Tensor:
    """Targets at batched queries ``x_query (B, m, d)``: ``(B, m, d_out)`` (``(m, d_out)`` accepted when B = 1)."""
    y = _to_like(y, name, x_query)
    B, m, _ = x_query.shape
    if y.dim() == 2 and B == 1:
        y = y.unsqueeze(0)
    if tuple(y.shape) != (B, m, d_out):
        hint = "; for scalar targets pass y[..., None]" if tuple(y.shape) == (B, m) else ""
        raise ShapeError(f"{name} must have shape (B, m, d_out) = {(B, m, d_out)} to match the queries and Y, "
                         f"got {tuple(y.shape)}{hint}")
    return y


def prefix_grams(X: torch.Tensor, Y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sufficient statistics of the non-empty prefixes i = 1 … n−1: ``S_i = Σ_{j<i} x_j x_jᵀ`` ``(B, n−1, d, d)``,
    ``b_i = Σ_{j<i} x_j y_jᵀ`` ``(B, n−1, d, d_out)`` and the counts ``i`` ``(n−1,)`` (cumulative sums, in place)."""
    S = (X[:, :-1, :, None] * X[:, :-1, None, :]).cumsum_(dim=1)
    b = (X[:, :-1, :, None] * Y[:, :-1, None, :]).cumsum_(dim=1)
    count = torch.arange(1, X.shape[1], device=X.device, dtype=X.dtype)
    return S, b, count


# Elements of per-prefix statistics held at once: on a CPU a few MiB, so that the d×d matrices of a block of prompts
# stay in cache while they are factorised and iterated on; on an accelerator as much as fits comfortably.
_BLOCK_ELEMENTS = {"cpu": 1 << 19}
_BLOCK_ELEMENTS_DEFAULT = 1 << 27


def prompt_blocks(B: int, per_prompt: int, device: torch.device) -> list[slice]:
    """Slices of at most ``budget // per_prompt`` prompts (at least one), covering ``0 … B−1``.

    Used where a prefix computation needs ``per_prompt`` elements for each prompt: it bounds memory and, on a CPU,
    keeps the working set in cache. Each block is one batched computation over its prompts."""
    budget = _BLOCK_ELEMENTS.get(device.type, _BLOCK_ELEMENTS_DEFAULT)
    step = max(1, budget // max(1, per_prompt))
    return [slice(i, min(B, i + step)) for i in range(0, B, step)]


def prefix_masks(n: int, rows: range | None = None, device=None) -> torch.Tensor:
    """Boolean ``(len(rows), n)`` mask: row i lets through the context pairs j < i."""
    rows = range(n) if rows is None else rows
    i = torch.arange(rows.start, rows.stop, device=device)
    return torch.arange(n, device=device)[None, :] < i[:, None]


def prefix_by_queries(predict: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
                      X: torch.Tensor, Y: torch.Tensor,
                      empty: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Prefix predictions from any ``predict(X, Y, x_query) → (B, m, d_out)``: one batched call per prefix length
    (never one per prompt). `X (B, n, d)` and `Y (B, n, d_out)` must already be validated and batched (callers use
    :func:`icgd.tokens.check_prompt`).

    Row i (i ≥ 1) of the ``(B, n, d_out)`` result is ``predict(X[:, :i], Y[:, :i], X[:, i:i+1])``; row 0 (no
    context) is ``empty(X[:, :1])[:, 0]`` when `empty` is given, else 0. Rows come back in the dtype and on the
    device of `predict`'s output."""
    B, n, _ = X.shape
    rows = [predict(X[:, :i], Y[:, :i], X[:, i:i + 1])[:, 0] for i in range(1, n)]
    like = rows[0] if rows else X.new_zeros(B, Y.shape[-1])
    first = like.new_zeros(B, Y.shape[-1]) if empty is None else empty(X[:, :1])[:, 0].to(like)
    return torch.stack([first, *rows], dim=1)


class Learner(ABC):
    """A batched in-context learner: ``predict(X, Y, x_query)`` and ``prefix_predictions(X, Y)``.

    Subclasses implement :meth:`_predict` on validated, batched inputs (``X (B, n, d)``, ``Y (B, n, d_out)``,
    ``x_query (B, m, d)``, n ≥ 1) and may override :meth:`_prefix` with a vectorised version; the default loops over
    the prefix length (never over prompts). :meth:`_hparams` feeds ``repr``.
    """

    name: str = "learner"

    def predict(self, X, Y, x_query) -> torch.Tensor:
        """Predictions at `x_query` from the context ``(X, Y)``: ``(B, m, d_out)``, or ``(m, d_out)`` unbatched."""
        X, Y, q, single = check_context(X, Y, x_query)
        assert q is not None
        out = self._predict(X, Y, q)
        return out[0] if single else out

    def prefix_predictions(self, X, Y) -> torch.Tensor:
        """Row i: the prediction at ``x_i`` from pairs ``0 … i−1``; ``(B, n, d_out)``, or ``(n, d_out)`` unbatched.

        Row 0 (empty context) is 0."""
        X, Y, _, single = check_context(X, Y, min_pairs=1)
        out = self._prefix(X, Y)
        return out[0] if single else out

    @abstractmethod
    def _predict(self, X: torch.Tensor, Y: torch.Tensor, x_query: torch.Tensor) -> torch.Tensor:
        """``(B, m, d_out)`` predictions for checked, batched inputs."""

    def _prefix(self, X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        """Generic fallback: one batched :meth:`_predict` per prefix length (:func:`prefix_by_queries`)."""
        return prefix_by_queries(self._predict, X, Y)

    def _hparams(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._hparams().items())
        return f"{type(self).__name__}({args})"


class GramLearner(Learner):
    """A linear learner whose weights depend on the context only through ``S = XᵀX``, ``b = XᵀY`` and ``n``.

    Subclasses implement :meth:`_weights` (which may overwrite `S`, its own copy); prefixes then cost one batched
    call on the cumulative statistics (:func:`prefix_grams`), with the per-prefix count for every 1/n, per block of
    prompts (:func:`prompt_blocks`). The prediction is ``x_qᵀ W``.
    """

    @abstractmethod
    def _weights(self, S: torch.Tensor, b: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """``W (..., d, d_out)`` from ``S (..., d, d)``, ``b (..., d, d_out)`` and ``count (...)`` (may be 0)."""

    def _predict(self, X, Y, x_query):
        XT = X.transpose(-1, -2)
        count = torch.full(X.shape[:1], X.shape[1], dtype=X.dtype, device=X.device)
        return x_query @ self._weights(XT @ X, XT @ Y, count)

    def _prefix(self, X, Y):
        B, n, d = X.shape
        out = X.new_zeros(B, n, Y.shape[-1])  # row 0: the empty context predicts 0
        for blk in prompt_blocks(B, n * d * (d + Y.shape[-1]), X.device):
            S, b, count = prefix_grams(X[blk], Y[blk])
            W = self._weights(S, b, count.expand(S.shape[0], -1))
            out[blk, 1:] = (X[blk, 1:, None, :] @ W).squeeze(-2)
        return out


def per_count(count: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``count`` clamped to ≥ 1 and shaped to broadcast against matrices ``like (..., r, c)``."""
    return count.clamp(min=1).to(like.dtype)[..., None, None]
