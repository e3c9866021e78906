"""Prompt samplers. Randomness only through explicit `torch.Generator`s, never the global RNG.

* :func:`network_regression` — prompts from a random teacher network, from a generator passed in.
* :class:`Task` and its registry :data:`TASKS` / :func:`make_task` — seeded samplers for meta-training, deterministic
  per ``(seed, step)``: ``linear``, ``sparse_linear`` (Garg et al. 2022), ``wu_network`` (Wu et al. 2025),
  ``relu2nn``, ``decision_tree`` (Garg et al.), ``gp`` (Cheng et al. 2024), ``sine`` (von Oswald et al. 2023);
  finite task pools, out-of-distribution input shifts, and the :class:`Curriculum` of Garg et al.

**Seeding (a contract).** ``task.sample(batch, n, seed=s, step=t)`` draws everything from one CPU
``torch.Generator`` seeded with :func:`task_seed` ``(s, t)``: the first 8 bytes of BLAKE2b of ``"icgd/data/{s}/{t}"``
(little-endian), masked to 63 bits. The same (seed, step) always gives the same batch, on any device and in float32
or float64 (draws are made in float64 on the CPU, in the order inputs, task parameters or pool indices, noise; then
cast and moved); different steps or seeds give unrelated streams, and no global RNG is touched. Finite task pools
are drawn once from the stream ``"icgd/pool:{task name}/{pool_seed}/0"``, so the pool does not depend on the
training seed.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch

from icgd._checks import as_float_tensor, positive_float, positive_int
from icgd.memory import task_memory
from icgd.errors import SpecError
from icgd.layers.attention import KERNELS
from icgd.nets import NetSpec, flatten, forward, init_weights


@dataclass(frozen=True)
class Prompt:
    """A batch of regression prompts: context ``X (B, n, d_in)``, ``Y (B, n, d_out)`` and held-out queries."""

    X: torch.Tensor
    Y: torch.Tensor
    x_query: torch.Tensor
    y_query: torch.Tensor
    teacher: torch.Tensor | None = None  # (B, D_w) weights of the teacher network, when there is one


def network_regression(spec: NetSpec, n: int, m: int = 16, batch: int = 1, *, generator: torch.Generator,
                       teacher_scale: float = 2.0, noise: float = 0.0, x_clip: float | None = None,
                       dtype: torch.dtype = torch.float64) -> Prompt:
    """x ~ N(0, I) (optionally clipped to ±x_clip); y = f(w*, x) (+ noise) for a teacher network of the same
    architecture with entries of V_j ~ N(0, teacher_scale²/in_j), one teacher per prompt."""
    n, m, batch = positive_int(n, "n"), positive_int(m, "m", minimum=0), positive_int(batch, "batch")
    teacher_scale = positive_float(teacher_scale, "teacher_scale")
    noise = positive_float(noise, "noise", allow_zero=True)
    if x_clip is not None:
        x_clip = positive_float(x_clip, "x_clip")
    x = torch.randn(batch, n + m, spec.d_in, generator=generator, dtype=dtype)
    if x_clip is not None:
        x = x.clamp(-x_clip, x_clip)
    teacher = init_weights(spec, batch, generator=generator, scale=teacher_scale, dtype=dtype)
    y = forward(spec, teacher, x)
    if noise:
        y = y + noise * torch.randn(y.shape, generator=generator, dtype=dtype)
    return Prompt(x[:, :n], y[:, :n], x[:, n:], y[:, n:], teacher)


# ----------------------------------------------------------------------------------------------------------------
# seeded task samplers (see the module docstring for the seeding contract)

DATA_STREAM = "data"
X_DISTS = ("normal", "uniform", "sphere")
_DRAW = torch.float64  # every draw is made in float64 on the CPU, then cast: dtype does not change the numbers


def task_seed(seed: int, step: int, stream: str = DATA_STREAM) -> int:
    """The 63-bit generator seed of ``(seed, step)`` in `stream` (BLAKE2b, see the module docstring)."""
    for name, value in (("seed", seed), ("step", step)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(f"{name} must be an integer, got {value!r}")
    digest = hashlib.blake2b(f"icgd/{stream}/{seed}/{step}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def generator_for(seed: int, step: int, stream: str = DATA_STREAM) -> torch.Generator:
    """A fresh CPU generator seeded by :func:`task_seed`."""
    return torch.Generator().manual_seed(task_seed(seed, step, stream))


def random_covariance(eigenvalues, *, seed: int = 0, normalize: bool = True) -> torch.Tensor:
    """``Σ = U diag(eigenvalues) Uᵀ`` with U a Haar-random rotation drawn from `seed` (float64).

    With `normalize` the trace is rescaled to d, so ``E‖x‖² = d`` as for N(0, I). Cheng et al.'s Σ (d = 5) is
    ``random_covariance([1, 1, 0.25, 2.25, 1], seed=s, normalize=False)``."""
    lam = as_float_tensor(eigenvalues, "eigenvalues", _DRAW)
    if lam.dim() != 1 or lam.numel() < 1 or bool((lam < 0).any()):
        raise SpecError(f"eigenvalues must be a non-empty vector of numbers >= 0, got {eigenvalues!r}")
    d = lam.numel()
    Q, R = torch.linalg.qr(torch.randn(d, d, generator=generator_for(seed, 0, "covariance"), dtype=_DRAW))
    U = Q * torch.sign(torch.diagonal(R))  # sign fix: Haar-distributed
    if normalize:
        if float(lam.sum()) == 0:
            raise SpecError("eigenvalues are all 0: the covariance cannot be normalised to trace d")
        lam = lam * (d / lam.sum())
    cov = (U * lam) @ U.T
    return 0.5 * (cov + cov.T)


def garg_covariance(kind: str, d: int, *, seed: int = 0) -> torch.Tensor:
    """Garg et al.'s out-of-distribution input covariances, trace d: ``"skewed"`` (x = z·S with S's eigenvalues
    1/i, so Σ's are 1/i²) and ``"half_subspace"`` (x confined to a random d/2-dimensional subspace)."""
    d = positive_int(d, "d")
    if kind == "skewed":
        lam = 1.0 / torch.arange(1, d + 1, dtype=_DRAW) ** 2
    elif kind == "half_subspace":
        lam = torch.zeros(d, dtype=_DRAW)
        lam[: max(1, d // 2)] = 1.0
    else:
        raise SpecError(f"unknown covariance kind {kind!r}; choose 'skewed' or 'half_subspace'")
    return random_covariance(lam, seed=seed)


def _sqrt_psd(cov, d: int) -> torch.Tensor:
    """Symmetric square root of a covariance, after checking it is (d, d), symmetric and PSD."""
    S = as_float_tensor(cov, "x_cov", _DRAW)
    if S.shape != (d, d):
        raise SpecError(f"x_cov must be a ({d}, {d}) covariance matrix for d={d}, got shape {tuple(S.shape)}")
    scale = float(S.abs().max()) or 1.0
    if float((S - S.T).abs().max()) > 1e-10 * scale:
        raise SpecError("x_cov must be symmetric; pass (S + S.T) / 2")
    lam, U = torch.linalg.eigh(S)
    if float(lam.min()) < -1e-10 * scale:
        raise SpecError(f"x_cov must be positive semi-definite, its smallest eigenvalue is {float(lam.min()):.3g}")
    return (U * lam.clamp(min=0).sqrt()) @ U.T


Params = dict[str, torch.Tensor]


@dataclass(frozen=True, eq=False)
class Task:
    """A distribution over regression functions f: R^d → R^{d_out} and inputs; :meth:`sample` draws prompts.

    Inputs: ``ξ`` from `x_dist` (``"normal"`` N(0, I), ``"uniform"`` U(−1, 1)^d, ``"sphere"`` uniform on the unit
    sphere of the active dimensions), then ``x = x_scale · (ξ Σ^{1/2} + shift)`` where Σ = `x_cov` (default I)
    and shift is task-specific (Wu et al.'s mixture means), then the inactive dimensions of a curriculum are
    zeroed (Garg et al.). Labels: ``y = y_scale · f(x) + noise · ε``, ε ~ N(0, I). `x_scale`, `x_cov` and
    `y_scale` are Garg et al.'s out-of-distribution shifts (see :func:`garg_covariance`).

    ``pool_size = K`` draws every prompt's function from a fixed pool of K functions (Raventós et al.'s task
    diversity; Garg's ``num_tasks``), the pool drawn once from `pool_seed` (see the seeding contract above).
    """

    name: ClassVar[str] = "task"
    d: int = 20
    d_out: int = 1
    noise: float = 0.0
    x_dist: str = "normal"
    x_scale: float = 1.0
    x_cov: Any = None
    y_scale: float = 1.0
    pool_size: int | None = None
    pool_seed: int = 0

    def __post_init__(self) -> None:
        positive_int(self.d, "d")
        positive_int(self.d_out, "d_out")
        positive_float(self.noise, "noise", allow_zero=True)
        positive_float(self.x_scale, "x_scale")
        positive_float(self.y_scale, "y_scale")
        if self.x_dist not in X_DISTS:
            raise SpecError(f"unknown x_dist {self.x_dist!r}; choose one of {', '.join(X_DISTS)}")
        if self.pool_size is not None:
            positive_int(self.pool_size, "pool_size")
        if isinstance(self.pool_seed, bool) or not isinstance(self.pool_seed, int):
            raise SpecError(f"pool_seed must be an integer, got {self.pool_seed!r}")
        object.__setattr__(self, "_x_root", None if self.x_cov is None else _sqrt_psd(self.x_cov, self.d))
        object.__setattr__(self, "_pool", None)

    # --- what a task defines ----------------------------------------------------------------------------------

    def draw_params(self, count: int, d_active: int, g: torch.Generator) -> Params:
        """Parameters of `count` functions, each tensor with leading axis `count` (float64, CPU)."""
        raise NotImplementedError

    def evaluate(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """``f(x)`` for ``x (B, N, d)`` → ``(B, N, d_out)``, one function per prompt."""
        raise NotImplementedError

    def teacher(self, params: Params) -> torch.Tensor | None:
        """The flat parameters stored in :attr:`Prompt.teacher` ``(B, D_w)``."""
        return torch.cat([v.reshape(v.shape[0], -1).to(_DRAW) for v in params.values()], dim=-1)

    def _shift(self, batch: int, N: int, g: torch.Generator) -> torch.Tensor | None:
        return None

    # --- shared machinery -------------------------------------------------------------------------------------

    def pool(self) -> Params:
        """The fixed pool of `pool_size` functions (drawn once, then cached)."""
        if self.pool_size is None:
            raise SpecError(f"task {self.name!r} has no pool; build it with pool_size=K")
        if self._pool is None:
            task_memory(self, self.pool_size, 1).check()
            g = generator_for(self.pool_seed, 0, f"pool:{self.name}")
            object.__setattr__(self, "_pool", self.draw_params(self.pool_size, self.d, g))
        return self._pool

    def _params(self, batch: int, d_active: int, g: torch.Generator) -> Params:
        if self.pool_size is None:
            return self.draw_params(batch, d_active, g)
        idx = torch.randint(self.pool_size, (batch,), generator=g)
        return {k: v[idx] for k, v in self.pool().items()}

    def inputs(self, batch: int, N: int, d_active: int, g: torch.Generator) -> torch.Tensor:
        """``(batch, N, d)`` inputs (see the class docstring), float64 on the CPU."""
        shape = (batch, N, self.d)
        if self.x_dist == "uniform":
            x = 2 * torch.rand(shape, generator=g, dtype=_DRAW) - 1
        else:
            x = torch.randn(shape, generator=g, dtype=_DRAW)
        if self.x_dist == "sphere":
            x[..., d_active:] = 0
            x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-300)
        if self._x_root is not None:
            x = x @ self._x_root
        shift = self._shift(batch, N, g)
        if shift is not None:
            x = x + shift
        x = self.x_scale * x
        x[..., d_active:] = 0
        return x

    def labels(self, x: torch.Tensor, d_active: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Noise-free labels ``f(x)`` and the teacher parameters."""
        params = self._params(x.shape[0], d_active, g)
        return self.evaluate(params, x), self.teacher(params)

    def sample(self, batch: int, n: int, *, seed: int, step: int, m: int = 0, n_dims: int | None = None,
               device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Prompt:
        """`batch` prompts of `n` context pairs and `m` held-out queries, deterministic in ``(seed, step)``.

        With ``m = 0`` (the default) the training loss uses every prefix of the n pairs (Garg et al.).
        `n_dims` is the curriculum's number of active input dimensions (default: all d); the others are zero.
        """
        batch, n, m = positive_int(batch, "batch"), positive_int(n, "n"), positive_int(m, "m", minimum=0)
        d_active = self.d if n_dims is None else positive_int(n_dims, "n_dims")
        if d_active > self.d:
            raise SpecError(f"n_dims={d_active} exceeds the task's d={self.d}; the curriculum must end at d or below")
        if dtype not in (torch.float32, torch.float64):
            raise SpecError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        task_memory(self, batch, n + m).check(device)  # teacher width, tree depth, batch: refused before drawing
        g = generator_for(seed, step)
        x = self.inputs(batch, n + m, d_active, g)
        y, teacher = self.labels(x, d_active, g)
        if self.y_scale != 1.0:
            y = self.y_scale * y
        if self.noise:
            y = y + self.noise * torch.randn(y.shape, generator=g, dtype=_DRAW)
        x, y = x.to(device=device, dtype=dtype), y.to(device=device, dtype=dtype)
        if teacher is not None:
            teacher = teacher.to(device=device, dtype=dtype)
        return Prompt(x[:, :n], y[:, :n], x[:, n:], y[:, n:], teacher)


@dataclass(frozen=True, eq=False)
class LinearRegression(Task):
    """``y = Wᵀx + σε`` with ``W ~ N(0, τ² I)`` of shape (d, d_out) (Garg et al.; Akyürek et al.'s noisy variant
    with `noise` σ and weight prior `tau` τ). Teacher: W flattened, ``(B, d·d_out)``."""

    name: ClassVar[str] = "linear"
    tau: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        positive_float(self.tau, "tau")

    def draw_params(self, count, d_active, g):
        return {"w": self.tau * torch.randn(count, self.d, self.d_out, generator=g, dtype=_DRAW)}

    def evaluate(self, params, x):
        return x @ params["w"]


@dataclass(frozen=True, eq=False)
class SparseLinearRegression(LinearRegression):
    """Linear regression whose weights have `k` nonzero rows, on coordinates drawn uniformly among the active
    dimensions (Garg et al.'s ``sparse_linear_regression``, sparsity 3; pools draw among all d)."""

    name: ClassVar[str] = "sparse_linear"
    k: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        positive_int(self.k, "k")
        if self.k > self.d:
            raise SpecError(f"k={self.k} nonzeros do not fit in d={self.d} dimensions")

    def draw_params(self, count, d_active, g):
        w = super().draw_params(count, d_active, g)["w"]
        order = torch.rand(count, d_active, generator=g, dtype=_DRAW).argsort(dim=1)
        keep = torch.zeros(count, self.d, dtype=torch.bool)
        keep.scatter_(1, order[:, : min(self.k, d_active)], True)
        return {"w": w * keep[..., None]}


TEST_MIXTURES: tuple[tuple[float, float], ...] = ((1.0, 0.0), (0.9, 0.1), (0.7, 0.3), (0.5, 0.5))
"""Wu et al.'s test input distributions ``(w₁, w₂)`` of ``w₁ N(−2, I) + w₂ N(2, I)`` (training uses (1, 0))."""
PARAM_SHIFTS: tuple[float, ...] = (0.0, -0.5, 0.5)
"""Wu et al.'s teacher-parameter means μ (parameters N(μ, I); training uses 0)."""
SHIFT_RULES: tuple[str, ...] = ("raw", "mean_field")
"""How :class:`WuNetwork` applies the parameter mean μ (see :meth:`WuNetwork.draw_params`)."""
WU_DEEP_TEACHER: dict[str, Any] = {"d": 2, "depth": 4, "width": 100, "activation": "tanh", "gain": 2.0,
                                   "shift_rule": "mean_field"}
"""A Wu et al. N-layer teacher on which linear regression loses clearly to training a deep network on the prompt
(``make_task("wu_network", **WU_DEEP_TEACHER)``; chosen and measured in the wu2025 reproduction): d = 2 inputs
around −2·1, a 4-layer width-100 network with tanh hidden units and gain 2, so that units saturate inside the
input cloud, and the mean-field shift rule for the parameter-shift study. In a pilot on 512 prompts, the mean R²
over 10…30 examples was 0.79 for ridge, 0.84 for ridge with an intercept, and 0.97 for a width-200 network
trained on the prompt (best of 100 Adam epochs, 24 prompts)."""


@dataclass(frozen=True, eq=False)
class WuNetwork(Task):
    """Wu et al. (ICML 2025) §5: labels from an N-layer network teacher, inputs from a Gaussian mixture.

    * Inputs: per point, ``x = ±mixture_mean·1 + ξ`` with the minus sign (component N(−2, I)) with probability
      w₁ and the plus sign with w₂ = 1 − w₁, ``mixture = (w₁, w₂)``; training uses (1, 0), tests
      :data:`TEST_MIXTURES`.
    * Teacher: the bias-free network of Definition 1 (:class:`icgd.nets.NetSpec`, `depth` N = 3, 4 or 6 in the
      paper, hidden width `width`), one per prompt, every raw parameter N(μ, 1) (the paper's N(0, I); the
      parameter shift of Fig. 5–6 is ``mu = ±0.5``, :data:`PARAM_SHIFTS`).
    * Not given by the paper (documented choices): width 100 and ReLU hidden units with a linear output (Garg et
      al.'s ``relu_2nn`` code that Wu et al. build on; ``activation="sigmoid", output_activation=True`` is
      Definition 1 with Remark 5's activation), and with ``fan_in_scaling`` each layer's pre-activation divided by
      √(fan-in) so that labels stay O(1) at depth 6 (``False``: the raw network, labels grow like √K per layer).
    * `gain` multiplies every weight (effective weights ``gain · raw / √fan-in``); with a saturating activation
      it sets how nonlinear a teacher is on its prompt (a ReLU network without biases is positively homogeneous,
      so there it only scales the labels). `shift_rule` says how the mean μ enters (:data:`SHIFT_RULES`):
      ``"raw"`` adds μ to every raw parameter (the paper's wording); ``"mean_field"`` adds μ/√fan-in, so that a
      layer's pre-activations move by μ times the mean of its inputs, O(1) at any width and label scale.
      :data:`WU_DEEP_TEACHER` is the teacher the wu2025 reproduction uses.

    Teacher: the *effective* flat weights of :attr:`spec` (raw parameters divided by √fan-in when scaled), so that
    ``icgd.nets.forward(task.spec, prompt.teacher, X)`` reproduces the noise-free labels exactly.
    """

    name: ClassVar[str] = "wu_network"
    depth: int = 4
    width: int = 100
    activation: str = "relu"
    output_activation: bool = False
    mu: float = 0.0
    mixture: tuple[float, float] = (1.0, 0.0)
    mixture_mean: float = 2.0
    fan_in_scaling: bool = True
    gain: float = 1.0
    shift_rule: str = "raw"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (isinstance(self.mu, (int, float)) and math.isfinite(self.mu)):
            raise SpecError(f"mu must be a finite number, got {self.mu!r}")
        positive_float(self.gain, "gain")
        if self.shift_rule not in SHIFT_RULES:
            raise SpecError(f"unknown shift_rule {self.shift_rule!r}; choose one of {', '.join(SHIFT_RULES)}")
        positive_float(self.mixture_mean, "mixture_mean", allow_zero=True)
        w = tuple(float(v) for v in self.mixture) if isinstance(self.mixture, (tuple, list)) else ()
        if len(w) != 2 or min(w) < 0 or abs(sum(w) - 1) > 1e-9:
            raise SpecError(f"mixture must be two weights (w1, w2) >= 0 summing to 1, e.g. (0.7, 0.3); "
                            f"got {self.mixture!r}")
        object.__setattr__(self, "mixture", w)
        object.__setattr__(self, "_spec", NetSpec(self.d, self.width, self.depth, self.d_out, self.activation,
                                                  self.output_activation))

    @property
    def spec(self) -> NetSpec:
        return self._spec

    def _layer_scales(self, force: bool = False) -> torch.Tensor:
        """Per flat weight, 1/√(fan-in) of its layer (or 1 without fan-in scaling, unless `force`)."""
        parts = [torch.full((o * i,), 1 / math.sqrt(i) if self.fan_in_scaling or force else 1.0, dtype=_DRAW)
                 for o, i in self.spec.shapes]
        return torch.cat(parts)

    def draw_params(self, count, d_active, g):
        scales = self._layer_scales()
        # "raw": every raw parameter N(μ, 1); "mean_field": N(μ/√fan-in, 1), so that the shift moves each
        # pre-activation by μ × (mean of the layer's inputs), O(1) at any width, instead of by √fan-in times that
        shift = self.mu if self.shift_rule == "raw" else self.mu * self._layer_scales(force=True)
        raw = shift + torch.randn(count, self.spec.num_params, generator=g, dtype=_DRAW)
        return {"w": self.gain * raw * scales}

    def evaluate(self, params, x):
        # nets.forward without its input checks (the weights were just drawn): p(j) = r(V_j p(j−1))
        p, w = x, params["w"]
        for j, (sl, (o, i)) in enumerate(zip(self.spec.offsets(), self.spec.shapes), start=1):
            p = self.spec.layer_act(j)(p @ w[:, sl].reshape(-1, o, i).transpose(1, 2))
        return p

    def _shift(self, batch, N, g):
        plus = torch.rand(batch, N, 1, generator=g, dtype=_DRAW) >= self.mixture[0]
        return torch.where(plus, self.mixture_mean, -self.mixture_mean).to(_DRAW).expand(batch, N, self.d)


@dataclass(frozen=True, eq=False)
class Relu2NN(Task):
    """Garg et al.'s ``relu_2nn_regression``: ``y = √(2/h) · W₂ᵀ relu(W₁ᵀ x)``, W₁ (d, h) and W₂ (h, d_out) with
    N(0, 1) entries, hidden width h = `hidden` (100). Teacher: flat weights of :attr:`spec` (V₁ = W₁ᵀ,
    V₂ = √(2/h) W₂ᵀ), so ``icgd.nets.forward(task.spec, teacher, X)`` gives the labels."""

    name: ClassVar[str] = "relu2nn"
    hidden: int = 100

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "_spec", NetSpec(self.d, positive_int(self.hidden, "hidden"), 2, self.d_out,
                                                  "relu", False))

    @property
    def spec(self) -> NetSpec:
        return self._spec

    def draw_params(self, count, d_active, g):
        W1 = torch.randn(count, self.d, self.hidden, generator=g, dtype=_DRAW)
        W2 = torch.randn(count, self.hidden, self.d_out, generator=g, dtype=_DRAW)
        return {"W1": W1, "W2": W2 * math.sqrt(2 / self.hidden)}

    def evaluate(self, params, x):
        return torch.relu(x @ params["W1"]) @ params["W2"]

    def teacher(self, params):
        return flatten(self.spec, [params["W1"].transpose(1, 2), params["W2"].transpose(1, 2)])


@dataclass(frozen=True, eq=False)
class DecisionTree(Task):
    """Garg et al.'s ``decision_tree``: a full binary tree of depth `depth` (4); internal node j tests
    ``x[c_j] > 0`` (right if true) on a coordinate c_j uniform over all d, leaves hold N(0, 1) values.
    Teacher: ``[coordinates (2^depth − 1), leaf values (2^depth · d_out)]``."""

    name: ClassVar[str] = "decision_tree"
    depth: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        positive_int(self.depth, "depth")
        if self.depth > 40:  # 2^depth leaves per prompt: beyond 40 no machine holds one tree
            raise SpecError(f"decision_tree depth must be at most 40 (a full tree has 2^depth leaves), got "
                            f"{self.depth}")

    def draw_params(self, count, d_active, g):
        nodes, leaves = 2 ** self.depth - 1, 2 ** self.depth
        coords = torch.randint(self.d, (count, nodes), generator=g)
        return {"coords": coords, "leaves": torch.randn(count, leaves, self.d_out, generator=g, dtype=_DRAW)}

    def evaluate(self, params, x):
        B, N, _ = x.shape
        node = torch.zeros(B, N, dtype=torch.long)
        for _ in range(self.depth):
            c = params["coords"].gather(1, node)  # (B, N): the coordinate tested at each point's node
            right = x.gather(2, c[..., None])[..., 0] > 0
            node = 2 * node + 1 + right.long()
        leaf = node - (2 ** self.depth - 1)
        return params["leaves"].gather(1, leaf[..., None].expand(B, N, self.d_out))


@dataclass(frozen=True, eq=False)
class GaussianProcess(Task):
    """Cheng, Chen & Sra (ICML 2024): labels of all n + m points drawn jointly, ``y ~ N(0, K(X))``, with
    ``K_ij = κ(x_i, x_j)`` for `kernel` ``linear`` ⟨x,x'⟩, ``relu`` relu⟨x,x'⟩, ``exp`` exp⟨x,x'⟩ or ``rbf``
    exp(−‖x−x'‖²/(2·bandwidth²)) — the scores of :data:`icgd.layers.attention.KERNELS`. The ReLU kernel matrix is
    not PSD: like Cheng et al. it is replaced by K₊ = U|Λ|Uᵀ (absolute eigenvalues). Inputs default to the unit
    sphere (``x_dist="sphere"``), optionally ``x = Σ^{1/2} ξ`` (`x_cov`, e.g. :func:`random_covariance`); d = 5.
    Independent draws per output. No teacher and no pools (the function is not parametrised)."""

    name: ClassVar[str] = "gp"
    d: int = 5
    x_dist: str = "sphere"
    kernel: str = "relu"
    bandwidth: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kernel not in KERNELS:
            raise SpecError(f"unknown kernel {self.kernel!r}; choose one of {', '.join(KERNELS)}")
        positive_float(self.bandwidth, "bandwidth")
        if self.pool_size is not None:
            raise SpecError("the gp task has no finite parameters to pool; drop pool_size")

    def covariance(self, x: torch.Tensor) -> torch.Tensor:
        """``K(X)`` (K₊ for the relu kernel) for ``x (B, N, d)`` → ``(B, N, N)``."""
        lam, U = self._eig(x)
        return (U * lam[..., None, :]) @ U.transpose(-1, -2)

    def _eig(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        K = KERNELS[self.kernel](x, x, self.bandwidth)
        lam, U = torch.linalg.eigh(0.5 * (K + K.transpose(-1, -2)))
        return (lam.abs() if self.kernel == "relu" else lam.clamp(min=0)), U

    def labels(self, x, d_active, g):
        lam, U = self._eig(x)
        z = torch.randn(*x.shape[:2], self.d_out, generator=g, dtype=_DRAW)
        return U @ (lam.sqrt()[..., None] * z), None


@dataclass(frozen=True, eq=False)
class Sine(Task):
    """von Oswald et al. (ICML 2023) §3 non-linear regression: ``y = a sin(ρ + x)``, ``a ~ U(amplitude)`` =
    U(0.1, 5), ``ρ ~ U(phase)`` = U(0, π), ``x ~ U(−x_scale, x_scale)`` = U(−5, 5) (d = 1; the paper's ranges,
    its code used amplitudes U(0.1, 0.5)). One (a, ρ) per prompt and output. Teacher: ``[a, ρ]``, (B, 2·d_out)."""

    name: ClassVar[str] = "sine"
    d: int = 1
    x_dist: str = "uniform"
    x_scale: float = 5.0
    amplitude: tuple[float, float] = (0.1, 5.0)
    phase: tuple[float, float] = (0.0, math.pi)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.d != 1:
            raise SpecError(f"the sine task has scalar inputs: d must be 1, got {self.d}")
        for name in ("amplitude", "phase"):
            lo_hi = getattr(self, name)
            if not (isinstance(lo_hi, (tuple, list)) and len(lo_hi) == 2 and float(lo_hi[0]) <= float(lo_hi[1])):
                raise SpecError(f"{name} must be a range (low, high) with low <= high, got {lo_hi!r}")
            object.__setattr__(self, name, (float(lo_hi[0]), float(lo_hi[1])))

    def _uniform(self, count: int, lo_hi: tuple[float, float], g: torch.Generator) -> torch.Tensor:
        lo, hi = lo_hi
        return lo + (hi - lo) * torch.rand(count, 1, self.d_out, generator=g, dtype=_DRAW)

    def draw_params(self, count, d_active, g):
        return {"a": self._uniform(count, self.amplitude, g), "rho": self._uniform(count, self.phase, g)}

    def evaluate(self, params, x):
        return params["a"] * torch.sin(params["rho"] + x)


TASKS: dict[str, type[Task]] = {
    cls.name: cls for cls in (LinearRegression, SparseLinearRegression, WuNetwork, Relu2NN, DecisionTree,
                              GaussianProcess, Sine)
}


def make_task(name: str, **kwargs) -> Task:
    """The task registered as `name` (see :data:`TASKS`), built with `kwargs`."""
    if name not in TASKS:
        raise SpecError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    cls = TASKS[name]
    valid = [f.name for f in fields(cls)]
    unknown = sorted(set(kwargs) - set(valid))
    if unknown:
        raise SpecError(f"task {name!r} has no option(s) {', '.join(unknown)}; valid options: {', '.join(valid)}")
    return cls(**kwargs)


@dataclass(frozen=True, kw_only=True)
class Curriculum:
    """Garg et al.'s curriculum: at training step t the number of active input dimensions is
    ``min(dims_start + dims_inc · ⌊t / dims_interval⌋, dims_end)`` and the number of points likewise.

    `interval` is the default for both intervals (Garg et al.: 2000 steps; dims 5 → 20 by 1, points 11 → 41 by 2
    for linear regression). Use with ``task.sample(batch, n, n_dims=d_active, …)``."""

    dims_start: int
    dims_end: int
    points_start: int
    points_end: int
    dims_inc: int = 1
    points_inc: int = 1
    interval: int = 2000
    dims_interval: int | None = None
    points_interval: int | None = None

    def __post_init__(self) -> None:
        for kind in ("dims", "points"):
            start = positive_int(getattr(self, f"{kind}_start"), f"{kind}_start")
            end = positive_int(getattr(self, f"{kind}_end"), f"{kind}_end")
            if end < start:
                raise SpecError(f"{kind}_end={end} is below {kind}_start={start}; a curriculum only grows")
            positive_int(getattr(self, f"{kind}_inc"), f"{kind}_inc", minimum=0)
            if getattr(self, f"{kind}_interval") is not None:
                positive_int(getattr(self, f"{kind}_interval"), f"{kind}_interval")
        positive_int(self.interval, "interval")

    @classmethod
    def fixed(cls, d: int, n: int) -> Curriculum:
        """No curriculum: always d dimensions and n points."""
        return cls(dims_start=d, dims_end=d, points_start=n, points_end=n)

    def _value(self, kind: str, step: int) -> int:
        interval = getattr(self, f"{kind}_interval") or self.interval
        start, end, inc = (getattr(self, f"{kind}_{s}") for s in ("start", "end", "inc"))
        return min(start + inc * (step // interval), end)

    def at(self, step: int) -> tuple[int, int]:
        """``(d_active, n_points)`` at training step `step` (0-based)."""
        step = positive_int(step, "step", minimum=0)
        return self._value("dims", step), self._value("points", step)
