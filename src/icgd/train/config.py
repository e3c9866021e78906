"""Training configuration: one typed dataclass, presets at three scales, TOML files and ``--set key=value``.

The config is saved to ``DIR/config.json``; its hash (SHA-256 of the canonical JSON of the fields that change the
computation, i.e. everything but `steps`, `device`, the logging/saving cadence and `tensorboard`) is stored in every
checkpoint, so that a resume with a different config is refused (unless forced) naming the keys that differ.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path

from icgd.errors import ConfigError

# fields that may change between a run and its resumption without changing what is computed
RESUMABLE = ("steps", "device", "log_every", "save_every", "tensorboard", "out")


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
        if self.lr <= 0 or self.grad_clip < 0 or self.warmup < 0:
            raise ConfigError("lr must be > 0, grad_clip and warmup >= 0")
        choices = {"model": ("icl", "lsa"), "attention": ("softmax", "relu", "linear"),
                   "token_format": ("interleaved", "concat"), "dtype": ("float32", "float64"),
                   "on_nonfinite": ("stop", "skip")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"config key {name!r} must be one of {', '.join(allowed)}, got "
                                  f"{getattr(self, name)!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def hash(self) -> str:
        """SHA-256 of the fields that determine the computation (see the module docstring)."""
        d = {k: v for k, v in self.to_dict().items() if k not in RESUMABLE}
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
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the config {path}: {exc}") from exc


def _parse_value(text: str):
    """``--set`` values: JSON when it parses (numbers, true/false, lists, objects), else the raw string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def apply_overrides(d: dict, overrides: list[str]) -> dict:
    """``key=value`` strings applied to a config dict; ``task_kwargs.noise=0.1`` sets one entry of a dict field."""
    d = json.loads(json.dumps(d))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set needs key=value, got {item!r}")
        key, value = item.split("=", 1)
        key, value = key.strip(), _parse_value(value.strip())
        if "." in key:
            outer, inner = key.split(".", 1)
            if not isinstance(d.get(outer), dict):
                raise ConfigError(f"{outer!r} is not a table of the config; dotted keys work for: "
                                  f"{', '.join(k for k, v in d.items() if isinstance(v, dict))}")
            d[outer][inner] = value
        else:
            d[key] = value
    return d


def load_toml(path: Path) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        raise ConfigError("TOML config files need Python >= 3.11; use --set key=value instead") from None
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read the TOML config {path}: {exc}") from exc


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
    """Preset, then the TOML file, then ``--set`` overrides, each on top of the previous."""
    d = preset_config(preset) if preset else {}
    if config_file is not None:
        d.update(load_toml(config_file))
    d = apply_overrides(d, overrides or [])
    return TrainConfig.from_dict(d)
