"""How long a reproduction's ``--scale paper`` would take, estimated from the throughput measured in a smaller run.

The training cost of a GPT-2 style :class:`icgd.models.ICLTransformer` step is counted in floating-point operations
(forward: ``24·E²`` per token and layer for the QKV, output and 4E-wide MLP products, plus ``4·T·E`` for the
attention scores and mix, the last block on the prediction tokens only; backward: twice the forward; embedding,
LayerNorm and read-out left out). Dividing a measured run's operations by its measured seconds
gives this machine's effective rate; the paper-scale operations divided by that rate give the time on this machine.
The device time assumes an effective :data:`GPU_FLOPS` (dense fp32/TF32 on an A100/H100-class GPU at about a third of
peak for these small matrices) with a floor of :data:`LAUNCH_S` per layer and step (kernel launches: small models on
a GPU are latency-bound), and says so; it is an estimate, not a measurement.
"""

from __future__ import annotations

from dataclasses import dataclass

GPU_FLOPS = 40e12  # assumed effective operations per second of one data-centre GPU on these models
LAUNCH_S = 3e-4  # assumed floor per layer and training step (≈ 30 kernels forward + backward + AdamW at ~10 µs)


@dataclass(frozen=True)
class TrainShape:
    """What sets the cost of one training step: layers, width, tokens per prompt, prompts per batch."""

    n_layer: int
    n_embd: int
    tokens: int
    batch: int

    def flops(self, attention: bool = True) -> float:
        """Operations of one training step (forward + backward); `attention=False` leaves out the ``4·T·E`` of the
        attention scores and mix. The last block computes queries, keys and values for all tokens and the rest only
        for the prediction tokens (half of the interleaved ones)."""
        E, T = self.n_embd, self.tokens
        att = 4 * T * E if attention else 0
        full = T * (24 * E * E + att)
        last = T * 6 * E * E + (T / 2) * (18 * E * E + att)
        return 3.0 * self.batch * ((self.n_layer - 1) * full + last)


@dataclass(frozen=True)
class Estimate:
    cpu_flops: float  # effective operations per second measured on this machine
    paper_cpu_hours: float
    paper_gpu_hours: float

    def sentence(self, what: str) -> str:
        return (f"**Paper scale, estimated device time**: {what}: about {self.paper_gpu_hours:.2g} GPU-hours "
                f"(assuming an effective {GPU_FLOPS / 1e12:.0f} TFLOP/s and at least {LAUNCH_S * 1e3:.1f} ms per "
                f"layer and step); on the CPU that ran this report (measured {self.cpu_flops / 1e9:.2g} GFLOP/s "
                f"effective in training) about {self.paper_cpu_hours:.3g} hours. Estimated from counted operations "
                "per step (see `icgd.experiments.compute_estimate`), not measured on a GPU.")


def estimate(measured: list[tuple[TrainShape, int, float]], paper: list[tuple[TrainShape, int]]) -> Estimate:
    """`measured`: (shape, steps, seconds) of the runs of this report; `paper`: (shape, steps) of the paper-scale
    runs. Returns the measured effective rate and the paper-scale time on this machine and on a GPU."""
    ops = sum(shape.flops() * steps for shape, steps, _ in measured)
    seconds = sum(s for _, _, s in measured)
    rate = ops / max(seconds, 1e-9)
    paper_ops = sum(shape.flops() * steps for shape, steps in paper)
    gpu = sum(max(shape.flops() / GPU_FLOPS, LAUNCH_S * shape.n_layer) * steps for shape, steps in paper)
    return Estimate(rate, paper_ops / rate / 3600, gpu / 3600)
