"""Trainable models: ICLTransformer (causality, attention maths vs naive loops, hooks, loops) and LSA (exactly the
von Oswald construction when given its weights)."""

from __future__ import annotations

import math

import pytest
import torch

from icgd.constructions import gd_plus_plus, linear_gd, von_oswald_weights
from icgd.errors import ICGDError, NonFiniteError, ShapeError, SpecError
from icgd.layers import FusedSelfAttention, Visibility
from icgd.models import LSA, ICLTransformer

KINDS = ("softmax", "relu", "linear")
FORMATS = ("interleaved", "concat")
F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def small_model(attention="softmax", token_format="interleaved", *, seed=0, **kw) -> ICLTransformer:
    kw = {"n_layer": 2, "n_head": 2, "n_embd": 16, "max_points": 12, **kw}
    g = torch.Generator().manual_seed(seed)
    return ICLTransformer(3, kw.pop("d_out", 1), attention=attention, token_format=token_format, generator=g,
                          **kw).to(F64)


def prompt(B=3, n=6, d=3, d_out=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, n, d, generator=g, dtype=F64), torch.randn(B, n, d_out, generator=g, dtype=F64))


# ---------------------------------------------------------------------------------------------- ICLTransformer


@pytest.mark.parametrize("token_format", FORMATS)
@pytest.mark.parametrize("attention", KINDS)
def test_shapes(attention, token_format):
    model = small_model(attention, token_format, d_out=2)
    X, Y = prompt(d_out=2)
    assert model(X, Y).shape == (3, 6, 2)
    assert model(X, Y, torch.randn(3, 4, 3, dtype=F64)).shape == (3, 4, 2)


@pytest.mark.parametrize("token_format", FORMATS)
@pytest.mark.parametrize("attention", KINDS)
def test_prediction_i_sees_only_earlier_pairs_and_x_i(attention, token_format):
    """The Jacobian of prediction i is exactly zero with respect to y_j (j ≥ i) and x_j (j > i), and nonzero for
    some earlier pair."""
    model = small_model(attention, token_format)
    X, Y = prompt(B=1, n=5)
    JX, JY = torch.autograd.functional.jacobian(lambda x, y: model(x, y), (X, Y))  # (1, n, 1, 1, n, ·)
    JX, JY = JX[0, :, 0, 0], JY[0, :, 0, 0]  # (n, n, d), (n, n, 1)
    for i in range(5):
        assert torch.all(JY[i, i:] == 0) and torch.all(JX[i, i + 1:] == 0), f"prediction {i} sees the future"
        if i:
            assert JY[i, :i].abs().max() > 0 and JX[i, :i].abs().max() > 0


@pytest.mark.parametrize("token_format", FORMATS)
@pytest.mark.parametrize("attention", KINDS)
def test_perturbing_y_i_and_x_next_leaves_prediction_i(attention, token_format):
    model = small_model(attention, token_format)
    X, Y = prompt()
    base = model(X, Y)
    X2, Y2 = X.clone(), Y.clone()
    Y2[:, 2] += 3.0
    X2[:, 3] -= 2.0
    moved = model(X2, Y2)
    torch.testing.assert_close(moved[:, :3], base[:, :3], rtol=0, atol=0)
    assert (moved[:, 3:] - base[:, 3:]).abs().max() > 1e-6


