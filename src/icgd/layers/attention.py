"""Attention: one function per equation, and the layers built on them.

**Equations** (on per-head ``q (B, H, T, dh)``, ``k, v (B, H, S, dh)``; a :class:`Visibility` says which keys each
query reads and how many):

* :func:`softmax_attention` — ``softmax(q kᵀ·scale) v`` (Vaswani et al.), ``scale = 1/√dh`` by default; the fused
  ``scaled_dot_product_attention`` kernel unless a hook listens to the pattern.
* :func:`kernel_attention` — ``(1/|S_t|) Σ_{s∈S_t} κ(q_t, k_s) v_s`` (Cheng, Chen & Sra eq. 3) with κ one of
  :data:`KERNELS` (``linear``, ``relu``, ``exp``, ``rbf``) or a callable, divided by the number of visible keys;
  ``relu`` is Bai et al. Def. 1 / Wu et al. Def. 7 and ``linear`` von Oswald et al.'s LSA (Eq. 6).

**Layers** (all residual ``(B, T, D) → (B, T, D)`` except the fused block attention; every sum over heads is
vectorised):

* :class:`ReLUAttention` — Bai et al. Def. 1 / Wu et al. Def. 7, with compact :class:`~icgd.layers.heads.HeadBank`
  storage for thousands of sparse heads.
* :class:`SoftmaxAttention` — standard multi-head attention with an output projection.
* :class:`KernelAttention` — Cheng, Chen & Sra: a kernel score ``κ(q_i, k_s)`` (linear, relu, exp, rbf or any
  callable), normalised by the number of keys.
* :class:`LinearAttention` — von Oswald et al.'s LSA (the ``linear`` kernel), with the ``P``/``Q`` parametrisation.
* :class:`FusedSelfAttention` — the trained models' multi-head attention (nanoGPT's ``CausalSelfAttention``): one
  fused QKV projection ``c_attn`` and ``c_proj``; softmax, ReLU or linear; query rows can be pruned (``keep``).

Key masks: ``causal=True`` lets token i see tokens s ≤ i; ``key_flag=c`` (a coordinate index, e.g. the layout's
``t`` slot) lets only tokens whose coordinate c is nonzero act as keys — the query tokens of a prompt then read the
context without being read; ``n_keys=n`` takes keys and values from the first n tokens only. Normalised layers
divide by the number of keys each token sees.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import nn

from icgd._checks import positive_int
from icgd.errors import ShapeError, SpecError
from icgd.hooks import HookPoint
from icgd.layers.heads import BankView, HeadBank, HeadLayer, bank_for
from icgd.layers.plans import BankPlan, bank_plan, fast_state, head_mix

_CHUNK_ELEMENTS = 1 << 23  # score elements materialised at once when mixing many heads


def key_mask(h: torch.Tensor, causal: bool, key_flag: int | None) -> torch.Tensor | None:
    """Boolean ``(B, T, S)`` mask of the keys each token may read, or None when every token reads every token."""
    if not causal and key_flag is None:
        return None
    B, T, _ = h.shape
    mask = torch.ones(B, T, T, dtype=torch.bool, device=h.device)
    if causal:
        mask = mask & torch.ones(T, T, dtype=torch.bool, device=h.device).tril()
    if key_flag is not None:
        mask = mask & (h[..., key_flag] != 0)[:, None, :]
    return mask


def _linear(q, k):
    return q @ k.transpose(-1, -2)


KERNELS: dict[str, Callable[..., torch.Tensor]] = {
    "linear": lambda q, k, bw: _linear(q, k),
    "relu": lambda q, k, bw: torch.relu(_linear(q, k)),
    "exp": lambda q, k, bw: torch.exp(_linear(q, k)),
    "rbf": lambda q, k, bw: torch.exp(-torch.cdist(q, k) ** 2 / (2 * bw * bw)),
}


class Visibility:
    """Which keys each query token reads and how many: the mask and the normalisation of every attention equation.

    * causal (``allowed=None``, ``causal=True``): query t reads keys s ≤ t of the same T tokens;
    * full (``allowed=None``, ``causal=False``): every query reads all S keys, S = `n_keys` (the first n tokens,
      :meth:`key_tokens`) or T;
    * an explicit boolean mask, ``(T_q, S)`` or per prompt ``(B, T_q, S)`` (stored as ``(B, 1, T_q, S)``).

    ``allowed`` is the boolean mask (None when full), ``weights`` the mask as floats and ``inv_count`` the
    reciprocal number of visible keys per query, ``(T_q, 1)`` (``(B, 1, T_q, 1)`` per prompt; a float when full;
    a query that sees no key counts one)."""

    def __init__(self, T: int, device: torch.device, dtype: torch.dtype, allowed: torch.Tensor | None = None, *,
                 causal: bool = True, n_keys: int | None = None):
        self.T, self.device, self.dtype = T, device, dtype
        if allowed is not None and allowed.dim() == 3:
            allowed = allowed[:, None]
        self._allowed = allowed
        self.is_causal = allowed is None and causal
        self.is_full = allowed is None and not causal
        self.n_keys = n_keys if self.is_full else None
        self.S = allowed.shape[-1] if allowed is not None else (n_keys or T) if self.is_full else T

    @classmethod
    def for_tokens(cls, h: torch.Tensor, causal: bool = False, key_flag: int | None = None,
                   n_keys: int | None = None) -> Visibility:
        """The visibility of the layers' options on tokens ``h (B, T, D)`` (see the module docstring)."""
        T = h.shape[1]
        if n_keys is not None:
            if causal or key_flag is not None:
                raise SpecError("n_keys chooses the keys itself; it cannot be combined with causal or key_flag")
            if not (isinstance(n_keys, int) and 1 <= n_keys <= T):
                raise SpecError(f"n_keys must be an integer in [1, {T}], got {n_keys!r}")
            return cls(T, h.device, h.dtype, causal=False, n_keys=n_keys)
        if key_flag is None:
            return cls(T, h.device, h.dtype, causal=causal)
        return cls(T, h.device, h.dtype, key_mask(h, causal, key_flag))

    @classmethod
    def with_queries(cls, n_ctx: int, m: int, causal: bool, device: torch.device, dtype: torch.dtype) -> Visibility:
        """`n_ctx` context tokens (reading each other causally, or all of them when not `causal`) followed by `m`
        query tokens that each read the whole context and themselves, never another query."""
        T = n_ctx + m
        allowed = torch.zeros(T, T, dtype=torch.bool, device=device)
        ctx = torch.ones(n_ctx, n_ctx, dtype=torch.bool, device=device)
        allowed[:n_ctx, :n_ctx] = ctx.tril_() if causal else ctx
        allowed[n_ctx:, :n_ctx] = True
        allowed[n_ctx:, n_ctx:] = torch.eye(m, dtype=torch.bool, device=device)
        vis = cls(T, device, dtype, allowed)
        vis.has_empty_rows = False  # every token reads itself (saves a device sync)
        return vis

    def key_tokens(self, h: torch.Tensor) -> torch.Tensor:
        """The tokens that act as keys and values: the first `n_keys` when set, else all."""
        return h if self.n_keys is None else h[:, :self.n_keys]

    def rows(self, keep: slice) -> Visibility:
        """The visibility of the query tokens `keep` only (all tokens stay keys)."""
        if self.is_full:
            sub = Visibility(len(range(self.T)[keep]), self.device, self.dtype, causal=False, n_keys=self.n_keys)
            sub.S = self.S
            return sub
        sub = Visibility(self.T, self.device, self.dtype, self.allowed[..., keep, :])
        sub.inv_count = self.inv_count[..., keep, :]
        if not self.has_empty_rows:  # known without looking at the mask again
            sub.has_empty_rows = False
        return sub

    @cached_property
    def allowed(self) -> torch.Tensor | None:
        if self.is_causal:
            return torch.ones(self.T, self.T, dtype=torch.bool, device=self.device).tril_()
        return self._allowed

    @cached_property
    def weights(self) -> torch.Tensor | None:
        return None if self.is_full else self.allowed.to(self.dtype)

    @cached_property
    def inv_count(self) -> torch.Tensor | float:
        if self.is_full:
            return 1.0 / self.S
        if self.is_causal:
            return 1.0 / torch.arange(1, self.T + 1, device=self.device, dtype=self.dtype)[:, None]
        return 1.0 / self.allowed.sum(-1, keepdim=True).clamp_(min=1).to(self.dtype)

    @cached_property
    def has_empty_rows(self) -> bool:
        """Whether some query sees no key (possible only with an explicit mask); it then gets a zero output."""
        return self._allowed is not None and bool((~self._allowed.any(-1)).any())


