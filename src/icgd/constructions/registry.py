"""The construction registry: name → builder, the reference learner it is checked against, and its options.

``icgd construct NAME`` and the registry test (``tests/test_registry.py``) are driven by :data:`REGISTRY`, so a new
construction is one module (its builder), one :func:`register` call here and one test of its specifics. Every
entry is checked the same way (:func:`check`): random prompts are sampled, the construction's
``predict(X, Y, x_query)`` is compared with the reference learner's on the same prompts (the reference never sees
the tokens), and the relative error must stay below the entry's ``tolerance`` (float64).

Settings are plain dicts: the common keys ``d_in, n, m, batch, seed`` plus the entry's ``options``
(name → (default, help)); ``entry.defaults`` overrides common defaults (e.g. ``d_in = 3`` for ``deep``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from icgd.errors import SpecError
from icgd.memory import linear_check_memory
from icgd.learners import GD, SGD, GDPlusPlus, Learner, NetworkGD, Ridge

COMMON = {"d_in": (5, "input dimension"), "n": (20, "context points"), "m": (8, "query points per prompt"),
          "batch": (16, "prompts"), "seed": (0, "seed of the random prompts")}

Setting = dict[str, Any]
LINEAR_KINDS = ("linear", "gdpp", "ridge", "sgd", "functional", "convex")  # sized by linear_check_memory


@dataclass(frozen=True)
class Construction:
    """One registered construction (see the module docstring)."""

    name: str
    paper: str
    build: Callable[[Setting], nn.Module]  # setting → a model with predict(X, Y, x_query)
    reference: Callable[[Setting], Learner]  # setting → the learner the construction encodes
    describe: Callable[[Setting], str]  # what the reference is, for reports
    options: dict[str, tuple[Any, str]] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)  # overrides of COMMON defaults
    sample: Callable[[Setting], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None
    tolerance: float = 1e-10  # relative error expected at the test settings (float64)

    def setting(self, **given) -> Setting:
        """Defaults completed by `given` (None means default); unknown keys raise :class:`SpecError`."""
        allowed = {**COMMON, **self.options}
        unknown = sorted(k for k, v in given.items() if k not in allowed and v is not None)
        if unknown:
            raise SpecError(f"construction {self.name!r} has no option {', '.join(unknown)}; its options are "
                            f"{', '.join(allowed)}")
        s = {k: v[0] for k, v in allowed.items()} | self.defaults
        s.update({k: v for k, v in given.items() if v is not None and k in allowed})
        return s


REGISTRY: dict[str, Construction] = {}


def register(entry: Construction) -> Construction:
    if entry.name in REGISTRY:
        raise SpecError(f"a construction named {entry.name!r} is already registered")
    REGISTRY[entry.name] = entry
    return entry


def get(name: str) -> Construction:
    if name not in REGISTRY:
        raise SpecError(f"unknown construction {name!r}; available: {', '.join(REGISTRY)}")
    return REGISTRY[name]


@dataclass
class CheckResult:
    name: str
    reference: str  # what the construction was compared with
    max_abs_error: float
    rel_error: float  # max |ŷ_TF − ŷ_ref| / max |ŷ_ref|
    tolerance: float
    setting: Setting
    summary: list[dict] = field(default_factory=list)
    seconds: float = 0.0  # the construction's forward pass


def check(name: str, **given) -> CheckResult:
    """Build `name` for the setting, run it and its reference learner on the same random prompts, compare."""
    entry = get(name)
    s = entry.setting(**given)
    if name in LINEAR_KINDS:  # refuse an absurd size before the prompts are drawn
        linear_check_memory(name, d_in=s["d_in"], n=s["n"], m=s["m"], batch=s["batch"], steps=s.get("steps", 1),
                            knots=s.get("knots", 64), loss=s.get("loss", "squared")).check()
    X, Y, Xq = (entry.sample or linear_prompts)(s)
    model = entry.build(s)
    ref = entry.reference(s).predict(X, Y, Xq)
    t0 = time.perf_counter()
    pred = model.predict(X, Y, Xq)
    seconds = time.perf_counter() - t0
    err = float((pred - ref).abs().max())
    return CheckResult(name, entry.describe(s), err, err / max(float(ref.abs().max()), 1e-300), entry.tolerance,
                       s, model.summary(), seconds)


# ------------------------------------------------------------------------------------------------ prompts


def linear_prompts(s: Setting, *, sphere: bool = False, labels: bool = False):
    """Noisy linear regression prompts ``y = wᵀx + 0.1 ε`` (x on the unit sphere with `sphere`, y ∈ {0, 1} with
    `labels`): ``X (B, n, d)``, ``Y (B, n, 1)``, ``x_query (B, m, d)``."""
    g = torch.Generator().manual_seed(s["seed"])
    B, n, m, d = s["batch"], s["n"], s["m"], s["d_in"]
    X = torch.randn(B, n + m, d, generator=g, dtype=torch.float64)
    if sphere:
        X = X / X.norm(dim=-1, keepdim=True)  # unit sphere (Cheng et al.), keeps exp⟨x, x'⟩ moderate
    w = torch.randn(B, d, 1, generator=g, dtype=torch.float64)
    Y = X @ w + 0.1 * torch.randn(B, n + m, 1, generator=g, dtype=torch.float64)
    if labels:
        Y = (Y > 0).double()
    return X[:, :n], Y[:, :n], X[:, n:]


def _spec(s: Setting):
    from icgd.nets import NetSpec

    return NetSpec(s["d_in"], s["width"], s["depth"], s["d_out"], s["activation"])


def _w0(s: Setting) -> torch.Tensor:
    from icgd.nets import init_weights

    w0 = init_weights(_spec(s), s["batch"], generator=torch.Generator().manual_seed(s["seed"] + 1))
    return w0.clamp(-s["box"], s["box"]) if s["box"] else w0


def network_prompts(s: Setting):
    """Prompts labelled by a random teacher network of the setting's shape (inputs in [−1, 1])."""
    from icgd.nets import forward, init_weights

    g = torch.Generator().manual_seed(s["seed"])
    spec = _spec(s)
    X = 2 * torch.rand(s["batch"], s["n"] + s["m"], s["d_in"], generator=g, dtype=torch.float64) - 1
    Y = forward(spec, init_weights(spec, s["batch"], generator=g, scale=2.0), X)
    return X[:, :s["n"]], Y[:, :s["n"]], X[:, s["n"]:]


