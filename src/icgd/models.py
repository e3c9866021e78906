"""Trainable in-context regressors: a GPT-2-style :class:`ICLTransformer` and von Oswald's :class:`LSA`.

:class:`ICLTransformer` is the model of Garg et al. (2022) written in plain PyTorch in the style of nanoGPT: a linear
read-in of prompt tokens, learned positions, pre-LayerNorm blocks (``x + attn(ln_1(x))``, ``x + mlp(ln_2(x))``), a
final LayerNorm and a linear read-out. ``forward(X, Y)`` predicts every ``y_i`` from the pairs before it in one
causal pass. Attention is :class:`icgd.layers.FusedSelfAttention` (fused QKV ``c_attn`` + ``c_proj``): softmax
(``scaled_dot_product_attention``), ReLU (Bai et al. 2023 Def. 1 / Wu et al. 2025 Def. 7, as trained by Wu et al.)
or linear; ``loop > 1`` re-applies the same blocks (Yang et al., ICLR 2024, "looped transformers"). This module
defines no attention equation: masks and normalisation are :class:`icgd.layers.Visibility`, the equations
:func:`icgd.layers.softmax_attention` and :func:`icgd.layers.kernel_attention`.

:class:`LSA` is the attention-only linear self-attention model of von Oswald et al. (ICML 2023) on ``(x_i, y_i)``
tokens with query tokens ``(x_q, 0)``; its layers are those of :func:`icgd.constructions.linear_gd`, so a trained
LSA can be compared with the GD construction matrix for matrix (:meth:`LSA.weights`).

Both are hooked models (:class:`icgd.hooks.HookedModel`: :meth:`hook_points`, :meth:`hooks`, :meth:`run_with_hooks`,
:meth:`run_with_cache`; hook names are module paths, listed in :mod:`icgd.hooks`); hook functions are called as
``fn(activation, name)`` and may return a replacement.

Shapes: B prompts, n context points, m queries, T tokens, E = n_embd, H heads, dh = E / H.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from icgd._checks import as_float_tensor, positive_float, positive_int
from icgd.errors import ShapeError, SpecError
from icgd.hooks import HookedModel, HookPoint
from icgd.layers.attention import FusedSelfAttention, LinearAttention, Visibility
from icgd.layers.mlp import MLP
from icgd.tokens import Prompt, check_prompt

ATTENTION_KINDS = FusedSelfAttention.KINDS
TOKEN_FORMATS = ("interleaved", "concat")
MLP_ACTIVATIONS = ("gelu", "gelu_tanh", "relu")  # of icgd.layers.MLP; GELU with erf is GPT-2's GELU computed exactly


# ----------------------------------------------------------------------------------------------------------------
# ICLTransformer


@dataclass(frozen=True)
class ICLTransformerConfig:
    """Hyper-parameters of :class:`ICLTransformer` (nanoGPT's ``GPTConfig``): ``ICLTransformer(config)`` builds the
    model, and ``ICLTransformer(d_in, d_out, n_layer=…, n_head=…, n_embd=…, …)`` takes the same fields as keywords.
    Every field is also a key of :class:`icgd.train.TrainConfig` (``icgd train --set``), with ``max_points`` =
    ``n_points`` and ``d_mlp = 0`` for the default width."""

    d_in: int
    d_out: int = 1
    n_layer: int = 12
    n_head: int = 8
    n_embd: int = 256
    attention: str = "softmax"  # "softmax" | "relu" | "linear"
    causal: bool = True
    token_format: str = "interleaved"  # "interleaved" (Garg) | "concat" (one token per point)
    max_points: int = 101  # bound of the learned positions, in points (Garg's n_positions)
    mlp: bool = True
    layernorm: bool = True
    loop: int = 1  # passes through the shared blocks (looped transformer)
    loop_inject: bool = False  # add the embedded input before every pass after the first (Yang et al.)
    d_mlp: int | None = None  # MLP width; None = 4 * n_embd as in GPT-2
    mlp_activation: str = "gelu"  # "gelu" (exact) | "gelu_tanh" (GPT-2's approximation) | "relu"

    def __post_init__(self) -> None:
        for name in ("d_in", "d_out", "n_layer", "n_head", "n_embd", "max_points", "loop"):
            positive_int(getattr(self, name), name)
        if self.d_mlp is not None:
            positive_int(self.d_mlp, "d_mlp")
        if self.n_embd % self.n_head:
            raise SpecError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}; "
                            f"pick n_embd as a multiple of the number of heads")
        if self.attention not in ATTENTION_KINDS:
            raise SpecError(f"unknown attention {self.attention!r}; choose one of {', '.join(ATTENTION_KINDS)}")
        if self.mlp_activation not in MLP_ACTIVATIONS:
            raise SpecError(f"unknown mlp_activation {self.mlp_activation!r}; "
                            f"choose one of {', '.join(MLP_ACTIVATIONS)}")
        if self.token_format not in TOKEN_FORMATS:
            raise SpecError(f"unknown token_format {self.token_format!r}; choose one of {', '.join(TOKEN_FORMATS)}")
        for name in ("causal", "mlp", "layernorm", "loop_inject"):
            if not isinstance(getattr(self, name), bool):
                raise SpecError(f"{name} must be True or False, got {getattr(self, name)!r}")

    @property
    def token_dim(self) -> int:
        return self.d_in + self.d_out + (1 if self.token_format == "concat" else 0)

    @property
    def tokens_per_point(self) -> int:
        return 2 if self.token_format == "interleaved" else 1


def _mlp(cfg: ICLTransformerConfig) -> MLP:
    """GPT-2's position-wise MLP, Linear → activation → Linear, as :class:`icgd.layers.MLP` (``residual=False``).

    The GELU output is stored for backward rather than recomputed there: recomputing saved B·T·d_mlp floats per
    block but cost ~1.5% of a training step at 6 layers/128 wide on CPU, and the model stays at about half of the
    HuggingFace GPT-2 setup's training memory without it (benchmarks/RESULTS.md). Its weights are drawn by
    :meth:`ICLTransformer.reset_parameters` (a throw-away generator here leaves the global RNG alone)."""
    return MLP(cfg.n_embd, cfg.d_mlp or 4 * cfg.n_embd, bias=True, residual=False, activation=cfg.mlp_activation,
               generator=torch.Generator())


def _normal_(p: torch.Tensor, std: float, generator: torch.Generator | None) -> None:
    """Fill `p` with N(0, std²) draws from `generator` (a CPU generator works for parameters on any device)."""
    device = generator.device if generator is not None else p.device
    p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype, device=device) * std)


def _norm(cfg: ICLTransformerConfig) -> nn.Module:
    return nn.LayerNorm(cfg.n_embd) if cfg.layernorm else nn.Identity()


class Block(nn.Module):
    """Pre-LN transformer block: ``x + attn(ln_1(x))`` then ``x + mlp(ln_2(x))``."""

    def __init__(self, cfg: ICLTransformerConfig):
        super().__init__()
        self.ln_1 = _norm(cfg)
        self.attn = FusedSelfAttention(cfg.n_embd, cfg.n_head, cfg.attention)
        self.ln_2 = _norm(cfg) if cfg.mlp else None
        self.mlp = _mlp(cfg) if cfg.mlp else None
        self.hook_resid_pre = HookPoint()  # (B, T, E)
        self.hook_attn_out = HookPoint()  # (B, T, E)
        self.hook_resid_mid = HookPoint()  # (B, T, E), only with an MLP
        self.hook_mlp_out = HookPoint()  # (B, T, E), only with an MLP
        self.hook_resid_post = HookPoint()  # (B, T, E)

    def forward(self, x: torch.Tensor, vis: Visibility, keep: slice | None = None) -> torch.Tensor:
        """The block on every token, or, with `keep`, only the outputs of those tokens (the last block of a model
        needs only the prediction tokens: their attention still reads every token)."""
        x = self.hook_resid_pre(x)
        x = (x if keep is None else x[:, keep]) + self.hook_attn_out(self.attn(self.ln_1(x), vis, keep))
        if self.mlp is not None:
            x = self.hook_resid_mid(x)
            x = x + self.hook_mlp_out(self.mlp(self.ln_2(x)))
        return self.hook_resid_post(x)


class ICLTransformer(HookedModel):
    """GPT-2-style transformer trained to regress in context (Garg et al. 2022), no dependency on another model
    library. ``forward(X, Y)`` returns the prediction of every ``y_i`` from ``(x_1, y_1, …, x_{i−1}, y_{i−1}, x_i)``,
    ``(B, n, d_out)``; ``forward(X, Y, x_query)`` predicts each query from all n pairs, ``(B, m, d_out)``.

    **Token formats** (read in by one ``Linear(token_dim → n_embd)``, token_dim as listed):

    * ``"interleaved"`` (Garg): ``[x̃_1, ỹ_1, …, x̃_n, ỹ_n]`` with ``x̃ = [x, 0_{d_out}]`` and ``ỹ = [0_{d_in}, y]``
      (token_dim = d_in + d_out, T = 2n); the prediction of ``y_i`` is read at ``x̃_i``.
    * ``"concat"``: one token per point, ``e_i = [x_i, y_{i−1}, 1{i>1}]`` (``y_0 = 0``; the flag marks a real
      previous label), token_dim = d_in + d_out + 1, T = n; the prediction of ``y_i`` is read at ``e_i``, which
      holds ``x_i`` and the previous label only, so under the causal mask it sees exactly the pairs ``< i`` and
      ``x_i``.

    **Queries** (``x_query`` given): m query tokens are appended after the context tokens, each at the position
    the next point's prediction token would take (``[x_q, 0]`` at 2n, or ``[x_q, y_n, 1]`` at n); each query
    reads every context token and itself, never another query. With ``causal=True`` the context is causally
    masked as in training, so a query's prediction equals the prefix prediction at point n + 1.
    ``causal=False`` lets context tokens read each other both ways; it is only allowed with queries, since
    the prefix predictions would see their own labels.

    **Attention** (:class:`icgd.layers.FusedSelfAttention`): ``"softmax"`` uses ``scaled_dot_product_attention``;
    ``"relu"`` is Wu/Bai's ReLU attention and ``"linear"`` plain linear attention, both normalised by the number of
    visible tokens (t + 1 for token t under the causal mask) and scaled by 1/√dh like GPT-2's scores.

    **Speed and memory** (CPU training is matmul-bound): one fused QKV projection; the fused SDPA kernel; for
    ReLU/linear attention the masks, 1/√dh and the 1/(t+1) normalisation are applied in place or to the (T, dh)
    output instead of the (T, T) scores; exact GELU (PyTorch's tanh-approximate kernel is ~3x slower on CPU);
    only the prediction tokens go through the last block's attention queries (``keep``), MLP and the final
    LayerNorm (all tokens stay keys). The last shortcut is skipped while a hook listens to the last block or
    ``hook_resid_final``, so cached activations keep every token.

    **Looping** (``loop = L > 1``): the ``n_layer`` blocks are applied L times with shared weights (Yang et al.
    2024); with ``loop_inject`` the embedded input is added to the residual stream before every pass after the
    first (their ``z ← f(z + x)``). :meth:`loop_predictions` reads out after every pass.

    **Hook points** (:mod:`icgd.hooks`; full names, prefixed by ``loop.{k}.`` when ``loop > 1``): ``hook_embed``
    (read-in + positions), ``blocks.{i}.hook_resid_pre``, ``blocks.{i}.attn.hook_pattern`` (B, H, T, T),
    ``blocks.{i}.attn.hook_z`` (B, T, H, dh: the head outputs before ``c_proj``), ``blocks.{i}.hook_attn_out``,
    ``blocks.{i}.hook_resid_mid``, ``blocks.{i}.hook_mlp_out``,
    ``blocks.{i}.hook_resid_post``, ``hook_resid_final`` (before the final LayerNorm, once per pass);
    ``hook_embed`` fires once, in pass 0. Softmax attention weights are only materialised when a hook
    listens to ``hook_pattern`` (SDPA does not expose them); ReLU/linear patterns are normalised weights.

    **Initialisation** (GPT-2): weights N(0, 0.02²), the residual projections (``c_proj``) N(0, (0.02/√(2·n_layer))²),
    biases 0, LayerNorm (1, 0); pass a ``torch.Generator`` for a reproducible init.
    """

    def __init__(self, d_in: int | ICLTransformerConfig, d_out: int = 1, *, generator: torch.Generator | None = None,
                 **options):
        super().__init__()
        if isinstance(d_in, ICLTransformerConfig):
            if options or d_out != 1:
                raise SpecError("pass either an ICLTransformerConfig or the keyword arguments, not both")
            cfg = d_in
        else:
            missing = [k for k in ("n_layer", "n_head", "n_embd") if k not in options]
            if missing:
                raise SpecError(f"ICLTransformer needs {', '.join(missing)} (or an ICLTransformerConfig)")
            unknown = sorted(set(options) - {f.name for f in fields(ICLTransformerConfig)})
            if unknown:
                raise SpecError(f"unknown ICLTransformer option(s) {', '.join(unknown)}; the options are the fields "
                                f"of ICLTransformerConfig")
            cfg = ICLTransformerConfig(d_in, d_out, **options)
        self.config = cfg
        self._passes = cfg.loop
        self.read_in = nn.Linear(cfg.token_dim, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.tokens_per_point * cfg.max_points, cfg.n_embd)
        self.hook_embed = HookPoint()  # (B, T, E)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.hook_resid_final = HookPoint()  # (B, T, E)
        self.ln_f = _norm(cfg)
        self.read_out = nn.Linear(cfg.n_embd, cfg.d_out)
        self._name_hook_points()
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """GPT-2 initialisation (see the class docstring), drawn from `generator` when given."""
        std, proj_std = 0.02, 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, p in self.named_parameters():
            if name.endswith(("c_proj.weight", "mlp.W2")):  # the projections into the residual stream
                _normal_(p, proj_std, generator)
            elif name.endswith(("weight", "W1")) and p.dim() >= 2:
                _normal_(p, std, generator)
            elif name.endswith(("bias", "b1", "b2")):
                nn.init.zeros_(p)
            else:  # LayerNorm gains
                nn.init.ones_(p)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # --- inputs ---------------------------------------------------------------------------------------------

    def _check(self, X, Y, x_query) -> Prompt:
        """The prompt validated by :func:`icgd.tokens.check_prompt`, plus the model's own limits."""
        cfg, p = self.config, self.read_in.weight
        prompt = check_prompt(X, Y, x_query, d_in=cfg.d_in, d_out=cfg.d_out, dtype=p.dtype, device=p.device)
        n = prompt.X.shape[1]
        if x_query is None:
            if not cfg.causal:
                raise SpecError("a non-causal ICLTransformer sees y_i when predicting y_i; pass x_query to predict "
                                "queries from the whole context, or build the model with causal=True")
            if n > cfg.max_points:
                raise ShapeError(f"the prompt has {n} points but the model has learned positions for "
                                 f"max_points={cfg.max_points}; shorten the prompt or build a larger model")
        elif n + 1 > cfg.max_points:
            raise ShapeError(f"queries after {n} context points sit at point {n + 1} but the model has learned "
                             f"positions for max_points={cfg.max_points}; shorten the context or build a larger model")
        return prompt

    def _tokens(self, X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        """Context tokens already read in, ``(B, T_ctx, E)`` (no positions)."""
        W, b, d_in = self.read_in.weight, self.read_in.bias, self.config.d_in
        if self.config.token_format == "interleaved":
            # [x, 0] and [0, y] tokens: read in each half separately, then interleave x̃_1, ỹ_1, x̃_2, …
            ex, ey = X @ W[:, :d_in].T, Y @ W[:, d_in:].T  # (B, n, E) each
            return torch.stack((ex, ey), dim=2).flatten(1, 2) + b  # (B, 2n, E)
        B, n, _ = X.shape
        y_prev = torch.cat((Y.new_zeros(B, 1, Y.shape[-1]), Y[:, :-1]), dim=1)
        flag = torch.ones(B, n, 1, dtype=X.dtype, device=X.device)
        flag[:, 0] = 0
        return self.read_in(torch.cat((X, y_prev, flag), dim=-1))  # (B, n, E)

    def _query_tokens(self, xq: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        W, b, d_in = self.read_in.weight, self.read_in.bias, self.config.d_in
        if self.config.token_format == "interleaved":
            return xq @ W[:, :d_in].T + b  # [x_q, 0]
        B, m, _ = xq.shape
        tail = torch.cat((Y[:, -1:].expand(B, m, -1), xq.new_ones(B, m, 1)), dim=-1)  # [y_n, 1]
        return self.read_in(torch.cat((xq, tail), dim=-1))

    def _embed(self, X, Y, xq) -> tuple[torch.Tensor, Visibility, slice]:
        """Embedded tokens, their visibility and the slice of the prediction tokens."""
        h = self._tokens(X, Y)
        T_ctx = h.shape[1]
        pos = torch.arange(T_ctx, device=h.device)
        if xq is None:
            h = h.add_(self.wpe(pos))  # h is _tokens' fresh sum: in place saves a (B, T, E) buffer, same bits
            vis = Visibility(T_ctx, h.device, h.dtype)
            step = self.config.tokens_per_point
            return h, vis, slice(0, T_ctx, step)
        m = xq.shape[1]
        h = torch.cat((h + self.wpe(pos), self._query_tokens(xq, Y) + self.wpe.weight[T_ctx]), dim=1)
        vis = Visibility.with_queries(T_ctx, m, self.config.causal, h.device, h.dtype)
        return h, vis, slice(T_ctx, T_ctx + m)

    # --- forward --------------------------------------------------------------------------------------------

    def _prunable(self, out: slice, T: int) -> bool:
        """Whether the last block may compute the prediction tokens only: not when they are all the tokens, nor
        when a hook listens to the last block or the final residual stream (their shapes would change)."""
        if out == slice(0, T, 1):
            return False
        points = [self.hook_resid_final, *(m for m in self.blocks[-1].modules() if isinstance(m, HookPoint))]
        return not any(p.active for p in points)

    def _passes_iter(self, prompt: Prompt) -> Iterator[torch.Tensor]:
        """The residual stream of the prediction tokens after every pass through the blocks."""
        e, vis, out = self._embed(prompt.X, prompt.Y, prompt.x_query)
        try:
            self._prefix = "loop.0." if self._passes > 1 else ""
            h = e = self.hook_embed(e)
            for k in range(self.config.loop):
                self._prefix = f"loop.{k}." if self._passes > 1 else ""
                if k and self.config.loop_inject:
                    h = h + e
                last = k == self.config.loop - 1
                prune = last and self._prunable(out, h.shape[1])
                for i, block in enumerate(self.blocks):
                    h = block(h, vis, out if prune and i == len(self.blocks) - 1 else None)
                h = self.hook_resid_final(h)
                yield h if prune else h[:, out]
        finally:
            self._prefix = ""

    def _read_out(self, h: torch.Tensor) -> torch.Tensor:
        return self.read_out(self.ln_f(h))

    def forward(self, X, Y, x_query=None) -> torch.Tensor:
        """``(B, n, d_out)`` prefix predictions, or ``(B, m, d_out)`` query predictions when `x_query` is given
        (one prompt without batch axis gives unbatched predictions, :func:`icgd.tokens.check_prompt`)."""
        prompt = self._check(X, Y, x_query)
        for h in self._passes_iter(prompt):
            pass
        out = self._read_out(h)
        return out[0] if prompt.single else out

    def predict(self, X, Y, x_query) -> torch.Tensor:
        """The learner protocol (:mod:`icgd.learners`): predictions at the queries, ``(B, m, d_out)`` (the forward
        pass; differentiable, e.g. in ``x_query`` for von Oswald's model cos — wrap it in ``torch.no_grad()`` to
        save memory)."""
        return self(X, Y, x_query)

    def prefix_predictions(self, X, Y) -> torch.Tensor:
        """The learner protocol: row i predicts ``y_i`` from the pairs before it, ``(B, n, d_out)``."""
        return self(X, Y)

    def loop_predictions(self, X, Y, x_query=None) -> torch.Tensor:
        """Predictions read out after every pass, ``(loop, B, n or m, d_out)`` (Yang et al.'s loss uses them)."""
        prompt = self._check(X, Y, x_query)
        out = torch.stack([self._read_out(h) for h in self._passes_iter(prompt)])
        return out[:, 0] if prompt.single else out

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Also read checkpoints written before the MLP was :class:`icgd.layers.MLP` (``mlp.c_fc.weight`` …)."""
        old = {"c_fc.weight": "W1", "c_fc.bias": "b1", "c_proj.weight": "W2", "c_proj.bias": "b2"}
        for key in [k for k in state_dict if k.startswith(prefix + "blocks.") and ".mlp.c_" in k]:
            head, _, rest = key.partition(".mlp.")
            state_dict[f"{head}.mlp.{old[rest]}"] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        c = self.config
        return (f"attention={c.attention!r}, token_format={c.token_format!r}, causal={c.causal}, loop={c.loop}, "
                f"params={self.num_params()}")

    def to_dict(self) -> dict:
        """The constructor arguments (JSON-friendly), e.g. for checkpoints."""
        return asdict(self.config)


# ----------------------------------------------------------------------------------------------------------------
# LSA


class _LSABlock(nn.Module):
    """Hook points around application i of an LSA layer (weights live in ``LSA.layers``, shared or not)."""

    def __init__(self):
        super().__init__()
        self.hook_resid_pre = HookPoint()  # (B, n + m, D)
        self.hook_resid_post = HookPoint()  # (B, n + m, D)


class LSA(HookedModel):
    """von Oswald et al.'s attention-only linear transformer on tokens ``e_i = (x_i, y_i)`` (context) and
    ``(x_q, 0)`` (queries), D = d_in + d_out. Each of the `n_layer` layers is a
    :class:`~icgd.layers.LinearAttention` with d_head = D, called with ``n_keys = n`` (keys and values
    from the n context tokens only, divided by n: icgd's normalised convention, the paper puts 1/N in P); the
    prediction is minus the query's y-slot (the paper's read-out). Queries do not interact, so m queries are
    answered in one pass. ``shared=True`` applies one layer `n_layer` times (the paper's recurrent models).

    The layer equation is that of :func:`icgd.constructions.linear_gd`: with every layer set to
    :func:`icgd.constructions.von_oswald_weights` (:meth:`set_weights`) the LSA runs GD exactly.

    Initialisation: every entry N(0, init_std²), init_std = √(0.002 / D) by default (the paper's code scales its
    init by 0.002).

    Hook points (:mod:`icgd.hooks`): ``blocks.{i}.hook_resid_pre``, ``layers.{i}.hook_pattern`` (B, H, n + m, n: the
    scores ``⟨W_Q e_t, W_K e_s⟩ / n``), ``layers.{i}.hook_z`` (B, n + m, H, D) and ``blocks.{i}.hook_resid_post``.
    A shared LSA is a looped model with one block: its names carry the application, ``loop.{i}.blocks.0.…`` and
    ``loop.{i}.layers.0.…``.
    """

    def __init__(self, d_in: int, d_out: int = 1, *, n_layer: int, shared: bool = False, n_head: int = 1,
                 init_std: float | None = None, generator: torch.Generator | None = None):
        super().__init__()
        self.d_in, self.d_out = positive_int(d_in, "d_in"), positive_int(d_out, "d_out")
        self.n_layer, self.n_head = positive_int(n_layer, "n_layer"), positive_int(n_head, "n_head")
        if not isinstance(shared, bool):
            raise SpecError(f"shared must be True or False, got {shared!r}")
        self.shared = shared
        self.dim = D = d_in + d_out
        self.init_std = math.sqrt(0.002 / D) if init_std is None else positive_float(init_std, "init_std", True)
        # a throw-away generator: reset_parameters draws the initial weights, the global RNG is left alone
        self.layers = nn.ModuleList(LinearAttention(D, n_head, D, generator=torch.Generator())
                                    for _ in range(1 if shared else n_layer))
        self.blocks = nn.ModuleList(_LSABlock() for _ in range(len(self.layers)))
        self._passes = n_layer if shared else 1
        self._name_hook_points()
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        for p in self.parameters():
            _normal_(p, self.init_std, generator)

    def layer(self, i: int) -> LinearAttention:
        """The weights applied at layer i (the same module for every i when shared)."""
        if not (isinstance(i, int) and -self.n_layer <= i < self.n_layer):
            raise SpecError(f"layer must be an integer in [0, {self.n_layer}), got {i!r}")
        return self.layers[0 if self.shared else i % self.n_layer]

    def weights(self, layer: int = 0) -> dict[str, torch.Tensor]:
        """Detached copies of ``W_K, W_Q, W_V, P`` of one layer: ``(D, D)`` each with one head, else ``(H, D, D)``,
        the same convention as :func:`icgd.constructions.von_oswald_weights`."""
        mod = self.layer(layer)
        out = {name: getattr(mod, attr).detach().clone() for name, attr in LinearAttention.PAPER_NAMES.items()}
        out = {name: out[name] for name in ("W_K", "W_Q", "W_V", "P")}
        return {k: v[0] for k, v in out.items()} if self.n_head == 1 else out

    @torch.no_grad()
    def set_weights(self, layer: int, weights: dict[str, torch.Tensor]) -> None:
        """Copy ``W_K, W_Q, W_V, P`` (``(D, D)`` for every head, or ``(H, D, D)``) into one layer (into the shared
        layer when ``shared=True``, which changes every layer)."""
        mod, D, H = self.layer(layer), self.dim, self.n_head
        unknown = set(weights) - {"W_K", "W_Q", "W_V", "P"}
        if unknown:
            raise SpecError(f"unknown weight names {sorted(unknown)}; use W_K, W_Q, W_V and P")
        for name, value in weights.items():
            t = as_float_tensor(value, name)
            if t.shape == (D, D):
                t = t.expand(H, D, D)
            if t.shape != (H, D, D):
                raise ShapeError(f"{name} must be ({D}, {D}) or ({H}, {D}, {D}), got {tuple(t.shape)}")
            getattr(mod, LinearAttention.PAPER_NAMES[name]).copy_(t)

    def forward(self, X, Y, x_query) -> torch.Tensor:
        """Predictions for the queries, ``(B, m, d_out)`` (unbatched for one prompt without batch axis)."""
        if x_query is None:
            raise ShapeError("x_query is required: the LSA answers at the query points (B, m, d_in)")
        p = self.layers[0].W_q
        X, Y, xq, single = check_prompt(X, Y, x_query, d_in=self.d_in, d_out=self.d_out, dtype=p.dtype,
                                        device=p.device)
        n = X.shape[1]
        queries = torch.cat((xq, xq.new_zeros(*xq.shape[:2], self.d_out)), dim=-1)
        e = torch.cat((torch.cat((X, Y), dim=-1), queries), dim=1)  # (B, n + m, D)
        try:
            for i in range(self.n_layer):
                self._prefix = f"loop.{i}." if self._passes > 1 else ""
                block = self.blocks[0 if self.shared else i]
                e = block.hook_resid_post(self.layer(i)(block.hook_resid_pre(e), n_keys=n))
        finally:
            self._prefix = ""
        out = -e[:, n:, self.d_in:]
        return out[0] if single else out

    def predict(self, X, Y, x_query) -> torch.Tensor:
        """The learner protocol (:mod:`icgd.learners`): predictions at the queries, ``(B, m, d_out)`` (the forward
        pass; differentiable, e.g. in ``x_query`` for von Oswald's model cos — wrap it in ``torch.no_grad()`` to
        save memory)."""
        return self(X, Y, x_query)

    def prefix_predictions(self, X, Y) -> torch.Tensor:
        """The learner protocol: row i is the prediction at ``x_i`` from the pairs ``0 … i−1``, ``(B, n, d_out)``
        (``(n, d_out)`` unbatched); row 0 (empty context) is 0, as for the linear learners (with no keys every
        layer adds nothing and the query's y-slot stays 0). One forward pass per prefix length, batched over
        prompts (:func:`icgd.learners.base.prefix_by_queries`)."""
        from icgd.learners.base import prefix_by_queries

        p = self.layers[0].W_q
        X, Y, _, single = check_prompt(X, Y, d_in=self.d_in, d_out=self.d_out, dtype=p.dtype, device=p.device)
        out = prefix_by_queries(self.predict, X, Y)
        return out[0] if single else out

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Also read checkpoints written before the layers were LinearAttention (``layers.{i}.W_Q`` … ``.P``)."""
        for key in [k for k in state_dict if k.startswith(prefix + "layers.")]:
            head, _, name = key.rpartition(".")
            if name in LinearAttention.PAPER_NAMES:
                state_dict[f"{head}.{LinearAttention.PAPER_NAMES[name]}"] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (f"d_in={self.d_in}, d_out={self.d_out}, n_layer={self.n_layer}, n_head={self.n_head}, "
                f"shared={self.shared}")