@pytest.mark.parametrize("token_format", FORMATS)
@pytest.mark.parametrize("attention", KINDS)
def test_queries_equal_the_next_prefix_prediction(attention, token_format):
    """With causal=True, query j's prediction is the prefix prediction at point n + 1 with x_{n+1} = x_q^j."""
    model = small_model(attention, token_format)
    X, Y = prompt()
    xq = torch.randn(3, 4, 3, dtype=F64)
    got = model(X, Y, xq)
    for j in range(4):
        ext_X = torch.cat((X, xq[:, j:j + 1]), 1)
        ext_Y = torch.cat((Y, torch.full((3, 1, 1), 7.0, dtype=F64)), 1)  # its label is never seen
        torch.testing.assert_close(got[:, j], model(ext_X, ext_Y)[:, -1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("token_format", FORMATS)
@pytest.mark.parametrize("attention", KINDS)
def test_last_block_pruning_changes_nothing(attention, token_format):
    """Without hooks the last block computes the prediction tokens only; a listening hook turns that off."""
    model = small_model(attention, token_format, loop=2, loop_inject=True)
    X, Y = prompt()
    xq = torch.randn(3, 2, 3, dtype=F64)
    listen = [("hook_resid_final", lambda a, name: None)]
    for args in ((X, Y), (X, Y, xq)):
        torch.testing.assert_close(model(*args), model.run_with_hooks(*args, fwd_hooks=listen), rtol=1e-12,
                                   atol=1e-12)
    grads = [torch.autograd.grad(f().sum(), list(model.parameters())) for f in
             (lambda: model(X, Y), lambda: model.run_with_hooks(X, Y, fwd_hooks=listen))]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("attention", KINDS)
def test_noncausal_queries_do_not_interact(attention):
    model = small_model(attention, causal=False)
    X, Y = prompt()
    xq = torch.randn(3, 3, 3, generator=torch.Generator().manual_seed(5), dtype=F64)
    base = model(X, Y, xq)
    xq2 = xq.clone()
    xq2[:, 1] += 1.0
    moved = model(X, Y, xq2)
    torch.testing.assert_close(moved[:, [0, 2]], base[:, [0, 2]], rtol=0, atol=1e-14)
    assert (moved[:, 1] - base[:, 1]).abs().max() > 0
    # every query reads every context pair
    Y2 = Y.clone()
    Y2[:, 0] += 1.0
    assert torch.all((model(X, Y2, xq) - base).abs() > 0)
    with pytest.raises(SpecError, match="x_query"):
        model(X, Y)


# --- attention maths against naive loops


def naive_attention(kind: str, q, k, v, allowed) -> torch.Tensor:
    """One (t, s) pair at a time: softmax over visible keys, or relu/linear scores divided by their number."""
    B, H, T, dh = q.shape
    out = torch.zeros_like(q)
    for t in range(T):
        keys = [s for s in range(T) if allowed[t, s]]
        scores = torch.stack([(q[:, :, t] * k[:, :, s]).sum(-1) / math.sqrt(dh) for s in keys], -1)  # (B, H, S)
        if kind == "softmax":
            w = torch.softmax(scores, -1)
        elif kind == "relu":
            w = torch.relu(scores) / len(keys)
        else:
            w = scores / len(keys)
        out[:, :, t] = sum(w[..., i, None] * v[:, :, s] for i, s in enumerate(keys))
    return out


def attention_module(kind: str) -> tuple[FusedSelfAttention, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    mod = FusedSelfAttention(8, 2, kind).to(F64)
    with torch.no_grad():
        for p in mod.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g, dtype=F64))
    return mod, torch.randn(2, 7, 8, generator=g, dtype=F64, requires_grad=True)


def naive_forward(mod: FusedSelfAttention, x: torch.Tensor, kind: str, allowed: torch.Tensor) -> torch.Tensor:
    B, T, E = x.shape
    q, k, v = (t.view(B, T, 2, E // 2).transpose(1, 2) for t in mod.c_attn(x).split(E, dim=2))
    y = naive_attention(kind, q, k, v, allowed)
    return mod.c_proj(y.transpose(1, 2).reshape(B, T, E))


@pytest.mark.parametrize("masked", ["causal", "query"])
@pytest.mark.parametrize("kind", KINDS)
def test_attention_equals_naive_loop_with_gradients(kind, masked):
    mod, x = attention_module(kind)
    T = x.shape[1]
    if masked == "causal":
        allowed, vis = torch.ones(T, T, dtype=torch.bool).tril(), Visibility(T, x.device, F64)
    else:  # 5 causal context tokens and 2 queries that read the context and themselves
        allowed = torch.zeros(T, T, dtype=torch.bool)
        allowed[:5, :5] = torch.ones(5, 5, dtype=torch.bool).tril()
        allowed[5:, :5] = True
        allowed[5:, 5:] = torch.eye(2, dtype=torch.bool)
        vis = Visibility(T, x.device, F64, allowed)
    fast, slow = mod(x, vis), naive_forward(mod, x, kind, allowed)
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-12)
    w = torch.randn_like(fast)
    g_fast = torch.autograd.grad((fast * w).sum(), [x, *mod.parameters()])
    g_slow = torch.autograd.grad((slow * w).sum(), [x, *mod.parameters()])
    for a, b in zip(g_fast, g_slow):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_cached_pattern_is_the_applied_attention(kind):
    model = small_model(kind)
    X, Y = prompt()
    out, cache = model.run_with_cache(X, Y)
    torch.testing.assert_close(out, model(X, Y), rtol=1e-12, atol=1e-12)  # explicit path = fused path
    pat = cache["blocks.0.attn.hook_pattern"]
    T = 12
    assert pat.shape == (3, 2, T, T)
    assert torch.all(pat.triu(1) == 0)
    if kind == "softmax":
        torch.testing.assert_close(pat.sum(-1), torch.ones(3, 2, T, dtype=F64))
    elif kind == "relu":
        assert torch.all(pat >= 0)
    # the pattern reproduces the head outputs: attention output = c_proj(pattern @ v)
    resid = cache["blocks.0.hook_resid_pre"]
    attn = model.blocks[0].attn
    B, E = 3, 16
    v = attn.c_attn(model.blocks[0].ln_1(resid)).split(E, 2)[2].view(B, T, 2, 8).transpose(1, 2)
    rebuilt = attn.c_proj((pat @ v).transpose(1, 2).reshape(B, T, E))
    torch.testing.assert_close(rebuilt, cache["blocks.0.hook_attn_out"], rtol=1e-10, atol=1e-12)


# --- hooks


def test_hook_names_and_cache_order():
    model = small_model("relu")
    X, Y = prompt()
    _, cache = model.run_with_cache(X, Y)
    per_block = ["hook_resid_pre", "attn.hook_pattern", "attn.hook_z", "hook_attn_out", "hook_resid_mid",
                 "hook_mlp_out", "hook_resid_post"]
    expected = ["hook_embed"] + [f"blocks.{i}.{h}" for i in range(2) for h in per_block] + ["hook_resid_final"]
    assert list(cache) == expected
    assert sorted(model.hook_names()) == sorted(expected)
    for name in expected:  # hook names are module paths
        assert model.get_submodule(name) is model.hook_points()[name]
    # hook_z holds the per-head outputs: c_proj of their concatenation is the attention output
    z = cache["blocks.0.attn.hook_z"]
    assert z.shape == (3, 12, 2, 8)
    attn = model.blocks[0].attn
    torch.testing.assert_close(attn.c_proj(z.flatten(2)), cache["blocks.0.hook_attn_out"], rtol=1e-12, atol=1e-12)
    assert cache["resid_post", -1] is cache["blocks.1.hook_resid_post"]
    assert cache["pattern", 0].shape == (3, 2, 12, 12)
    _, few = model.run_with_cache(X, Y, names_filter=lambda name: name.endswith("resid_post"))
    assert list(few) == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]


def test_pattern_not_materialised_unless_hooked(monkeypatch):
    model = small_model("softmax")
    X, Y = prompt()
    calls = []
    real = torch.softmax
    monkeypatch.setattr(torch, "softmax", lambda *a, **k: calls.append(1) or real(*a, **k))
    model(X, Y)
    model.run_with_cache(X, Y, names_filter=lambda n: "pattern" not in n)
    assert calls == []
    model.run_with_cache(X, Y)
    assert len(calls) == 2  # one per block


def test_hook_can_edit_activations():
    model = small_model("softmax")
    X, Y = prompt()
    zero = model.run_with_hooks(X, Y, fwd_hooks=[("blocks.1.hook_resid_post", lambda a, name: torch.zeros_like(a))])
    # LayerNorm(0) = its bias (0 at init), so only the read-out bias remains
    torch.testing.assert_close(zero, model.read_out.bias.expand(3, 6, 1).to(F64))
    seen = []
    model.run_with_hooks(X, Y, fwd_hooks=[("blocks.0.hook_attn_out", lambda a, name: seen.append(name))])
    assert seen == ["blocks.0.hook_attn_out"]
    # hooks are removed afterwards
    torch.testing.assert_close(model(X, Y), model.run_with_hooks(X, Y, fwd_hooks=[]))
    with pytest.raises(ICGDError, match="no hook point"):
        model.run_with_hooks(X, Y, fwd_hooks=[("blocks.9.hook_resid_post", lambda a, n: None)])


def test_pattern_hook_edits_the_applied_weights():
    """Replacing the softmax pattern by uniform causal averaging makes each head output the mean of the visible
    values (hooks chain: the cache sees the edited pattern)."""
    model = small_model("softmax", n_layer=1)
    X, Y = prompt()
    T = 12
    uniform = torch.ones(T, T, dtype=F64).tril() / torch.arange(1, T + 1, dtype=F64)[:, None]
    with model.hooks([("blocks.0.attn.hook_pattern", lambda a, name: uniform.expand_as(a))]):
        edited, cache = model.run_with_cache(X, Y)
    assert torch.equal(cache["pattern", 0], uniform.expand(3, 2, T, T))
    attn = model.blocks[0].attn
    v = attn.c_attn(model.blocks[0].ln_1(cache["resid_pre", 0])).split(16, 2)[2].view(3, T, 2, 8).transpose(1, 2)
    means = v.cumsum(2) / torch.arange(1, T + 1, dtype=F64)[:, None]
    torch.testing.assert_close(cache["attn_out", 0], attn.c_proj(means.transpose(1, 2).reshape(3, T, 16)))
    assert (edited - model(X, Y)).abs().max() > 1e-8


# --- loops, options, init


def test_loop_shares_weights_and_equals_unrolled_stack():
    looped = small_model("relu", n_layer=1, loop=3)
    unrolled = small_model("relu", n_layer=3)
    assert looped.num_params() < unrolled.num_params()
    state = looped.state_dict()
    with torch.no_grad():
        for name, t in unrolled.state_dict().items():
            src = name.replace(f"blocks.{name.split('.')[1]}.", "blocks.0.") if name.startswith("blocks.") else name
            t.copy_(state[src])
    X, Y = prompt()
    torch.testing.assert_close(looped(X, Y), unrolled(X, Y), rtol=1e-12, atol=1e-12)
    per_pass = looped.loop_predictions(X, Y)
    assert per_pass.shape == (3, 3, 6, 1)
    torch.testing.assert_close(per_pass[-1], looped(X, Y))
    injected = small_model("relu", n_layer=1, loop=3, loop_inject=True)
    injected.load_state_dict(state)
    torch.testing.assert_close(injected.loop_predictions(X, Y)[0], per_pass[0])  # pass 0 is the same
    assert (injected(X, Y) - looped(X, Y)).abs().max() > 1e-8


def test_loop_hook_names_carry_the_pass():
    model = small_model("linear", n_layer=1, loop=2)
    X, Y = prompt()
    _, cache = model.run_with_cache(X, Y)
    assert "loop.1.blocks.0.hook_resid_post" in cache and "loop.0.hook_embed" in cache
    assert "loop.1.hook_embed" not in cache
    assert cache["resid_post", 0, 1] is cache["loop.1.blocks.0.hook_resid_post"]
    assert model.get_submodule("loop.1.blocks.0.hook_resid_post") is model.blocks[0].hook_resid_post
    seen = []
    model.run_with_hooks(X, Y, fwd_hooks=[("blocks.0.hook_resid_pre", lambda a, n: seen.append(n)),
                                          ("loop.1.blocks.0.hook_attn_out", lambda a, n: seen.append(n))])
    assert seen == ["loop.0.blocks.0.hook_resid_pre", "loop.1.blocks.0.hook_resid_pre",
                    "loop.1.blocks.0.hook_attn_out"]
    with pytest.raises(ICGDError, match="loop"):
        model.run_with_hooks(X, Y, fwd_hooks=[("loop.2.blocks.0.hook_resid_pre", lambda a, n: None)])


def test_no_layernorm_no_mlp():
    model = small_model("relu", mlp=False, layernorm=False)
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in model.modules())
    assert all(b.mlp is None for b in model.blocks)
    X, Y = prompt()
    _, cache = model.run_with_cache(X, Y)
    assert "blocks.0.hook_mlp_out" not in cache and "blocks.0.hook_resid_mid" not in cache
    assert model(X, Y).shape == (3, 6, 1)


