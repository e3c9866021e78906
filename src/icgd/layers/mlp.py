"""Token-wise MLP layers.

The activation is ReLU unless ``activation="gelu"`` is chosen: ``gelu(z) = z Φ(z)`` (exact, erf form) as in
Akyürek et al. (Eq. 5–6), whose Lemma 4 multiplies two numbers with three GeLU units.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from icgd.errors import ShapeError, SpecError
from icgd.layers.plans import LinearPlan, cached

ACTIVATIONS = {
    "relu": torch.relu,
    "gelu": torch.nn.functional.gelu,  # z Φ(z), erf form
    # GPT-2's tanh approximation of GELU; on CPU PyTorch's kernel for it is ~3x slower than the exact erf form
    "gelu_tanh": functools.partial(torch.nn.functional.gelu, approximate="tanh"),
}


class MLP(nn.Module):
    """``H + W2 relu(W1 H)`` applied to every token (Wu et al. Def. 8; bias-free — a constant-1 token coordinate
    plays the bias), or ``H + W2 relu(W1 H + b1) + b2`` with ``bias=True``. ``activation="gelu"`` puts
    ``gelu(z) = z Φ(z)`` in place of relu (Akyürek et al. Eq. 6), ``"gelu_tanh"`` GPT-2's approximation.

    ``residual=False`` returns the update only, ``W2 act(W1 h + b1) + b2``: the MLP of a pre-LayerNorm block
    (:class:`icgd.models.ICLTransformer`, where the block adds it to the residual stream)."""

    def __init__(self, dim: int, width: int, *, bias: bool = False, generator: torch.Generator | None = None,
                 dtype: torch.dtype | None = None, activation: str = "relu", residual: bool = True):
        super().__init__()
        for name, value, low in (("dim", dim, 1), ("width", width, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise SpecError(f"MLP needs integers dim >= 1 and width >= 0, got {name}={value!r}")
        if activation not in ACTIVATIONS:
            raise SpecError(f"unknown MLP activation {activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        self.activation, self.residual = activation, residual
        dtype = dtype or torch.get_default_dtype()
        self.dim, self.width = dim, width
        W1 = nn.Parameter(torch.randn(width, dim, generator=generator, dtype=dtype) / math.sqrt(dim))
        W2 = nn.Parameter(torch.randn(dim, width, generator=generator, dtype=dtype) / math.sqrt(max(width, 1)))
        # registered layer by layer (W1, b1, W2, b2), the order of two nn.Linear: gradient clipping sums the
        # parameters' norms in this order
        self.W1 = W1
        self.b1 = nn.Parameter(torch.zeros(width, dtype=dtype)) if bias else None
        self.W2 = W2
        self.b2 = nn.Parameter(torch.zeros(dim, dtype=dtype)) if bias else None

    @classmethod
    def from_weights(cls, W1: torch.Tensor, W2: torch.Tensor, b1: torch.Tensor | None = None,
                     b2: torch.Tensor | None = None, trainable: bool = True, sparse: bool = False,
                     activation: str = "relu") -> MLP:
        """An MLP with the given weights; ``sparse=True`` stores W1 and W2 as sparse COO matrices (for the mostly
        zero weights of the constructions; they are then not trainable)."""
        if W1.dim() != 2 or W2.dim() != 2 or W2.shape != (W1.shape[1], W1.shape[0]):
            raise ShapeError(f"need W1 (width, D) and W2 (D, width), got {tuple(W1.shape)} and {tuple(W2.shape)}")
        if sparse or W1.is_sparse or W2.is_sparse:
            return cls._sparse(W1, W2, b1, activation)
        layer = cls(W1.shape[1], W1.shape[0], bias=b1 is not None, dtype=W1.dtype, activation=activation)
        with torch.no_grad():
            layer.W1.copy_(W1)
            layer.W2.copy_(W2)
            if b1 is not None:
                layer.b1.copy_(b1)
                layer.b2.copy_(b2 if b2 is not None else torch.zeros_like(layer.b2))
        layer.requires_grad_(trainable)
        return layer

    @classmethod
    def _sparse(cls, W1: torch.Tensor, W2: torch.Tensor, b1: torch.Tensor | None, activation: str) -> MLP:
        """A frozen bias-free MLP storing W1 and W2 as sparse COO matrices (dense inputs are converted; no dense
        (width, D) matrix is allocated for sparse inputs)."""
        if b1 is not None:
            raise SpecError("sparse MLP weights are bias-free; put the bias through a constant-1 token coordinate")
        layer = cls(W1.shape[1], 0, dtype=W1.dtype, activation=activation)  # width 0: no dense weights drawn
        layer.width = W1.shape[0]
        layer.W1 = nn.Parameter((W1 if W1.is_sparse else W1.to_sparse()).detach().coalesce(), requires_grad=False)
        layer.W2 = nn.Parameter((W2 if W2.is_sparse else W2.to_sparse()).detach().coalesce(), requires_grad=False)
        return layer

    @property
    def bias(self) -> bool:
        return self.b1 is not None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self._forward(h, inplace=False)

    def forward_inplace(self, h: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` adding the update into `h` itself where the MLP has a plan (frozen sparse weights; see
        :meth:`icgd.layers.transformer.Transformer._run_layers`); returns the result."""
        return self._forward(h, inplace=True)

    def _plan(self) -> _SparsePlan | None:
        """The cached :class:`_SparsePlan` of frozen sparse weights, or None (parameters read from the module's dict:
        ``nn.Module.__getattr__`` costs more than a small layer's arithmetic)."""
        p = self._parameters
        W1, W2 = p["W1"], p["W2"]
        if not (W1.is_sparse and W2.is_sparse) or p.get("b1") is not None or not self.residual \
                or W1.requires_grad or W2.requires_grad:
            return None
        return cached(self, "_plan_cache", (W1, W2), (W1.device, W1.dtype), lambda: _SparsePlan(W1, W2))

    def _forward(self, h: torch.Tensor, inplace: bool) -> torch.Tensor:
        if h.shape[-1] != self.dim:
            raise ShapeError(f"tokens have dimension {h.shape[-1]}, the MLP expects {self.dim}")
        plan = self._plan()
        if plan is not None:  # the few columns W1 reads, the units, the columns W2 writes
            pre = plan.first(h)  # a new tensor: relu in place (the same values)
            out = plan.second(pre.relu_() if self.activation == "relu" else ACTIVATIONS[self.activation](pre))
            return plan.second.add_to(h, out, inplace)
        if not self.residual:  # fused bias adds (nn.Linear's kernels); the block adds the residual
            act = ACTIVATIONS[self.activation]
            return nn.functional.linear(act(nn.functional.linear(h, self.W1, self.b1)), self.W2, self.b2)
        z = _matmul(h, self.W1)
        if self.b1 is not None:
            z = z + self.b1
        out = _matmul(ACTIVATIONS[self.activation](z), self.W2)
        if self.b2 is not None:
            out = out + self.b2
        return h + out

    def num_params(self) -> int:
        """Nonzero parameters."""
        return sum(int(((p.coalesce().values() if p.is_sparse else p) != 0).sum()) for p in self.parameters())

    def extra_repr(self) -> str:
        act = "" if self.activation == "relu" else f", activation={self.activation}"
        res = "" if self.residual else ", residual=False"
        return f"dim={self.dim}, width={self.width}, bias={self.bias}, sparse={self.W1.is_sparse}{act}{res}"


