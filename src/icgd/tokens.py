"""Token layouts: named slots of the token dimension, and the one place where the papers' columns become rows.

The papers write a prompt as a matrix ``H ∈ R^{D×T}`` whose *columns* are tokens. icgd stores tokens as *rows*:
a ``(batch, T, D)`` tensor. :func:`to_columns` / :func:`from_columns` are the only transposes between the two
conventions; every layer equation in icgd is written for one row ``h_i``.

A :class:`Layout` names contiguous index ranges ("slots") of the D coordinates, e.g. ``x``, ``y``, ``w``, scratch
slots, ``one`` (the constant 1 that plays the role of a bias) and ``t`` (1 on context tokens, 0 on queries).
Consecutive slots can be grouped under one more name (``w`` = ``w1 … wN``), so code never does bare index
arithmetic::

    layout = Layout([("x", 3), ("y", 1), ("one", 1), ("t", 1)])
    layout.slice("y")          # slice(3, 4)
    tokens = pack_prompt(layout, X, Y, x_query)
    layout.read(tokens, "y")   # (B, T, 1)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

import torch

from icgd._checks import as_float_tensor, batched, check_last_dim
from icgd.errors import LayoutError, ShapeError, SpecError


def _slot_size(name, size) -> int:
    if isinstance(size, bool) or not isinstance(size, int):
        raise SpecError(f"slot {name!r} must have an integer size, got {size!r}")
    return size


class Layout:
    """Named slots of a token. `slots` is an ordered list of ``(name, size)``; `groups` maps a name to a run of
    consecutive slot names that it covers. Immutable once built."""

    def __init__(self, slots: Iterable[tuple[str, int]], groups: dict[str, Sequence[str]] | None = None):
        slots = tuple((str(n), _slot_size(n, s)) for n, s in slots)
        names = [n for n, _ in slots]
        if len(set(names)) != len(names):
            raise LayoutError(f"slot names must be unique, got {names}")
        for n, s in slots:
            if s < 0:
                raise LayoutError(f"slot {n!r} has negative size {s}")
        groups = {k: tuple(v) for k, v in (groups or {}).items()}
        for g, members in groups.items():
            if g in names:
                raise LayoutError(f"group {g!r} has the name of a slot")
            idx = [names.index(m) if m in names else -1 for m in members]
            if not members or -1 in idx or idx != list(range(idx[0], idx[0] + len(idx))):
                raise LayoutError(f"group {g!r} must name consecutive existing slots, got {members}")
        self.slots: tuple[tuple[str, int], ...] = slots
        self.groups: dict[str, tuple[str, ...]] = groups
        offsets, start = {}, 0
        for n, s in slots:
            offsets[n] = slice(start, start + s)
            start += s
        for g, members in groups.items():
            offsets[g] = slice(offsets[members[0]].start, offsets[members[-1]].stop)
        self._offsets: dict[str, slice] = offsets
        self.dim: int = start

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}={s}" for n, s in self.slots)
        return f"Layout({inner}; D={self.dim})"

    def slice(self, name: str) -> slice:
        """Index range of slot (or group) `name` in the token dimension."""
        try:
            return self._offsets[name]
        except KeyError:
            raise LayoutError(f"layout has no slot {name!r}; slots are {self.names()}") from None

    def index(self, name: str, i: int = 0) -> int:
        """Coordinate of entry `i` of slot `name`."""
        s = self.slice(name)
        if not 0 <= i < s.stop - s.start:
            raise LayoutError(f"slot {name!r} has {s.stop - s.start} entries, asked for entry {i}")
        return s.start + i

    def size(self, name: str) -> int:
        s = self.slice(name)
        return s.stop - s.start

    def names(self) -> list[str]:
        return [n for n, _ in self.slots] + list(self.groups)

    def __contains__(self, name: str) -> bool:
        return name in self._offsets

    def read(self, tokens: torch.Tensor, name: str) -> torch.Tensor:
        """Slot `name` of every token: ``(..., T, size)``."""
        if tokens.shape[-1] != self.dim:
            raise ShapeError(f"tokens have dimension {tokens.shape[-1]}, layout expects {self.dim}")
        return tokens[..., self.slice(name)]

    def empty(self, batch: int, n_tokens: int, dtype=torch.float64, device=None) -> torch.Tensor:
        """All-zero tokens ``(batch, n_tokens, D)``."""
        return torch.zeros(batch, n_tokens, self.dim, dtype=dtype, device=device)

    def write(self, tokens: torch.Tensor, name: str, value: torch.Tensor) -> None:
        """Write `value` into slot `name` in place. `value` is ``(B, T, size)``, or ``(B, size)`` / ``(size,)``
        which is replicated into every token."""
        size = self.size(name)
        value = as_float_tensor(value, name, tokens.dtype).to(tokens.device)
        if value.dim() == 0:
            value = value.expand(size)
        if value.shape[-1] != size:
            raise ShapeError(f"slot {name!r} has size {size}, got a value of shape {tuple(value.shape)}")
        if value.dim() == 2:
            value = value.unsqueeze(1)
        tokens[..., self.slice(name)] = value


class Prompt(NamedTuple):
    """A validated regression prompt: ``X (B, n, d_in)``, ``Y (B, n, d_out)``, ``x_query (B, m, d_in)`` or None,
    and whether the caller passed one unbatched prompt (its outputs then drop the batch axis)."""

    X: torch.Tensor
    Y: torch.Tensor
    x_query: torch.Tensor | None
    single: bool


def _shape(t: torch.Tensor, single: bool) -> tuple:
    return tuple(t.shape[1:] if single else t.shape)


def check_prompt(X, Y, x_query=None, *, d_in: int | None = None, d_out: int | None = None,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None,
                 min_pairs: int = 1) -> Prompt:
    """The one validator of a prompt ``(X, Y[, x_query])``, used by learners, constructions and trained models.

    Shapes: ``X (B, n, d_in)``, ``Y (B, n, d_out)``, ``x_query (B, m, d_in)``. **One rule for 2-D input**: a 2-D
    ``X (n, d_in)`` is one prompt, and then ``Y`` must be ``(n, d_out)`` and ``x_query`` ``(m, d_in)``; the result
    is batched (B = 1) with ``single=True``. Targets always carry their output axis (scalar targets are
    ``(…, n, 1)``). Everything is converted to `dtype` (default: X's floating dtype) and `device` (default: X's);
    `d_in` / `d_out`, when given, are checked. Raises :class:`~icgd.errors.NonFiniteError` on NaN/inf and
    :class:`~icgd.errors.ShapeError` naming the expected shape.
    """
    X = as_float_tensor(X, "X", dtype)
    if device is not None:
        X = X.to(device)
    X, single = batched(X, "X", 2)
    Y = as_float_tensor(Y, "Y", X.dtype).to(X.device)
    rank = 2 if single else 3
    B, n, d = X.shape
    if Y.dim() == rank - 1 and tuple(Y.shape) == _shape(X, single)[:-1]:
        raise ShapeError(f"Y has shape {tuple(Y.shape)} but needs a trailing output axis: expected "
                         f"{(n, 1) if single else (B, n, 1)}; for scalar targets pass Y[..., None]")
    if Y.dim() != rank:
        raise ShapeError(f"Y must have {rank} dimensions ({'(n, d_out)' if single else '(B, n, d_out)'}) like X "
                         f"{_shape(X, single)}, got shape {tuple(Y.shape)}")
    Y = Y.unsqueeze(0) if single else Y
    if tuple(Y.shape[:2]) != (B, n):
        raise ShapeError(f"Y has shape {_shape(Y, single)} but X has {'' if single else f'{B} prompts and '}{n} "
                         f"pairs: expected {(n, 'd_out') if single else (B, n, 'd_out')}")
    if d_in is not None:
        check_last_dim(X, "X", d_in, "d_in")
    if d_out is not None:
        check_last_dim(Y, "Y", d_out, "d_out")
    if n < min_pairs:
        raise ShapeError(f"the context needs at least {min_pairs} (x, y) pair(s), got X of shape "
                         f"{_shape(X, single)}")
    if x_query is None:
        return Prompt(X, Y, None, single)
    q = as_float_tensor(x_query, "x_query", X.dtype).to(X.device)
    if q.dim() != rank:
        hint = "; for one query point pass x_query[None]" if q.dim() == rank - 1 else ""
        raise ShapeError(f"x_query must have shape {'(m, d)' if single else '(B, m, d)'} like X, got "
                         f"{tuple(q.shape)}{hint}")
    q = q.unsqueeze(0) if single else q
    if q.shape[0] != B or q.shape[-1] != d:
        raise ShapeError(f"x_query has shape {_shape(q, single)}, expected {('m', d) if single else (B, 'm', d)} "
                         f"to match X {_shape(X, single)}")
    return Prompt(X, Y, q, single)


def pack_prompt(
    layout: Layout,
    X: torch.Tensor,
    Y: torch.Tensor,
    x_query: torch.Tensor | None = None,
    **replicated: torch.Tensor,
) -> torch.Tensor:
    """Pack a regression prompt into tokens ``(B, n + m, D)``.

    Context token i holds ``x = X_i``, ``y = Y_i``, ``t = 1``; query token j holds ``x = x_query_j``, ``y = 0``,
    ``t = 0``. Every token holds ``one = 1`` (if the layout has that slot) and each keyword (e.g. ``w=w0`` of shape
    ``(B, size)``) replicated into every token. Unbatched inputs ``(n, d)`` are accepted.
    """
    X, Y, xq, _ = check_prompt(X, Y, x_query, d_in=layout.size("x"), d_out=layout.size("y"), min_pairs=0)
    B, n, _ = X.shape
    if xq is None:
        xq = X.new_zeros(B, 0, X.shape[-1])
    m = xq.shape[1]
    tokens = layout.empty(B, n + m, dtype=X.dtype, device=X.device)
    tokens[:, :n, layout.slice("x")] = X
    tokens[:, n:, layout.slice("x")] = xq
    tokens[:, :n, layout.slice("y")] = Y
    if "one" in layout:
        tokens[..., layout.slice("one")] = 1.0
    if "t" in layout:
        tokens[:, :n, layout.slice("t")] = 1.0
    for name, value in replicated.items():
        v, _ = batched(as_float_tensor(value, name, X.dtype).to(X.device), name, 1)
        if v.shape[0] not in (1, B):
            raise ShapeError(f"{name} has {v.shape[0]} rows but there are {B} prompts")
        layout.write(tokens, name, v.expand(B, -1))
    return tokens


def to_columns(tokens: torch.Tensor) -> torch.Tensor:
    """``(B, T, D)`` rows → the papers' ``(B, D, T)`` column matrices H."""
    return tokens.transpose(-1, -2)


def from_columns(H: torch.Tensor) -> torch.Tensor:
    """The papers' ``(B, D, T)`` column matrices H → icgd's ``(B, T, D)`` rows."""
    return H.transpose(-1, -2)
