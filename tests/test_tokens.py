"""Token layouts, prompt packing and the rows ↔ columns convention."""

from __future__ import annotations

import pytest
import torch

from icgd.errors import LayoutError, NonFiniteError, ShapeError, SpecError
from icgd.tokens import Layout, from_columns, pack_prompt, to_columns


def make_layout():
    return Layout([("x", 3), ("y", 1), ("w1", 2), ("w2", 4), ("s", 0), ("one", 1), ("t", 1)],
                  groups={"w": ["w1", "w2"]})


def test_layout_slices_groups_index():
    L = make_layout()
    assert L.dim == 3 + 1 + 2 + 4 + 0 + 1 + 1 == 12
    expected = {"x": (0, 3), "y": (3, 4), "w1": (4, 6), "w2": (6, 10), "s": (10, 10), "one": (10, 11),
                "t": (11, 12), "w": (4, 10)}
    for name, (a, b) in expected.items():
        assert L.slice(name) == slice(a, b)
        assert L.size(name) == b - a
        assert name in L
    assert "z" not in L
    assert L.names() == ["x", "y", "w1", "w2", "s", "one", "t", "w"]
    assert L.index("x", 2) == 2
    assert L.index("w2", 0) == 6 and L.index("w", 5) == 9
    assert L.index("t") == 11
    assert "D=12" in repr(L)


def test_layout_errors():
    L = make_layout()
    with pytest.raises(LayoutError, match=r"layout has no slot 'z'; slots are \['x', 'y'"):
        L.slice("z")
    with pytest.raises(LayoutError):
        L.read(torch.zeros(1, 1, 12), "z")
    with pytest.raises(LayoutError, match="slot 'x' has 3 entries, asked for entry 3"):
        L.index("x", 3)
    with pytest.raises(LayoutError, match="slot 's' has 0 entries"):
        L.index("s")
    with pytest.raises(LayoutError, match="slot names must be unique"):
        Layout([("x", 1), ("x", 2)])
    with pytest.raises(LayoutError, match="negative size"):
        Layout([("x", -1)])
    with pytest.raises(LayoutError, match="group 'g' must name consecutive existing slots"):
        Layout([("a", 1), ("b", 1), ("c", 1)], groups={"g": ["a", "c"]})
    with pytest.raises(LayoutError, match="group 'g' must name consecutive existing slots"):
        Layout([("a", 1), ("b", 1)], groups={"g": ["b", "a"]})
    with pytest.raises(LayoutError, match="group 'g' must name consecutive existing slots"):
        Layout([("a", 1)], groups={"g": ["a", "nope"]})
    with pytest.raises(LayoutError, match="group 'a' has the name of a slot"):
        Layout([("a", 1), ("b", 1)], groups={"a": ["a", "b"]})
    with pytest.raises(KeyError):  # LayoutError is a KeyError with an unquoted message
        L.size("z")
    try:
        L.size("z")
    except LayoutError as exc:
        assert str(exc).startswith("layout has no slot 'z'")


def test_read_and_write(gen):
    L = make_layout()
    tok = L.empty(2, 3)
    assert tok.shape == (2, 3, 12) and tok.dtype == torch.float64 and not tok.any()
    L.write(tok, "w", torch.arange(6.0))                         # (size,) → every token
    L.write(tok, "y", torch.tensor([[5.0], [7.0]]))              # (B, size) → every token of prompt b
    full = torch.randn(2, 3, 3, generator=gen, dtype=torch.float64)
    L.write(tok, "x", full)                                      # (B, T, size)
    L.write(tok, "one", 1.0)                                     # scalar
    for b in range(2):
        for i in range(3):
            assert tok[b, i, 4:10].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
            assert tok[b, i, 3].item() == (5.0 if b == 0 else 7.0)
            assert torch.equal(tok[b, i, 0:3], full[b, i])
            assert tok[b, i, 10].item() == 1.0 and tok[b, i, 11].item() == 0.0
    assert torch.equal(L.read(tok, "w2"), tok[..., 6:10])
    with pytest.raises(ShapeError, match=r"slot 'w' has size 6, got a value of shape \(5,\)"):
        L.write(tok, "w", torch.zeros(5))
    with pytest.raises(ShapeError, match="tokens have dimension 11, layout expects 12"):
        L.read(torch.zeros(1, 1, 11), "x")


