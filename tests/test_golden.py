"""Golden tests: the library's sites against independent float64 NumPy implementations written
from the papers (HC coefficients, arXiv 2409.19606; mHC Eqs. 7-9 of arXiv 2512.24880; the
Sinkhorn conventions of Eq. 9 and DeepSeek-V4; mHC-lite, arXiv 2601.05732).

The library is only used to build a site, set its parameters and produce its output."""
import itertools

import jax.numpy as jnp
import numpy as np
import pytest

import mhc

B, T, N, C = 2, 3, 4, 8
EPS = 1e-6  # RMSNorm eps, V4 eps


# ---------------------------------------------------------------------------- NumPy reference
def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def rms_norm(v, eps=EPS):
    return v / np.sqrt(np.mean(v * v, axis=-1, keepdims=True) + eps)


def branch_np(w):
    return lambda h: np.tanh(h @ w)


def branch_jax(w):
    w32 = jnp.asarray(w, jnp.float32)
    return lambda h: jnp.tanh(h @ w32)


def sinkhorn_paper_np(logits, iters=20):
    """Eq. 9: M0 = exp(logits); each iteration normalises columns, then rows."""
    m = np.exp(logits)
    for _ in range(iters):
        m = m / m.sum(-2, keepdims=True)
        m = m / m.sum(-1, keepdims=True)
    return m


def sinkhorn_v4_np(logits, iters=20, eps=EPS):
    """DeepSeek-V4: softmax over last axis + eps; columns once; (iters-1) x [rows, columns]."""
    e = np.exp(logits - logits.max(-1, keepdims=True))
    comb = e / e.sum(-1, keepdims=True) + eps
    comb = comb / (comb.sum(-2, keepdims=True) + eps)
    for _ in range(iters - 1):
        comb = comb / (comb.sum(-1, keepdims=True) + eps)
        comb = comb / (comb.sum(-2, keepdims=True) + eps)
    return comb  # NOT transposed: the caller applies comb^T


def mhc_logits_np(x, phi, bias, alpha, n, layout=("pre", "post", "res")):
    """Eqs. 7-8: flatten to N*C, RMSNorm (no weight), heads from the fused phi, alpha gates, bias.

    `layout` names phi's column blocks in order (the library's is [pre | post | res])."""
    v = rms_norm(x.reshape(*x.shape[:-2], -1))
    widths = {"pre": n, "post": n, "res": n * n}
    gate = {"pre": alpha[0], "post": alpha[1], "res": alpha[2]}
    out, start = {}, 0
    for name in layout:
        cols = slice(start, start + widths[name])
        out[name] = gate[name] * (v @ phi[:, cols]) + bias[cols]
        start += widths[name]
    out["res"] = out["res"].reshape(*x.shape[:-2], n, n)  # row-major
    return out


def apply_np(x, pre, post, res, f):
    """x_{l+1} = H_res·x + H_postᵀ·F(H_pre·x) with res[i, j] mixing stream j into stream i."""
    f_out = f(np.einsum("...n,...nc->...c", pre, x))
    return np.einsum("...ij,...jc->...ic", res, x) + post[..., :, None] * f_out[..., None, :]


def mhc_paper_np(x, phi, bias, alpha, f, iters=20, layout=("pre", "post", "res")):
    lg = mhc_logits_np(x, phi, bias, alpha, x.shape[-2], layout)
    pre, post, res = sigmoid(lg["pre"]), 2 * sigmoid(lg["post"]), sinkhorn_paper_np(lg["res"], iters)
    return apply_np(x, pre, post, res, f), (pre, post, res)


def mhc_v4_np(x, phi, bias, alpha, f, iters=20, transpose=True, layout=("pre", "post", "res")):
    """V4 site: new = post ⊗ F(pre·x) + combᵀ·streams, pre = sigmoid + eps."""
    lg = mhc_logits_np(x, phi, bias, alpha, x.shape[-2], layout)
    pre = sigmoid(lg["pre"]) + EPS
    post = 2 * sigmoid(lg["post"])
    comb = sinkhorn_v4_np(lg["res"], iters)
    f_out = f(np.einsum("...n,...nc->...c", pre, x))
    spec = "...ji,...jc->...ic" if transpose else "...ij,...jc->...ic"
    new = post[..., :, None] * f_out[..., None, :] + np.einsum(spec, comb, x)
    return new, (pre, post, comb)


