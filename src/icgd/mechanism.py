"""Does a transformer run a learning algorithm layer by layer? :func:`layer_alignment` reads the residual stream after
every block of a constructed or trained model, turns it into a prediction for each query, and compares those
predictions with candidate learners (GD with 1…L steps, GD++, ridge, OLS, GD on a student network, kernels) on the
same prompts.

**Read-outs** (``readout=``):

* ``"slot"`` for a construction: the token slot in which it keeps its prediction (von Oswald's LSA: minus the
  query's ``y`` slot; Wu's deep-GD: the query's ``p̄(N)`` slot after the forward layers that follow GD block ℓ,
  i.e. ``f(w_ℓ, x_q)``);
* ``"lens"`` for a trained model: the model's own read-out applied to an intermediate stream (for
  :class:`~icgd.models.ICLTransformer` the final LayerNorm and the linear head, a "logit lens"; for
  :class:`~icgd.models.LSA` minus the query's ``y`` coordinates);
* ``"probe"``: a ridge probe per layer, from the query token's stream to the true label, fitted on *separate*
  prompts (``probe_prompts``), then applied to the analysed prompts;
* ``"auto"``: the slot for a construction, the lens for a trained model.

**Scores.** For layer ℓ with read-out ``r`` and candidate c with predictions ``ĉ`` on the same B prompts × m queries,
per output o: ``R²_ℓc = 1 − Σ_{b,q} (r − ĉ)² / Σ_{b,q} (ĉ − mean ĉ)²`` (the candidate's predictions play the role of
the target, as sklearn's ``r2_score(ĉ, r)``), averaged over outputs; ``MSE_ℓc`` = mean over prompts and queries of
``Σ_o (r − ĉ)²``. Percentile-bootstrap intervals resample prompts (Efron 1979). For linear tasks
(``implicit=True``) every layer's read-out and every candidate also get per-prompt implicit weights ``ŵ``, the least
squares fit of their predictions on the m queries (Akyürek et al. 2023, Eqs. 16–17, ILWD), and ``ilwd_ℓc`` =
mean over prompts of ``‖ŵ_ℓ − ŵ_c‖²``.

**Hook names** are used in one place only, the adapter section below (``_Reader`` and its subclasses).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from icgd._checks import positive_float, positive_int
from icgd.analysis import _fit_linear, fit_linear_probe, r2_from_sums
from icgd.errors import ConfigError, ShapeError, SpecError
from icgd.learners.base import Learner
from icgd.nets import NetSpec, forward
from icgd.tokens import check_prompt

READOUTS = ("auto", "slot", "lens", "probe")

__all__ = ["Alignment", "NTKRegression", "StudentGD", "analyze_run", "candidate_agreement", "layer_alignment",
           "parse_candidates", "build_candidates", "untrained_copy", "READOUTS"]


# ================================================================================================================
# ADAPTER: everything that knows hook names and each model's read-out lives in this section.
# ================================================================================================================


class _Reader:
    """Streams at the query tokens after each block, ``(B, m, H)`` each, and the model's read-out of a stream."""

    native = "lens"  # what readout="auto" means for this model

    def __init__(self, model: nn.Module):
        self.model = model

    def labels(self) -> list[str]:
        raise NotImplementedError

    def streams(self, X, Y, xq, w0) -> list[torch.Tensor]:
        raise NotImplementedError

    def read(self, stream: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _resid_names(self) -> list[str]:
        """A trained model's stream after every block, in execution order: ``[loop.{k}.]blocks.{i}.hook_resid_post``
        (a looped model, or a shared-weight LSA, has one per pass)."""
        return [n for n in self.model.hook_names() if n.endswith("hook_resid_post")]

    def _resid_streams(self, X, Y, xq) -> list[torch.Tensor]:
        _, cache = self.model.run_with_cache(X, Y, xq, names_filter=lambda s: s.endswith("hook_resid_post"))
        return [cache[n] for n in self._resid_names()]


class _PromptModelReader(_Reader):
    """Constructions built on :class:`~icgd.constructions.base.PromptModel` (``linear_gd``, ``gd_plus_plus``, …):
    hooks ``blocks.{i}.hook_resid_post``; the prediction is ``sign ×`` the query tokens' `answer` slot."""

    native = "slot"

    def labels(self):
        return [f"layer {i + 1}" + (f" ({r})" if r else "") for i, r in enumerate(self.model.roles)]

    def streams(self, X, Y, xq, w0):
        m = self.model
        tokens, _ = m.tokens_for(X, Y, xq)
        _, cache = m.run_with_cache(tokens, names_filter=lambda s: s.endswith("hook_resid_post"))
        return [cache[f"blocks.{i}.hook_resid_post"][:, X.shape[1]:] for i in range(len(m.layers))]

    def read(self, stream):
        return self.model.sign * self.model.layout.read(stream, self.model.answer)


class _DeepGDReader(_Reader):
    """Wu et al.'s deep-GD construction: after GD block ℓ the query's ``p̄(N)`` slot holds ``f(w_ℓ, x_q)`` once the
    N forward layers that follow the block have run (those of block ℓ + 1, or the read-out layers after the last);
    hook ``blocks.{ℓ·S + N − 1}.hook_resid_post`` with S = 2N + 4 layers per block."""

    native = "slot"

    def _indices(self) -> list[int]:
        m = self.model
        if not m.readout:
            raise SpecError("layer alignment of deep_gd needs the read-out layers; build it with readout=True")
        return [step * m.block_size + m.spec.depth - 1 for step in range(1, m.steps + 1)]

    def labels(self):
        return [f"GD block {s}" for s in range(1, self.model.steps + 1)]

    def streams(self, X, Y, xq, w0):
        if w0 is None:
            raise SpecError("deep_gd runs GD from the w0 in its tokens: pass w0 to layer_alignment")
        m, wanted = self.model, {f"blocks.{i}.hook_resid_post" for i in self._indices()}
        tokens, _ = m.tokens_for(X, Y, w0, xq)
        _, cache = m.run_with_cache(tokens, names_filter=lambda s: s in wanted)
        return [cache[f"blocks.{i}.hook_resid_post"][:, X.shape[1]:] for i in self._indices()]

    def read(self, stream):
        return self.model.layout.read(stream, f"p{self.model.spec.depth}")


class _LSAReader(_Reader):
    """von Oswald's :class:`~icgd.models.LSA`: hooks ``[loop.{k}.]blocks.{i}.hook_resid_post`` (a shared-weight LSA
    runs one block per pass: its passes are its layers); read-out ``−y`` slot."""

    def labels(self):
        return [f"layer {i + 1}" for i in range(len(self._resid_names()))]

    def streams(self, X, Y, xq, w0):
        return [h[:, X.shape[1]:] for h in self._resid_streams(X, Y, xq)]

    def read(self, stream):
        return -stream[..., self.model.d_in:]


class _ICLReader(_Reader):
    """:class:`~icgd.models.ICLTransformer`: hooks ``[loop.{k}.]blocks.{i}.hook_resid_post`` (every token is kept
    while the last block is hooked); lens = ``read_out(ln_f(h))`` at the query tokens (the last m tokens)."""

    def labels(self):
        out = []
        for name in self._resid_names():
            m = re.fullmatch(r"(?:loop\.(\d+)\.)?blocks\.(\d+)\.hook_resid_post", name)
            out.append((f"pass {int(m.group(1)) + 1} " if m.group(1) else "") + f"block {int(m.group(2)) + 1}")
        return out

    def streams(self, X, Y, xq, w0):
        return [h[:, -xq.shape[1]:] for h in self._resid_streams(X, Y, xq)]

    def read(self, stream):
        return self.model.read_out(self.model.ln_f(stream))


def _reader(model) -> _Reader:
    from icgd.constructions.base import PromptModel
    from icgd.constructions.wu import ConstructedICGD
    from icgd.models import LSA, ICLTransformer

    for cls, reader in ((ICLTransformer, _ICLReader), (LSA, _LSAReader), (ConstructedICGD, _DeepGDReader),
                        (PromptModel, _PromptModelReader)):
        if isinstance(model, cls):
            return reader(model)
    raise SpecError(f"layer_alignment reads ICLTransformer, LSA, deep_gd and PromptModel constructions "
                    f"(linear_gd, gd_plus_plus, …); got {type(model).__name__}")


def _model_dtype(model) -> torch.dtype:
    p = next((t for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()), None)
    return getattr(model, "dtype", None) or (p.dtype if p is not None else torch.float64)


def untrained_copy(model: nn.Module, seed: int = 0) -> nn.Module:
    """A freshly initialised model of the same class, shape and dtype (the negative control), in eval mode."""
    from icgd.models import LSA, ICLTransformer

    g = torch.Generator().manual_seed(seed)
    dtype = _model_dtype(model)
    if isinstance(model, ICLTransformer):
        from dataclasses import asdict

        fresh = ICLTransformer(**asdict(model.config), generator=g)
    elif isinstance(model, LSA):
        fresh = LSA(model.d_in, model.d_out, n_layer=model.n_layer, shared=model.shared, n_head=model.n_head,
                    init_std=model.init_std, generator=g)
    else:
        raise SpecError(f"untrained_copy needs a trainable ICLTransformer or LSA, got {type(model).__name__}")
    return fresh.to(dtype=dtype).eval()


# ================================================================================================================
# candidates that are not in icgd.learners
# ================================================================================================================


class StudentGD(Learner):
    """`steps` steps of (projected) full-batch GD on a student network `spec` from the fixed weights `w0` (the same
    for every prompt), ``L_n(w) = 1/(2n) Σ_i ‖f(w, x_i) − y_i‖²`` (:func:`icgd.learners.gd_trajectory`); predicts
    ``f(w_steps, x_q)``. Compared in function space: weights are defined only up to permutation and w⁰."""

    name = "student_gd"

    def __init__(self, spec: NetSpec, eta: float, steps: int, w0: torch.Tensor, box: float | None = None):
        if not isinstance(spec, NetSpec):
            raise SpecError(f"spec must be an icgd.nets.NetSpec, got {type(spec).__name__}")
        self.spec, self.eta = spec, positive_float(eta, "eta")
        self.steps, self.box = positive_int(steps, "steps", minimum=0), box
        self.w0 = torch.as_tensor(w0, dtype=torch.float64)
        if self.w0.shape[-1] != spec.num_params:
            raise ShapeError(f"w0 must have spec.num_params = {spec.num_params} entries, got {tuple(self.w0.shape)}")

    def _predict(self, X, Y, x_query):
        from icgd.learners import gd_trajectory

        w0 = self.w0.to(X.dtype).expand(X.shape[0], -1) if self.w0.dim() == 1 else self.w0.to(X.dtype)
        w = gd_trajectory(self.spec, X, Y, w0, self.eta, self.steps, self.box)[:, -1]
        return forward(self.spec, w, x_query)

    def _hparams(self):
        return {"width": self.spec.width, "depth": self.spec.depth, "eta": self.eta, "steps": self.steps}


class NTKRegression(Learner):
    """Kernel ridge regression with the neural tangent kernel of a bias-free one-hidden-layer ReLU network with
    both layers trained (Jacot et al. 2018; the arc-cosine kernels of Cho & Saul 2009), θ the angle of x, x'::

        Θ(x, x') = ⟨x, x'⟩ (π − θ)/(2π) + ‖x‖‖x'‖ (sin θ + (π − θ) cos θ)/(2π)

    ``ŷ(x_q) = Θ(x_q, X) (Θ(X, X) + λI)⁻¹ Y`` — the function that infinitely wide GD on that network converges to."""

    name = "ntk"

    def __init__(self, lam: float = 1e-3):
        self.lam = positive_float(lam, "lam", allow_zero=True)

    @staticmethod
    def kernel(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
        dot = A @ B.transpose(-1, -2)
        norms = A.norm(dim=-1)[..., :, None] * B.norm(dim=-1)[..., None, :]
        cos = (dot / norms.clamp_min(1e-300)).clamp(-1.0, 1.0)
        theta = torch.arccos(cos)
        return (dot * (math.pi - theta) + norms * (torch.sin(theta) + (math.pi - theta) * cos)) / (2 * math.pi)

    def _predict(self, X, Y, x_query):
        K = self.kernel(X, X) + self.lam * torch.eye(X.shape[1], dtype=X.dtype, device=X.device)
        return self.kernel(x_query, X) @ torch.linalg.solve(K, Y)

    def _hparams(self):
        return {"lam": self.lam}


# ================================================================================================================
# the alignment
# ================================================================================================================


@dataclass
class Alignment:
    """Layers × candidates: ``scores`` R² and ``mse`` ``(n_layers, n_candidates)``, bootstrap interval
    ``low``/``high`` of the R², and for linear tasks ``ilwd`` (same shape) and ``implicit_r2`` ``(n_layers,)``
    (how linear in the query each layer's read-out is). ``between`` ``(n_candidates, n_candidates)``: R² of
    candidate i scored against candidate j, how distinguishable the candidates are on these prompts."""

    layers: list[str]
    candidates: list[str]
    scores: torch.Tensor
    mse: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor
    readout: str
    n_prompts: int
    n_queries: int
    level: float = 0.95
    between: torch.Tensor | None = None
    ilwd: torch.Tensor | None = None
    implicit_r2: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)
    truth: torch.Tensor | None = None  # (n_layers, 3): R² of each layer's read-out against the true labels, low, high

    def best(self) -> list[tuple[str, str, float]]:
        """Per layer: (layer, best candidate by R², its R²)."""
        idx = self.scores.argmax(dim=1)
        return [(lay, self.candidates[int(j)], float(self.scores[i, j])) for i, (lay, j) in
                enumerate(zip(self.layers, idx))]

    def score(self, layer: int | str, candidate: str) -> tuple[float, float, float]:
        """(R², low, high) of one cell; `layer` an index or a label."""
        i = self.layers.index(layer) if isinstance(layer, str) else layer
        j = self.candidates.index(candidate)
        return float(self.scores[i, j]), float(self.low[i, j]), float(self.high[i, j])

    def to_dict(self) -> dict:
        """JSON-friendly (lists of floats rounded to 6 digits)."""
        def rows(t):
            return None if t is None else np.round(t.double().cpu().numpy(), 6).tolist()
        return {"layers": self.layers, "candidates": self.candidates, "r2": rows(self.scores), "mse": rows(self.mse),
                "r2_low": rows(self.low), "r2_high": rows(self.high), "readout": self.readout,
                "n_prompts": self.n_prompts, "n_queries": self.n_queries, "level": self.level,
                "between": rows(self.between), "ilwd": rows(self.ilwd), "implicit_r2": rows(self.implicit_r2),
                "truth": rows(self.truth),
                **({"extra": self.extra} if self.extra else {})}

    @classmethod
    def from_dict(cls, d: Mapping) -> Alignment:
        def t(key):
            return None if d.get(key) is None else torch.tensor(d[key], dtype=torch.float64)
        return cls(list(d["layers"]), list(d["candidates"]), t("r2"), t("mse"), t("r2_low"), t("r2_high"),
                   d["readout"], int(d["n_prompts"]), int(d["n_queries"]), float(d.get("level", 0.95)),
                   t("between"), t("ilwd"), t("implicit_r2"), dict(d.get("extra", {})), t("truth"))

    def plot(self, ax=None, title: str = ""):
        """Heat-map of the R² (colour clipped to [0, 1]; cells print R² with 2 decimals). Returns the axes."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(1.1 + 0.75 * len(self.candidates), 0.9 + 0.45 * len(self.layers)))
        S = self.scores.double().cpu().numpy()
        im = ax.imshow(np.clip(S, 0, 1), cmap="viridis", vmin=0, vmax=1, aspect="auto")
        for i in range(S.shape[0]):
            for j in range(S.shape[1]):
                ax.text(j, i, f"{S[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="black" if S[i, j] > 0.6 else "white")
        ax.set_xticks(range(len(self.candidates)), self.candidates, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(self.layers)), self.layers, fontsize=8)
        ax.set_title(title or f"R² of each layer's read-out ({self.readout}) vs each candidate", fontsize=9)
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="R² (clipped to [0, 1])")
        return ax

    def rich_table(self, title: str = ""):
        """The table as a :class:`rich.table.Table`: R² [interval] per cell, best per row in bold."""
        from rich.table import Table

        table = Table(title=title or f"R² of layer read-out ({self.readout}) vs candidate, "
                                     f"{self.n_prompts} prompts, {round(100 * self.level)}% bootstrap interval")
        table.add_column("layer")
        for c in self.candidates:
            table.add_column(c, justify="right")
        table.add_column("best")
        for i, (lay, best, r2) in enumerate(self.best()):
            cells = [f"{float(self.scores[i, j]):.3f} [{float(self.low[i, j]):.3f}, {float(self.high[i, j]):.3f}]"
                     for j in range(len(self.candidates))]
            table.add_row(lay, *cells, f"[bold]{best}[/bold] ({r2:.3f})")
        return table


def _as_f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(device="cpu", dtype=torch.float64)


def _candidate_predictions(candidates: Mapping, X, Y, xq) -> torch.Tensor:
    """``(K, B, m, d_out)`` float64 predictions of every candidate on the same prompts."""
    from icgd.analysis import _run

    if not isinstance(candidates, Mapping) or not candidates:
        raise SpecError("candidates must be a non-empty dict {name: learner with predict(X, Y, x_query)}")
    X64, Y64, q64 = _as_f64(X), _as_f64(Y), _as_f64(xq)
    with torch.no_grad():
        preds = [_as_f64(_run(c, f"candidate {name!r}", X64, Y64, q64)) for name, c in candidates.items()]
    shapes = {tuple(p.shape) for p in preds}
    if len(shapes) != 1:
        raise ShapeError(f"the candidates' predictions have different shapes: {sorted(shapes)}")
    return torch.stack(preds)


def _layer_streams(reader: _Reader, X, Y, xq, w0) -> list[torch.Tensor]:
    with torch.no_grad():
        return reader.streams(X, Y, xq, w0)


def _fit_probes(reader: _Reader, probe_prompts, w0, lam: float) -> list:
    if probe_prompts is None or len(probe_prompts) != 4:
        raise SpecError("readout='probe' needs probe_prompts=(X, Y, x_query, y_query): separate prompts on which "
                        "the probe of every layer is fitted to the true labels")
    Xp, Yp, qp, yp = probe_prompts
    streams = _layer_streams(reader, Xp, Yp, qp, w0)
    yp = _as_f64(torch.as_tensor(yp))
    target = yp.reshape(-1, yp.shape[-1])
    return [fit_linear_probe(_as_f64(s).reshape(-1, s.shape[-1]), target, lam) for s in streams]


def _readouts(reader: _Reader, readout: str, X, Y, xq, w0, probe_prompts, probe_lam) -> torch.Tensor:
    """``(L, B, m, d_out)`` float64 read-outs of every layer."""
    streams = _layer_streams(reader, X, Y, xq, w0)
    if readout == "probe":
        probes = _fit_probes(reader, probe_prompts, w0, probe_lam)
        outs = [p.predict(_as_f64(s).reshape(-1, s.shape[-1])).reshape(*s.shape[:2], -1)
                for p, s in zip(probes, streams)]
    else:
        with torch.no_grad():
            outs = [_as_f64(reader.read(s)) for s in streams]
    return torch.stack(outs)


def _per_prompt_stats(R: torch.Tensor, C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sums per prompt: residuals ``(B, L, K, O)``, candidate sums and sums of squares ``(B, K, O)``."""
    res = ((R[:, None] - C[None]) ** 2).sum(3).permute(2, 0, 1, 3)  # (L, K, B, m, O) -> (B, L, K, O)
    s1 = C.sum(2).permute(1, 0, 2)
    s2 = (C ** 2).sum(2).permute(1, 0, 2)
    return res, s1, s2


def _r2_from_counts(w: torch.Tensor, res, s1, s2, m: int) -> torch.Tensor:
    """R² ``(..., L, K)`` for prompt weights ``w (..., B)`` (1 each: the sample; counts: a bootstrap resample)."""
    ss_res = torch.einsum("...b,blko->...lko", w, res)
    n = w.sum(-1)[..., None, None] * m
    t1, t2 = torch.einsum("...b,bko->...ko", w, s1), torch.einsum("...b,bko->...ko", w, s2)
    ss_tot = (t2 - t1 ** 2 / n)[..., None, :, :]
    # from moment sums a constant target leaves rounding noise, not 0: below 1e-12 of Σy² it counts as no variance
    ss_tot = torch.where(ss_tot > 1e-12 * t2.abs().clamp_min(1e-300)[..., None, :, :], ss_tot, 0.0)
    return r2_from_sums(ss_res, ss_tot).mean(-1)


def _bootstrap(res, s1, s2, m: int, n_boot: int, level: float, generator) -> tuple[torch.Tensor, torch.Tensor]:
    B = res.shape[0]
    idx = torch.randint(0, B, (n_boot, B), generator=generator)
    counts = torch.zeros(n_boot, B, dtype=res.dtype).scatter_add_(1, idx, torch.ones(n_boot, B, dtype=res.dtype))
    boots = torch.cat([_r2_from_counts(counts[i:i + 200], res, s1, s2, m) for i in range(0, n_boot, 200)])
    alpha = 1 - level
    q = torch.tensor([alpha / 2, 1 - alpha / 2], dtype=boots.dtype)
    lo, hi = torch.quantile(boots, q, dim=0)
    return lo, hi


def _implicit(R: torch.Tensor, C: torch.Tensor, xq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ILWD ``(L, K)`` = mean over prompts of ‖ŵ_ℓ − ŵ_c‖², and the implicit-fit R² of each layer ``(L,)``."""
    q = _as_f64(xq)
    WR = [_fit_linear(q, r, True) for r in R]
    WC = [_fit_linear(q, c, True)[0] for c in C]
    ilwd = torch.tensor([[float(((w - wc) ** 2).sum((-2, -1)).mean()) for wc in WC] for w, _, _ in WR],
                        dtype=torch.float64)
    return ilwd, torch.tensor([float(r2.mean()) for _, _, r2 in WR], dtype=torch.float64)


def _check_readout(readout: str, reader: _Reader) -> str:
    if readout not in READOUTS:
        raise SpecError(f"readout must be one of {', '.join(READOUTS)}, got {readout!r}")
    if readout == "auto":
        return reader.native
    if readout == "slot" and reader.native != "slot":
        raise SpecError(f"readout='slot' is for constructions; {type(reader.model).__name__} is trained: use "
                        f"'lens' or 'probe'")
    return readout


def layer_alignment(model, X, Y, x_query, candidates: Mapping, *, readout: str = "auto", w0=None,
                    probe_prompts=None, probe_lam: float = 1e-3, implicit: bool = False, n_boot: int = 1000,
                    level: float = 0.95, generator: torch.Generator | None = None, y_query=None) -> Alignment:
    """Every layer's read-out of `model` against every candidate learner on the prompts ``X (B, n, d)``,
    ``Y (B, n, d_out)``, ``x_query (B, m, d)`` (see the module docstring for read-outs and scores).

    `candidates`: ``{name: learner}``, anything with ``predict(X, Y, x_query)`` (evaluated in float64). `w0`: the
    initial weights for Wu's deep-GD construction. `implicit`: also the implicit linear weights (needs
    m ≥ d + 2 queries that the model answers independently). Bootstrap: `n_boot` resamples of the prompts from
    `generator`, a `level` interval. `y_query`: the true labels, for each layer's R² against them
    (:attr:`Alignment.truth`)."""
    reader = _reader(model)
    readout = _check_readout(readout, reader)
    n_boot, level = positive_int(n_boot, "n_boot", minimum=2), positive_float(level, "level")
    X, Y, xq, single = check_prompt(X, Y, x_query)
    if single or X.shape[0] < 2:
        raise ShapeError(f"X, Y, x_query must be (B, n, d), (B, n, d_out), (B, m, d) with B >= 2 prompts; got "
                         f"{'one unbatched prompt' if single else f'X of shape {tuple(X.shape)}'}")
    C = _candidate_predictions(candidates, X, Y, xq)
    R = _readouts(reader, readout, X, Y, xq, w0, probe_prompts, probe_lam)
    if R.shape[1:] != C.shape[1:]:
        raise ShapeError(f"the model's read-outs {tuple(R.shape[1:])} and the candidates' predictions "
                         f"{tuple(C.shape[1:])} differ in shape")
    m = xq.shape[1]
    res, s1, s2 = _per_prompt_stats(R, C)
    ones = torch.ones(X.shape[0], dtype=torch.float64)
    scores = _r2_from_counts(ones, res, s1, s2, m)
    mse = res.sum(-1).mean(0) / m
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    low, high = _bootstrap(res, s1, s2, m, n_boot, level, gen)
    ilwd = implicit_r2 = None
    if implicit:
        if m < X.shape[-1] + 2:
            raise ShapeError(f"implicit weights need at least d + 2 = {X.shape[-1] + 2} queries per prompt, got {m}")
        ilwd, implicit_r2 = _implicit(R, C, xq)
    between = _r2_from_counts(ones, *_per_prompt_stats(C, C), m)
    truth = None if y_query is None else _truth(R, y_query, gen, n_boot, level)
    return Alignment(reader.labels(), list(candidates), scores, mse, low, high, readout, int(X.shape[0]), m, level,
                     between, ilwd, implicit_r2, truth=truth)


def _truth(R: torch.Tensor, y_query, generator, n_boot: int, level: float) -> torch.Tensor:
    """``(L, 3)``: R² of every layer's read-out against the true labels (how accurate the layer is), with its
    bootstrap interval. A layer that tracks a candidate only as closely as both track the labels says little about
    the mechanism."""
    y = _as_f64(torch.as_tensor(y_query))
    if y.shape != R.shape[1:]:
        raise ShapeError(f"y_query must have the predictions' shape {tuple(R.shape[1:])}, got {tuple(y.shape)}")
    res, s1, s2 = _per_prompt_stats(R, y[None])
    r2 = _r2_from_counts(torch.ones(y.shape[0], dtype=torch.float64), res, s1, s2, y.shape[1])[:, 0]
    lo, hi = _bootstrap(res, s1, s2, y.shape[1], n_boot, level, generator)
    return torch.stack([r2, lo[:, 0], hi[:, 0]], dim=1)


def candidate_agreement(candidates: Mapping, X, Y, x_query) -> torch.Tensor:
    """``(K, K)``: entry (i, j) is the R² of candidate i's predictions scored against candidate j's (the reference),
    on the same prompts (the orientation of :attr:`Alignment.scores`)."""
    C = _candidate_predictions(candidates, X, Y, x_query)
    res, s1, s2 = _per_prompt_stats(C, C)
    return _r2_from_counts(torch.ones(C.shape[1], dtype=torch.float64), res, s1, s2, C.shape[2])


# ================================================================================================================
# candidates from a spec string (the CLI) and the analysis of a run folder
# ================================================================================================================

_GRAMMAR = ("comma-separated terms: gd:K or gd:A-B (GD with K steps, η line-searched on separate prompts), "
            "ridge[:λ], ols, newton[:K], averaging, knn[:k], kernel:NAME (linear, relu, exp, rbf), ntk[:λ]; "
            "e.g. gd:1-4,ridge:0.1,ols")


@dataclass(frozen=True)
class CandidateSpec:
    """One parsed term: a learner kind and its argument (number of GD steps, λ, k, kernel name or None)."""

    name: str
    kind: str
    arg: float | int | str | None = None


def _steps_range(text: str, term: str) -> list[int]:
    m = re.fullmatch(r"(\d+)(?:-(\d+))?", text)
    if not m:
        raise ConfigError(f"candidate {term!r}: steps must be K or A-B with integers, got {text!r}; {_GRAMMAR}")
    a, b = int(m.group(1)), int(m.group(2) or m.group(1))
    if a < 1 or b < a or b - a > 63:
        raise ConfigError(f"candidate {term!r}: need 1 <= A <= B <= A + 63, got {text!r}; {_GRAMMAR}")
    return list(range(a, b + 1))


def _number(text: str, term: str, integer: bool = False):
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        raise ConfigError(f"candidate {term!r}: {text!r} is not a{'n integer' if integer else ' number'}; "
                          f"{_GRAMMAR}") from None
    if not math.isfinite(value) or value < 0 or (integer and value < 1):
        raise ConfigError(f"candidate {term!r}: {text!r} must be {'>= 1' if integer else 'finite and >= 0'}")
    return value


def _parse_term(term: str) -> list[CandidateSpec]:
    kind, _, arg = term.partition(":")
    if kind == "gd":
        return [CandidateSpec(f"gd{k}", "gd", k) for k in _steps_range(arg, term)]
    if kind in ("ols", "averaging") and not arg:
        return [CandidateSpec(kind, kind)]
    if kind in ("ridge", "ntk"):
        lam = _number(arg, term) if arg else (0.1 if kind == "ridge" else 1e-3)
        return [CandidateSpec(f"{kind}({lam:g})", kind, lam)]
    if kind in ("newton", "knn"):
        k = _number(arg, term, integer=True) if arg else (20 if kind == "newton" else 3)
        return [CandidateSpec(f"{kind}{k}", kind, k)]
    if kind == "kernel" and arg in ("linear", "relu", "exp", "rbf"):
        return [CandidateSpec(f"kernel-{arg}", kind, arg)]
    raise ConfigError(f"unknown candidate {term!r}; {_GRAMMAR}")


def parse_candidates(spec: str) -> list[CandidateSpec]:
    """``"gd:1-4,ridge:0.1,ols"`` → candidate specs (see the grammar in the error message)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"no candidates given; {_GRAMMAR}")
    out: list[CandidateSpec] = []
    for term in (t.strip() for t in spec.split(",")):
        if not term:
            raise ConfigError(f"empty candidate term in {spec!r}; {_GRAMMAR}")
        out += _parse_term(term)
    names = [c.name for c in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"candidate {sorted({n for n in names if names.count(n) > 1})} given twice in {spec!r}")
    return out


