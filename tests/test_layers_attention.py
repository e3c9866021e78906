"""The attention equations of :mod:`icgd.layers.attention` (one function per equation) against plain loops over
queries and keys: every visibility (causal, full, first-n keys, explicit and per-prompt key masks, rows pruned),
the score scale, hooked and unhooked paths; the fused trained-model attention and cheng2024's model built on them;
and no attention code left in :mod:`icgd.models`."""

from __future__ import annotations

import ast
import inspect
import math

import pytest
import torch

import icgd.models
from icgd.errors import ShapeError, SpecError
from icgd.experiments import cheng2024
from icgd.hooks import HookPoint
from icgd.layers import (FusedSelfAttention, KernelAttention, LinearAttention, SoftmaxAttention, Transformer,
                         Visibility, kernel_attention, softmax_attention)
from icgd.layers.attention import key_mask

F64 = torch.float64
B, H, T, DH = 3, 2, 6, 4
FLAG = 0  # key flag coordinate of the token tensors below


def close(a, b, tol=1e-12):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def tokens(seed: int = 0) -> torch.Tensor:
    """(B, T, 5) tokens whose coordinate FLAG marks the keys; prompt 2 has no key at all."""
    g = torch.Generator().manual_seed(seed)
    h = 0.6 * torch.randn(B, T, 5, generator=g, dtype=F64)
    h[..., FLAG] = 0.0
    h[0, [0, 2, 3], FLAG] = 1.0
    h[1, [4], FLAG] = 1.0
    return h


def qkv(seed: int = 1, S: int = T) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return tuple(0.7 * torch.randn(B, H, n, DH, generator=g, dtype=F64) for n in (T, S, S))


def visible(mask: torch.Tensor | None, b: int, t: int, S: int) -> list[int]:
    """Keys that query t of prompt b reads under a (T, S) or (B, T, S) boolean mask (None: all)."""
    if mask is None:
        return list(range(S))
    row = mask[b, t] if mask.dim() == 3 else mask[t]
    return [s for s in range(S) if bool(row[s])]


def kappa(kernel: str, q: torch.Tensor, k: torch.Tensor, scale: float, bw: float) -> float:
    dot = float(q @ k) * scale
    if kernel == "rbf":
        return math.exp(-float(((q - k) ** 2).sum()) / (2 * bw * bw))
    return {"linear": dot, "relu": max(dot, 0.0), "exp": math.exp(dot)}[kernel]


def loop_kernel(q, k, v, mask, kernel, scale=1.0, bw=1.0) -> torch.Tensor:
    """(1/|S_t|) Σ_{s∈S_t} κ(q_t, k_s) v_s, one query at a time (an empty S_t gives 0)."""
    out = torch.zeros(*q.shape[:3], v.shape[-1], dtype=F64)
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            for t in range(q.shape[2]):
                keys = visible(mask, b, t, k.shape[2])
                for s in keys:
                    out[b, h, t] += kappa(kernel, q[b, h, t], k[b, h, s], scale, bw) * v[b, h, s] / len(keys)
    return out


def loop_softmax(q, k, v, mask, scale) -> torch.Tensor:
    """Σ_{s∈S_t} softmax_s(⟨q_t, k_s⟩·scale) v_s, one query at a time (an empty S_t gives 0)."""
    out = torch.zeros(*q.shape[:3], v.shape[-1], dtype=F64)
    for b in range(q.shape[0]):
        for h in range(q.shape[1]):
            for t in range(q.shape[2]):
                keys = visible(mask, b, t, k.shape[2])
                e = [math.exp(float(q[b, h, t] @ k[b, h, s]) * scale) for s in keys]
                for w, s in zip(e, keys):
                    out[b, h, t] += w / sum(e) * v[b, h, s]
    return out