def test_pack_prompt_batched(gen):
    L = make_layout()
    Bn, n, m = 2, 4, 3
    X = torch.randn(Bn, n, 3, generator=gen, dtype=torch.float64)
    Y = torch.randn(Bn, n, 1, generator=gen, dtype=torch.float64)
    xq = torch.randn(Bn, m, 3, generator=gen, dtype=torch.float64)
    w0 = torch.randn(Bn, 6, generator=gen, dtype=torch.float64)
    tok = pack_prompt(L, X, Y, xq, w=w0)
    assert tok.shape == (Bn, n + m, 12) and tok.dtype == torch.float64
    for b in range(Bn):
        for i in range(n + m):
            row = tok[b, i]
            if i < n:  # context token
                assert torch.equal(row[0:3], X[b, i])
                assert row[3].item() == Y[b, i, 0].item()
                assert row[11].item() == 1.0
            else:  # query token
                assert torch.equal(row[0:3], xq[b, i - n])
                assert row[3].item() == 0.0
                assert row[11].item() == 0.0
            assert torch.equal(row[4:10], w0[b])
            assert row[10].item() == 1.0


def test_pack_prompt_unbatched_no_query_and_shared_w(gen):
    L = make_layout()
    X = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    Y = torch.randn(5, 1, generator=gen, dtype=torch.float64)
    w0 = torch.randn(6, generator=gen, dtype=torch.float64)
    tok = pack_prompt(L, X, Y, w=w0)
    assert tok.shape == (1, 5, 12)
    assert torch.equal(tok[0, :, 0:3], X) and torch.equal(tok[0, :, 3:4], Y)
    assert torch.equal(tok[0, :, 4:10], w0.expand(5, 6))
    assert (tok[0, :, 11] == 1.0).all() and (tok[0, :, 10] == 1.0).all()
    # one w for a batch of prompts is replicated into every prompt
    Xb, Yb = torch.stack([X, 2 * X]), torch.stack([Y, -Y])
    tokb = pack_prompt(L, Xb, Yb, w=w0)
    assert torch.equal(tokb[1, :, 4:10], w0.expand(5, 6))
    # a layout without `one`/`t` just gets x, y
    L2 = Layout([("x", 3), ("y", 1)])
    assert torch.equal(pack_prompt(L2, X, Y)[0], torch.cat([X, Y], dim=-1))


def test_pack_prompt_errors(gen):
    L = make_layout()
    X = torch.randn(2, 4, 3, generator=gen, dtype=torch.float64)
    Y = torch.randn(2, 4, 1, generator=gen, dtype=torch.float64)
    with pytest.raises(ShapeError, match="X has last dimension 2 but d_in is 3"):
        pack_prompt(L, X[..., :2], Y)
    with pytest.raises(ShapeError, match="Y has last dimension 2 but d_out is 1"):
        pack_prompt(L, X, torch.cat([Y, Y], -1))
    with pytest.raises(ShapeError, match=r"Y has shape \(2, 3, 1\) but X has 2 prompts and 4 pairs"):
        pack_prompt(L, X, Y[:, :3])
    with pytest.raises(ShapeError, match=r"x_query has shape \(2, 1, 2\), expected \(2, 'm', 3\)"):
        pack_prompt(L, X, Y, torch.zeros(2, 1, 2, dtype=torch.float64))
    with pytest.raises(ShapeError, match=r"x_query has shape \(3, 1, 3\), expected \(2, 'm', 3\)"):
        pack_prompt(L, X, Y, torch.zeros(3, 1, 3, dtype=torch.float64))
    with pytest.raises(ShapeError, match="w has 3 rows but there are 2 prompts"):
        pack_prompt(L, X, Y, w=torch.zeros(3, 6, dtype=torch.float64))
    with pytest.raises(ShapeError, match="slot 'w' has size 6"):
        pack_prompt(L, X, Y, w=torch.zeros(2, 5, dtype=torch.float64))
    with pytest.raises(LayoutError, match="layout has no slot 'v'"):
        pack_prompt(L, X, Y, v=torch.zeros(2, 6, dtype=torch.float64))
    with pytest.raises(LayoutError, match="layout has no slot 'x'"):
        pack_prompt(Layout([("u", 3), ("y", 1)]), X, Y)
    Xn = X.clone()
    Xn[1, 2, 0] = float("inf")
    with pytest.raises(NonFiniteError, match="X contains NaN or inf"):
        pack_prompt(L, Xn, Y)