# ------------------------------------------------------------------------------- fixtures
def _data(seed, k_res=N * N, phi_scale=0.3):
    rng = np.random.default_rng(seed)
    return dict(
        x=rng.normal(size=(B, T, N, C)),
        phi=phi_scale * rng.normal(size=(N * C, 2 * N + k_res)),
        bias=rng.normal(size=(2 * N + k_res,)),
        alpha=rng.uniform(0.5, 1.5, size=(3,)),
        w=rng.normal(size=(C, C)) / np.sqrt(C),
    )


def _site(kind, d, **kwargs):
    hc = mhc.HyperConnection(C, n_streams=N, kind=kind, **kwargs)
    for name in ("phi", "bias", "alpha"):
        assert hc.params[name][...].shape == d[name].shape, name
        hc.params[name][...] = jnp.asarray(d[name], jnp.float32)
    return hc


def _run(hc, d):
    out, maps = hc.apply(jnp.asarray(d["x"], jnp.float32), branch_jax(d["w"]))
    assert out.shape == (B, T, N, C) and out.dtype == jnp.float32
    return np.asarray(out, np.float64), maps


def _as64(d):
    """The parameters as the fp32 values the library actually holds, in float64."""
    return {k: np.asarray(np.asarray(v, np.float32), np.float64) for k, v in d.items()}


# ----------------------------------------------------------------------------------- mHC
def test_golden_mhc_paper():
    d = _data(0)
    out, maps = _run(_site("mhc", d, sinkhorn_convention="paper"), d)
    e = _as64(d)
    ref, (pre, post, res) = mhc_paper_np(e["x"], e["phi"], e["bias"], e["alpha"], branch_np(e["w"]))
    np.testing.assert_allclose(maps.pre, pre, atol=1e-5, rtol=0)
    np.testing.assert_allclose(maps.post, post, atol=1e-5, rtol=0)
    np.testing.assert_allclose(maps.res, res, atol=1e-5, rtol=0)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)
    # the test data exercise every part: non-trivial maps and a non-symmetric H_res
    assert np.abs(res - np.swapaxes(res, -1, -2)).max() > 0.05
    assert np.abs(res - np.eye(N)).max() > 0.1 and np.ptp(pre) > 0.1 and np.ptp(post) > 0.1


def test_golden_mhc_deepseek_v4():
    d = _data(1)
    out, maps = _run(_site("mhc", d, sinkhorn_convention="deepseek_v4"), d)
    e = _as64(d)
    ref, (pre, post, comb) = mhc_v4_np(e["x"], e["phi"], e["bias"], e["alpha"], branch_np(e["w"]))
    np.testing.assert_allclose(maps.pre, pre, atol=1e-6, rtol=0)  # includes the +eps
    np.testing.assert_allclose(maps.post, post, atol=1e-5, rtol=0)
    np.testing.assert_allclose(maps.res, np.swapaxes(comb, -1, -2), atol=1e-5, rtol=0)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)


def test_golden_v4_orientation_catches_missing_transpose():
    d = _data(2)
    out, maps = _run(_site("mhc", d, sinkhorn_convention="deepseek_v4"), d)
    e = _as64(d)
    args = (e["x"], e["phi"], e["bias"], e["alpha"], branch_np(e["w"]))
    transposed, (_, _, comb) = mhc_v4_np(*args, transpose=True)
    untransposed, _ = mhc_v4_np(*args, transpose=False)
    assert np.abs(comb - np.swapaxes(comb, -1, -2)).max() > 0.05  # non-symmetric comb
    np.testing.assert_allclose(out, transposed, atol=1e-5, rtol=1e-5)
    assert np.abs(out - untransposed).max() > 1e-2
    # which marginal is exact: the applied map's rows (comb's columns, normalised last)
    res = np.asarray(maps.res, np.float64)
    assert np.abs(res.sum(-1) - 1).max() < 1e-5