def visibilities() -> dict[str, tuple[Visibility, torch.Tensor | None, int]]:
    """name → (visibility, its boolean mask for the loops, number of keys S)."""
    h = tokens()
    explicit = torch.rand(T, T, generator=torch.Generator().manual_seed(5)) > 0.4
    explicit[:, 0] = True
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    return {
        "causal": (Visibility.for_tokens(h, causal=True), causal, T),
        "full": (Visibility.for_tokens(h), None, T),
        "first_n": (Visibility.for_tokens(h, n_keys=4), None, 4),
        "explicit": (Visibility(T, h.device, F64, explicit), explicit, T),
        "key_flag": (Visibility.for_tokens(h, key_flag=FLAG), key_mask(h, False, FLAG), T),
        "causal_key_flag": (Visibility.for_tokens(h, causal=True, key_flag=FLAG), key_mask(h, True, FLAG), T),
    }


class Recorder(HookPoint):
    """A hook point that listens (so the pattern is materialised) and keeps what it saw."""

    def __init__(self):
        super().__init__()
        self.seen = None
        self.register_forward_hook(lambda mod, args, out: setattr(self, "seen", out.detach()))


@pytest.mark.parametrize("kernel", ["linear", "relu", "exp", "rbf"])
@pytest.mark.parametrize("name", list(visibilities()))
def test_kernel_attention_matches_the_loop_hooked_and_not(kernel, name):
    vis, mask, S = visibilities()[name]
    q, k, v = qkv(S=S)
    scale = 1.0 if kernel == "rbf" else 0.5
    ref = loop_kernel(q, k, v, mask, kernel, scale, bw=1.3)
    close(kernel_attention(q, k, v, vis, kernel, scale=scale, bandwidth=1.3), ref)
    hook = Recorder()
    close(kernel_attention(q, k, v, vis, kernel, hook, scale=scale, bandwidth=1.3), ref)
    assert hook.seen.shape == (B, H, T, S)
    close(hook.seen @ v, ref)  # the hooked pattern is the one applied to the values


@pytest.mark.parametrize("name", list(visibilities()))
@pytest.mark.parametrize("scale", [None, 1.0])
def test_softmax_attention_matches_the_loop_hooked_and_not(name, scale):
    vis, mask, S = visibilities()[name]
    q, k, v = qkv(S=S)
    ref = loop_softmax(q, k, v, mask, 1 / math.sqrt(DH) if scale is None else scale)
    close(softmax_attention(q, k, v, vis, scale=scale), ref)
    hook = Recorder()
    close(softmax_attention(q, k, v, vis, hook, scale=scale), ref)
    close(hook.seen @ v, ref)


@pytest.mark.parametrize("kernel", ["relu", "linear", "softmax"])
def test_pruned_rows_equal_the_rows_of_the_full_output(kernel):
    vis, _, _ = visibilities()["causal"]
    q, k, v = qkv()
    keep = slice(1, T, 2)

    def attend(qq, vv):
        if kernel == "softmax":
            return softmax_attention(qq, k, v, vv)
        return kernel_attention(qq, k, v, vv, kernel, scale=0.5)

    close(attend(q[:, :, keep], vis.rows(keep)), attend(q, vis)[:, :, keep])


def test_gradients_of_hooked_and_unhooked_paths_agree():
    vis, _, _ = visibilities()["explicit"]
    for kernel in ("relu", "exp", "softmax"):
        grads = []
        for hook in (None, Recorder()):
            q, k, v = (t.clone().requires_grad_(True) for t in qkv())
            if kernel == "softmax":
                out = softmax_attention(q, k, v, vis, hook)
            else:
                out = kernel_attention(q, k, v, vis, kernel, hook, scale=0.5)
            grads.append(torch.autograd.grad((out ** 2).sum(), (q, k, v)))
        for a, b in zip(*grads):
            close(a, b, 1e-10)