def test_columns_round_trip(gen):
    tok = torch.randn(2, 5, 4, generator=gen, dtype=torch.float64)
    H = to_columns(tok)
    assert H.shape == (2, 4, 5)
    for b in range(2):
        for t in range(5):
            for d in range(4):
                assert H[b, d, t].item() == tok[b, t, d].item()
    assert torch.equal(from_columns(H), tok)
    # from_columns of an explicit column matrix puts column j in row j
    Hc = torch.arange(6.0).reshape(1, 2, 3)  # D = 2, T = 3: columns [0, 3], [1, 4], [2, 5]
    assert from_columns(Hc)[0].tolist() == [[0.0, 3.0], [1.0, 4.0], [2.0, 5.0]]


def test_one_validator_and_one_protocol_for_learners_constructions_and_trained_models(gen):
    """The same bad prompt gives the same error from a reference learner, a construction and the trained models;
    a 2-D prompt is one unbatched prompt everywhere (its predictions equal the batched ones without the axis)."""
    from icgd.constructions import deep_gd, linear_gd
    from icgd.learners import Ridge
    from icgd.models import LSA, ICLTransformer
    from icgd.nets import NetSpec, init_weights

    X = torch.randn(2, 6, 3, generator=gen, dtype=torch.float64)
    Y = torch.randn(2, 6, 1, generator=gen, dtype=torch.float64)
    xq = torch.randn(2, 2, 3, generator=gen, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    learners = [Ridge(0.1), linear_gd(3, eta=0.1, steps=2),
                ICLTransformer(3, n_layer=1, n_head=1, n_embd=8, max_points=8, generator=g).double(),
                LSA(3, n_layer=1, generator=g).double()]
    messages = set()
    for learner in learners:
        with pytest.raises(ShapeError) as err:
            learner.predict(X, Y[:, :5], xq)
        messages.add(str(err.value))
        with pytest.raises(ShapeError, match="trailing output axis"):
            learner.predict(X, Y[..., 0], xq)
        batched = learner.predict(X, Y, xq)
        assert batched.shape == (2, 2, 1)
        torch.testing.assert_close(learner.predict(X[1], Y[1], xq[1]), batched[1], rtol=1e-12, atol=1e-12)
    assert len(messages) == 1, messages
    trained = learners[2]
    prefix = trained.prefix_predictions(X, Y)  # row i from the pairs before i = a query after i pairs
    for i in (1, 4):
        torch.testing.assert_close(prefix[:, i:i + 1], trained.predict(X[:, :i], Y[:, :i], X[:, i:i + 1]),
                                   rtol=1e-10, atol=1e-12)
    # Wu's construction: the GD start is a keyword or an attribute, so predict(X, Y, x_query) is the protocol
    spec = NetSpec(d_in=3, width=2, depth=2, d_out=1, activation="sigmoid")
    model = deep_gd(spec, eta=0.5, steps=1, box=1.0, knots=16, x_bound=10.0)
    w0 = init_weights(spec, 1, generator=torch.Generator().manual_seed(1)).clamp(-1, 1)
    with pytest.raises(SpecError, match="w0"):
        model.predict(X, Y, xq)
    model.w0 = w0
    torch.testing.assert_close(model.predict(X, Y, xq), model.predict(X, Y, xq, w0=w0), rtol=0, atol=0)
