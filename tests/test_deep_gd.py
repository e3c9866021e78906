"""Wu et al.'s construction against autograd GD (icgd.learners.gd_trajectory), float64."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from icgd.constructions import deep_gd, fit_ranges_from_data, wu_layout
from icgd.errors import FitRangeError, ShapeError, SpecError
from icgd.layers import EWML, MLP, ReLUAttention
from icgd.learners import gd_trajectory
from icgd.nets import NetSpec, forward, init_weights


def random_case(seed: int) -> dict:
    """A random spec and task: depth 2–4, width ≤ 8, d_in, d_out ∈ {1, 2, 3}, n ≤ 64, steps ≤ 20."""
    g = torch.Generator().manual_seed(1000 + seed)
    pick = lambda options: options[int(torch.randint(len(options), (1,), generator=g))]  # noqa: E731
    spec = NetSpec(pick([1, 2, 3]), pick([2, 3, 5, 8]), pick([2, 3, 4]), pick([1, 2, 3]), "sigmoid")
    n, steps, eta, box = pick([8, 20, 40, 64]), pick([1, 5, 12, 20]), pick([0.5, 1.0, 2.0]), pick([1.0, None])
    return dict(spec=spec, n=n, steps=steps, eta=eta, box=box, seed=seed)


def make_task(spec: NetSpec, n: int, m: int, batch: int, seed: int, box: float | None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, n + m, spec.d_in, generator=g, dtype=torch.float64)
    teacher = init_weights(spec, batch, generator=g, scale=2.0)
    y = forward(spec, teacher, x)
    w0 = init_weights(spec, batch, generator=g)
    if box is not None:
        w0 = w0.clamp(-box, box)
    return x[:, :n], y[:, :n], x[:, n:], w0


def rel_error(trace: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest relative error of the final weights, relative to how far GD moved them."""
    denom = (ref[:, -1] - ref[:, 0]).norm(dim=-1)
    return float(((trace[:, -1].double() - ref[:, -1]).norm(dim=-1) / denom).max())


def build(case: dict, knots: int, X, xq, ref, **kw):
    spec, box = case["spec"], case["box"]
    xs = torch.cat([X, xq], dim=1)
    if box is not None:
        return deep_gd(spec, eta=case["eta"], steps=case["steps"], box=box, knots=knots,
                       x_bound=float(xs.abs().max()), **kw)
    return deep_gd(spec, eta=case["eta"], steps=case["steps"], knots=knots,
                   fit_range=fit_ranges_from_data(spec, xs, ref), **kw)


@functools.lru_cache(maxsize=None)
def run_case(seed: int, knots: int):
    case = random_case(seed)
    spec = case["spec"]
    X, Y, xq, w0 = make_task(spec, case["n"], 5, 2, seed, case["box"])
    ref = gd_trajectory(spec, X, Y, w0, case["eta"], case["steps"], box=case["box"])
    model = build(case, knots, X, xq, ref)
    with torch.inference_mode():
        tr = model.trace(X, Y, w0)
        pred = model.predict(X, Y, xq, w0)
    denom = (ref[:, -1] - ref[:, 0]).norm(dim=-1)
    err = float(((tr[:, -1] - ref[:, -1]).norm(dim=-1) / denom).max())
    pred_ref = forward(spec, ref[:, -1], xq)
    pred_err = float(((pred - pred_ref).norm(dim=-1).max()) / denom.min())
    return dict(case=case, model=model, trace=tr, ref=ref, err=err, pred_err=pred_err)


SEEDS = range(8)


@pytest.mark.parametrize("seed", SEEDS)
def test_trace_matches_autograd_gd_at_256_knots(seed):
    r = run_case(seed, 256)
    assert r["trace"].shape == r["ref"].shape
    assert torch.equal(r["trace"][:, 0], r["ref"][:, 0])
    assert r["err"] <= 1e-3, (r["case"], r["err"])


@pytest.mark.parametrize("seed", SEEDS)
def test_predict_matches_network_at_final_weights(seed):
    r = run_case(seed, 256)
    assert r["pred_err"] <= 1e-3, (r["case"], r["pred_err"])


