"""Invariants of connection sites and behaviour of the NNX / Linen modules (arXiv 2512.24880 Eqs. 3 and 7-9; streams in and out as in HC, arXiv 2409.19606)."""
import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import mhc
from mhc import connections

B, T, N, C = 2, 3, 4, 8
KINDS = ("residual", "hc", "mhc", "mhc_lite")
W = jax.random.normal(jax.random.key(100), (C, C)) / np.sqrt(C)


def branch(h):
    """A fixed non-linear branch F with its own pre-norm."""
    h32 = h.astype(jnp.float32)
    h32 = h32 * jax.lax.rsqrt(jnp.mean(h32 * h32, -1, keepdims=True) + 1e-6)
    return jnp.tanh(h32 @ W).astype(h.dtype)


def zero_branch(h):
    return jnp.zeros_like(h)


def _streams(seed=0, shape=(B, T, N, C), dtype=jnp.float32):
    return jax.random.normal(jax.random.key(seed), shape).astype(dtype)


def _randomize(hc, seed, scale=0.3):
    """Random phi / bias / alpha for an mHC site (moderate logits)."""
    rng = np.random.default_rng(seed)
    for name in ("phi", "bias"):
        shape = hc.params[name][...].shape
        hc.params[name][...] = jnp.asarray(scale * rng.normal(size=shape), jnp.float32)
    hc.params["alpha"][...] = jnp.asarray(rng.uniform(0.5, 1.5, size=(3,)), jnp.float32)
    return hc


# ------------------------------------------------------------------------------ invariants
@pytest.mark.parametrize("kind, convention, tol", [
    ("mhc", "paper", 1e-4), ("mhc", "deepseek_v4", 1e-4), ("mhc_lite", "paper", 1e-5)])
def test_zero_branch_preserves_stream_sum(kind, convention, tol):
    hc = _randomize(mhc.HyperConnection(C, n_streams=N, kind=kind,
                                        sinkhorn_convention=convention), seed=1, scale=0.1)
    x = _streams(1)
    out, maps = hc.apply(x, zero_branch)
    res = np.asarray(maps.res, np.float64)
    assert np.abs(res - np.eye(N)).max() > 0.1  # the mixing is far from identity
    col_err = np.abs(res.sum(-2) - 1).max()
    assert col_err < tol, col_err  # moderate logits: Sinkhorn columns converged at 20 its
    np.testing.assert_allclose(out.sum(-2), x.sum(-2), atol=tol * 10, rtol=0)
    # while the individual streams are mixed
    assert float(jnp.abs(out - x).max()) > 0.1


def test_hc_unconstrained_does_not_preserve_sum():
    hc = mhc.HyperConnection(C, n_streams=N, kind="hc")
    hc.params["b_res"][...] = jnp.eye(N) + 0.3 * jax.random.normal(jax.random.key(2), (N, N))
    x = _streams(2)
    out = hc(x, zero_branch)
    assert float(jnp.abs(out.sum(-2) - x.sum(-2)).max()) > 0.1


@pytest.mark.parametrize("kind", ["mhc", "mhc_lite"])
def test_h_res_is_used(kind):
    hc = _randomize(mhc.HyperConnection(C, n_streams=N, kind=kind), seed=3)
    x = _streams(3)
    out_a, maps_a = hc.apply(x, branch)
    # zero branch: the output is exactly H_res · x (H_res is really applied)
    np.testing.assert_allclose(hc(x, zero_branch), jnp.einsum("btij,btjc->btic", maps_a.res, x),
                               atol=1e-5)
    bias = hc.params["bias"][...]
    hc.params["bias"][...] = bias.at[2 * N:].add(
        3.0 * jax.random.normal(jax.random.key(4), bias[2 * N:].shape))
    out_b, maps_b = hc.apply(x, branch)
    np.testing.assert_allclose(maps_b.pre, maps_a.pre, atol=1e-7)  # only H_res changed
    np.testing.assert_allclose(maps_b.post, maps_a.post, atol=1e-7)
    assert float(jnp.abs(maps_b.res - maps_a.res).max()) > 0.05
    assert float(jnp.abs(out_b - out_a).max()) > 0.05


@pytest.mark.parametrize("layer_index", [0, 1, 6])
def test_hc_init_is_pre_norm_residual(layer_index):
    x = _streams(5, (B, T, C))
    hc = mhc.HyperConnection(C, n_streams=N, kind="hc", layer_index=layer_index)
    np.testing.assert_array_equal(hc.params["b_pre"][...], np.eye(N)[layer_index % N])
    out = hc(mhc.expand_streams(x, N), branch)
    expected = x + branch(x)
    for i in range(N):
        np.testing.assert_allclose(out[:, :, i], expected, atol=1e-6, rtol=0)