def _active(hook: HookPoint | None) -> bool:
    return hook is not None and hook.active


def softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, vis: Visibility,
                      hook: HookPoint | None = None, scale: float | None = None) -> torch.Tensor:
    """``softmax_s(⟨q_t, k_s⟩·scale) v`` over the visible keys, ``(B, H, T_q, dh)``; scale = 1/√dh by default.

    The fused SDPA kernel unless `hook` listens (it then receives the ``(B, H, T_q, S)`` pattern) or some query sees
    no key (it gets a zero output)."""
    # Vaswani et al. (2017): scaled dot-product attention
    if not _active(hook) and not vis.has_empty_rows:
        kw = {} if scale is None else {"scale": scale}
        if vis.is_causal:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, **kw)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=vis.allowed, **kw)
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]) if scale is None else scale)
    if vis.allowed is not None:
        att = att.masked_fill(~vis.allowed, float("-inf"))
    att = torch.softmax(att, dim=-1)
    if vis.has_empty_rows:
        att = att.nan_to_num(0.0)
    return (hook(att) if hook is not None else att) @ v


def _masked(att: torch.Tensor, vis: Visibility, in_place: bool) -> torch.Tensor:
    """Scores with the invisible keys zeroed (in place only where autograd allows: right after a matmul)."""
    if vis.is_causal:
        return att.tril_() if in_place else att.tril()
    if vis.is_full:
        return att
    return att.mul_(vis.weights) if in_place else att * vis.weights


def _kernel_scores(q: torch.Tensor, k: torch.Tensor, vis: Visibility, kernel: str | Callable, scale: float,
                   bandwidth: float) -> torch.Tensor:
    """Masked kernel scores ``κ(q_t, k_s)`` (B, H, T_q, S), without the `scale` of the linear and relu kernels."""
    if callable(kernel) or kernel in ("exp", "rbf"):
        if scale != 1.0 and (callable(kernel) or kernel == "rbf"):
            raise SpecError(f"a score scale applies to the dot-product kernels only, not to {kernel!r}")
        score = kernel if callable(kernel) else (lambda a, b: KERNELS[kernel](a, b, bandwidth))
        return _masked(score(q * scale if scale != 1.0 else q, k), vis, in_place=False)
    if kernel not in KERNELS:
        raise SpecError(f"unknown kernel score {kernel!r}; choose one of {', '.join(KERNELS)} or pass a callable")
    att = _masked(q @ k.transpose(-2, -1), vis, in_place=True)  # in place: matmul's backward needs no output
    return att.relu_() if kernel == "relu" else att


