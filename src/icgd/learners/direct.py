"""Wu et al. 2025's direct-training baseline (§5, "training with prompt samples"): a network of the teacher's depth,
hidden width 200, trained on the prompt's own pairs with MSE for 100 epochs; the score is the best over epochs.

One network per prompt (per prompt and prefix, for :meth:`DirectTraining.prefix_predictions`), all trained in one
batched computation: every weight tensor has a leading network axis, the forward pass is ``bmm``, the
backward pass is written out and Adam is applied to the batched tensors.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from icgd._checks import positive_float, positive_int
from icgd.analysis import r2_per_position
from icgd.errors import ShapeError, SpecError
from icgd.learners.base import Learner, check_context, check_targets
from icgd.nets import get_activation

# Floats of parameters, optimiser state and activations held at once: on a CPU the training is compute-bound and a
# small working set stays in cache (32 MiB in float64); on an accelerator large blocks keep it busy (2 GiB).
_CHUNK_FLOATS = {"cpu": 1 << 22}
_CHUNK_FLOATS_DEFAULT = 1 << 28

Params = list[tuple[torch.Tensor, torch.Tensor]]


class EpochScores(NamedTuple):
    """Per-position scores of :meth:`DirectTraining.best_over_epochs`.

    ``best (m,)``: the best score of each position over epochs; ``epoch (m,)``: the 0-based epoch that reached it
    (index e = after e + 1 epochs); ``scores (epochs, m)``: every epoch's score."""

    best: torch.Tensor
    epoch: torch.Tensor
    scores: torch.Tensor