def test_init_is_reproducible_and_gpt2_scaled():
    a = ICLTransformer(5, n_layer=4, n_head=2, n_embd=64, generator=torch.Generator().manual_seed(3))
    b = ICLTransformer(5, n_layer=4, n_head=2, n_embd=64, generator=torch.Generator().manual_seed(3))
    for (na, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(pa, pb), na
    proj = torch.cat([blk.mlp.W2.flatten() for blk in a.blocks])
    assert abs(proj.std().item() - 0.02 / math.sqrt(8)) < 0.0005
    assert abs(a.blocks[0].mlp.W1.std().item() - 0.02) < 0.001
    assert torch.all(a.blocks[0].attn.c_attn.bias == 0)
    assert a.config.d_mlp is None and a.blocks[0].mlp.width == 256
    assert ICLTransformer(**a.to_dict()).state_dict().keys() == a.state_dict().keys()
    # checkpoints written when the MLP was two nn.Linear (mlp.c_fc.weight …) still load
    names = {"W1": "c_fc.weight", "b1": "c_fc.bias", "W2": "c_proj.weight", "b2": "c_proj.bias"}
    old = {(k.rpartition(".")[0] + "." + names[k.rpartition(".")[2]] if ".mlp." in k else k): v
           for k, v in a.state_dict().items()}
    c = ICLTransformer(5, n_layer=4, n_head=2, n_embd=64)
    c.load_state_dict(old)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_float32_default_and_training_step():
    model = ICLTransformer(4, n_layer=1, n_head=1, n_embd=8, attention="relu")
    X, Y = torch.randn(2, 5, 4), torch.randn(2, 5, 1)
    loss = ((model(X, Y) - Y) ** 2).mean()
    loss.backward()
    assert model.read_in.weight.grad is not None and model.wpe.weight.grad.abs().sum() > 0
    assert model(X.double(), Y.double()).dtype == torch.float32  # inputs follow the model


def test_bad_arguments():
    with pytest.raises(SpecError, match="softmax, relu, linear"):
        ICLTransformer(3, n_layer=1, n_head=1, n_embd=8, attention="sigmoid")
    with pytest.raises(SpecError, match="interleaved, concat"):
        ICLTransformer(3, n_layer=1, n_head=1, n_embd=8, token_format="stacked")
    with pytest.raises(SpecError, match="divisible"):
        ICLTransformer(3, n_layer=1, n_head=3, n_embd=8)
    with pytest.raises(SpecError, match="n_layer"):
        ICLTransformer(3, n_layer=0, n_head=1, n_embd=8)
    model = small_model()
    X, Y = prompt(n=13)
    with pytest.raises(ShapeError, match="max_points=12"):
        model(X, Y)
    X, Y = prompt(n=12)
    model(X, Y)
    with pytest.raises(ShapeError, match="max_points"):
        model(X, Y, X[:, :1])
    with pytest.raises(ShapeError, match="d_in"):
        model(torch.randn(2, 4, 5), torch.randn(2, 4, 1))
    with pytest.raises(ShapeError, match="output axis"):
        model(torch.randn(2, 4, 3), torch.randn(2, 4))
    with pytest.raises(ShapeError, match="but X has"):
        model(torch.randn(2, 4, 3), torch.randn(2, 5, 1))
    X, Y = prompt()
    X[0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteError):
        model(X, Y)


# ---------------------------------------------------------------------------------------------- LSA


def lsa_prompt(d=4, d_out=1, n=9, m=3, B=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, n, d, generator=g, dtype=F64), torch.randn(B, n, d_out, generator=g, dtype=F64),
            torch.randn(B, m, d, generator=g, dtype=F64))


