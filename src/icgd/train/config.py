"""Training configuration: one typed dataclass, presets at three scales, TOML files and ``--set key=value``.

The config is saved to ``DIR/config.json``; its hash (SHA-256 of the canonical JSON of the fields that change the
computation, i.e. everything but `steps`, `device`, the logging/saving cadence and `tensorboard`) is stored in every
checkpoint, so that a resume with a different config is refused (unless forced) naming the keys that differ.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

from icgd.errors import ConfigError, ICGDError
from icgd.memory import MemoryEstimate

# fields that may change between a run and its resumption without changing what is computed
RESUMABLE = ("steps", "device", "log_every", "save_every", "tensorboard", "out")
# model options added later: left out of the hash at their defaults, so that older runs still resume
HASH_DEFAULTS = {"loop_inject": False, "d_mlp": 0, "mlp_activation": "gelu"}
DEVICE = re.compile(r"cpu|mps|cuda(:[0-9]+)?")


def _default_learner(name: str) -> bool:
    from icgd.learners import make_learner

    try:
        make_learner(name)
    except ICGDError:
        return False
    return True


@dataclass
class TrainConfig:
    """Everything a training run depends on. Sizes follow the papers' names (Garg et al., von Oswald et al.)."""

    preset: str = ""
    # task (icgd.tasks): name and keyword arguments; prompts of `n_points` pairs in `d_in` dimensions
    task: str = "linear"
    task_kwargs: dict = field(default_factory=dict)
    d_in: int = 5
    d_out: int = 1
    n_points: int = 11
    curriculum: dict = field(default_factory=dict)  # {} or icgd.tasks.Curriculum keyword arguments
    # model (icgd.models): "icl" = ICLTransformer on every prefix, "lsa" = von Oswald's LSA on one query
    model: str = "icl"
    n_layer: int = 3
    n_head: int = 2
    n_embd: int = 64
    attention: str = "softmax"
    causal: bool = True
    token_format: str = "interleaved"
    mlp: bool = True
    layernorm: bool = True
    loop: int = 1
    loop_inject: bool = False  # looped ICLTransformer: add the embedded input before every pass after the first
    d_mlp: int = 0  # ICLTransformer MLP width (0: 4 * n_embd, as in GPT-2)
    mlp_activation: str = "gelu"  # "gelu" | "gelu_tanh" | "relu"
    shared: bool = False  # LSA: one layer applied n_layer times
    init_std: float = 0.0  # LSA init std (0: the model's default)
    # optimisation: AdamW, linear warm-up then cosine decay to lr_min_ratio·lr, global-norm clipping
    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-3
    lr_min_ratio: float = 0.0
    warmup: int = 0
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    grad_clip: float = 1.0
    seed: int = 0
    dtype: str = "float32"
    device: str = "cpu"
    # evaluation and logging
    eval_prompts: int = 512
    log_every: int = 50
    save_every: int = 200
    baselines: list = field(default_factory=lambda: ["gd", "ols", "ridge"])
    on_nonfinite: str = "stop"  # or "skip": drop the step, stop after max_skips
    max_skips: int = 10
    tensorboard: bool = False
    out: str = ""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            expected = {"int": int, "float": (int, float), "bool": bool, "str": str, "dict": dict,
                        "list": list}[f.type if isinstance(f.type, str) else f.type.__name__]
            if isinstance(value, bool) and expected in (int, (int, float)) or not isinstance(value, expected):
                raise ConfigError(f"config key {f.name!r} must be of type {f.type}, got {value!r}")
        for name in ("d_in", "d_out", "n_points", "n_layer", "n_head", "n_embd", "loop", "steps", "batch_size",
                     "eval_prompts", "log_every", "save_every", "max_skips"):
            if getattr(self, name) < 1:
                raise ConfigError(f"config key {name!r} must be >= 1, got {getattr(self, name)}")
        self._check_numbers()
        choices = {"model": ("icl", "lsa"), "attention": ("softmax", "relu", "linear"),
                   "token_format": ("interleaved", "concat"), "dtype": ("float32", "float64"),
                   "on_nonfinite": ("stop", "skip"), "mlp_activation": ("gelu", "gelu_tanh", "relu")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"config key {name!r} must be one of {', '.join(allowed)}, got "
                                  f"{getattr(self, name)!r}")
        if not DEVICE.fullmatch(self.device):
            raise ConfigError(f"config key 'device' must look like cpu, cuda, cuda:1 or mps, got {self.device!r}")
        if self.model == "icl" and self.n_embd % self.n_head:
            raise ConfigError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        self._check_task()
        self._check_baselines()
        try:
            json.dumps(self.to_dict(), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"the config must hold JSON values only (numbers, strings, lists, tables): {exc}") \
                from None

    def _check_numbers(self) -> None:
        """Finite floats in their ranges; warmup and seed >= 0."""
        ranges = {"lr": (0.0, None, False), "lr_min_ratio": (0.0, 1.0, True), "weight_decay": (0.0, None, True),
                  "beta1": (0.0, 1.0, True), "beta2": (0.0, 1.0, True), "grad_clip": (0.0, None, True),
                  "init_std": (0.0, None, True)}
        for name, (lo, hi, closed) in ranges.items():
            v = float(getattr(self, name))
            ok = math.isfinite(v) and (v >= lo if closed else v > lo) and (hi is None or v <= hi)
            if name.startswith("beta"):
                ok = ok and v < 1.0
            if not ok:
                upper = "" if hi is None else (" and < 1" if name.startswith("beta") else f" and <= {hi}")
                raise ConfigError(f"config key {name!r} must be a finite number {'>=' if closed else '>'} {lo}"
                                  f"{upper}, got {getattr(self, name)!r}")
        for name in ("warmup", "seed", "d_mlp"):
            if getattr(self, name) < 0:
                raise ConfigError(f"config key {name!r} must be >= 0, got {getattr(self, name)}")

    def _check_task(self) -> None:
        """The task and the curriculum can be built, and fit the model's sizes."""
        from icgd.tasks import Curriculum, make_task

        clash = sorted({"d", "d_out"} & set(self.task_kwargs))
        if clash:
            raise ConfigError(f"task_kwargs must not set {', '.join(clash)}: use the config keys d_in and d_out")
        try:
            make_task(self.task, d=self.d_in, d_out=self.d_out, **self.task_kwargs)
        except ICGDError as exc:
            raise ConfigError(f"config keys 'task'/'task_kwargs': {exc}") from None
        if not self.curriculum:
            return
        try:
            cur = Curriculum(**self.curriculum)
        except TypeError as exc:
            raise ConfigError(f"config key 'curriculum': {exc}; keys are dims_start, dims_end, points_start, "
                              f"points_end, dims_inc, points_inc, interval, dims_interval, points_interval") from None
        except ICGDError as exc:
            raise ConfigError(f"config key 'curriculum': {exc}") from None
        if cur.dims_end > self.d_in or cur.points_end > self.n_points:
            raise ConfigError(f"the curriculum ends at {cur.dims_end} dims and {cur.points_end} points but the run "
                              f"has d_in={self.d_in}, n_points={self.n_points}; raise those or lower the curriculum")

    def _check_baselines(self) -> None:
        from icgd.learners import LEARNERS, make_learner

        for name in self.baselines:
            if name == "gd":
                continue
            try:
                make_learner(name)
            except ICGDError as exc:
                raise ConfigError(f"config key 'baselines': {name!r} cannot be a baseline ({exc}); baselines are "
                                  f"gd or learners without required arguments: "
                                  f"{', '.join(n for n in LEARNERS if _default_learner(n))}") from None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        """SHA-256 of the fields that determine the computation (see the module docstring)."""
        d = {k: v for k, v in self.to_dict().items()
             if k not in RESUMABLE and not (k in HASH_DEFAULTS and v == HASH_DEFAULTS[k])}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()

    def differing_keys(self, other: TrainConfig) -> list[str]:
        a, b = self.to_dict(), other.to_dict()
        return [k for k in a if k not in RESUMABLE and a[k] != b[k]]

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        valid = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - valid)
        if unknown:
            raise ConfigError(f"unknown config key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(valid))}")
        return cls(**d)

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ConfigError(f"cannot read the config {path}: {exc}") from None
        if not isinstance(d, dict):
            raise ConfigError(f"the config {path} must be a JSON object, got {type(d).__name__}")
        return cls.from_dict(d)