def test_residual_n1_is_exactly_x_plus_f():
    x = _streams(6, (B, T, 1, C))
    hc = mhc.HyperConnection(C, n_streams=1, kind="residual")
    out, maps = hc.apply(x, branch)
    np.testing.assert_array_equal(out, x + branch(x[:, :, 0])[:, :, None])
    np.testing.assert_array_equal(maps.res, np.ones((B, T, 1, 1)))
    x4 = mhc.expand_streams(x[:, :, 0], 4)
    out4 = mhc.HyperConnection(C, n_streams=4, kind="residual")(x4, branch)
    for i in range(4):
        np.testing.assert_allclose(out4[:, :, i], out[:, :, 0], atol=1e-6)


# ----------------------------------------------------------------------------- streams I/O
def test_expand_and_collapse_streams():
    x = _streams(7, (B, T, C))
    s = mhc.expand_streams(x, N)
    assert s.shape == (B, T, N, C)
    for i in range(N):
        np.testing.assert_array_equal(s[:, :, i], x)
    assert mhc.collapse_streams(s).shape == (B, T, C)
    np.testing.assert_allclose(mhc.collapse_streams(s, "sum"), N * x, rtol=1e-6)
    np.testing.assert_allclose(mhc.collapse_streams(s, "mean"), x, rtol=1e-6)
    with pytest.raises(ValueError, match="'max'"):
        mhc.collapse_streams(s, "max")
    with pytest.raises(ValueError, match="n_streams=0"):
        mhc.expand_streams(x, 0)


# ------------------------------------------------------------------------------ bad inputs
@pytest.mark.parametrize("kwargs, needle", [
    (dict(kind="hyper"), "'hyper'"),
    (dict(n_streams=0), "n_streams=0"),
    (dict(manifold="birkhoff"), "'birkhoff'"),
    (dict(sinkhorn_convention="v3"), "'v3'"),
    (dict(sinkhorn_grad="magic"), "'magic'"),
    (dict(sinkhorn_iters=0), "sinkhorn_iters=0"),
    (dict(res_init="random"), "'random'"),
    (dict(kind="hc", res_init="uniform"), "'uniform'"),
])
def test_hyperconnection_bad_args(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        mhc.HyperConnection(C, **{"n_streams": N, **kwargs})


def test_hyperconnection_unknown_manifold_lists_allowed():
    with pytest.raises(ValueError, match="sinkhorn") as err:
        mhc.HyperConnection(C, n_streams=N, manifold="birkhoff")
    assert "mhc_lite" in str(err.value)


@pytest.mark.parametrize("shape", [(B, T, 3, C), (B, T, N, C + 1), (C,)])
def test_hyperconnection_wrong_stream_shape(shape):
    hc = mhc.HyperConnection(C, n_streams=N, kind="mhc")
    with pytest.raises(ValueError, match=re.escape(str(shape))):
        hc(jnp.zeros(shape), branch)


# -------------------------------------------------------------------------- module behaviour
@pytest.mark.parametrize("kind", KINDS)
def test_apply_maps_and_maps(kind):
    hc = mhc.HyperConnection(C, n_streams=N, kind=kind)
    x = _streams(8)
    _, maps = hc.apply(x, branch)
    assert isinstance(maps, mhc.Maps)
    assert maps.pre.shape == (B, T, N) and maps.post.shape == (B, T, N)
    assert maps.res.shape == (B, T, N, N)
    again = hc.maps(x)
    for a, b in zip(maps, again):
        np.testing.assert_array_equal(a, b)
    new, maps2 = hc.apply(x, branch)
    np.testing.assert_array_equal(new, hc(x, branch))


@pytest.mark.parametrize("kind", KINDS)
def test_nnx_jit_and_grad(kind):
    hc = mhc.HyperConnection(C, n_streams=N, kind=kind)
    if kind in ("mhc", "mhc_lite"):
        _randomize(hc, seed=9)
    x = _streams(9)
    eager = hc(x, branch)

    @nnx.jit
    def step(hc, x):
        def loss(hc, x):
            return jnp.mean(hc(x, branch) ** 2)
        (value, (g_params, g_x)) = nnx.value_and_grad(loss, argnums=(0, 1))(hc, x)
        return value, g_params, g_x, hc(x, branch)

    value, g_params, g_x, out = step(hc, x)
    np.testing.assert_allclose(out, eager, atol=1e-5)
    np.testing.assert_allclose(value, jnp.mean(eager ** 2), rtol=1e-5)
    assert g_x.shape == x.shape and bool(jnp.isfinite(g_x).all())
    assert float(jnp.abs(g_x).max()) > 0
    leaves = jax.tree.leaves(nnx.state(g_params, nnx.Param))
    assert len(leaves) == len(hc.params)
    for leaf in leaves:
        assert bool(jnp.isfinite(leaf).all())
    if kind != "residual":
        assert max(float(jnp.abs(leaf).max()) for leaf in leaves) > 0


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_streams(kind):
    hc = mhc.HyperConnection(C, n_streams=N, kind=kind)
    x = _streams(10, dtype=jnp.bfloat16)
    out, maps = hc.apply(x, branch)
    assert out.dtype == jnp.bfloat16 and out.shape == x.shape
    assert bool(jnp.isfinite(out.astype(jnp.float32)).all())
    for m in maps:
        assert m.dtype == jnp.float32
    ref = hc(x.astype(jnp.float32), lambda h: branch(h.astype(jnp.bfloat16)).astype(jnp.float32))
    np.testing.assert_allclose(out.astype(jnp.float32), ref, atol=0.1, rtol=0.05)


@pytest.mark.parametrize("kind", ["mhc", "hc"])
def test_linen_matches_nnx(kind):
    x = _streams(11)
    linen_mod = mhc.LinenHyperConnection(width=C, n_streams=N, kind=kind, layer_index=2)
    variables = linen_mod.init(jax.random.key(0), x, branch)
    params = variables["params"]
    hc = mhc.HyperConnection(C, n_streams=N, kind=kind, layer_index=2)
    assert set(params) == set(hc.params)
    for name in params:  # same initialisation
        np.testing.assert_array_equal(params[name], hc.params[name][...])
    # random parameters, copied into the NNX module
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(12), len(leaves))
    rand = [0.3 * jax.random.normal(k, leaf.shape) + leaf for k, leaf in zip(keys, leaves)]
    params = jax.tree.unflatten(treedef, rand)
    for name, value in params.items():
        hc.params[name][...] = value
    out_linen, state = linen_mod.apply({"params": params}, x, branch, mutable=["intermediates"])
    out_nnx, maps = hc.apply(x, branch)
    np.testing.assert_allclose(out_linen, out_nnx, atol=1e-6)
    sown = state["intermediates"]["maps"][0]
    np.testing.assert_allclose(sown.res, maps.res, atol=1e-7)
    assert float(jnp.abs(out_nnx - mhc.HyperConnection(C, n_streams=N, kind=kind,
                                                       layer_index=2)(x, branch)).max()) > 1e-2