def test_error_shrinks_about_16x_from_64_to_256_knots():
    ratios = [run_case(s, 64)["err"] / run_case(s, 256)["err"] for s in SEEDS]
    geo = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
    assert 8.0 <= geo <= 32.0, ratios
    assert min(ratios) >= 4.0, ratios


def test_random_cases_cover_the_required_grid():
    cases = [random_case(s) for s in SEEDS]
    assert {c["spec"].depth for c in cases} == {2, 3, 4}
    assert {c["box"] for c in cases} == {1.0, None}
    assert len({c["eta"] for c in cases}) >= 2


@pytest.mark.parametrize("seed", [0, 3])
def test_layer_and_head_bookkeeping(seed):
    r = run_case(seed, 64)
    model, spec = r["model"], r["case"]["spec"]
    N, K, d_out, steps = spec.depth, spec.width, spec.d_out, r["case"]["steps"]
    assert model.block_size == 2 * N + 4
    assert len(model.layers) == (2 * N + 4) * steps + N
    kinds = [type(layer) for layer in model.layers[: 2 * N + 4]]
    assert kinds == [ReLUAttention] * (N + 1) + [MLP] + [EWML] * N + [ReLUAttention, MLP]
    assert {type(layer) for layer in model.layers} <= {ReLUAttention, MLP, EWML}
    # one set of modules per step, shared across steps
    for i in range(2 * N + 4):
        assert all(model.layers[i] is model.layers[i + s * (2 * N + 4)] for s in range(steps))
    P = (N - 1) * K + d_out
    M = 64
    paper = [M * o for o, _ in spec.shapes] + [M * P, None] + [d_out] + [K] * (N - 1) + [2 * P, None]
    rows = model.block_summary()
    for row, bound in zip(rows, paper):
        if bound is not None:
            assert row["heads"] <= bound, row
    D_w = spec.num_params
    assert rows[N + 1]["width"] == 2 * d_out
    box_units = 2 * D_w if r["case"]["box"] is not None else 0
    assert rows[-1]["width"] == box_units + 2 * (3 * P + d_out)
    assert model.layout.dim == spec.d_in + d_out + D_w + 3 * P + d_out + 2


def test_scratch_is_erased_and_w_replicated_after_every_block():
    r = run_case(1, 64)
    model, spec = r["model"], r["case"]["spec"]
    X, Y, xq, w0 = make_task(spec, r["case"]["n"], 5, 2, 1, r["case"]["box"])
    tokens, _ = model.tokens_for(X, Y, w0, xq)
    with torch.inference_mode():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_resid_post"))
    L = model.layout
    for step in range(model.steps):
        h = cache[f"blocks.{(step + 1) * model.block_size - 1}.hook_resid_post"]
        for name in ("p", "r", "g", "s"):
            assert torch.equal(L.read(h, name), torch.zeros_like(L.read(h, name)))
        w = L.read(h, "w")
        assert torch.equal(w, w[:, :1].expand_as(w))
        assert torch.equal(L.read(h, "x"), L.read(tokens, "x"))


def test_gd_runs_only_inside_the_layers(monkeypatch):
    spec = NetSpec(2, 3, 2, 1)
    X, Y, xq, w0 = make_task(spec, 10, 3, 1, 7, 1.0)
    model = deep_gd(spec, eta=1.0, steps=3, box=1.0, knots=32, x_bound=float(torch.cat([X, xq], 1).abs().max()))

    def forbidden(*args, **kwargs):
        raise AssertionError("autograd was called")

    monkeypatch.setattr(torch.autograd, "grad", forbidden)
    monkeypatch.setattr(torch.Tensor, "backward", forbidden)
    with torch.inference_mode():
        tr = model.trace(X, Y, w0)
        pred = model.predict(X, Y, xq, w0)
    monkeypatch.undo()
    ref = gd_trajectory(spec, X, Y, w0, 1.0, 3, box=1.0)
    assert float((tr - ref).abs().max()) < 1e-2
    assert pred.shape == (1, 3, 1)


