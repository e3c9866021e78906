"""Seeded task samplers: determinism per (seed, step), each task's statistics against its definition, pools,
curricula, out-of-distribution shifts and errors."""

from __future__ import annotations

import math

import pytest
import torch

from icgd import nets
from icgd.errors import SpecError
from icgd.layers.attention import KERNELS
from icgd.tasks import (PARAM_SHIFTS, TASKS, TEST_MIXTURES, Curriculum, GaussianProcess, Prompt, garg_covariance,
                        make_task, random_covariance, task_seed)

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def small(name: str, **kw):
    d = {"sine": 1, "gp": 3}.get(name, 4)
    extra = {"wu_network": {"width": 8, "depth": 3}, "relu2nn": {"hidden": 8}}.get(name, {})
    return make_task(name, **{"d": d, **extra, **kw})


@pytest.mark.parametrize("name", list(TASKS))
def test_same_seed_and_step_same_batch_other_steps_differ(name):
    task = small(name)
    a = task.sample(4, 5, seed=7, step=3, m=2, dtype=F64)
    b = small(name).sample(4, 5, seed=7, step=3, m=2, dtype=F64)
    assert isinstance(a, Prompt) and a.X.shape[:2] == (4, 5) and a.x_query.shape[:2] == (4, 2)
    for f in ("X", "Y", "x_query", "y_query"):
        assert torch.equal(getattr(a, f), getattr(b, f)), f
    for other in (task.sample(4, 5, seed=7, step=4, m=2, dtype=F64), task.sample(4, 5, seed=8, step=3, m=2, dtype=F64)):
        assert not torch.allclose(a.X, other.X) and not torch.allclose(a.Y, other.Y)
    # float32 is the float64 batch, rounded
    c = task.sample(4, 5, seed=7, step=3, m=2)
    assert c.X.dtype == torch.float32 and torch.equal(c.Y, a.Y.float())


def test_task_seed_is_63_bit_and_stream_specific():
    s = task_seed(0, 1)
    assert s == task_seed(0, 1) and 0 <= s < 2 ** 63
    assert len({s, task_seed(0, 2), task_seed(1, 1), task_seed(0, 1, "pool:linear")}) == 4
    assert task_seed(0, 1 << 40) != task_seed(0, 0)
    with pytest.raises(SpecError, match="step"):
        task_seed(0, 1.5)


# --- each task against its definition


def test_linear_is_exact_without_noise_and_has_the_right_noise():
    task = make_task("linear", d=5, d_out=2, tau=2.0)
    p = task.sample(400, 12, seed=0, step=0, m=3, dtype=F64)
    w = p.teacher.view(400, 5, 2)
    torch.testing.assert_close(p.Y, p.X @ w, rtol=0, atol=1e-12)
    torch.testing.assert_close(p.y_query, p.x_query @ w, rtol=0, atol=1e-12)
    assert abs(w.std().item() - 2.0) < 0.1  # tau
    noisy = make_task("linear", d=5, noise=0.5).sample(2000, 10, seed=0, step=0, dtype=F64)
    resid = noisy.Y - noisy.X @ noisy.teacher[..., None]
    assert abs(resid.var().item() - 0.25) < 0.015
    assert abs(noisy.X.var().item() - 1.0) < 0.02


def test_sparse_linear_has_k_nonzeros_within_the_active_dims():
    task = make_task("sparse_linear", d=10, k=3)
    p = task.sample(200, 6, seed=1, step=0, dtype=F64)
    assert torch.all((p.teacher != 0).sum(1) == 3)
    torch.testing.assert_close(p.Y, p.X @ p.teacher[..., None], rtol=0, atol=1e-12)
    q = task.sample(200, 6, seed=1, step=1, n_dims=4, dtype=F64)
    assert torch.all(q.teacher[:, 4:] == 0) and torch.all((q.teacher != 0).sum(1) == 3)
    assert torch.all(q.X[..., 4:] == 0)


def test_wu_network_labels_are_the_teacher_network():
    task = make_task("wu_network", d=5, depth=4, width=6)
    p = task.sample(20, 8, seed=2, step=0, m=2, dtype=F64)
    assert p.teacher.shape == (20, task.spec.num_params) and task.spec.depth == 4
    torch.testing.assert_close(nets.forward(task.spec, p.teacher, p.X), p.Y, rtol=0, atol=1e-12)
    torch.testing.assert_close(nets.forward(task.spec, p.teacher, p.x_query), p.y_query, rtol=0, atol=1e-12)
    # Definition 1 with the sigmoid: output in (0, 1)
    sig = make_task("wu_network", d=5, depth=3, width=6, activation="sigmoid", output_activation=True)
    assert torch.all((sig.sample(20, 8, seed=2, step=0).Y > 0) & (sig.sample(20, 8, seed=2, step=0).Y < 1))