def model_params(cfg: TrainConfig) -> int:
    """Exact parameter count of the model :func:`icgd.train.loop.build_model` builds for `cfg` (nothing is built)."""
    if cfg.model == "lsa":
        D = cfg.d_in + cfg.d_out
        return (1 if cfg.shared else cfg.n_layer) * 4 * cfg.n_head * D * D
    E, ln = cfg.n_embd, 2 * cfg.n_embd if cfg.layernorm else 0
    tpp = 2 if cfg.token_format == "interleaved" else 1
    token_dim = cfg.d_in + cfg.d_out + (1 if cfg.token_format == "concat" else 0)
    W = cfg.d_mlp or 4 * E
    block = ln + 4 * E * E + 4 * E + ((ln + 2 * E * W + W + E) if cfg.mlp else 0)
    return (token_dim + 1) * E + tpp * cfg.n_points * E + cfg.n_layer * block + ln + (E + 1) * cfg.d_out


def train_memory(cfg: TrainConfig) -> MemoryEstimate:
    """Bytes a training run of `cfg` needs, without building anything: the parameters with their gradients and
    AdamW moments (4 copies, exact), the activations kept for the backward pass of one batch (per layer and pass:
    about 7·n_embd numbers per token plus n_embd + 2·d_mlp with an MLP, plus 3 attention maps of n_head·T² for T tokens), and
    the held-out evaluation (a forward pass of eval_prompts prompts, plus the float64 baselines). Within a small
    factor; see :mod:`icgd.memory`."""
    s = 8 if cfg.dtype == "float64" else 4
    params = 4 * model_params(cfg) * s
    n = cfg.n_points + (1 if cfg.model == "lsa" else 0)
    if cfg.model == "lsa":
        D = cfg.d_in + cfg.d_out
        per_prompt = cfg.n_layer * cfg.n_head * (4 * n * D + 2 * n * n)
        train_acts, eval_acts = cfg.batch_size * per_prompt * s, cfg.eval_prompts * per_prompt * s // cfg.n_layer
    else:
        T = (2 if cfg.token_format == "interleaved" else 1) * n
        mlp = cfg.n_embd + 2 * (cfg.d_mlp or 4 * cfg.n_embd) if cfg.mlp else 0  # 9·n_embd at GPT-2's width
        per_layer = T * (7 * cfg.n_embd + mlp) + 3 * cfg.n_head * T * T
        train_acts = cfg.batch_size * cfg.n_layer * cfg.loop * per_layer * s
        eval_acts = cfg.eval_prompts * per_layer * s  # no grad: one layer at a time
    d = cfg.d_in
    baselines = 8 * cfg.eval_prompts * n * (3 * d * d + 4 * d + n)  # prefix Gram matrices, kNN distances (float64)
    what = (f"training {cfg.model} (n_layer={cfg.n_layer}, n_embd={cfg.n_embd}, batch_size={cfg.batch_size}, "
            f"n_points={cfg.n_points}, eval_prompts={cfg.eval_prompts})")
    return MemoryEstimate(what, {"params+grads+adam": params, "activations": train_acts,
                                 "evaluation": eval_acts + baselines},
                          reduce="reduce n_embd, n_layer, batch_size, n_points or eval_prompts")


