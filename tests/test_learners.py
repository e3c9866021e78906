"""gd_trajectory / empirical_risk against backpropagation written out by hand for a 2-layer sigmoid network.

    f(w, x) = σ(V2 σ(V1 x)),   L(w) = 1/(2n) Σ_i ‖f(w, x_i) − y_i‖²,   w ← clip(w − η ∇L(w), −box, box)

The gradient below is the chain rule, sample by sample, in numpy; it uses neither autograd nor icgd.nets.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from icgd import NetSpec
from icgd.errors import NonFiniteError, ShapeError, SpecError
from icgd.learners import empirical_risk, gd_trajectory

D_IN, K, D_OUT = 3, 4, 2
SPEC = NetSpec(d_in=D_IN, width=K, depth=2, d_out=D_OUT, activation="sigmoid")


def sig(a):
    return 1.0 / (1.0 + np.exp(-a))


def split(w):
    """Flat w → V1 (K, d_in), V2 (d_out, K): row-major blocks, V1 first."""
    w = np.asarray(w, dtype=np.float64)
    return w[: K * D_IN].reshape(K, D_IN), w[K * D_IN:].reshape(D_OUT, K)


def loss_and_grad(w, X, Y):
    """L(w) and ∇L(w) by explicit backprop over the n samples."""
    V1, V2 = split(w)
    n = X.shape[0]
    L = 0.0
    g1, g2 = np.zeros_like(V1), np.zeros_like(V2)
    for x, y in zip(X, Y):
        a1 = V1 @ x                      # hidden pre-activation (K,)
        p1 = sig(a1)                     # hidden output
        a2 = V2 @ p1                     # output pre-activation (d_out,)
        p2 = sig(a2)                     # f(w, x)
        r = p2 - y                       # residual
        L += 0.5 * float(r @ r) / n
        delta2 = r * p2 * (1 - p2) / n   # ∂L/∂a2, σ' = σ(1 − σ)
        g2 += np.outer(delta2, p1)       # ∂L/∂V2
        delta1 = (V2.T @ delta2) * p1 * (1 - p1)  # ∂L/∂a1
        g1 += np.outer(delta1, x)        # ∂L/∂V1
    return L, np.concatenate([g1.ravel(), g2.ravel()])


def hand_trajectory(w0, X, Y, eta, steps, box=None):
    w = np.asarray(w0, dtype=np.float64).copy()
    traj, unprojected = [w.copy()], []
    for _ in range(steps):
        _, g = loss_and_grad(w, X, Y)
        step = w - eta * g
        unprojected.append(step.copy())
        w = np.clip(step, -box, box) if box is not None else step
        traj.append(w.copy())
    return np.stack(traj), unprojected


def data(gen, batch=None, n=6):
    shape = () if batch is None else (batch,)
    X = torch.randn(*shape, n, D_IN, generator=gen, dtype=torch.float64)
    Y = torch.rand(*shape, n, D_OUT, generator=gen, dtype=torch.float64)
    w0 = torch.randn(*shape, SPEC.num_params, generator=gen, dtype=torch.float64)
    return X, Y, w0


def test_empirical_risk_matches_hand_loss(gen):
    X, Y, w0 = data(gen, batch=3)
    risk = empirical_risk(SPEC, w0, X, Y)
    assert risk.shape == (3,)
    for b in range(3):
        L, _ = loss_and_grad(w0[b].numpy(), X[b].numpy(), Y[b].numpy())
        assert abs(risk[b].item() - L) < 1e-14


def test_unbatched_trajectory_matches_hand_backprop(gen):
    X, Y, w0 = data(gen)
    traj = gd_trajectory(SPEC, X, Y, w0, eta=0.7, steps=5)
    assert traj.shape == (6, SPEC.num_params) and traj.dtype == torch.float64
    ref, _ = hand_trajectory(w0.numpy(), X.numpy(), Y.numpy(), 0.7, 5)
    np.testing.assert_allclose(traj.numpy(), ref, rtol=1e-12, atol=1e-13)
    assert torch.equal(traj[0], w0)
    # the risk goes down on this small step size
    risks = [loss_and_grad(w, X.numpy(), Y.numpy())[0] for w in ref]
    assert risks[-1] < risks[0]


def test_batched_trajectory_matches_hand_backprop_per_prompt(gen):
    X, Y, w0 = data(gen, batch=3)
    traj = gd_trajectory(SPEC, X, Y, w0, eta=0.5, steps=4)
    assert traj.shape == (3, 5, SPEC.num_params)
    for b in range(3):
        ref, _ = hand_trajectory(w0[b].numpy(), X[b].numpy(), Y[b].numpy(), 0.5, 4)
        np.testing.assert_allclose(traj[b].numpy(), ref, rtol=1e-12, atol=1e-13)


def test_shared_w0_is_broadcast_over_prompts(gen):
    X, Y, w0 = data(gen, batch=2)
    traj = gd_trajectory(SPEC, X, Y, w0[0], eta=0.5, steps=3)
    assert traj.shape == (2, 4, SPEC.num_params)
    for b in range(2):
        ref, _ = hand_trajectory(w0[0].numpy(), X[b].numpy(), Y[b].numpy(), 0.5, 3)
        np.testing.assert_allclose(traj[b].numpy(), ref, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("batch", [None, 2])
def test_box_clips_exactly_the_unprojected_step(gen, batch):
    X, Y, w0 = data(gen, batch=batch)
    box = 1.2
    w0 = w0.clamp(-box, box)
    eta = 8.0  # large enough that some coordinates leave the box
    traj = gd_trajectory(SPEC, X, Y, w0, eta=eta, steps=4, box=box)
    Xs, Ys, ws = (t[None] if batch is None else t for t in (X, Y, w0))
    trajs = traj[None] if batch is None else traj
    clipped = 0
    for b in range(Xs.shape[0]):
        ref, unproj = hand_trajectory(ws[b].numpy(), Xs[b].numpy(), Ys[b].numpy(), eta, 4, box=box)
        np.testing.assert_allclose(trajs[b].numpy(), ref, rtol=1e-12, atol=1e-13)
        for t, step in enumerate(unproj, start=1):
            outside = np.abs(step) > box
            clipped += int(outside.sum())
            # clipped coordinates sit on the boundary with the sign of the unprojected step
            np.testing.assert_array_equal(trajs[b, t].numpy()[outside], np.sign(step[outside]) * box)
            np.testing.assert_allclose(trajs[b, t].numpy()[~outside], step[~outside], rtol=1e-12, atol=1e-13)
    assert clipped > 0
    assert traj.abs().max().item() <= box
    # without the box the same run leaves it
    free = gd_trajectory(SPEC, X, Y, w0, eta=eta, steps=4)
    assert free.abs().max().item() > box


def test_float32_runs_and_stays_close_to_float64_hand_reference(gen):
    X, Y, w0 = data(gen, batch=2)
    traj = gd_trajectory(SPEC, X.float(), Y.float(), w0.float(), eta=0.5, steps=3, box=2.0)
    assert traj.dtype == torch.float32 and traj.shape == (2, 4, SPEC.num_params)
    for b in range(2):
        ref, _ = hand_trajectory(w0[b].float().double().numpy(), X[b].float().double().numpy(),
                                 Y[b].float().double().numpy(), 0.5, 3, box=2.0)
        np.testing.assert_allclose(traj[b].double().numpy(), ref, rtol=1e-5, atol=1e-5)
    # float32 weights with float64 data: the data follow the weights' dtype
    assert gd_trajectory(SPEC, X, Y, w0.float(), eta=0.5, steps=1).dtype == torch.float32


def test_zero_steps_returns_w0(gen):
    X, Y, w0 = data(gen)
    traj = gd_trajectory(SPEC, X, Y, w0, eta=0.1, steps=0)
    assert traj.shape == (1, SPEC.num_params)
    assert torch.equal(traj[0], w0)


def test_other_depth_and_activation_against_autograd_free_difference(gen):
    """Depth 3 tanh net without output activation: one GD step equals w − η × central-difference gradient."""
    spec = NetSpec(d_in=2, width=3, depth=3, d_out=1, activation="tanh", output_activation=False)
    X = torch.randn(5, 2, generator=gen, dtype=torch.float64)
    Y = torch.randn(5, 1, generator=gen, dtype=torch.float64)
    w0 = torch.randn(spec.num_params, generator=gen, dtype=torch.float64) * 0.7

    def risk(w):
        V = [w[s].reshape(o, i) for s, (o, i) in zip(spec.offsets(), spec.shapes)]
        tot = 0.0
        for x, y in zip(X.numpy(), Y.numpy()):
            p = np.tanh(V[0] @ x)
            p = np.tanh(V[1] @ p)
            p = V[2] @ p
            tot += 0.5 * float(((p - y) ** 2).sum())
        return tot / len(X)

    w = w0.numpy()
    h = 1e-6
    fd = np.array([(risk(w + h * e) - risk(w - h * e)) / (2 * h) for e in np.eye(len(w))])
    traj = gd_trajectory(spec, X, Y, w0, eta=0.3, steps=1)
    np.testing.assert_allclose(traj[1].numpy(), w - 0.3 * fd, rtol=0, atol=1e-8)


# ------------------------------------------------------------------------------------------------- errors

def test_bad_inputs_raise_named_errors(gen):
    X, Y, w0 = data(gen)
    with pytest.raises(ShapeError, match=r"X has last dimension 2 but d_in is 3"):
        gd_trajectory(SPEC, X[:, :2], Y, w0, eta=0.1, steps=1)
    with pytest.raises(ShapeError, match=r"Y has last dimension 1 but d_out is 2"):
        gd_trajectory(SPEC, X, Y[:, :1], w0, eta=0.1, steps=1)
    with pytest.raises(ShapeError, match=r"Y has shape \(5, 2\) but X has 6 pairs"):
        gd_trajectory(SPEC, X, Y[:5], w0, eta=0.1, steps=1)
    with pytest.raises(ShapeError, match=r"w0 has last dimension 19 but spec.num_params is 20"):
        gd_trajectory(SPEC, X, Y, w0[:-1], eta=0.1, steps=1)
    with pytest.raises(ShapeError, match="w0 has 3 rows but X has 2 prompts"):
        gd_trajectory(SPEC, torch.stack([X, X]), torch.stack([Y, Y]), w0.expand(3, -1), eta=0.1, steps=1)
    with pytest.raises(ShapeError, match="at least 1"):
        gd_trajectory(SPEC, X[:0], Y[:0], w0, eta=0.1, steps=1)
    Xn = X.clone()
    Xn[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="X contains NaN or inf"):
        gd_trajectory(SPEC, Xn, Y, w0, eta=0.1, steps=1)
    with pytest.raises(SpecError, match="steps must be an integer >= 0, got -1"):
        gd_trajectory(SPEC, X, Y, w0, eta=0.1, steps=-1)
    with pytest.raises(SpecError, match="steps must be an integer >= 0, got 1.5"):
        gd_trajectory(SPEC, X, Y, w0, eta=0.1, steps=1.5)
    for eta in (0, 0.0, -0.5, float("nan"), float("inf")):
        with pytest.raises(SpecError, match=r"eta must be a finite number > 0"):
            gd_trajectory(SPEC, X, Y, w0, eta=eta, steps=1)
    with pytest.raises(SpecError, match="eta must be a number, got 'fast'"):
        gd_trajectory(SPEC, X, Y, w0, eta="fast", steps=1)
    with pytest.raises(SpecError, match="box must be a finite number > 0"):
        gd_trajectory(SPEC, X, Y, w0, eta=0.1, steps=1, box=0.0)
    # the named errors are also the built-in exceptions users would catch
    with pytest.raises(ValueError):
        gd_trajectory(SPEC, X, Y, w0, eta=-1, steps=1)