def kernel_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, vis: Visibility,
                     kernel: str | Callable = "linear", hook: HookPoint | None = None, *, scale: float = 1.0,
                     bandwidth: float = 1.0) -> torch.Tensor:
    """``(1/|S_t|) Σ_{s∈S_t} κ(q_t, k_s) v_s`` over the visible keys S_t, ``(B, H, T_q, dh)``.

    κ is ``linear`` ⟨q,k⟩·scale, ``relu`` relu(⟨q,k⟩·scale), ``exp`` exp(⟨q,k⟩·scale), ``rbf``
    exp(−‖q−k‖²/(2·bandwidth²)) or a callable ``(q, k) → scores`` (scale 1 for the last two). `hook` receives the
    normalised pattern ``(B, H, T_q, S)``, materialised only when it listens. For linear and relu the scale and the
    per-query count multiply the ``(T_q, dh)`` output, not the ``(T_q, S)`` scores (exact: relu(c·s) = c·relu(s),
    c > 0); a single count (every query sees the same keys) scales the scores."""
    # Cheng, Chen & Sra eq. 3; relu: Bai et al. Def. 1 / Wu et al. Def. 7; linear: von Oswald et al. Eq. 6
    att = _kernel_scores(q, k, vis, kernel, scale, bandwidth)
    norm = vis.inv_count * scale if kernel in ("linear", "relu") else vis.inv_count
    if vis.is_full:
        att = att * norm
        return (hook(att) if hook is not None else att) @ v
    if _active(hook):  # materialise the pattern actually applied to the values
        return hook(att * norm) @ v
    return (att @ v).mul_(norm)