def _parse_value(text: str):
    """``--set`` values: JSON when it parses (numbers, true/false, lists, objects), else the raw string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _is_json(value) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def apply_overrides(d: dict, overrides: list[str]) -> dict:
    """``key=value`` strings applied to a config dict; ``task_kwargs.noise=0.1`` sets one entry of a dict field."""
    bad = [k for k, v in d.items() if not _is_json(v)]
    if bad:
        raise ConfigError(f"config key(s) {', '.join(map(repr, bad))} must hold numbers, strings, booleans, lists or "
                          f"tables, got {', '.join(type(d[k]).__name__ for k in bad)}")
    d = json.loads(json.dumps(d))
    tables = {f.name for f in fields(TrainConfig) if f.type in ("dict", dict)}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set needs key=value, got {item!r}")
        key, value = item.split("=", 1)
        key, value = key.strip(), _parse_value(value.strip())
        if "." in key:
            outer, inner = key.split(".", 1)
            if outer in tables and outer not in d:
                d[outer] = {}
            if not isinstance(d.get(outer), dict):
                raise ConfigError(f"{outer!r} is not a table of the config; dotted keys work for: "
                                  f"{', '.join(k for k, v in d.items() if isinstance(v, dict))}")
            d[outer][inner] = value
        else:
            d[key] = value
    return d


def load_config_file(path: Path) -> dict:
    """A config file: JSON (``.json``, e.g. a run's config.json) or TOML (anything else); its top level must be a
    table of config keys."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        try:
            d = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise ConfigError(f"cannot read the JSON config {path}: {exc}") from None
    else:
        d = load_toml(path)
    if not isinstance(d, dict):
        raise ConfigError(f"the config {path} must be a table of keys (a JSON object), got {type(d).__name__}")
    return d


def load_toml(path: Path) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        raise ConfigError("TOML config files need Python >= 3.11; use --set key=value instead") from None
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read the TOML config {path}: {exc}") from None


def _preset(**kw) -> dict:
    return kw


_LSA = dict(task="linear", task_kwargs={"x_dist": "uniform", "x_scale": 0.5}, model="lsa", n_head=1,
            baselines=["gd", "ols", "ridge"], beta2=0.98, lr_min_ratio=0.1)
_GARG = dict(task="linear", model="icl", attention="softmax", baselines=["gd", "ols", "ridge", "averaging", "knn"])
_WU = dict(task="wu_network", model="icl", baselines=["gd", "ols", "ridge", "knn", "averaging"])

PRESETS: dict[str, dict] = {
    # von Oswald et al.: 1-layer LSA, d = 10, n = 10, x ~ U(−0.5, 0.5), batch 2048, Adam(1e-3, β2 = 0.98)
    # smoke: lr 5e-3 with cosine decay reaches the GD loss in ~300 steps (the paper's 1e-3 needs ~1000)
    "lsa-smoke": _preset(**_LSA, d_in=10, n_points=10, n_layer=1, steps=400, batch_size=2048, lr=5e-3,
                         grad_clip=0.0, eval_prompts=4096, log_every=50, save_every=100),
    "lsa-cpu": _preset(**_LSA, d_in=10, n_points=10, n_layer=1, steps=5000, batch_size=2048, lr=1e-3,
                       grad_clip=0.0, eval_prompts=10000, log_every=100, save_every=500),
    # Garg et al.: linear regression, GPT-2 style (paper: d = 20, 41 points, 12 layers, 8 heads, 256, 500k steps)
    "garg-linear-smoke": _preset(**_GARG, d_in=5, n_points=11, n_layer=2, n_head=2, n_embd=32, steps=150,
                                 batch_size=64, lr=1e-3, warmup=10, eval_prompts=256, log_every=50, save_every=50),
    "garg-linear-cpu": _preset(**_GARG, d_in=5, n_points=21, n_layer=4, n_head=4, n_embd=128, steps=8000,
                               batch_size=64, lr=3e-4, warmup=500, eval_prompts=1024, log_every=200, save_every=1000),
    "garg-linear-paper": _preset(**_GARG, d_in=20, n_points=41, n_layer=12, n_head=8, n_embd=256, steps=500000,
                                 batch_size=64, lr=1e-4, warmup=0, eval_prompts=1280, log_every=1000,
                                 save_every=10000, curriculum={"dims_start": 5, "dims_end": 20, "dims_inc": 1,
                                                               "points_start": 11, "points_end": 41,
                                                               "points_inc": 2, "interval": 2000}),
}
for _attn in ("relu", "softmax"):
    PRESETS[f"wu-nn-{_attn}-smoke"] = _preset(**_WU, attention=_attn, d_in=3, n_points=16, n_layer=2, n_head=2,
                                              n_embd=32, steps=150, batch_size=64, lr=1e-3, warmup=10,
                                              eval_prompts=256, log_every=50, save_every=50,
                                              task_kwargs={"depth": 3})
    PRESETS[f"wu-nn-{_attn}-cpu"] = _preset(**_WU, attention=_attn, d_in=5, n_points=31, n_layer=4, n_head=4,
                                            n_embd=128, steps=6000, batch_size=64, lr=3e-4, warmup=300,
                                            eval_prompts=1024, log_every=200, save_every=1000,
                                            task_kwargs={"depth": 4})
    # Wu et al. §4: GPT-2 (12 layers, 8 heads, 256), prompts of 50 examples, 4-layer teachers
    PRESETS[f"wu-nn-{_attn}-paper"] = _preset(**_WU, attention=_attn, d_in=20, n_points=51, n_layer=12, n_head=8,
                                              n_embd=256, steps=500000, batch_size=64, lr=1e-4, warmup=5000,
                                              eval_prompts=1280, log_every=1000, save_every=10000,
                                              task_kwargs={"depth": 4})


def preset_config(name: str) -> dict:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; presets: {', '.join(sorted(PRESETS))}")
    return {**json.loads(json.dumps(PRESETS[name])), "preset": name}


def build_config(preset: str | None = None, config_file: Path | None = None,
                 overrides: list[str] | None = None) -> TrainConfig:
    """Preset, then the config file (TOML, or JSON for ``.json``), then ``--set`` overrides, each on top of the
    previous."""
    d = preset_config(preset) if preset else {}
    if config_file is not None:
        d.update(load_config_file(config_file))
    d = apply_overrides(d, overrides or [])
    return TrainConfig.from_dict(d)