# ------------------------------------------------------------------------------------------------ references


class FunctionalGDReference(Learner):
    """``f_{t+1} = f_t + (η/n) Σ_i (y_i − f_t(x_i)) k(x_i, ·)``, ``f_0 = 0``, with the kernels of
    :class:`icgd.layers.KernelAttention` (Cheng, Chen & Sra, Prop. 1), in closed form on the Gram matrices."""

    name = "functional_gd"

    def __init__(self, kernel: str, eta: float, steps: int, bandwidth: float = 1.0):
        self.kernel, self.eta, self.steps, self.bandwidth = kernel, eta, steps, bandwidth

    def _predict(self, X, Y, x_query):
        from icgd.layers.attention import KERNELS

        k = KERNELS[self.kernel]
        K, Kq = k(X, X, self.bandwidth), k(x_query, X, self.bandwidth)
        alpha = torch.zeros_like(Y)
        for _ in range(self.steps):  # f_t = Σ_i α_i k(x_i, ·)
            alpha = alpha + self.eta / X.shape[1] * (Y - K @ alpha)
        return Kq @ alpha


class LinearLossGD(Learner):
    """`steps` steps of GD from w = 0 on ``(1/n) Σ ℓ(wᵀx_i, y_i) + (λ/2)‖w‖²`` (squared or logistic ℓ), then
    ``wᵀx_query`` (Bai et al.'s in-context GD on a convex loss)."""

    name = "linear_loss_gd"

    def __init__(self, loss: str, eta: float, steps: int, lam: float = 0.0):
        self.loss, self.eta, self.steps, self.lam = loss, eta, steps, lam

    def _predict(self, X, Y, x_query):
        w = torch.zeros(X.shape[0], X.shape[-1], 1, dtype=X.dtype)
        for _ in range(self.steps):
            p = X @ w
            d = torch.sigmoid(p) - Y if self.loss == "logistic" else p - Y
            w = w - self.eta * (X.transpose(1, 2) @ d / X.shape[1] + self.lam * w)
        return x_query @ w


# ------------------------------------------------------------------------------------------------ entries


_STEPS = {"steps": (3, "GD steps"), "eta": (0.3, "learning rate")}  # options of the linear-GD style entries