@pytest.mark.parametrize("d_out", [1, 2])
@pytest.mark.parametrize("steps", [1, 3])
def test_lsa_with_von_oswald_weights_is_linear_gd(steps, d_out):
    X, Y, xq = lsa_prompt(d_out=d_out)
    lsa = LSA(4, d_out, n_layer=steps).to(F64)
    etas = [0.3, 0.5, 0.2][:steps]
    for i, eta in enumerate(etas):
        lsa.set_weights(i, von_oswald_weights(4, d_out, eta=eta))
    ref = linear_gd(4, d_out, eta=etas, steps=steps).predict(X, Y, xq)
    torch.testing.assert_close(lsa(X, Y, xq), ref, rtol=0, atol=1e-12)
    for key, value in von_oswald_weights(4, d_out, eta=etas[-1]).items():
        assert torch.equal(lsa.weights(steps - 1)[key], value)


def test_shared_multihead_lsa_is_gd_plus_plus():
    X, Y, xq = lsa_prompt()
    lsa = LSA(4, n_layer=3, shared=True, n_head=2).to(F64)
    w = von_oswald_weights(4, eta=0.4, gamma=0.3)
    lsa.set_weights(0, {k: torch.stack((v, torch.zeros_like(v))) for k, v in w.items()})  # head 2 silent
    ref = gd_plus_plus(4, eta=0.4, gamma=0.3, steps=3).predict(X, Y, xq)
    torch.testing.assert_close(lsa(X, Y, xq), ref, rtol=0, atol=1e-12)
    assert sum(p.numel() for p in lsa.parameters()) == 4 * 2 * 25
    assert lsa.weights(2)["P"].shape == (2, 5, 5)