def test_every_spec_option_reaches_both_wrappers():
    """The NNX and Linen sites take every ConnectionSpec field as a keyword with the spec's
    default (they are derived from the spec, not listed again), and build the same site."""
    spec_fields = {f.name: f.default for f in dataclasses.fields(mhc.ConnectionSpec)}
    linen_fields = {f.name: f.default for f in dataclasses.fields(mhc.LinenHyperConnection)}
    assert {k: linen_fields[k] for k in spec_fields if k != "width"} == \
        {k: v for k, v in spec_fields.items() if k != "width"}
    options = dict(n_streams=N, kind="mhc", res_offdiag_logit=-2.0, sinkhorn_range_cap=2.0,
                   sinkhorn_iters=7, pre_eps=1e-3)
    hc = mhc.HyperConnection(C, **options)
    assert hc.spec == mhc.ConnectionSpec(width=C, **options)
    assert mhc.HyperConnection.from_spec(hc.spec).spec == hc.spec
    x = _streams(14)
    out_linen = mhc.LinenHyperConnection(C, **options).init_with_output(
        jax.random.key(0), x, branch)[0]
    np.testing.assert_allclose(out_linen, hc(x, branch), atol=1e-6)
    with pytest.raises(TypeError, match="not both"):
        mhc.HyperConnection(C, spec=hc.spec)


def test_connection_options_are_defined_once_and_reach_every_site():
    """ModelConfig inherits ConnectionOptions (same fields, same defaults), a key=value override
    of any of them reaches the spec every site of the model is built from, and a bad value is
    refused by the spec's validation under the option's name."""
    from mhc import recipes
    from mhc.config import ConfigError, ModelConfig, apply_overrides
    model_fields = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
    for f in dataclasses.fields(connections.ConnectionOptions):
        assert model_fields[f.name] == f.default, f.name
    cfg = apply_overrides(recipes.get("tiny"), ["sinkhorn_iters=7", "pre_eps=0.001",
                                                "res_offdiag_logit=-2", "kernels=xla"])
    spec = cfg.model.connection_spec()
    assert (spec.sinkhorn_iters, spec.pre_eps, spec.res_offdiag_logit, spec.kernels) == \
        (7, 0.001, -2.0, "xla")
    with pytest.raises(ConfigError, match="sinkhorn_grad='exact'; allowed"):
        apply_overrides(recipes.get("tiny"), ["sinkhorn_grad=exact"])