def mix_heads(U: torch.Tensor, alpha: torch.Tensor, c: torch.Tensor, act: Callable | None) -> torch.Tensor:
    """``Σ_h c_{g,h} act(Σ_b α_{g,h,b} U_{g,b})`` for block scores ``U (B, G, nb, …)`` → ``(B, G, …)``.

    Heads are processed in chunks so that at most ``_CHUNK_ELEMENTS`` scores exist at once."""
    B, G, nb = U.shape[:3]
    rest = U.shape[3:]
    Uf = U.reshape(B, G, nb, -1)
    if act is None:  # linear in the scores: fold the heads first
        return torch.einsum("gn,bgnx->bgx", torch.einsum("gh,ghn->gn", c, alpha), Uf).reshape(B, G, *rest)
    H = alpha.shape[1]
    step = max(1, _CHUNK_ELEMENTS // max(1, B * G * Uf.shape[-1]))
    out = None
    for h0 in range(0, H, step):
        S = act(torch.einsum("ghn,bgnx->bghx", alpha[:, h0:h0 + step], Uf))
        part = torch.einsum("gh,bghx->bgx", c[:, h0:h0 + step], S)
        out = part if out is None else out + part
    return out.reshape(B, G, *rest)


def relu_mix(U: torch.Tensor, alpha: torch.Tensor, c: torch.Tensor, sectors: tuple | None = None) -> torch.Tensor:
    """``Σ_h c_{g,h} relu(Σ_b α_{g,h,b} U_{g,b})`` for block scores ``U (B, G, X, nb)`` (blocks last) → ``(B, G, X)``.

    With `sectors` (:meth:`HeadBank.relu_sectors` of the same α, c; nb ≤ 2) the head sum is evaluated through its exact
    piecewise-linear form: O(log H) per score instead of O(H). Otherwise two batched matmuls over the groups
    (``U αᵀ``, then the relu'd scores times c), in chunks of heads so that at most ``_CHUNK_ELEMENTS`` scores exist
    at once."""
    if sectors is not None:
        return _sector_mix(U, *sectors)
    B, G, X, _ = U.shape
    H = alpha.shape[1]
    aT, cc = alpha.transpose(1, 2), c.unsqueeze(-1)  # (G, nb, H), (G, H, 1)
    step = max(1, _CHUNK_ELEMENTS // max(1, B * G * X))
    out = None
    for h0 in range(0, H, step):
        S = torch.matmul(U, aT[..., h0:h0 + step]).relu_()  # (B, G, X, h)
        part = torch.matmul(S, cc[:, h0:h0 + step]).squeeze(-1)
        out = part if out is None else out + part
    return out


def _sector_mix(U: torch.Tensor, bounds: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """``F_g(U_0, U_1)`` from :func:`~icgd.layers.heads.relu_sectors`: find each score's sector by its angle, then
    one linear form."""
    B, G, X, nb = U.shape
    x = U[..., 0]
    y = U[..., 1] if nb == 2 else torch.zeros_like(x)
    xg, yg = (t.transpose(0, 1).reshape(G, B * X) for t in (x, y))
    sector = torch.searchsorted(bounds, torch.atan2(yg, xg))  # (G, B·X)
    A = torch.gather(coef, 1, sector.unsqueeze(-1).expand(G, B * X, 2))
    return (xg * A[..., 0] + yg * A[..., 1]).view(G, B, X).transpose(0, 1)


def _invariant(t: torch.Tensor | list[torch.Tensor]) -> bool:
    """True when every token has exactly the same rows (dimension 1 is the token axis), in every tensor of a list."""
    parts = t if isinstance(t, (list, tuple)) else [t]
    return all(p.shape[1] == 1 or torch.equal(p[:, 1:], p[:, :-1]) for p in parts)  # each token equals the next
def _hooked(layer: nn.Module) -> bool:
    """Whether something listens to the layer's ``hook_pattern`` or ``hook_z``."""
    return layer.hook_pattern.active or layer.hook_z.active


def _bank_forward_hooked(layer: nn.Module, h: torch.Tensor, weights: Callable) -> torch.Tensor:
    """The forward pass of a head-bank attention layer with every head materialised (only while a hook listens):
    ``weights(scores (B, M, T, S), mask)`` → pattern, then ``h + Σ_m z_m`` with ``z_m = pattern_m V_m h``."""
    Q, K, V = bank_for(layer, h).dense()  # (M, r, D), (M, r, D), (M, D, D); detached
    scores = torch.einsum("btd,mrd->bmtr", h, Q) @ torch.einsum("bsd,mrd->bmsr", h, K).transpose(-1, -2)
    pattern = layer.hook_pattern(weights(scores, key_mask(h, layer.causal, getattr(layer, "key_flag", None))))
    z = layer.hook_z(torch.einsum("bmts,med,bsd->btme", pattern, V, h))  # (B, T, M, D)
    return h + z.sum(2)


class ReLUAttention(HeadLayer):
    """``h_i + (1/T) Σ_m Σ_s relu(⟨Q_m h_i, K_m h_s⟩) V_m h_s`` (Bai et al. Def. 1; Wu et al. Def. 7).

    No softmax, no 1/√d. With ``causal=True`` token i sums over s ≤ i and divides by i + 1.

    Two exact shortcuts are taken when the input allows them (checked on every call, bit for bit): when every
    token has the same key rows, ``Σ_s relu(⟨q_i, k⟩) V h_s = relu(⟨q_i, k⟩) Σ_s V h_s``; when every token has the
    same query rows, the output is the same for all tokens and is computed once. Both cost O(T) instead of O(T²)
    per head; the constructions of :mod:`icgd.constructions` rely on them (their keys read the replicated weights).
    On both shortcuts a group with many heads (``HeadBank.relu_sectors``) sums its heads through their exact
    piecewise-linear form, O(log H) per score (tested against the head-by-head sum).
    """

    def __init__(self, heads: HeadBank, *, causal: bool = False):
        super().__init__(heads, causal=causal)
        self.hook_pattern = HookPoint()  # (B, M, T, S): relu scores / keys seen, only when hooked
        self.hook_z = HookPoint()  # (B, T, M, D): per-head update, only when hooked

    def _pattern(self, scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        A = torch.relu(scores)
        if mask is not None:
            A = A * mask[:, None]
        norm = self._norm(scores.shape[-2], scores)
        return A / (norm[..., 0] if norm.dim() else norm)

    def _norm(self, T: int, like: torch.Tensor) -> torch.Tensor:
        """Number of keys each token sees, shaped to divide ``(B, T, G, e)``."""
        if self.causal:
            return torch.arange(1, T + 1, dtype=like.dtype, device=like.device)[:, None, None]
        return like.new_tensor(float(T))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self._forward(h, inplace=False)

    def forward_inplace(self, h: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` adding the update into `h` itself where the layer has a plan (see
        :meth:`icgd.layers.transformer.Transformer._run_layers`); returns the result (`h` or a new tensor)."""
        return self._forward(h, inplace=True)

    def _forward(self, h: torch.Tensor, inplace: bool) -> torch.Tensor:
        mods = self._modules  # (nn.Module.__getattr__ costs more than this layer's arithmetic on small inputs)
        if mods["hook_pattern"]._forward_hooks or mods["hook_z"]._forward_hooks:
            return _bank_forward_hooked(self, h, self._pattern)
        bank = mods["heads"]
        mix = hb = None
        if not self.causal:  # a frozen sparse bank: its plan (icgd.layers.plans)
            coefficients = mods.get("coefficients") or self.__dict__.get("coefficients")
            if coefficients is None:
                fast = fast_state(bank)
                if fast is not None:
                    plan, mix = fast.plan, (fast.alpha, fast.c, fast.sectors)
            else:
                plan = bank_plan(bank)
                if plan is not None:
                    hb = BankView(bank, **coefficients(h, bank))
                    mix = (hb.alpha, hb.c, hb.relu_sectors())
        if mix is not None:
            if h.shape[-1] != plan.dim:
                raise ShapeError(f"tokens have dimension {h.shape[-1]} but the heads expect {plan.dim}")
            # the key columns (of rows with a nonzero query and key coefficient), then the query columns
            if _invariant(plan.keys_shared.shared_view(h)):
                return self._shared_keys_planned(h, mix, plan, inplace)
            if _invariant(plan.queries_shared.shared_view(h)):
                return self._shared_queries_planned(h, mix, plan, inplace)
        if hb is None:  # (a BankView built above already holds this call's coefficients)
            hb = bank_for(self, h)
        if h.shape[-1] != hb.dim:
            raise ShapeError(f"tokens have dimension {h.shape[-1]} but the heads expect {hb.dim}")
        if mix is None and _invariant(hb.k.token_view(h)):
            return hb.v.add_to(h, self._shared_keys(h, hb))
        if mix is None and _invariant(hb.q.token_view(h)):
            return hb.v.add_to(h, self._shared_queries(h, hb))
        return hb.v.add_to(h, self._all_pairs(h, hb))

    @staticmethod
    def _mix(Ut: torch.Tensor, mix: tuple, plan: BankPlan) -> torch.Tensor:
        """The groups' head sums ``(B, G, X)`` of block scores ``Uᵀ (B, nb·G, X)``; `mix` = (α, c, sectors)."""
        B, X = Ut.shape[0], Ut.shape[-1]
        if B == 1:
            return head_mix(Ut[0], plan, *mix).unsqueeze(0)
        U = Ut.transpose(0, 1).reshape(Ut.shape[1], B * X)
        return head_mix(U, plan, *mix).view(plan.G, B, X).transpose(0, 1)

    def _shared_keys_planned(self, h: torch.Tensor, mix: tuple, plan: BankPlan, inplace: bool) -> torch.Tensor:
        """:meth:`_shared_keys` through the bank's plan: one matmul gives every block score against the shared
        key rows (read from token 0), the value map reads its few columns summed over the tokens, and the
        update goes to the value entries' destination columns."""
        T = h.shape[1]
        A = self._mix(plan.keys_shared.scores(h), mix, plan)  # (B, G, T): weight of token i
        vals = plan.vcols(h).sum(1).index_select(-1, plan.vpos).mul_(plan.vcoef_over(T))  # (B, E): V Σ_s h_s / T
        if plan.vg_identity:
            upd = (A * vals.unsqueeze(-1)).transpose(1, 2)  # (B, T, E)
        else:
            upd = plan.per_group(A.transpose(1, 2)) * vals.unsqueeze(1)
        return plan.write(h, upd, inplace)

    def _shared_queries_planned(self, h: torch.Tensor, mix: tuple, plan: BankPlan, inplace: bool) -> torch.Tensor:
        """:meth:`_shared_queries` through the bank's plan: one matmul gives every key's block scores against the
        shared query rows (read from token 0), a second the weighted sums of the value columns; every
        token gets the same update."""
        B, T = h.shape[:2]
        a = self._mix(plan.queries_shared.scores(h), mix, plan)  # (B, G, S): weight of key s
        Mv = torch.bmm(a, plan.vcols(h))  # (B, G, cv)
        vals = Mv.view(B, -1).index_select(-1, plan.vgpos).mul_(plan.vcoef_over(T))  # (B, E)
        return plan.write(h, vals.unsqueeze(1), inplace)

    def _shared_keys(self, h: torch.Tensor, hb) -> torch.Tensor:
        """Every token has the same key rows k: ``Σ_s relu(⟨q_i, k⟩) V h_s = relu(⟨q_i, k⟩) V Σ_s h_s`` — the value
        map is applied once to the token sum (prefix sums when causal). Returns ``(B, T, G, e)``."""
        T = h.shape[1]
        U = hb.shared_scores(hb.q(h), hb.k(h[:, 0]))  # (B, G, T, nb)
        A = relu_mix(U, hb.alpha, hb.c, hb.relu_sectors())  # (B, G, T): weight of token i, the same for every key
        if self.causal:
            vmean = hb.v.read(h).cumsum(1) / self._norm(T, h)  # (B, T, G, e)
        elif hb.v.is_dense:
            vmean = hb.v.read(h.sum(1, keepdim=True) / T)  # (B, 1, G, e): V Σ_s h_s
        else:  # the few value entries first, then the token sum
            vmean = hb.v.read(h).sum(1, keepdim=True) / T
        return A.transpose(1, 2).unsqueeze(-1) * vmean

    def _shared_queries(self, h: torch.Tensor, hb) -> torch.Tensor:
        """Every token has the same query rows: the weight of key s is the same for every token; the weighted value
        sum is one batched matmul over the groups, ``(B, 1, G, e)`` (prefix sums ``(B, T, G, e)`` when causal)."""
        T = h.shape[1]
        U = hb.shared_scores(hb.k(h), hb.q(h[:, 0]))  # (B, G, S, nb)
        a = relu_mix(U, hb.alpha, hb.c, hb.relu_sectors())  # (B, G, S): weight of key s, the same for every token
        vals = hb.v.read(h)  # (B, S, G, e)
        if self.causal:
            return (a.transpose(1, 2).unsqueeze(-1) * vals).cumsum(1) / self._norm(T, h)
        return torch.matmul(a.unsqueeze(2), vals.transpose(1, 2)).transpose(1, 2) / T  # (B, 1, G, e)

    def _all_pairs(self, h: torch.Tensor, hb) -> torch.Tensor:
        """The general case: the ``(B, G, T, S)`` weights of every token pair, ``(B, T, G, e)``."""
        T = h.shape[1]
        qh, kh, vals = hb.project(h)  # (B, T, G, r), (B, T, G, r), (B, T, G, e)
        U = torch.einsum("bigr,bsgr,grn->bgnis", qh, kh, hb.onehot)
        A = mix_heads(U, hb.alpha, hb.c, torch.relu)  # (B, G, T, S)
        if self.causal:
            A = A * torch.ones(T, T, dtype=A.dtype, device=A.device).tril()
        return torch.einsum("bgis,bsge->bige", A, vals) / self._norm(T, h)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", causal={self.causal}"


class _DenseAttention(nn.Module):
    """Multi-head attention with dense per-head ``W_q, W_k, W_v (H, d_head, D)`` and ``W_o (H, D, d_head)``: the
    subclass's equation (:meth:`attend`) under the layer's :class:`Visibility` (`causal`, `key_flag`, or
    ``forward(h, n_keys=n)``), then ``h + Σ_m W_o^m z_m``."""

    def __init__(self, dim: int, n_heads: int = 1, d_head: int | None = None, *, causal: bool = False,
                 key_flag: int | None = None, generator: torch.Generator | None = None,
                 dtype: torch.dtype | None = None):
        super().__init__()
        positive_int(dim, "dim")
        positive_int(n_heads, "n_heads")
        if d_head is not None:
            positive_int(d_head, "d_head")
        if key_flag is not None and not 0 <= key_flag < dim:
            raise SpecError(f"key_flag must be a coordinate in [0, {dim}), got {key_flag}")
        d_head = d_head or max(1, dim // n_heads)
        self.dim, self.n_heads, self.d_head = dim, n_heads, d_head
        self.causal, self.key_flag = causal, key_flag
        dtype = dtype or torch.get_default_dtype()

        def init(*shape: int, fan_in: int) -> nn.Parameter:
            return nn.Parameter(torch.randn(*shape, generator=generator, dtype=dtype) / math.sqrt(fan_in))

        self.W_q = init(n_heads, d_head, dim, fan_in=dim)
        self.W_k = init(n_heads, d_head, dim, fan_in=dim)
        self.W_v = init(n_heads, d_head, dim, fan_in=dim)
        self.W_o = init(n_heads, dim, d_head, fan_in=d_head * n_heads)
        self.hook_pattern = HookPoint()  # (B, H, T, S): attention weights
        self.hook_z = HookPoint()  # (B, T, H, D): per-head update W_o^m z_m, only when hooked

    @property
    def num_heads(self) -> int:
        return self.n_heads

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, vis: Visibility) -> torch.Tensor:
        """Per-head outputs ``(B, H, T, d_head)`` of the layer's equation (it feeds ``hook_pattern``)."""
        raise NotImplementedError

    def forward(self, h: torch.Tensor, n_keys: int | None = None) -> torch.Tensor:
        """``h`` plus the update; with `n_keys` the keys and values are the first n tokens only (no other mask)."""
        if h.dim() != 3 or h.shape[-1] != self.dim:
            raise ShapeError(f"tokens must be (B, T, {self.dim}), got {tuple(h.shape)}")
        vis = Visibility.for_tokens(h, self.causal, self.key_flag, n_keys)
        keys = vis.key_tokens(h)
        q = torch.einsum("hij,btj->bhti", self.W_q, h)  # (B, H, T, d_head)
        k = torch.einsum("hij,bsj->bhsi", self.W_k, keys)  # (B, H, S, d_head)
        v = torch.einsum("hij,bsj->bhsi", self.W_v, keys)
        z = self.attend(q, k, v, vis)  # (B, H, T, d_head)
        if self.hook_z.active:
            return h + self.hook_z(torch.einsum("hij,bhtj->bthi", self.W_o, z)).sum(2)
        return h + torch.einsum("hij,bhtj->bti", self.W_o, z)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, heads={self.n_heads}, d_head={self.d_head}, causal={self.causal}"


class SoftmaxAttention(_DenseAttention):
    """``h_i + Σ_m W_o^m Σ_s softmax_s(⟨W_q^m h_i, W_k^m h_s⟩ / √d_head) W_v^m h_s`` (Vaswani et al.).

    A token that may read no key (possible only with `key_flag`) gets a zero update."""

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, vis: Visibility) -> torch.Tensor:
        return softmax_attention(q, k, v, vis, self.hook_pattern)


class KernelAttention(_DenseAttention):
    """``h_i + (1/|S_i|) Σ_m W_o^m Σ_{s∈S_i} κ(W_q^m h_i, W_k^m h_s) W_v^m h_s`` (Cheng, Chen & Sra, eq. 3).

    `score` is ``linear`` ⟨q,k⟩, ``relu`` relu⟨q,k⟩, ``exp`` exp⟨q,k⟩, ``rbf`` exp(−‖q−k‖²/(2·bandwidth²)) or a
    callable ``(q, k) → scores``; S_i is the set of keys token i reads and the sum is divided by its size."""

    def __init__(self, dim: int, n_heads: int = 1, d_head: int | None = None, *,
                 score: str | Callable = "linear", bandwidth: float = 1.0, **kwargs):
        super().__init__(dim, n_heads, d_head, **kwargs)
        if callable(score):
            self.score_name = getattr(score, "__name__", "custom")
        elif score in KERNELS:
            self.score_name = score
        else:
            raise SpecError(f"unknown kernel score {score!r}; choose one of {', '.join(KERNELS)} or pass a callable")
        if not bandwidth > 0:
            raise SpecError(f"bandwidth must be > 0, got {bandwidth}")
        self.score, self.bandwidth = score, float(bandwidth)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, vis: Visibility) -> torch.Tensor:
        return kernel_attention(q, k, v, vis, self.score, self.hook_pattern, bandwidth=self.bandwidth)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", score={self.score_name}"


class LinearAttention(KernelAttention):
    """von Oswald et al.'s linear self-attention (LSA):
    ``e_j + (1/n) Σ_m P_m W_v^m Σ_i e_i e_iᵀ W_k^mᵀ W_q^m e_j`` — no non-linearity, divided by the number of keys
    (the context tokens when ``key_flag`` is the layout's ``t`` slot).

    In the ``P``/``Q`` form of the paper each head is ``(P_m, Q_m)`` with ``P_m = W_o^m W_v^m`` and
    ``Q_m = W_k^mᵀ W_q^m``; :meth:`from_pq` builds the layer from them and :meth:`pq` reads them back.

    ``forward(h, n_keys=n)`` takes the keys and values from the first n tokens only and divides by n (von Oswald
    et al. Eq. 6 with its context/query split; the trainable :class:`icgd.models.LSA` is a stack of these); the
    paper's matrices are ``W_Q = W_q``, ``W_K = W_k``, ``W_V = W_v`` and ``P = W_o`` (with ``d_head = dim``)."""

    PAPER_NAMES = {"W_Q": "W_q", "W_K": "W_k", "W_V": "W_v", "P": "W_o"}  # von Oswald et al.'s name → parameter

    def __init__(self, dim: int, n_heads: int = 1, d_head: int | None = None, **kwargs):
        super().__init__(dim, n_heads, d_head, score="linear", **kwargs)

    @classmethod
    def from_pq(cls, P: torch.Tensor, Q: torch.Tensor, **kwargs) -> LinearAttention:
        """Heads from ``P, Q`` of shape ``(D, D)`` or ``(H, D, D)``."""
        if P.dim() == 2:
            P, Q = P[None], Q[None]
        if P.dim() != 3 or P.shape != Q.shape or P.shape[-1] != P.shape[-2]:
            raise ShapeError(f"P and Q must both be (H, D, D), got {tuple(P.shape)} and {tuple(Q.shape)}")
        H, D, _ = P.shape
        layer = cls(D, H, D, dtype=P.dtype, **kwargs)
        eye = torch.eye(D, dtype=P.dtype).expand(H, D, D)
        with torch.no_grad():
            layer.W_q.copy_(Q)
            layer.W_k.copy_(eye)
            layer.W_v.copy_(eye)
            layer.W_o.copy_(P)
        return layer

    def pq(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(P, Q)`` per head, each ``(H, D, D)``."""
        with torch.no_grad():
            return self.W_o @ self.W_v, self.W_k.transpose(-1, -2) @ self.W_q


class FusedSelfAttention(nn.Module):
    """The trained models' multi-head self-attention (nanoGPT's ``CausalSelfAttention``): one fused QKV projection
    ``c_attn`` (E → 3E, with bias), `attention` on H heads of size dh = E / H, and the output projection ``c_proj``.

    ``"softmax"`` is :func:`softmax_attention` (the fused SDPA kernel unless a hook listens); ``"relu"`` and
    ``"linear"`` are :func:`kernel_attention` with GPT-2's 1/√dh score scale, divided by the number of visible keys.
    ``forward(x, vis, keep)`` returns the attention output only (the block adds the residual): of every token, or of
    the query tokens `keep` only (all tokens stay keys; a model's last block needs only its prediction tokens).
    Hook points: ``hook_pattern`` (B, H, T_q, S), only when hooked; ``hook_z`` (B, T_q, H, dh) before ``c_proj``."""

    KINDS = ("softmax", "relu", "linear")

    def __init__(self, n_embd: int, n_head: int, attention: str = "softmax"):
        super().__init__()
        positive_int(n_embd, "n_embd")
        positive_int(n_head, "n_head")
        if n_embd % n_head:
            raise SpecError(f"n_embd={n_embd} must be divisible by n_head={n_head}")
        if attention not in self.KINDS:
            raise SpecError(f"unknown attention {attention!r}; choose one of {', '.join(self.KINDS)}")
        self.n_head, self.n_embd, self.attention = n_head, n_embd, attention
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)
        self.hook_pattern = HookPoint()  # (B, H, T_q, S), only when hooked
        self.hook_z = HookPoint()  # (B, T_q, H, dh): per-head output before c_proj

    def forward(self, x: torch.Tensor, vis: Visibility | None = None, keep: slice | None = None) -> torch.Tensor:
        """``(B, T_q, E)``; `vis` defaults to the causal mask."""
        if x.dim() != 3 or x.shape[-1] != self.n_embd:
            raise ShapeError(f"tokens must be (B, T, {self.n_embd}), got {tuple(x.shape)}")
        B, T, E = x.shape
        if vis is None:
            vis = Visibility(T, x.device, x.dtype)
        q, k, v = self.c_attn(x).split(E, dim=2)
        q = q.view(B, T, self.n_head, E // self.n_head).transpose(1, 2)  # (B, H, T, dh)
        k = k.view(B, T, self.n_head, E // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, E // self.n_head).transpose(1, 2)
        if keep is not None:
            q, vis = q[:, :, keep], vis.rows(keep)
        if self.attention == "softmax":
            y = softmax_attention(q, k, v, vis, self.hook_pattern)  # (B, H, T_q, dh)
        else:  # GPT-2's 1/√dh score scale
            y = kernel_attention(q, k, v, vis, self.attention, self.hook_pattern, scale=1.0 / math.sqrt(q.shape[-1]))
        return self.c_proj(self.hook_z(y.transpose(1, 2)).reshape(B, q.shape[2], E))

    def extra_repr(self) -> str:
        return f"n_embd={self.n_embd}, n_head={self.n_head}, attention={self.attention!r}"


def softmax_mix(U: torch.Tensor, alpha: torch.Tensor, c: torch.Tensor, mask: torch.Tensor | None = None
                ) -> torch.Tensor:
    """``Σ_h c_{g,h} softmax_s(Σ_b α_{g,h,b} U_{g,b}(…, s))`` for block scores ``U (B, G, nb, …, S)``, giving
    ``(B, G, …, S)``.

    The softmax runs over the last axis (the keys); `mask` ``(B, T, S)`` (for ``U (B, G, nb, T, S)``) marks the keys
    each token may read, and a token that may read none gets zero weights. Heads are processed in chunks so that at
    most ``_CHUNK_ELEMENTS`` scores exist at once."""
    H = alpha.shape[1]
    step = max(1, _CHUNK_ELEMENTS // max(1, U[:, :, 0].numel()))
    out = None
    for h0 in range(0, H, step):
        S = torch.einsum("ghn,bgn...->bgh...", alpha[:, h0:h0 + step], U)
        if mask is not None:
            S = S.masked_fill(~mask[:, None, None], float("-inf"))
        S = torch.softmax(S, dim=-1)
        if mask is not None:
            S = S.nan_to_num(0.0)
        part = torch.einsum("gh,bgh...->bg...", c[:, h0:h0 + step], S)
        out = part if out is None else out + part
    return out


class SparseSoftmaxAttention(SoftmaxAttention):
    """Softmax attention with its heads in a compact :class:`~icgd.layers.heads.HeadBank`:

        h_i + Σ_m Σ_{s∈S_i} softmax_s(⟨Q_m h_i, K_m h_s⟩) V_m h_s

    This is :class:`SoftmaxAttention` with the ``1/√d_head`` folded into ``Q_m`` and ``V_m = W_o^m W_v^m`` stored
    per head — the same function class, stored so that hundreds of heads with a few nonzeros each cost O(nonzeros)
    (the explicit softmax construction, :mod:`icgd.constructions.wu_softmax`, needs that). :meth:`to_dense` returns
    the equivalent dense :class:`SoftmaxAttention`. Masks (`causal`, `key_flag`) are those of
    :class:`SoftmaxAttention`; a token that may read no key gets a zero update.

    Two exact shortcuts are taken when there is no mask and the input allows them (checked on every call, bit for
    bit): when every token has the same query rows, every token gets the same weights, computed once (O(T) per head
    instead of O(T²)); when every token has the same key rows, the weights are uniform, ``1/T``.
    """

    def __init__(self, heads: HeadBank, *, causal: bool = False, key_flag: int | None = None):
        nn.Module.__init__(self)  # the dense W_q, W_k, W_v, W_o of SoftmaxAttention are replaced by the bank
        if key_flag is not None and not 0 <= key_flag < heads.dim:
            raise SpecError(f"key_flag must be a coordinate in [0, {heads.dim}), got {key_flag}")
        self.heads = heads
        self.dim, self.d_head = heads.dim, heads.q.rows
        self.causal, self.key_flag = causal, key_flag
        self.hook_pattern = HookPoint()  # (B, M, T, S): softmax weights per head, only when hooked
        self.hook_z = HookPoint()  # (B, T, M, D): per-head update, only when hooked

    @staticmethod
    def _pattern(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if mask is None:
            return torch.softmax(scores, dim=-1)
        return torch.softmax(scores.masked_fill(~mask[:, None], float("-inf")), dim=-1).nan_to_num(0.0)

    @property
    def num_heads(self) -> int:
        return self.heads.num_heads

    @property
    def n_heads(self) -> int:
        return self.heads.num_heads

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if h.dim() != 3 or h.shape[-1] != self.dim:
            raise ShapeError(f"tokens must be (B, T, {self.dim}), got {tuple(h.shape)}")
        if _hooked(self):
            return _bank_forward_hooked(self, h, self._pattern)
        hb = bank_for(self, h)
        qh, kh, vals = hb.project(h)  # (B, T, G, r), (B, T, G, r), (B, T, G, e)
        unmasked = not self.causal and self.key_flag is None
        if unmasked and _invariant(qh):
            U = torch.einsum("bgr,bsgr,grn->bgns", qh[:, 0], kh, hb.onehot)
            A = softmax_mix(U, hb.alpha, hb.c)  # (B, G, S): weight of key s, the same for every token
            return h + hb.v.emit(torch.einsum("bgs,bsge->bge", A, vals)[:, None])
        if unmasked and _invariant(kh):
            out = hb.c.sum(1)[:, None] * vals.mean(1)  # uniform weights 1/T
            return h + hb.v.emit(out[:, None])
        U = torch.einsum("bigr,bsgr,grn->bgnis", qh, kh, hb.onehot)
        A = softmax_mix(U, hb.alpha, hb.c, key_mask(h, self.causal, self.key_flag))  # (B, G, T, S)
        return h + hb.v.emit(torch.einsum("bgis,bsge->bige", A, vals))

    def to_dense(self) -> SoftmaxAttention:
        """The same layer as a dense :class:`SoftmaxAttention` (``heads`` heads of size ``d_head = max(r, D)``:
        ``W_q = √d_head·Q_m``, ``W_k = K_m``, ``W_v = V_m``, ``W_o = I``) — ``3·heads·D²`` numbers, for small layers
        and tests."""
        Q, K, V = self.heads.dense()
        M, r, D = Q.shape
        d = max(r, D)
        dense = SoftmaxAttention(D, M, d, causal=self.causal, key_flag=self.key_flag, dtype=Q.dtype)
        with torch.no_grad():
            for W in (dense.W_q, dense.W_k, dense.W_v, dense.W_o):
                W.zero_()
            dense.W_q[:, :r] = Q * math.sqrt(d)
            dense.W_k[:, :r] = K
            dense.W_v[:, :D] = V
            dense.W_o[:, :, :D] = torch.eye(D, dtype=Q.dtype)
        return dense.requires_grad_(False)

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, dim={self.dim}, causal={self.causal}, key_flag={self.key_flag}"