@pytest.mark.parametrize("mixture", TEST_MIXTURES)
def test_wu_network_mixture_proportions(mixture):
    task = make_task("wu_network", d=6, depth=3, width=4, mixture=mixture)
    X = task.sample(200, 50, seed=3, step=0, dtype=F64).X  # 10,000 points
    plus = X.mean(-1) > 0  # the components' means are ±2·1, their noise N(0, I): well separated in the mean
    assert abs(plus.double().mean().item() - mixture[1]) < 0.015
    assert abs(X[~plus].mean().item() + 2) < 0.03
    if mixture[1]:
        assert abs(X[plus].mean().item() - 2) < 0.05


@pytest.mark.parametrize("mu", PARAM_SHIFTS)
def test_wu_network_parameter_shift(mu):
    task = make_task("wu_network", d=4, depth=3, width=5, mu=mu)
    p = task.sample(300, 2, seed=4, step=0, dtype=F64)
    fan_in = torch.cat([torch.full((o * i,), float(i), dtype=F64) for o, i in task.spec.shapes])
    raw = p.teacher * fan_in.sqrt()  # undo the 1/√fan-in scaling: N(μ, 1) entries
    assert abs(raw.mean().item() - mu) < 0.02 and abs(raw.std().item() - 1) < 0.02
    unscaled = make_task("wu_network", d=4, depth=3, width=5, mu=mu, fan_in_scaling=False)
    torch.testing.assert_close(unscaled.sample(300, 2, seed=4, step=0, dtype=F64).teacher, raw, rtol=0, atol=1e-12)


def test_relu2nn_is_garg_two_layer_net():
    task = make_task("relu2nn", d=4, hidden=7)
    p = task.sample(10, 9, seed=5, step=0, dtype=F64)
    torch.testing.assert_close(nets.forward(task.spec, p.teacher, p.X), p.Y, rtol=0, atol=1e-12)
    V1, V2 = nets.unflatten(task.spec, p.teacher)
    torch.testing.assert_close(p.Y, torch.relu(p.X @ V1.transpose(1, 2)) @ V2.transpose(1, 2))
    big = make_task("relu2nn", d=10, hidden=100).sample(400, 5, seed=0, step=0, dtype=F64)
    # E[y²] = (2/h)·h·E[relu(z)²]·E[w²] with z ~ N(0, d): = d
    assert abs(big.Y.pow(2).mean().item() / 10 - 1) < 0.15


def test_decision_tree_matches_a_recursive_walk():
    task = make_task("decision_tree", d=5, depth=3)
    p = task.sample(6, 10, seed=6, step=0, dtype=F64)
    coords, leaves = p.teacher[:, :7].long(), p.teacher[:, 7:]
    for b in range(6):
        for i in range(10):
            node = 0
            for _ in range(3):
                node = 2 * node + (2 if p.X[b, i, coords[b, node]] > 0 else 1)
            assert p.Y[b, i, 0] == leaves[b, node - 7]


@pytest.mark.parametrize("kernel", list(KERNELS))
def test_gp_labels_have_the_kernel_covariance(kernel):
    task = make_task("gp", d=3, kernel=kernel)
    p = task.sample(6000, 4, seed=7, step=0, dtype=F64)
    X, Y = p.X, p.Y[..., 0]
    assert torch.allclose(X.norm(dim=-1), torch.ones(6000, 4, dtype=F64))  # unit sphere
    K = task.covariance(X)
    raw = KERNELS[kernel](X, X, 1.0)
    if kernel != "relu":
        torch.testing.assert_close(K, raw, rtol=0, atol=1e-10)
    err = (Y[:, :, None] * Y[:, None, :] - K).mean(0)  # E[y yᵀ − K(X)] = 0
    assert err.abs().max().item() < 0.06 * K.diagonal(dim1=1, dim2=2).mean().item()
    wrong = GaussianProcess(d=3, kernel="rbf" if kernel != "rbf" else "linear").covariance(X)
    assert (Y[:, :, None] * Y[:, None, :] - wrong).mean(0).abs().max().item() > 0.1


def test_gp_relu_uses_absolute_eigenvalues():
    task = make_task("gp", d=2, kernel="relu")
    X = task.sample(50, 6, seed=0, step=0, dtype=F64).X
    K = torch.relu(X @ X.transpose(1, 2))
    lam, U = torch.linalg.eigh(K)
    assert (lam < -1e-8).any()  # the ReLU kernel matrix is indefinite somewhere
    torch.testing.assert_close(task.covariance(X), (U * lam.abs()[:, None]) @ U.transpose(1, 2))


def test_sine_follows_von_oswald():
    task = make_task("sine")
    p = task.sample(3000, 10, seed=8, step=0, dtype=F64)
    a, rho = p.teacher[:, 0], p.teacher[:, 1]
    torch.testing.assert_close(p.Y[..., 0], a[:, None] * torch.sin(rho[:, None] + p.X[..., 0]), rtol=0, atol=1e-12)
    assert 0.1 <= a.min() and a.max() <= 5 and abs(a.mean().item() - 2.55) < 0.1
    assert 0 <= rho.min() and rho.max() <= math.pi
    assert p.X.abs().max() <= 5 and p.X.abs().max() > 4.9 and abs(p.X.var().item() - 25 / 3) < 0.3