def test_hyper_head():
    x = _streams(13)
    head = mhc.HyperHead(C, N)
    out = head(x)
    assert out.shape == (B, T, C) and out.dtype == jnp.float32
    np.testing.assert_allclose(out, (0.5 + 1e-6) * x.sum(-2), atol=1e-6, rtol=1e-6)
    linen_head = mhc.LinenHyperHead(width=C, n_streams=N)
    variables = linen_head.init(jax.random.key(0), x)
    np.testing.assert_allclose(linen_head.apply(variables, x), out, atol=1e-6)
    # learned weights: sigmoid(alpha·(RMSNorm(vec x)·phi) + bias) + eps
    head.bias[...] = jnp.array([3.0, -3.0, 0.0, 1.0])
    v = x.reshape(B, T, N * C)
    v = v / jnp.sqrt(jnp.mean(v * v, -1, keepdims=True) + 1e-6)
    head.phi[...] = jax.random.normal(jax.random.key(14), (N * C, N))
    w = jax.nn.sigmoid(0.01 * (v @ head.phi[...]) + head.bias[...]) + 1e-6
    np.testing.assert_allclose(head(x), jnp.einsum("btn,btnc->btc", w, x), atol=1e-5)
    assert head(x.astype(jnp.bfloat16)).dtype == jnp.bfloat16


def test_connection_spec_pre_eps_and_kinds():
    assert connections.ConnectionSpec(C, kind="mhc", sinkhorn_convention="deepseek_v4").pre_eps \
        == 1e-6
    assert connections.ConnectionSpec(C, kind="mhc").pre_eps == 0.0
    spec = connections.ConnectionSpec(C, kind="mhc_lite")
    # the kind fixes the manifold without rewriting the `manifold` option
    assert spec.res_manifold.name == "mhc_lite" and spec.num_res_logits == 24
    assert spec == connections.ConnectionSpec(C, kind="mhc_lite", manifold="sinkhorn")
    hc = mhc.HyperConnection(C, n_streams=N, kind="mhc_lite")
    assert hc.params["phi"][...].shape == (N * C, 2 * N + 24)
    assert connections.init_params(connections.ConnectionSpec(C, kind="residual")) == {}


def test_mhc_identity_init_maps():
    hc = mhc.HyperConnection(C, n_streams=N, kind="mhc", layer_index=1)
    _, maps = hc.apply(_streams(15), branch)
    assert float(jnp.abs(maps.res - jnp.eye(N)).max()) < 2e-3  # res_init="identity"
    sig = 1 / (1 + np.exp(-1.0))
    np.testing.assert_allclose(maps.pre[0, 0], [1 - sig, sig, 1 - sig, 1 - sig], atol=1e-6)
    np.testing.assert_allclose(maps.post[0, 0], 2 * np.array([1 - sig, sig, 1 - sig, 1 - sig]),
                               atol=1e-6)
    hc_u = mhc.HyperConnection(C, n_streams=N, kind="mhc", res_init="uniform")
    np.testing.assert_allclose(hc_u.apply(_streams(15), branch)[1].res, 0.25, atol=1e-6)


@pytest.mark.parametrize("learned", [("res",), ("pre", "res"), ("post",)])
def test_learned_maps_fix_the_others_at_residual_values(learned):
    """Paper Table 1: a disabled map is replaced by pre = 1/N, post = 1, res = I; the learned ones
    are untouched."""
    spec_all = connections.ConnectionSpec(width=8, n_streams=4, kind="hc")
    spec = connections.ConnectionSpec(width=8, n_streams=4, kind="hc", learned_maps=learned)
    params = connections.init_params(spec_all, 1)
    params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(jax.random.key(0), p.shape), params)
    x = jax.random.normal(jax.random.key(1), (3, 4, 8))
    full = connections.compute_maps(params, x, spec_all)
    part = connections.compute_maps(params, x, spec)
    fixed = connections.residual_maps(x)
    for name, f, p, r in zip(connections.MAP_NAMES, full, part, fixed):
        np.testing.assert_allclose(p, f if name in learned else r, rtol=1e-6)


@pytest.mark.parametrize("bad", [(), ("pre", "pre"), ("mix",)])
def test_learned_maps_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="learned_maps"):
        connections.ConnectionSpec(width=8, kind="hc", learned_maps=bad)