class DirectTraining(Learner):
    """A `depth`-layer MLP ``d → width → … → width → d_out`` (biases, `activation` between layers, linear output)
    trained from scratch on each context with MSE (mean over pairs and outputs) for `epochs` epochs.

    * Initialisation: ``nn.Linear``'s default distribution, ``U(±1/√fan_in)`` for weights and biases, drawn from
      ``torch.Generator().manual_seed(seed)`` at every call (so every call starts from the same network) and shared
      by every prompt, so a prompt's result does not depend on the batch it comes in (:meth:`init_params` returns
      it). Pass a CPU `generator` instead to draw a new initial network at each call from its state.
    * An epoch is one pass over the pairs: one full-batch step (``batch_size=None``, the default) or steps on
      mini-batches of `batch_size` in an order drawn from the same seed and shared by all prompts (a prefix uses
      the restriction of that order to its pairs).
    * ``optimizer="adam"`` is ``torch.optim.Adam`` (betas, eps, no weight decay), ``"sgd"`` plain gradient steps.
    * ``lr = 3e-3`` by default; the paper gives none. On Wu-style prompts (d = 20, n = 40, x ~ N(−2, I), a
      3-layer ReLU teacher of width 20, standardised y; 32 prompts, 10 queries) the best-over-epochs R² of this
      baseline (depth 3, 100 full-batch Adam epochs) was 0.944 / 0.951 / 0.943 / 0.841 for lr = 1e-3 / 3e-3 /
      1e-2 / 3e-2 (0.989 / 0.989 / 0.988 / 0.994 with a sigmoid teacher).

    :meth:`predict` is the network after the last epoch; :meth:`epoch_predictions` gives every epoch and
    :meth:`best_over_epochs` the paper's "highest R² over epochs". Networks are trained in chunks of at most
    `max_networks` (default: about 32 MiB of parameters, state and activations on a CPU, 2 GiB on a GPU).
    """

    name = "direct"

    def __init__(self, depth: int, width: int = 200, epochs: int = 100, lr: float = 3e-3, activation: str = "relu",
                 optimizer: str = "adam", batch_size: int | None = None, seed: int = 0,
                 generator: torch.Generator | None = None, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, max_networks: int | None = None):
        self.depth = positive_int(depth, "depth")
        self.width = positive_int(width, "width")
        self.epochs = positive_int(epochs, "epochs")
        self.lr = positive_float(lr, "lr")
        self.act = get_activation(activation)
        if optimizer not in ("adam", "sgd"):
            raise SpecError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
        self.optimizer = optimizer
        self.batch_size = None if batch_size is None else positive_int(batch_size, "batch_size")
        self.seed = positive_int(seed, "seed", minimum=0)
        if generator is not None and (not isinstance(generator, torch.Generator) or generator.device.type != "cpu"):
            raise SpecError(f"generator must be a CPU torch.Generator (the draws are made on the CPU), got {generator!r}")
        self.generator = generator
        if len(betas) != 2 or not all(0 <= float(b) < 1 for b in betas):
            raise SpecError(f"betas must be two numbers in [0, 1), got {betas!r}")
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = positive_float(eps, "eps", allow_zero=True)
        self.max_networks = None if max_networks is None else positive_int(max_networks, "max_networks")

    # ---- the network ------------------------------------------------------------------------------------------

    def dims(self, d_in: int, d_out: int) -> list[int]:
        return [d_in] + [self.width] * (self.depth - 1) + [d_out]

    def init_params(self, d_in: int, d_out: int, dtype: torch.dtype = torch.float64, device=None) -> Params:
        """The shared initial network: ``[(W_l (out, in), b_l (out,)), …]``, ``U(±1/√in)``, drawn in float64 on the
        CPU from `seed` (weight, then bias, layer by layer) and then cast. With a `generator` this consumes its
        state like a training call does."""
        return [(W.to(dtype=dtype, device=device), b.to(dtype=dtype, device=device))
                for W, b in self._draw_init(d_in, d_out)[0]]

    def _draw_init(self, d_in: int, d_out: int) -> tuple[Params, torch.Generator]:
        """The float64 initial network and the generator after its draws (which then draws the pair orders)."""
        g = self.generator if self.generator is not None else torch.Generator().manual_seed(self.seed)
        dims, out = self.dims(d_in, d_out), []
        for i, o in zip(dims[:-1], dims[1:]):
            bound = 1.0 / math.sqrt(i)
            W = (torch.rand(o, i, generator=g, dtype=torch.float64) * 2 - 1) * bound
            b = (torch.rand(o, generator=g, dtype=torch.float64) * 2 - 1) * bound
            out.append((W, b))
        return out, g

    def _forward(self, params: Params, H: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Output ``(P, q, d_out)``, each layer's input and each hidden pre-activation."""
        inputs, pre = [], []
        for j, (W, b) in enumerate(params):
            inputs.append(H)
            a = torch.bmm(H, W.transpose(1, 2)) + b[:, None, :]
            if j < len(params) - 1:
                pre.append(a)
                H = self.act(a)
            else:
                H = a
        return H, inputs, pre

    def _grads(self, params: Params, X: torch.Tensor, Y: torch.Tensor, mask: torch.Tensor) -> Params:
        """Gradient of each network's ``Σ_{valid j} ‖f(x_j) − y_j‖² / (#valid · d_out)`` (backprop by hand)."""
        out, inputs, pre = self._forward(params, X)
        count = mask.sum(-1).clamp(min=1).to(X.dtype) * Y.shape[-1]
        g = (2.0 / count)[:, None, None] * (out - Y) * mask[..., None].to(X.dtype)
        grads: Params = []
        for j in range(len(params) - 1, -1, -1):
            grads.append((g.transpose(1, 2) @ inputs[j], g.sum(1)))
            if j > 0:
                g = (g @ params[j][0]) * self.act.deriv(pre[j - 1])
        return grads[::-1]

    def _update(self, params: Params, grads: Params, state: list, t: torch.Tensor | int,
                active: torch.Tensor | None) -> None:
        """One optimiser step in place, with ``torch.optim.Adam``'s (single-tensor) arithmetic, or plain SGD;
        networks not `active` (mini-batch mode) keep their parameters and state."""
        b1, b2 = self.betas
        for j, ((W, b), (gW, gb)) in enumerate(zip(params, grads)):
            for k, (p, g) in enumerate(((W, gW), (b, gb))):
                if self.optimizer == "sgd":
                    p_new = p - self.lr * g if active is not None else p.add_(g, alpha=-self.lr)
                elif active is None:
                    assert isinstance(t, int)
                    m, v = state[j][k]
                    m.lerp_(g, 1 - b1)
                    v.mul_(b2).addcmul_(g, g, value=1 - b2)
                    denom = (v.sqrt() / math.sqrt(1 - b2 ** t)).add_(self.eps)
                    p.addcdiv_(m, denom, value=-self.lr / (1 - b1 ** t))
                    continue
                else:
                    assert isinstance(t, torch.Tensor)
                    m, v = state[j][k]
                    tt = t.reshape(-1, *([1] * (p.dim() - 1))).to(p.dtype).clamp(min=1)
                    m_new = m.lerp(g, 1 - b1)
                    v_new = v * b2 + (1 - b2) * g * g
                    p_new = p - (self.lr / (1 - b1 ** tt)) * m_new / (v_new.sqrt() / torch.sqrt(1 - b2 ** tt) + self.eps)
                    m.copy_(self._keep(active, m_new, m)), v.copy_(self._keep(active, v_new, v))
                if active is not None:
                    p.copy_(self._keep(active, p_new, p))

    @staticmethod
    def _keep(active: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
        return torch.where(active.reshape(-1, *([1] * (new.dim() - 1))), new, old)

    def _train(self, X: torch.Tensor, Y: torch.Tensor, mask: torch.Tensor, Q: torch.Tensor, record: bool
               ) -> torch.Tensor:
        """Train P networks on ``X (P, n, d)``, ``Y (P, n, d_out)`` (pairs where ``mask (P, n)``); predictions at
        ``Q (P, q, d)`` after every epoch ``(epochs, P, q, d_out)`` if `record`, else after the last ``(1, …)``."""
        P, n, d = X.shape
        init, g = self._draw_init(d, Y.shape[-1])
        params = [(W.to(X).expand(P, -1, -1).clone(), b.to(X).expand(P, -1).clone()) for W, b in init]
        keys = torch.rand(self.epochs, n, generator=g, dtype=torch.float64).to(X.device)
        state = [[(torch.zeros_like(W), torch.zeros_like(W)), (torch.zeros_like(b), torch.zeros_like(b))]
                 for W, b in params]
        full = self.batch_size is None or self.batch_size >= n
        t: torch.Tensor | int = 0 if full else torch.zeros(P, dtype=torch.long, device=X.device)
        max_valid = int(mask.sum(-1).max())
        preds = []
        for e in range(self.epochs):
            if full:
                t += 1
                self._update(params, self._grads(params, X, Y, mask), state, t, None)
            else:
                assert self.batch_size is not None and isinstance(t, torch.Tensor)
                order = torch.sort(torch.where(mask, keys[e], math.inf), dim=-1, stable=True)[1]
                for s in range(0, max_valid, self.batch_size):
                    idx = order[:, s:s + self.batch_size]
                    mb = torch.gather(mask, 1, idx)
                    active = mb.any(-1)
                    t = t + active.long()
                    Xb = torch.gather(X, 1, idx[..., None].expand(-1, -1, d))
                    Yb = torch.gather(Y, 1, idx[..., None].expand(-1, -1, Y.shape[-1]))
                    self._update(params, self._grads(params, Xb, Yb, mb), state, t, active)
            if record or e == self.epochs - 1:
                preds.append(self._forward(params, Q)[0])
        return torch.stack(preds)

    def _networks_per_chunk(self, n: int, d: int, d_out: int, device: torch.device) -> int:
        if self.max_networks is not None:
            return self.max_networks
        dims = self.dims(d, d_out)
        num_params = sum((i + 1) * o for i, o in zip(dims[:-1], dims[1:]))
        per_net = 4 * num_params + 3 * n * sum(dims)
        return max(1, _CHUNK_FLOATS.get(device.type, _CHUNK_FLOATS_DEFAULT) // per_net)

    # ---- batched entry points ---------------------------------------------------------------------------------

    def _run(self, X: torch.Tensor, Y: torch.Tensor, x_query: torch.Tensor | None, record: bool) -> torch.Tensor:
        """``(E, B, m, d_out)`` predictions at the queries, or with ``x_query=None`` ``(E, B, n, d_out)`` at every
        prefix (one network per prompt and prefix length 1 … n−1; row 0 is 0). E = epochs or 1."""
        B, n, d = X.shape
        k = Y.shape[-1]
        if x_query is None:
            bi = torch.arange(B, device=X.device).repeat_interleave(n - 1)
            ii = torch.arange(1, n, device=X.device).repeat(B)
        else:
            bi, ii = torch.arange(B, device=X.device), None
        E = self.epochs if record else 1
        rows = x_query.shape[1] if x_query is not None else n
        out = X.new_zeros(E, B, rows, k)
        step = self._networks_per_chunk(n, d, k, X.device)
        for c0 in range(0, bi.numel(), step):
            b = bi[c0:c0 + step]
            if ii is None:
                assert x_query is not None
                mask = torch.ones(b.numel(), n, dtype=torch.bool, device=X.device)
                out[:, b] = self._train(X[b], Y[b], mask, x_query[b], record)
            else:
                i = ii[c0:c0 + step]
                mask = torch.arange(n, device=X.device)[None, :] < i[:, None]
                pred = self._train(X[b], Y[b], mask, X[b, i][:, None], record)  # (E, c, 1, k)
                out[:, b, i] = pred[:, :, 0]
        return out

    def _predict(self, X, Y, x_query):
        return self._run(X, Y, x_query, record=False)[0]

    def _prefix(self, X, Y):
        return self._run(X, Y, None, record=False)[0]

    def epoch_predictions(self, X, Y, x_query=None) -> torch.Tensor:
        """Predictions after every epoch: ``(epochs, B, m, d_out)`` at `x_query`, or, without queries,
        ``(epochs, B, n, d_out)`` at every prefix as in :meth:`prefix_predictions`. Unbatched inputs drop B."""
        X, Y, q, single = check_context(X, Y, x_query)
        out = self._run(X, Y, q, record=True)
        return out[:, 0] if single else out

    def best_over_epochs(self, X, Y, x_query=None, y_query=None, score: str = "r2") -> EpochScores:
        """Wu et al.'s measure: at each position, the best score over epochs.

        ``score="r2"``: :func:`r2_per_position`, R² over the batch at each query position (max over epochs);
        ``score="mse"``: mean squared error over the batch and outputs (min over epochs). Without `x_query` the
        positions are the prefixes (targets `Y`, row i trained on pairs < i): Wu's R²-vs-context-length curve.
        """
        if score not in ("r2", "mse"):
            raise SpecError(f"score must be 'r2' or 'mse', got {score!r}")
        X, Y, q, single = check_context(X, Y, x_query)
        if single:
            raise ShapeError("best_over_epochs scores positions over a batch of prompts; pass X of shape (B, n, d)")
        if q is None:
            target = Y
        else:
            if y_query is None:
                raise ShapeError("y_query is required with x_query")
            target = check_targets(y_query, "y_query", q, Y.shape[-1])
        preds = self._run(X, Y, q, record=True)
        if score == "r2":
            scores = r2_per_position(preds, target)
            best, epoch = scores.max(dim=0)
        else:
            scores = ((preds - target) ** 2).mean(dim=(1, 3))
            best, epoch = scores.min(dim=0)
        return EpochScores(best, epoch, scores)

    def _hparams(self):
        return {"depth": self.depth, "width": self.width, "epochs": self.epochs, "lr": self.lr,
                "activation": self.act.name, "optimizer": self.optimizer, "batch_size": self.batch_size,
                "seed": self.seed if self.generator is None else "generator"}