def test_visibility_counts_and_options():
    h = tokens()
    vis = Visibility.for_tokens(h, causal=True, key_flag=FLAG)
    counts = key_mask(h, True, FLAG).sum(-1).clamp(min=1).to(F64)
    close(vis.inv_count[:, 0, :, 0], 1 / counts)
    assert vis.has_empty_rows and not Visibility.for_tokens(h, causal=True).has_empty_rows
    first = Visibility.for_tokens(h, n_keys=2)
    assert first.S == 2 and first.inv_count == 0.5 and first.key_tokens(h).shape == (B, 2, 5)
    with pytest.raises(SpecError, match="n_keys"):
        Visibility.for_tokens(h, causal=True, n_keys=2)
    with pytest.raises(SpecError, match="n_keys must be"):
        Visibility.for_tokens(h, n_keys=T + 1)
    q, k, v = qkv()
    with pytest.raises(SpecError, match="unknown kernel score"):
        kernel_attention(q, k, v, first, "cosine")
    with pytest.raises(SpecError, match="score scale"):
        kernel_attention(q, k, v, first, "rbf", scale=0.5)


@pytest.mark.parametrize("layer_cls", ["softmax", "linear", "relu"])
def test_dense_layers_take_the_first_n_tokens_as_keys(layer_cls):
    g = torch.Generator().manual_seed(3)
    layer = (SoftmaxAttention(5, 2, 3, generator=g, dtype=F64) if layer_cls == "softmax" else
             LinearAttention(5, 2, 3, generator=g, dtype=F64) if layer_cls == "linear" else
             KernelAttention(5, 2, 3, score="relu", generator=g, dtype=F64))
    h, n = tokens(), 4
    q = torch.einsum("hij,btj->bhti", layer.W_q, h)
    k, v = (torch.einsum("hij,bsj->bhsi", W, h[:, :n]) for W in (layer.W_k, layer.W_v))
    q, k, v = q.detach(), k.detach(), v.detach()
    z = (loop_softmax(q, k, v, None, 1 / math.sqrt(3)) if layer_cls == "softmax" else
         loop_kernel(q, k, v, None, "linear" if layer_cls == "linear" else "relu"))
    ref = h + torch.einsum("hij,bhtj->bti", layer.W_o, z)
    with torch.no_grad():
        close(layer(h, n_keys=n), ref)
        out, _ = Transformer([layer]).run_with_cache(h)
        close(out, layer(h))  # the hooked layer equals the unhooked one


# --- the fused trained-model attention


def fused(kind: str) -> FusedSelfAttention:
    mod = FusedSelfAttention(8, 2, kind).to(F64)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in mod.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g, dtype=F64))
    return mod


@pytest.mark.parametrize("kind", ["softmax", "relu", "linear"])
@pytest.mark.parametrize("keep", [None, slice(1, 7, 2)])
def test_fused_attention_matches_the_loop(kind, keep):
    mod = fused(kind)
    x = torch.randn(2, 7, 8, generator=torch.Generator().manual_seed(1), dtype=F64)
    with torch.no_grad():
        qkv_ = [t.view(2, 7, 2, 4).transpose(1, 2) for t in mod.c_attn(x).split(8, dim=2)]
    mask = torch.ones(7, 7, dtype=torch.bool).tril()
    z = (loop_softmax(*qkv_, mask, 0.5) if kind == "softmax" else loop_kernel(*qkv_, mask, kind, scale=0.5))
    ref = mod.c_proj(z.transpose(1, 2).reshape(2, 7, 8))
    rows = slice(None) if keep is None else keep
    close(mod(x, keep=keep), ref[:, rows])
    hooked = fused(kind)
    hooked.hook_pattern.register_forward_hook(lambda m, a, o: None)
    hooked.hook_z.register_forward_hook(lambda m, a, o: None)
    close(hooked(x, keep=keep), ref[:, rows])


def test_fused_attention_names_and_options():
    mod = FusedSelfAttention(8, 2, "relu")
    assert [n for n, _ in mod.named_parameters()] == ["c_attn.weight", "c_attn.bias", "c_proj.weight", "c_proj.bias"]
    assert isinstance(mod.hook_pattern, HookPoint) and isinstance(mod.hook_z, HookPoint)
    model = icgd.models.ICLTransformer(2, n_layer=1, n_head=2, n_embd=8)
    assert "blocks.0.attn.c_attn.weight" in model.state_dict()
    assert isinstance(model.blocks[0].attn, FusedSelfAttention)
    with pytest.raises(SpecError, match="unknown attention"):
        FusedSelfAttention(8, 2, "cosine")
    with pytest.raises(SpecError, match="divisible"):
        FusedSelfAttention(9, 2)