def build_candidates(specs: Sequence[CandidateSpec], tune: tuple | None = None) -> dict[str, Learner]:
    """Learners for parsed specs; GD step sizes are line-searched (:meth:`~icgd.learners.GD.tune`) on the separate
    prompts ``tune = (X, Y, x_query, y_query)``."""
    from icgd.learners import GD, KNN, Averaging, KernelRegression, LeastSquares, Newton, Ridge

    out: dict[str, Learner] = {}
    for c in specs:
        if c.kind == "gd":
            if tune is None:
                raise ConfigError("GD candidates need tuning prompts to pick their step size")
            out[c.name] = GD.tune(*(_as_f64(t) for t in tune), steps=int(c.arg))
        else:
            make = {"ridge": lambda a: Ridge(a), "ols": lambda a: LeastSquares(), "newton": lambda a: Newton(a),
                    "averaging": lambda a: Averaging(), "knn": lambda a: KNN(a), "ntk": lambda a: NTKRegression(a),
                    "kernel": lambda a: KernelRegression(a)}[c.kind]
            out[c.name] = make(c.arg)
    return out


@dataclass
class RunAnalysis:
    """What :func:`analyze_run` returns: the alignment, the model's config and the heat-map file (or None)."""

    alignment: Alignment
    config: object
    figure: Path | None