def test_golden_segment_order():
    """phi/bias columns are [pre | post | res]; reading them as [pre | res | post] (or swapping
    pre/post) must give a different answer, and permuting the blocks of phi changes the output."""
    d = _data(3)
    for conv, ref_fn in (("paper", mhc_paper_np), ("deepseek_v4", mhc_v4_np)):
        out, _ = _run(_site("mhc", d, sinkhorn_convention=conv), d)
        e = _as64(d)
        args = (e["x"], e["phi"], e["bias"], e["alpha"], branch_np(e["w"]))
        right, _ = ref_fn(*args)
        np.testing.assert_allclose(out, right, atol=1e-5, rtol=1e-5)
        for wrong in (("pre", "res", "post"), ("post", "pre", "res"), ("res", "pre", "post")):
            mismatched, _ = ref_fn(*args, layout=wrong)
            assert np.abs(out - mismatched).max() > 1e-2, (conv, wrong)

    # permuting the blocks of phi (pre <-> post) changes the library's output
    swapped = dict(d, phi=np.concatenate([d["phi"][:, N:2 * N], d["phi"][:, :N],
                                          d["phi"][:, 2 * N:]], axis=1))
    out, _ = _run(_site("mhc", d), d)
    out_swapped, _ = _run(_site("mhc", swapped), swapped)
    assert np.abs(out - out_swapped).max() > 1e-2


@pytest.mark.parametrize("iters", [1, 7])
def test_golden_mhc_iterations(iters):
    d = _data(4)
    for conv, ref_fn in (("paper", mhc_paper_np), ("deepseek_v4", mhc_v4_np)):
        out, _ = _run(_site("mhc", d, sinkhorn_convention=conv, sinkhorn_iters=iters), d)
        e = _as64(d)
        ref, _ = ref_fn(e["x"], e["phi"], e["bias"], e["alpha"], branch_np(e["w"]), iters=iters)
        np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)


# -------------------------------------------------------------------------------- mHC-lite
def test_golden_mhc_lite():
    k = 24
    d = _data(5, k_res=k)
    out, maps = _run(_site("mhc_lite", d), d)
    e = _as64(d)
    v = rms_norm(e["x"].reshape(B, T, N * C))
    proj = v @ e["phi"]
    pre = sigmoid(e["alpha"][0] * proj[..., :N] + e["bias"][:N])
    post = 2 * sigmoid(e["alpha"][1] * proj[..., N:2 * N] + e["bias"][N:2 * N])
    z = e["alpha"][2] * proj[..., 2 * N:] + e["bias"][2 * N:]
    a = np.exp(z - z.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    perms = list(itertools.permutations(range(N)))  # identity first
    mats = np.zeros((k, N, N))
    for idx, p in enumerate(perms):
        mats[idx, np.arange(N), p] = 1.0  # P[i, p(i)] = 1: output stream i reads stream p(i)
    res = np.einsum("...k,kij->...ij", a, mats)
    ref = apply_np(e["x"], pre, post, res, branch_np(e["w"]))
    np.testing.assert_allclose(maps.res, res, atol=1e-6, rtol=0)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)
    assert np.abs(res.sum(-1) - 1).max() < 1e-12 and np.abs(res.sum(-2) - 1).max() < 1e-12