def _calls_and_defs(obj) -> set[str]:
    """Names of the functions called and of the functions/classes defined in obj's source (code only)."""
    names = set()
    for node in ast.walk(ast.parse(inspect.getsource(obj))):
        if isinstance(node, ast.Call):
            f = node.func
            names.add(f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", ""))
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
    return names


ATTENTION_CODE = {"scaled_dot_product_attention", "softmax", "tril", "tril_", "relu", "relu_", "exp", "masked_fill",
                  "Visibility", "softmax_attention", "relu_attention", "linear_attention", "kernel_attention",
                  "SelfAttention", "_scores", "_normalised", "_act"}


def test_models_define_no_attention_code():
    used = _calls_and_defs(icgd.models)
    assert used & ATTENTION_CODE <= {"Visibility"}  # it builds visibilities, defines none
    assert "Visibility" not in {c.__name__ for c in vars(icgd.models).values()
                                if inspect.isclass(c) and c.__module__ == "icgd.models"}
    own = [obj for obj in vars(icgd.models).values()
           if inspect.isclass(obj) and obj.__module__ == "icgd.models" and "ttention" in obj.__name__]
    assert own == []
    assert icgd.models.FusedSelfAttention is FusedSelfAttention
    cheng = _calls_and_defs(cheng2024.KernelTransformer)
    assert cheng & ATTENTION_CODE <= {"Visibility", "softmax_attention", "kernel_attention"}


# --- cheng2024's model on the shared kernel attention


def cheng_loop(model: cheng2024.KernelTransformer, X, Y, xq) -> torch.Tensor:
    """The module docstring's update, token by token: x_j += c_n Σ_{i≤n} A x_i h_ij, y_j += c_n r Σ_{i≤n} y_i h_ij."""
    n = X.shape[1]
    Z, y = torch.cat([X, xq[:, None]], 1), torch.cat([Y, Y.new_zeros(len(Y), 1)], 1)
    for l in range(model.n_layers):
        A, Bm, C, r = model.A[l], model.B[l], model.C[l], model.r[l]
        Z2, y2 = Z.clone(), y.clone()
        for b in range(len(Z)):
            for j in range(n + 1):
                g = torch.stack([(Bm @ Z[b, i]) @ (C @ Z[b, j]) for i in range(n)])
                h = {"softmax": torch.softmax(g, 0), "linear": g / n, "relu": g.relu() / n, "exp": g.exp() / n}
                w = h[model.activation]
                Z2[b, j] = Z[b, j] + sum(w[i] * (A @ Z[b, i]) for i in range(n))
                y2[b, j] = y[b, j] + r * sum(w[i] * y[b, i] for i in range(n))
        Z, y = Z2, y2
    return -y[:, -1]


@pytest.mark.parametrize("activation", cheng2024.ACTIVATIONS)
def test_cheng_kernel_transformer_matches_its_equation(activation):
    g = torch.Generator().manual_seed(2)
    model = cheng2024.KernelTransformer(3, 2, activation, init="random", generator=g, dtype=F64)
    X, Y, xq = 0.5 * torch.randn(2, 4, 3, generator=g, dtype=F64), torch.randn(2, 4, generator=g, dtype=F64), \
        0.5 * torch.randn(2, 3, generator=g, dtype=F64)
    with torch.no_grad():
        close(model(X, Y, xq), cheng_loop(model, X, Y, xq))


@pytest.mark.parametrize("shape", [(5, 8), (2, 5, 6)])
def test_fused_self_attention_refuses_tokens_of_the_wrong_shape(shape):
    layer = FusedSelfAttention(8, 2)
    with pytest.raises(ShapeError, match=r"tokens must be \(B, T, 8\)"):
        layer(torch.zeros(shape))