class _SparsePlan:
    """Sparse ``W1 (width, D)`` and ``W2 (D, width)`` as :class:`~icgd.layers.plans.LinearPlan` s: ``first`` gives the
    pre-activations of the units W1 reads into, ``second`` maps their activations to the columns W2 writes (units
    with no W1 entry have pre-activation 0 and every activation maps 0 to 0, so they are left out)."""

    def __init__(self, W1: torch.Tensor, W2: torch.Tensor):
        self.first = LinearPlan(W1, reorder=True)  # the units in the order that reads W1's columns in runs
        W2 = W2.detach().coalesce()
        (ri, ci), val = W2.indices(), W2.values()
        units = self.first.rows.to(ci.device)
        pos_of = torch.full((W2.shape[1],), -1, dtype=torch.long, device=ci.device)
        pos_of[units] = torch.arange(units.numel(), device=ci.device)
        pos = pos_of[ci]
        keep = pos >= 0
        W2r = torch.sparse_coo_tensor(torch.stack([ri[keep], pos[keep]]), val[keep], (W2.shape[0], units.numel()),
                                      check_invariants=True)
        self.second = LinearPlan(W2r)


def _matmul(x: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """``x Wᵀ`` over the last dimension of x, for dense or sparse W ``(out, in)``."""
    if not W.is_sparse:
        return x @ W.T
    flat = x.reshape(-1, x.shape[-1])
    return torch.sparse.mm(W, flat.T).T.reshape(*x.shape[:-1], W.shape[0])