# -------------------------------------------------------------------------------------- HC
def test_golden_hc():
    rng = np.random.default_rng(6)
    params = {
        "norm_weight": rng.uniform(0.5, 1.5, size=(C,)),
        "b_pre": rng.normal(size=(N,)), "b_post": rng.normal(size=(N,)),
        "b_res": rng.normal(size=(N, N)),
        "theta_pre": rng.normal(size=(C,)), "theta_post": rng.normal(size=(C,)),
        "theta_res": rng.normal(size=(N, C)),
        "alpha": rng.uniform(0.5, 1.5, size=(3,)),
    }
    x = rng.normal(size=(B, T, N, C))
    w = rng.normal(size=(C, C)) / np.sqrt(C)
    hc = mhc.HyperConnection(C, n_streams=N, kind="hc")
    assert set(hc.params) == set(params)
    for name, value in params.items():
        hc.params[name][...] = jnp.asarray(value, jnp.float32)
    out, maps = _run(hc, dict(x=x, w=w))

    p = _as64(params)
    x = np.asarray(np.asarray(x, np.float32), np.float64)
    w = np.asarray(np.asarray(w, np.float32), np.float64)
    xt = rms_norm(x) * p["norm_weight"]  # per-stream RMSNorm over C: [B, T, N, C]
    pre = p["alpha"][0] * np.tanh(xt @ p["theta_pre"]) + p["b_pre"]  # θ_pre x̃ᵀ: [.., N]
    post = p["alpha"][1] * np.tanh(xt @ p["theta_post"]) + p["b_post"]
    # (θ_res x̃ᵀ)[i, j] = θ_res[i] · x̃_j
    res = p["alpha"][2] * np.tanh(np.einsum("ic,...jc->...ij", p["theta_res"], xt)) + p["b_res"]
    ref = apply_np(x, pre, post, res, branch_np(w))
    np.testing.assert_allclose(maps.pre, pre, atol=1e-5, rtol=0)
    np.testing.assert_allclose(maps.post, post, atol=1e-5, rtol=0)
    np.testing.assert_allclose(maps.res, res, atol=1e-5, rtol=0)
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-5)
    assert np.abs(res - np.swapaxes(res, -1, -2)).max() > 0.1  # orientation is tested
    assert np.abs(ref - apply_np(x, pre, post, np.swapaxes(res, -1, -2), branch_np(w))).max() > 1e-2


# --------------------------------------------------------------- single-pass mHC (V4.1)
def _rope_np(x, theta=10000.0):
    """x [B, T, H, K]: rotate (first half, second half) channel pairs by position."""
    half = x.shape[-1] // 2
    freqs = theta ** (-np.arange(half) / half)
    ang = np.arange(x.shape[1])[:, None] * freqs[None, :]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1)