@pytest.mark.parametrize("activation", ["tanh", "softplus", "gelu"])
def test_other_smooth_activations(activation):
    spec = NetSpec(2, 4, 3, 2, activation)
    X, Y, xq, w0 = make_task(spec, 20, 4, 2, 11, 1.0)
    ref = gd_trajectory(spec, X, Y, w0, 0.5, 8, box=1.0)
    # data-driven intervals: the a-priori bound grows with every unbounded layer (softplus, gelu)
    ranges = fit_ranges_from_data(spec, torch.cat([X, xq], 1), ref)
    errs = []
    for knots in (64, 256):
        model = deep_gd(spec, eta=0.5, steps=8, box=1.0, knots=knots, fit_range=ranges)
        with torch.inference_mode():
            tr = model.trace(X, Y, w0)
        errs.append(rel_error(tr, ref))
    # measured: tanh 1.1e-3 → 8.2e-5, softplus 4.7e-2 → 2.8e-3, gelu 9.8e-2 → 4.7e-3 (R_3 ≈ 17–20 for the
    # unbounded ones); the O(knots⁻²) rate holds for all three
    assert errs[1] <= 1e-2
    assert errs[0] / errs[1] >= 8.0


def test_relu_network_is_exact_up_to_the_ramp():
    spec = NetSpec(3, 5, 2, 2, "relu")
    X, Y, xq, w0 = make_task(spec, 16, 4, 2, 5, 1.0)
    ref = gd_trajectory(spec, X, Y, w0, 0.2, 10, box=1.0)
    model = deep_gd(spec, eta=0.2, steps=10, box=1.0, knots=8, x_bound=float(torch.cat([X, xq], 1).abs().max()))
    with torch.inference_mode():
        tr = model.trace(X, Y, w0)
    # r is exact and r′ is a ramp of width 1e-6: exact unless a pre-activation falls in (0, 1e-6)
    assert float((tr - ref).abs().max()) < 1e-8


def test_identity_output_layer_and_unequal_dims():
    spec = NetSpec(1, 6, 2, 3, "sigmoid", output_activation=False)
    X, Y, xq, w0 = make_task(spec, 30, 4, 3, 2, None)
    ref = gd_trajectory(spec, X, Y, w0, 0.3, 6)
    xs = torch.cat([X, xq], 1)
    model = deep_gd(spec, eta=0.3, steps=6, knots=256, fit_range=fit_ranges_from_data(spec, xs, ref))
    with torch.inference_mode():
        tr = model.trace(X, Y, w0)
        pred = model.predict(X, Y, xq, w0)
    denom = (ref[:, -1] - ref[:, 0]).norm(dim=-1)
    assert float(((tr[:, -1] - ref[:, -1]).norm(dim=-1) / denom).max()) <= 1e-3
    assert float((pred - forward(spec, ref[:, -1], xq)).abs().max()) <= 1e-3


def test_unbatched_inputs_and_float32():
    spec = NetSpec(2, 3, 2, 1)
    X, Y, xq, w0 = make_task(spec, 12, 2, 1, 3, 1.0)
    model = deep_gd(spec, eta=1.0, steps=4, box=1.0, knots=128, x_bound=4.0, dtype=torch.float32)
    with torch.inference_mode():
        tr = model.trace(X[0].float(), Y[0].float(), w0[0].float())
        pred = model.predict(X[0], Y[0], xq[0], w0[0])
    ref = gd_trajectory(spec, X[0], Y[0], w0[0], 1.0, 4, box=1.0)
    assert tr.shape == (5, spec.num_params) and tr.dtype == torch.float32
    assert pred.shape == (2, 1)
    assert float((tr.double() - ref).abs().max()) < 1e-3