def test_lsa_queries_are_independent_and_hooks():
    X, Y, xq = lsa_prompt()
    lsa = LSA(4, n_layer=2, generator=torch.Generator().manual_seed(0)).to(F64)
    base = lsa(X, Y, xq)
    assert base.shape == (5, 3, 1)
    xq2 = xq.clone()
    xq2[:, 0] += 1
    torch.testing.assert_close(lsa(X, Y, xq2)[:, 1:], base[:, 1:], rtol=0, atol=1e-15)
    out, cache = lsa.run_with_cache(X, Y, xq)
    assert list(cache) == [f"{where}.{i}.{h}" for i in range(2) for where, h in
                           (("blocks", "hook_resid_pre"), ("layers", "hook_pattern"), ("layers", "hook_z"),
                            ("blocks", "hook_resid_post"))]
    torch.testing.assert_close(cache["layers.1.hook_z"].sum(2),
                               cache["blocks.1.hook_resid_post"] - cache["blocks.1.hook_resid_pre"])
    assert cache["pattern", 1].shape == (5, 1, 12, 9)
    torch.testing.assert_close(-cache["resid_post", -1][:, 9:, 4:], out)
    # editing the last pattern to zero leaves the query y-slot at its input value 0
    zeroed = lsa.run_with_hooks(X, Y, xq, fwd_hooks=[("layers.1.hook_pattern", lambda a, n: a * 0)])
    torch.testing.assert_close(zeroed, -cache["resid_post", 0][:, 9:, 4:])
    # a shared LSA is one block looped n_layer times: names carry the application
    shared = LSA(4, n_layer=3, shared=True, generator=torch.Generator().manual_seed(0)).to(F64)
    out, cache = shared.run_with_cache(X, Y, xq)
    assert [k for k in cache if k.endswith("hook_resid_post")] == [f"loop.{i}.blocks.0.hook_resid_post"
                                                                   for i in range(3)]
    torch.testing.assert_close(-cache["resid_post", 0, 2][:, 9:, 4:], out)
    assert shared.get_submodule("loop.2.layers.0.hook_pattern") is shared.layers[0].hook_pattern


