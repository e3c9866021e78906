"""What every regression construction shares: a :class:`~icgd.layers.Transformer` that packs a prompt with its
layout, runs its layers and reads the answer off the query tokens.

``model.predict(X, Y, x_query)`` takes ``X (B, n, d_in)``, ``Y (B, n, d_out)``, ``x_query (B, m, d_in)`` (or the
same without the batch axis) and returns ``(B, m, d_out)``. Context tokens carry ``t = 1`` and queries ``t = 0``;
the answer is ``sign ×`` the query tokens' `answer` slot (von Oswald / Cheng / Ahn read ``−y``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from icgd._checks import positive_float
from icgd.errors import ShapeError, SpecError
from icgd.layers import Transformer
from icgd.tokens import Layout, check_prompt, pack_prompt


def check_dtype(dtype: torch.dtype) -> torch.dtype:
    if dtype not in (torch.float32, torch.float64):
        raise SpecError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    return dtype


def per_layer(value, steps: int, name: str, allow_zero: bool = False) -> list[float]:
    """One non-negative number per layer from a scalar or a sequence of length `steps`."""
    if isinstance(value, (int, float)) or (isinstance(value, torch.Tensor) and value.dim() == 0):
        return [positive_float(value, name, allow_zero)] * steps
    if not isinstance(value, (Sequence, torch.Tensor)) or len(value) != steps:
        raise SpecError(f"{name} must be a number or a sequence of {steps} numbers (one per layer), got {value!r}")
    return [positive_float(v, name, allow_zero) for v in value]


def context_size(layout: Layout, tokens: torch.Tensor) -> int:
    """The number n of context tokens (``t = 1``) of every prompt of a batch; they must all have the same n ≥ 1."""
    flags = tokens[..., layout.index("t")]
    n = int(flags[0].sum().round())
    if n < 1 or not torch.equal(flags.sum(-1), flags.new_full((tokens.shape[0],), float(n))):
        raise ShapeError("every prompt of a batch must have the same number (>= 1) of context tokens (t = 1)")
    return n


def prompt_size(layout: Layout, h: torch.Tensor) -> tuple[int, int]:
    """``(n, T)``: the number of context tokens (``t = 1``, the same in every prompt) and of all tokens."""
    return context_size(layout, h), h.shape[1]


class StepScale(nn.Module):
    """The value coefficients ``c = fixed + (−ηT/(2n)) · sign`` of a GD-step layer, for n context tokens out of T,
    computed from the tokens of every call (attention averages over all T tokens, the loss over the n context
    points, hence the factor T/n); `sign` defaults to the layer's own (never changed) ``heads.c``. Used as a
    layer's ``coefficients`` (:func:`icgd.layers.heads.bank_for`): the layer's parameters never change, so
    ``state_dict()`` does not depend on the last prompt."""

    def __init__(self, layout: Layout, eta: float, sign: torch.Tensor | None = None,
                 fixed: torch.Tensor | None = None):
        super().__init__()
        self.layout, self.eta = layout, eta
        self.register_buffer("sign", sign, persistent=False)
        self.register_buffer("fixed", fixed, persistent=False)

    def forward(self, h: torch.Tensor, bank) -> dict[str, torch.Tensor]:
        n, T = prompt_size(self.layout, h)
        scale = -self.eta * T / (2.0 * n)
        if self.sign is None and self.fixed is None:
            return {"c_scale": scale}
        sign = bank.c if self.sign is None else self.sign
        return {"c": sign * scale if self.fixed is None else self.fixed + scale * sign}


class PromptModel(Transformer):
    """A transformer on prompt tokens laid out by `layout`, answering in the query tokens' `answer` slot."""

    def __init__(self, layers: Sequence[nn.Module], layout: Layout, *, d_in: int, d_out: int, answer: str = "y",
                 sign: float = -1.0, dtype: torch.dtype = torch.float64, roles: Sequence[str] | None = None):
        super().__init__(layers, dim=layout.dim)
        self.layout, self.d_in, self.d_out, self.answer, self.sign = layout, d_in, d_out, answer, sign
        self.dtype = dtype
        self.roles = list(roles) if roles is not None else [type(m).__name__ for m in layers]

    def check_prompt(self, X, Y, x_query) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]:
        """Validated, batched ``X (B, n, d_in)``, ``Y (B, n, d_out)``, ``x_query (B, m, d_in)`` in the model's dtype,
        and whether the inputs were unbatched."""
        if x_query is None:
            raise ShapeError("x_query is required: the model answers at the query points (B, m, d_in)")
        return tuple(check_prompt(X, Y, x_query, d_in=self.d_in, d_out=self.d_out, dtype=self.dtype))

    def device(self) -> torch.device:
        return next((t.device for t in [*self.parameters(), *self.buffers()]), torch.device("cpu"))

    def tokens_for(self, X, Y, x_query) -> tuple[torch.Tensor, bool]:
        """The prompt packed into this model's tokens, and whether the inputs were unbatched."""
        X, Y, xq, single = self.check_prompt(X, Y, x_query)
        return pack_prompt(self.layout, X, Y, xq).to(self.device()), single

    def read_answer(self, h: torch.Tensor, n: int) -> torch.Tensor:
        return self.sign * self.layout.read(h, self.answer)[:, n:]

    def predict(self, X, Y, x_query, *, grad: bool = False, **fields) -> torch.Tensor:
        """The model's predictions at the queries, ``(B, m, d_out)``. Runs under ``torch.inference_mode`` unless
        ``grad=True`` (e.g. for ∂ŷ/∂x_query, von Oswald's model cos). `fields` go to :meth:`tokens_for`."""
        with torch.inference_mode(not grad):
            tokens, single = self.tokens_for(X, Y, x_query, **fields)
            out = self.read_answer(self(tokens), context_size(self.layout, tokens))
        return out[0] if single else out

    def prefix_predictions(self, X, Y, **fields) -> torch.Tensor:
        """The learner protocol: row i is the prediction at ``x_i`` from the pairs ``0 … i−1``, ``(B, n, d_out)``
        (``(n, d_out)`` unbatched). One :meth:`predict` per prefix length, batched over prompts
        (:func:`icgd.learners.base.prefix_by_queries`); `fields` go to :meth:`predict`. Row 0 (empty context, which
        the tokens cannot hold) is :meth:`empty_prediction`: 0 here, the prediction of the zero start that every
        construction of this kind (linear GD, Akyürek's GD / ridge, functional GD) makes without data."""
        from icgd.learners.base import prefix_by_queries

        X, Y, _, single = check_prompt(X, Y, d_in=self.d_in, d_out=self.d_out, dtype=self.dtype)
        out = prefix_by_queries(lambda x, y, q: self.predict(x, y, q, **fields), X, Y,
                                lambda q: self.empty_prediction(q, **fields))
        return out[0] if single else out

    def empty_prediction(self, x_query: torch.Tensor, **fields) -> torch.Tensor:
        """The prediction without any context at batched queries ``(B, m, d_in)``: ``(B, m, d_out)`` zeros."""
        return x_query.new_zeros(*x_query.shape[:2], self.d_out)

    def summary(self) -> list[dict]:
        rows = super().summary()
        for row, role in zip(rows, self.roles):
            row["role"] = role
        return rows