def test_leaving_the_fit_interval_raises():
    spec = NetSpec(2, 3, 2, 1)
    X, Y, xq, w0 = make_task(spec, 12, 2, 1, 3, None)
    model = deep_gd(spec, eta=1.0, steps=2, knots=32, fit_range=0.05)
    with pytest.raises(FitRangeError, match="fit interval"):
        model.trace(X, Y, w0)
    bounded = deep_gd(spec, eta=1.0, steps=2, box=1.0, knots=32, x_bound=0.1)
    with pytest.raises(FitRangeError, match="x_bound"):
        bounded.trace(X, Y, w0.clamp(-1, 1))
    with pytest.raises(FitRangeError, match="box"):
        deep_gd(spec, eta=1.0, steps=2, box=0.01, knots=32, x_bound=5.0).trace(X.clamp(-5, 5), Y, w0 + 1)


def test_bad_arguments():
    spec = NetSpec(2, 3, 2, 1)
    with pytest.raises(SpecError, match="fit interval"):
        deep_gd(spec, eta=1.0, steps=2)
    with pytest.raises(SpecError, match="knots"):
        deep_gd(spec, eta=1.0, steps=2, box=1.0, x_bound=1.0, knots=1)
    with pytest.raises(SpecError, match="eta"):
        deep_gd(spec, eta=-1.0, steps=2, box=1.0, x_bound=1.0)
    with pytest.raises(SpecError, match="one value per layer"):
        deep_gd(spec, eta=1.0, steps=2, fit_range=[1.0])
    model = deep_gd(spec, eta=1.0, steps=2, box=1.0, x_bound=3.0)
    X, Y, xq, w0 = make_task(spec, 12, 2, 1, 3, 1.0)
    with pytest.raises(ShapeError, match="d_in"):
        model.trace(X[..., :1], Y, w0)
    with pytest.raises(ShapeError, match="num_params"):
        model.trace(X, Y, w0[..., :-1])
    no_readout = deep_gd(spec, eta=1.0, steps=2, box=1.0, x_bound=3.0, readout=False)
    with pytest.raises(SpecError, match="readout"):
        no_readout.predict(X, Y, xq, w0)


def test_layout_matches_the_paper_dimension():
    spec = NetSpec(3, 8, 3, 3)
    assert wu_layout(spec).dim == 180  # Wu's layout for N=3, d=3, K=8: D = 180
    assert wu_layout(NetSpec(3, 8, 4, 3)).dim == 268


def test_forward_changes_no_state():
    """The GD-step size −ηT/(2n) depends on the prompt: it is computed per call, so the parameters (state_dict)
    after prompts of different sizes are those of the freshly built model, and a prompt gives the same answer
    whatever ran before it."""
    from icgd.constructions import convex_gd, deep_gd_softmax

    spec = NetSpec(d_in=2, width=3, depth=2, d_out=1, activation="sigmoid")
    models = [(deep_gd(spec, eta=0.5, steps=2, box=1.0, knots=16, x_bound=4.0), True),
              (deep_gd_softmax(spec, eta=0.5, steps=2, box=1.0), True),
              (convex_gd(2, loss="squared", eta=0.3, steps=2), False)]
    for model, needs_w0 in models:
        dense = lambda t: t.to_dense() if t.is_sparse else t  # noqa: E731
        before = {k: dense(v).clone() for k, v in model.state_dict().items()}
        answers = []
        for n in (5, 9, 5):
            X = torch.rand(2, n, 2, generator=torch.Generator().manual_seed(n), dtype=torch.float64) - 0.5
            Y = torch.rand(2, n, 1, generator=torch.Generator().manual_seed(n + 1), dtype=torch.float64) - 0.5
            xq = X[:, :1] + 0.1
            w0 = init_weights(spec, 2, generator=torch.Generator().manual_seed(n + 2)).clamp(-1, 1)
            answers.append(model.predict(X, Y, xq, w0) if needs_w0 else model.predict(X, Y, xq))
        after = model.state_dict()
        assert after.keys() == before.keys()
        for k in before:
            assert torch.equal(dense(after[k]), before[k]), k
        assert torch.equal(answers[0], answers[2])  # the n = 9 prompt in between left nothing behind
        assert not torch.equal(answers[0], answers[1])