def test_lsa_init_and_errors():
    lsa = LSA(10, n_layer=2, generator=torch.Generator().manual_seed(0))
    assert abs(lsa.layers[0].W_q.std().item() - math.sqrt(0.002 / 11)) < 0.003
    assert LSA(3, n_layer=1, init_std=0.5).init_std == 0.5
    with pytest.raises(ShapeError, match=r"\(4, 4\)"):
        LSA(3, n_layer=1).set_weights(0, {"P": torch.zeros(3, 3)})
    # checkpoints written with the paper's parameter names (layers.{i}.W_Q … .P) still load
    a, b = LSA(3, n_layer=2, n_head=2, generator=torch.Generator().manual_seed(1)), LSA(3, n_layer=2, n_head=2)
    names = {"W_q": "W_Q", "W_k": "W_K", "W_v": "W_V", "W_o": "P"}
    old = {k.rpartition(".")[0] + "." + names[k.rpartition(".")[2]]: v for k, v in a.state_dict().items()}
    b.load_state_dict(old)
    assert all(torch.equal(b.weights(i)[k], a.weights(i)[k]) for i in range(2) for k in names.values())
    with pytest.raises(SpecError, match="W_K, W_Q, W_V and P"):
        LSA(3, n_layer=1).set_weights(0, {"W_O": torch.zeros(4, 4)})
    with pytest.raises(SpecError, match="layer"):
        LSA(3, n_layer=1).weights(1)
    with pytest.raises(ShapeError, match="x_query"):
        LSA(3, n_layer=1)(torch.randn(2, 4, 3), torch.randn(2, 4, 1), torch.randn(2, 3))


