"""Section 1: icgd's :class:`~icgd.models.ICLTransformer` against the setup of Garg et al. (2022) that researchers run
today, HuggingFace ``GPT2Model`` between a linear read-in and read-out on interleaved ``x``/``[y, 0…]`` tokens.

Training steps/s, evaluation prompts/s and peak training memory at identical sizes, batch, prompt length and
optimizer (torch.optim.AdamW's default implementation, the optimizer of icgd's trainer and of Garg et al.'s and
HuggingFace's scripts). All models live in one process and run
round-robin, one step each per round, so they see the same background load; the ratios are medians of per-round
ratios. Peak training memory is measured in a fresh child process per model on CPU (peak RSS during the steps minus
RSS before them) and with ``torch.cuda.max_memory_allocated`` on a GPU.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from icgd.bench.common import (Stats, interleaved, paired_ratio, peak_rss_bytes, reset_peak_rss, rss_bytes,
                               sync)
from icgd.bench.profile import profiled_models
from icgd.errors import ICGDError
from icgd.models import ICLTransformer

HF_MISSING = "not measured: install icgd[bench] (pip install 'icgd[bench]') for the HuggingFace anchor"
ANCHOR = "hf"  # key of the HuggingFace model in the results


@dataclass(frozen=True)
class ModelSize:
    n_layer: int
    n_head: int
    n_embd: int

    @property
    def label(self) -> str:
        return f"{self.n_layer}L/{self.n_head}H/{self.n_embd}"


CPU_SIZES = (ModelSize(3, 2, 64), ModelSize(6, 4, 128))
GPU_SIZES = (ModelSize(3, 2, 64), ModelSize(6, 4, 128), ModelSize(12, 8, 256))


@dataclass(frozen=True)
class TrainingBenchConfig:
    """Sizes and repeats of section 1; the defaults are those of the issue (batch 64, 41 points, d = 20)."""

    sizes: tuple[ModelSize, ...] = CPU_SIZES
    batch: int = 64
    points: int = 41
    d: int = 20
    rounds: int = 12  # timed training rounds (one step of every model per round)
    eval_rounds: int = 15
    warmup: int = 2
    memory_steps: int = 3
    memory: bool = True
    profile: bool = True  # a torch.profiler breakdown of the hf and icgd steps (CPU)
    lr: float = 1e-4
    seed: int = 0
    variants: tuple[str, ...] = ("hf", "icgd", "icgd-relu")


@dataclass
class SizeResult:
    size: ModelSize
    params: dict[str, int]
    train: dict[str, Stats]  # seconds per step
    evaluate: dict[str, Stats]  # seconds per forward pass of one batch
    train_ratio: dict[str, Stats]  # per-round speed ratio vs the anchor
    eval_ratio: dict[str, Stats]
    memory: dict[str, dict[str, int]] = field(default_factory=dict)  # variant -> {"delta", "peak"} bytes
    profile: dict[str, dict[str, float]] = field(default_factory=dict)  # variant -> category -> s per step (CPU)


@dataclass
class TrainingResult:
    config: TrainingBenchConfig
    device: str
    hf_available: bool
    attn_implementation: str
    sizes: list[SizeResult]
    memory_method: str


def hf_available() -> bool:
    return importlib.util.find_spec("transformers") is not None


class GPT2Regressor(nn.Module):
    """The anchor: ``Linear(d → E)`` read-in of the interleaved tokens ``x_1, [y_1, 0…], x_2, …``, HuggingFace
    ``GPT2Model`` (dropout 0, no KV cache, its default attention implementation) and ``Linear(E → 1)`` read-out at the
    ``x`` tokens, as in Garg et al.'s ``TransformerModel``."""

    def __init__(self, d: int, points: int, size: ModelSize):
        super().__init__()
        from transformers import GPT2Config, GPT2Model

        cfg = GPT2Config(n_positions=2 * points, n_embd=size.n_embd, n_layer=size.n_layer, n_head=size.n_head,
                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False)
        self.read_in = nn.Linear(d, size.n_embd)
        self.backbone = GPT2Model(cfg)
        self.read_out = nn.Linear(size.n_embd, 1)

    def forward(self, X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        B, n, d = X.shape
        y_wide = torch.cat((Y, Y.new_zeros(B, n, d - Y.shape[-1])), dim=-1)
        tokens = torch.stack((X, y_wide), dim=2).view(B, 2 * n, d)
        h = self.backbone(inputs_embeds=self.read_in(tokens)).last_hidden_state
        return self.read_out(h[:, ::2])

    @property
    def attn_implementation(self) -> str:
        return str(getattr(self.backbone.config, "_attn_implementation", "default"))


def trained_params(model: nn.Module) -> int:
    """Parameters that training updates (HuggingFace's GPT2Model also holds a 50257-token embedding that
    ``inputs_embeds`` bypasses; it gets no gradient and no AdamW state)."""
    return sum(p.numel() for name, p in model.named_parameters() if not name.endswith("wte.weight"))


def build(variant: str, cfg: TrainingBenchConfig, size: ModelSize, device: torch.device) -> nn.Module:
    g = torch.Generator().manual_seed(cfg.seed)
    if variant == ANCHOR:
        torch.manual_seed(cfg.seed)  # transformers initialises from the global RNG
        return GPT2Regressor(cfg.d, cfg.points, size).to(device)
    attention = {"icgd": "softmax", "icgd-relu": "relu"}[variant]
    return ICLTransformer(cfg.d, n_layer=size.n_layer, n_head=size.n_head, n_embd=size.n_embd, attention=attention,
                          max_points=cfg.points, generator=g).to(device)


def batches(cfg: TrainingBenchConfig, device: torch.device, count: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A few noiseless linear-regression batches (x ~ N(0, I), y = ⟨w, x⟩); sampled once, outside the timings."""
    g = torch.Generator().manual_seed(cfg.seed + 1)
    out = []
    for _ in range(count):
        X = torch.randn(cfg.batch, cfg.points, cfg.d, generator=g)
        w = torch.randn(cfg.batch, cfg.d, 1, generator=g)
        out.append((X.to(device), (X @ w).to(device)))
    return out


def train_stepper(model: nn.Module, cfg: TrainingBenchConfig, data: list) -> Callable[[], None]:
    """One AdamW step per call (torch.optim.AdamW's default implementation for every model), cycling through
    `data`."""
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    state = {"i": 0}

    def step() -> None:
        X, Y = data[state["i"] % len(data)]
        state["i"] += 1
        opt.zero_grad(set_to_none=True)
        F.mse_loss(model(X, Y), Y).backward()
        opt.step()

    return step


def eval_stepper(model: nn.Module, data: list) -> Callable[[], None]:
    X, Y = data[0]

    def run() -> None:
        with torch.inference_mode():
            model(X, Y)

    return run


def _memory_child(variant: str, cfg: TrainingBenchConfig, size: ModelSize, threads: int) -> dict[str, int]:
    """In a fresh process: the peak RSS over `memory_steps` training steps and its rise over the RSS before them."""
    torch.set_num_threads(threads)
    device = torch.device("cpu")
    model = build(variant, cfg, size, device)
    step = train_stepper(model, cfg, batches(cfg, device, count=1))
    before = rss_bytes()
    reset_peak_rss()
    for _ in range(cfg.memory_steps):
        step()
    return {"delta": peak_rss_bytes() - before, "peak": peak_rss_bytes()}


def cpu_memory(variant: str, cfg: TrainingBenchConfig, size: ModelSize) -> dict[str, int]:
    """Peak training memory of one model, measured in a child Python process (``python -m icgd.bench.training``)."""
    payload = json.dumps({"variant": variant, "cfg": {**asdict(cfg), "sizes": []}, "size": asdict(size),
                          "threads": torch.get_num_threads()})
    proc = subprocess.run([sys.executable, "-m", "icgd.bench.training", payload], capture_output=True, text=True,
                          timeout=900)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ICGDError(f"the memory probe for {variant} {size.label} failed: {tail[0]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cuda_memory(step: Callable[[], None], device: torch.device) -> dict[str, int]:
    sync(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    sync(device)
    peak = torch.cuda.max_memory_allocated(device)
    return {"delta": peak - base, "peak": peak}


def bench_size(cfg: TrainingBenchConfig, size: ModelSize, device: torch.device, variants: list[str]) -> SizeResult:
    data = batches(cfg, device)
    models = {v: build(v, cfg, size, device) for v in variants}
    params = {v: trained_params(m) for v, m in models.items()}
    steps = {v: train_stepper(m, cfg, data) for v, m in models.items()}
    train = interleaved(steps, cfg.rounds, device, warmup=cfg.warmup)
    profiled = {}
    if cfg.profile:
        profiled = profiled_models({v: steps[v] for v in variants if v in (ANCHOR, "icgd")}, device)
    memory = {}
    if cfg.memory and device.type == "cuda":  # after warm-up: Adam state exists, the peak is the step's own
        memory = {v: cuda_memory(steps[v], device) for v in variants}
    for m in models.values():
        m.eval()
    evals = {v: eval_stepper(m, data) for v, m in models.items()}
    evaluate = interleaved(evals, cfg.eval_rounds, device, warmup=cfg.warmup)
    if cfg.memory and device.type != "cuda":
        del models, steps, evals
        memory = {v: cpu_memory(v, cfg, size) for v in variants}
    base = ANCHOR if ANCHOR in variants else None
    return SizeResult(
        size=size, params=params,
        train={v: Stats.of(t) for v, t in train.items()},
        evaluate={v: Stats.of(t) for v, t in evaluate.items()},
        train_ratio={v: paired_ratio(train[base], train[v]) for v in variants} if base else {},
        eval_ratio={v: paired_ratio(evaluate[base], evaluate[v]) for v in variants} if base else {},
        memory=memory, profile=profiled,
    )


def run(cfg: TrainingBenchConfig, device: torch.device, log: Callable[[str], None] = print) -> TrainingResult:
    have_hf = hf_available()
    variants = [v for v in cfg.variants if v != ANCHOR or have_hf]
    attn = "n/a"
    if have_hf and ANCHOR in variants:
        attn = GPT2Regressor(cfg.d, cfg.points, ModelSize(1, 1, 8)).attn_implementation
    results = []
    for size in cfg.sizes:
        log(f"[training] {size.label}: {', '.join(variants)}, {cfg.rounds} rounds")
        results.append(bench_size(cfg, size, device, variants))
    method = ("torch.cuda.max_memory_allocated over one training step after warm-up, minus the memory allocated "
              "before it" if device.type == "cuda" else
              f"a fresh child process per model: peak RSS (Linux VmHWM, reset just before the first step) over "
              f"{cfg.memory_steps} training steps minus the RSS just before the first step (so imports and the weights are excluded; "
              f"activations, gradients, AdamW state and workspaces are included)")
    return TrainingResult(cfg, str(device), have_hf, attn, results, method)


if __name__ == "__main__":  # the memory probe of cpu_memory
    args = json.loads(sys.argv[1])
    print(json.dumps(_memory_child(args["variant"], TrainingBenchConfig(**{**args["cfg"], "sizes": ()}),
                                   ModelSize(**args["size"]), args["threads"])))