ANALYSIS_SEED = 104_729  # held-out prompts of `icgd analyze` come from a seed no training run uses


def _run_prompts(cfg, task, batch: int, seed: int, step: int):
    """Prompts for a run's model: LSA answers after n_points pairs, ICLTransformer after n_points − 1 (its queries
    sit at the last learned position); 2d + 2 queries each (the models answer queries independently)."""
    n = cfg.n_points if cfg.model == "lsa" else cfg.n_points - 1
    if n < 1:
        raise ConfigError(f"the run's n_points={cfg.n_points} leaves no context for a query")
    return task.sample(batch, n, m=2 * cfg.d_in + 2, seed=ANALYSIS_SEED + seed, step=step, dtype=torch.float64)


def analyze_run(run_dir: str | Path, candidates_spec: str = "gd:1-4,ridge:0.1,ols", out: str | Path | None = None,
                *, prompts: int = 512, readout: str = "auto", seed: int = 0) -> RunAnalysis:
    """The layer alignment of a trained run folder (``icgd train --out``) on held-out prompts of its own task,
    against the candidates of `candidates_spec`; writes the heat-map to `out` (PNG) when given."""
    from icgd.train import load_model
    from icgd.train.loop import build_task

    specs = parse_candidates(candidates_spec)
    model, cfg = load_model(run_dir)
    model = model.double()
    task = build_task(cfg)
    prompts = positive_int(prompts, "prompts", minimum=2)
    p = _run_prompts(cfg, task, prompts, seed, 0)
    tune = _run_prompts(cfg, task, min(prompts, 512), seed, 1)
    cands = build_candidates(specs, (tune.X, tune.Y, tune.x_query, tune.y_query))
    probe = None
    if readout == "probe":
        pp = _run_prompts(cfg, task, prompts, seed, 2)
        probe = (pp.X, pp.Y, pp.x_query, pp.y_query)
    al = layer_alignment(model, p.X, p.Y, p.x_query, cands, readout=readout, probe_prompts=probe,
                         implicit=cfg.task in ("linear", "sparse_linear"))
    figure = None
    if out is not None:
        figure = Path(out)
        figure.parent.mkdir(parents=True, exist_ok=True)
        ax = al.plot(title=f"{Path(run_dir).name}: layer read-out ({al.readout}) vs candidates, R²")
        ax.figure.tight_layout()
        ax.figure.savefig(figure, dpi=110)
        import matplotlib.pyplot as plt

        plt.close(ax.figure)
    return RunAnalysis(al, cfg, figure)