def test_config_form_equals_keyword_form_and_every_option_is_a_train_key():
    """ICLTransformer(config) and the keyword form build the same model; every model option is a TrainConfig key
    and build_model passes it through (a non-default value of each changes the built model)."""
    import dataclasses

    from icgd.models import ICLTransformerConfig
    from icgd.train import TrainConfig
    from icgd.train.loop import build_model

    cfg = ICLTransformerConfig(3, 1, n_layer=2, n_head=2, n_embd=16, max_points=12, d_mlp=24, mlp_activation="relu")
    a = ICLTransformer(cfg, generator=torch.Generator().manual_seed(1))
    b = ICLTransformer(3, 1, n_layer=2, n_head=2, n_embd=16, max_points=12, d_mlp=24, mlp_activation="relu",
                       generator=torch.Generator().manual_seed(1))
    assert a.config == b.config
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert na == nb and torch.equal(pa, pb)
    with pytest.raises(SpecError, match="n_embd"):
        ICLTransformer(3, n_layer=2, n_head=2)
    with pytest.raises(SpecError, match="unknown ICLTransformer option"):
        ICLTransformer(3, n_layer=2, n_head=2, n_embd=16, widht=3)
    renamed = {"max_points": "n_points"}
    train_keys = {f.name for f in dataclasses.fields(TrainConfig)}
    for f in dataclasses.fields(ICLTransformerConfig):
        assert renamed.get(f.name, f.name) in train_keys, f.name
    base = TrainConfig(d_in=3, n_layer=1, n_head=2, n_embd=16, n_points=6, eval_prompts=8)
    changed = {"d_mlp": 24, "mlp_activation": "relu", "loop": 2, "loop_inject": True}
    for key, value in changed.items():
        extra = {"loop": 2} if key == "loop_inject" else {}
        model = build_model(dataclasses.replace(base, **extra, **{key: value}))
        assert getattr(model.config, key) == value
    assert build_model(dataclasses.replace(base, d_mlp=24)).blocks[0].mlp.width == 24