def _register_linear(C) -> None:
    """von Oswald et al.'s linear GD and GD++, Akyürek et al.'s ridge and one-pass SGD."""
    steps = _STEPS
    register(Construction(
        "linear", "von Oswald et al. 2023, Prop. 1", lambda s: C.linear_gd(s["d_in"], eta=s["eta"], steps=s["steps"]),
        lambda s: GD(s["eta"], s["steps"]), lambda s: f"GD, {s['steps']} steps (closed form)", steps))
    register(Construction(
        "gdpp", "von Oswald et al. 2023, App. A.10",
        lambda s: C.gd_plus_plus(s["d_in"], eta=s["eta"], gamma=s["gamma"], steps=s["steps"]),
        lambda s: GDPlusPlus(s["eta"], s["gamma"], s["steps"]),
        lambda s: f"GD++, {s['steps']} steps (icgd.learners.GDPlusPlus)",
        {**steps, "gamma": (0.5, "curvature correction γ (normalised by n)")}))
    variant = {"variant": ("exact", "exact or faithful (GeLU products, LayerNorm division)")}
    register(Construction(
        "ridge", "Akyürek et al. 2023, Thm. 2",
        lambda s: C.ridge(s["d_in"], lam=s["lam"], n_max=s["n"], variant=s["variant"]),
        lambda s: Ridge(s["lam"]), lambda s: "ridge closed form x_qᵀ(XᵀX + λI)⁻¹Xᵀy",
        {"lam": (0.1, "regularisation λ"), **variant}, tolerance=1e-6))
    register(Construction(
        "sgd", "Akyürek et al. 2023, Thm. 1",
        lambda s: C.akyurek_gd(s["d_in"], eta=s["eta"], lam=s["lam"], n_max=s["n"], variant=s["variant"]),
        lambda s: SGD(s["eta"], window=1, lam=s["lam"]), lambda s: "one-pass SGD (icgd.learners.SGD)",
        {"eta": (0.3, "learning rate"), "lam": (0.1, "regularisation λ"), **variant}, tolerance=1e-6))


def _register_kernel_and_convex(C) -> None:
    """Cheng et al.'s functional GD and Bai et al.'s GD on a convex loss."""
    steps = _STEPS
    register(Construction(
        "functional", "Cheng, Chen & Sra 2024, Prop. 1",
        lambda s: C.functional_gd(s["d_in"], kernel=s["kernel"], eta=s["eta"], steps=s["steps"],
                                  bandwidth=s["bandwidth"]),
        lambda s: FunctionalGDReference(s["kernel"], s["eta"], s["steps"], s["bandwidth"]),
        lambda s: f"functional GD in the RKHS of the {s['kernel']} kernel, {s['steps']} steps",
        {**steps, "kernel": ("rbf", "linear, relu, exp or rbf"), "bandwidth": (1.0, "rbf bandwidth")},
        sample=lambda s: linear_prompts(s, sphere=True)))
    register(Construction(
        "convex", "Bai et al. 2023",
        lambda s: C.convex_gd(s["d_in"], loss=s["loss"], eta=s["eta"], steps=s["steps"], lam=s["lam"],
                              knots=s["knots"]),
        lambda s: LinearLossGD(s["loss"], s["eta"], s["steps"], s["lam"]),
        lambda s: f"GD on the {s['loss']} loss + (λ/2)‖w‖², {s['steps']} steps",
        {**steps, "lam": (0.1, "regularisation λ"), "loss": ("squared", "squared or logistic"),
         "knots": (64, "ReLU units of the sigmoid fit (logistic loss)")},
        sample=lambda s: linear_prompts(s, labels=s["loss"] == "logistic"), tolerance=1e-3))


def _register_networks(C) -> None:
    """Wu et al.'s deep_gd (ReLU attention) and its softmax version, against autograd GD on the network."""
    net = {"depth": (3, "N, weight layers"), "width": (8, "K, hidden width"), "d_out": (3, "output dimension"),
           "activation": ("sigmoid", "sigmoid, tanh, relu, gelu, softplus, identity"),
           "steps": (10, "GD steps"), "eta": (2.0, "learning rate"), "box": (1.0, "projection box |w| <= box")}

    def with_w0(model, s):
        model.w0 = _w0(s)
        return model

    def reference(s):
        return NetworkGD(_spec(s), _w0(s), eta=s["eta"], steps=s["steps"], box=s["box"] or None)

    register(Construction(
        "deep", "Wu et al. 2025, Thm. 1",
        lambda s: with_w0(C.deep_gd(_spec(s), eta=s["eta"], steps=s["steps"], box=s["box"] or None,
                                    knots=s["knots"], x_bound=1.0), s),
        reference, lambda s: f"projected GD on the network by autograd, {s['steps']} steps",
        {**net, "knots": (64, "ReLU units per fitted function")}, defaults={"d_in": 3, "n": 50},
        sample=network_prompts, tolerance=1e-3))
    register(Construction(
        "deep_softmax", "beyond Wu et al. 2025 (explicit softmax version of Thm. 2)",
        lambda s: with_w0(C.deep_gd_softmax(_spec(s), eta=s["eta"], steps=s["steps"], box=s["box"] or None,
                                            x_bound=1.0), s),
        reference, lambda s: f"projected GD on the network by autograd, {s['steps']} steps", net,
        defaults={"d_in": 3, "n": 50}, sample=network_prompts, tolerance=1e-6))


def _register_all() -> None:
    from icgd import constructions as C

    _register_linear(C)
    _register_kernel_and_convex(C)
    _register_networks(C)


_register_all()