# --- pools, curricula, shifts


def test_pool_draws_from_k_fixed_tasks():
    task = make_task("linear", d=4, pool_size=3, pool_seed=11)
    teachers = torch.cat([task.sample(16, 2, seed=s, step=t, dtype=F64).teacher for s in (0, 1) for t in range(4)])
    distinct = torch.unique(teachers, dim=0)
    assert distinct.shape[0] == 3
    torch.testing.assert_close(torch.sort(distinct, 0).values, torch.sort(task.pool()["w"][..., 0], 0).values)
    again = make_task("linear", d=4, pool_size=3, pool_seed=11).pool()["w"]
    assert torch.equal(again, task.pool()["w"])
    assert not torch.equal(make_task("linear", d=4, pool_size=3, pool_seed=12).pool()["w"], again)
    with pytest.raises(SpecError, match="pool_size"):
        make_task("gp", pool_size=4)


def test_curriculum_follows_garg():
    c = Curriculum(dims_start=5, dims_end=20, dims_inc=1, points_start=11, points_end=41, points_inc=2,
                   interval=2000)
    assert [c.at(s) for s in (0, 1999, 2000, 4000, 29999, 30000, 10 ** 7)] == [
        (5, 11), (5, 11), (6, 13), (7, 15), (19, 39), (20, 41), (20, 41)]
    split = Curriculum(dims_start=1, dims_end=3, points_start=4, points_end=10, points_inc=3, dims_interval=10,
                       points_interval=5)
    assert [split.at(s) for s in (0, 5, 10, 20, 100)] == [(1, 4), (1, 7), (2, 10), (3, 10), (3, 10)]
    assert Curriculum.fixed(8, 16).at(123456) == (8, 16)
    d, n = c.at(0)
    p = make_task("linear", d=20).sample(8, n, seed=0, step=0, n_dims=d, dtype=F64)
    assert p.X.shape == (8, 11, 20) and torch.all(p.X[..., 5:] == 0) and torch.all(p.X[..., :5] != 0)
    with pytest.raises(SpecError, match="dims_end"):
        Curriculum(dims_start=5, dims_end=4, points_start=1, points_end=1)
    with pytest.raises(SpecError, match="interval"):
        Curriculum(dims_start=1, dims_end=1, points_start=1, points_end=1, interval=0)


def test_input_scale_and_covariance_shifts():
    sigma = random_covariance([4.0, 1.0, 0.25], seed=3, normalize=False)
    torch.testing.assert_close(torch.linalg.eigvalsh(sigma), torch.tensor([0.25, 1.0, 4.0], dtype=F64))
    X = make_task("linear", d=3, x_cov=sigma, x_scale=2.0).sample(20000, 2, seed=0, step=0, dtype=F64).X
    emp = torch.cov(X.reshape(-1, 3).T)
    assert (emp - 4 * sigma).abs().max() < 0.25
    uniform = make_task("linear", d=2, x_dist="uniform", x_scale=0.5).sample(500, 10, seed=0, step=0).X
    assert uniform.abs().max() <= 0.5 and abs(uniform.var().item() - 1 / 12) < 0.005
    for kind in ("skewed", "half_subspace"):
        S = garg_covariance(kind, 6)
        assert abs(torch.trace(S).item() - 6) < 1e-10
    assert torch.linalg.matrix_rank(garg_covariance("half_subspace", 6)) == 3
    scaled = make_task("linear", d=3, y_scale=3.0).sample(5, 4, seed=0, step=0, dtype=F64)
    torch.testing.assert_close(scaled.Y, 3 * scaled.X @ scaled.teacher[..., None])


def test_bad_arguments():
    with pytest.raises(SpecError, match="linear, sparse_linear"):
        make_task("quadratic")
    with pytest.raises(SpecError, match="valid options: .*tau"):
        make_task("linear", sigma=0.1)
    with pytest.raises(SpecError, match="n_dims"):
        make_task("linear", d=3).sample(2, 3, seed=0, step=0, n_dims=4)
    with pytest.raises(SpecError, match="dtype"):
        make_task("linear", d=3).sample(2, 3, seed=0, step=0, dtype=torch.int64)
    with pytest.raises(SpecError, match="mixture"):
        make_task("wu_network", mixture=(0.5, 0.6))
    with pytest.raises(SpecError, match="d must be 1"):
        make_task("sine", d=2)
    with pytest.raises(SpecError, match="positive semi-definite"):
        make_task("linear", d=2, x_cov=[[1.0, 2.0], [2.0, 1.0]])
    with pytest.raises(SpecError, match=r"\(2, 2\)"):
        make_task("linear", d=2, x_cov=torch.eye(3))
    with pytest.raises(SpecError, match="x_dist"):
        make_task("linear", x_dist="laplace")
    with pytest.raises(SpecError, match="kernel"):
        make_task("gp", kernel="poly")
    with pytest.raises(SpecError, match="k=5"):
        make_task("sparse_linear", d=4, k=5)
    with pytest.raises(SpecError, match="n must be"):
        make_task("linear").sample(2, 0, seed=0, step=0)