def _attention_np(h, qkv_w, out_w, n_heads):
    b, t, c = h.shape
    k_dim = c // n_heads
    qkv = (h @ qkv_w).reshape(b, t, 3, n_heads, k_dim)
    q, k, v = _rope_np(qkv[:, :, 0]), _rope_np(qkv[:, :, 1]), qkv[:, :, 2]
    s = np.einsum("bqhk,bshk->bhqs", q, k) / np.sqrt(k_dim)
    s = np.where(np.tril(np.ones((t, t), bool)), s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    p = p / p.sum(-1, keepdims=True)
    return np.einsum("bhqs,bshd->bqhd", p, v).reshape(b, t, c) @ out_w


def _swiglu_np(h, gate_up_w, down_w):
    gate, up = np.split(h @ gate_up_w, 2, axis=-1)
    return (gate * sigmoid(gate) * up) @ down_w


def single_pass_decoder_np(weights, tokens, n, n_heads, iters=20, eps=EPS):
    """DeepSeek-V4.1 single-pass mHC decoder, from the report's equations (§2.4.1): at site k,
    m = RMS-scaled projection of vec(X_k); pre_k = σ(.) + eps, post_k = 2σ(.), comb_k = V4
    Sinkhorn; the collapse uses the PREVIOUS site's pre (p_{-1} = e_0):
    u_k = Σ_i p_{k-1}[i] X_k[i]; X_{k+1}[j] = post_k[j] F_k(u_k) + Σ_i comb_k[i, j] X_k[i];
    the final merge is Σ_i p_{2L-1}[i] X_{2L}[i], then the final norm and the LM head."""
    x = weights["embed"][tokens]  # [B, T, C]
    streams = np.repeat(x[:, :, None, :], n, axis=2)
    p = np.zeros(streams.shape[:-1])
    p[..., 0] = 1.0
    for site in weights["sites"]:
        lg = mhc_logits_np(streams, site["phi"], site["bias"], site["alpha"], n)
        pre = sigmoid(lg["pre"]) + eps
        post = 2 * sigmoid(lg["post"])
        comb = sinkhorn_v4_np(lg["res"], iters)
        u = np.einsum("...i,...ic->...c", p, streams)
        y = site["branch"](rms_norm(u) * site["norm"])
        streams = post[..., :, None] * y[..., None, :] + np.einsum("...ij,...ic->...jc", comb,
                                                                   streams)
        p = pre
    h = np.einsum("...i,...ic->...c", p, streams)
    return (rms_norm(h) * weights["final_norm"]) @ weights["lm_head"]


def test_golden_single_pass_decoder():
    """A 2-block single-pass model against the NumPy V4.1 reference, with random connection
    parameters (so that every pre, post and comb is far from its init), to 1e-5."""
    import jax
    from flax import nnx
    from mhc import recipes
    from mhc.config import apply_overrides
    from mhc.model import Decoder
    cfg = apply_overrides(recipes.get("tiny"), [
        "single_pass=true", "sinkhorn_convention=deepseek_v4", "n_layers=2", "d_model=16",
        "n_heads=2", "d_ff=32", "seq_len=8", "dtype=float32"]).model
    model = Decoder(cfg, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    blocks = model.dense_blocks
    for hc in (blocks.attn_hc, blocks.ffn_hc):
        for name in ("phi", "bias"):
            param = hc.params[name]
            param[...] = jnp.asarray(rng.normal(scale=0.5, size=param[...].shape), jnp.float32)
        hc.params["alpha"][...] = jnp.asarray(rng.uniform(0.5, 1.5, size=(2, 3)), jnp.float32)
    for norm in (blocks.attn_norm, blocks.ffn_norm):
        norm.scale[...] = jnp.asarray(rng.uniform(0.5, 1.5, size=norm.scale[...].shape),
                                      jnp.float32)

    def np64(a):
        return np.asarray(a[...], np.float64)

    sites = []
    for layer in range(2):
        for hc, norm, branch in (
                (blocks.attn_hc, blocks.attn_norm, lambda h, l=layer: _attention_np(
                    h, np64(blocks.attn.qkv.kernel)[l], np64(blocks.attn.out.kernel)[l], 2)),
                (blocks.ffn_hc, blocks.ffn_norm, lambda h, l=layer: _swiglu_np(
                    h, np64(blocks.ffn.gate_up.kernel)[l], np64(blocks.ffn.down.kernel)[l]))):
            sites.append({"phi": np64(hc.params["phi"])[layer],
                          "bias": np64(hc.params["bias"])[layer],
                          "alpha": np64(hc.params["alpha"])[layer],
                          "norm": np64(norm.scale)[layer], "branch": branch})
    weights = {"embed": np64(model.embed.embedding), "sites": sites,
               "final_norm": np64(model.final_norm.scale), "lm_head": np64(model.lm_head.kernel)}
    tokens = rng.integers(0, 256, size=(2, 8))
    want = single_pass_decoder_np(weights, tokens, n=4, n_heads=2)
    got = np.asarray(model(jnp.asarray(tokens))[0])
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    # not vacuous: the same parameters without single-pass give another output
    plain = nnx.merge(nnx.graphdef(Decoder(apply_overrides(recipes.get("tiny"), [
        "sinkhorn_convention=deepseek_v4", "n_layers=2", "d_model=16", "n_heads=2", "d_ff=32",
        "seq_len=8", "dtype=float32"]).model, rngs=nnx.Rngs(0))), nnx.state(model))
    assert np.abs(np.asarray(plain(jnp.asarray(tokens))[0]) - want).max() > 1e-3
    assert jax.tree.structure(nnx.state(plain)) == jax.tree.structure(nnx.state(model))
