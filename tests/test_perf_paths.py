"""The fused stream read/write, RMS projection and token-minor Sinkhorn (mhc.connections,
mhc.manifolds) against the plain einsum + autodiff formulation: values and gradients."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from flax import nnx

from mhc import connections, manifolds
from mhc.config import ModelConfig
from mhc.connections import ConnectionSpec, Maps
from mhc.model import Decoder

B, T, N, C = 2, 3, 4, 32  # C a multiple of 16: the lane-split reductions are used
KEY = jax.random.key(0)


def _rand(i, shape, scale=1.0):
    return scale * jax.random.normal(jax.random.fold_in(KEY, i), shape, jnp.float32)


def _site_inputs():
    res = jax.nn.softmax(_rand(1, (B, T, N, N)), -1)
    return res, jax.nn.sigmoid(_rand(2, (B, T, N))), _rand(3, (B, T, N, C)), _rand(4, (B, T, C))


def _both(fn, *args):
    """(fused value, reference value) of fn(*args)."""
    return fn(*args), fn(*args, reference=True)


@pytest.mark.parametrize("width", [32, 12])  # 12: the plain-sum fallback of the reductions
def test_write_and_read_match_reference_values_and_grads(width):
    res, post, x, f = _site_inputs()
    x, f = x[..., :width], f[..., :width]
    w_out = _rand(5, x.shape)

    def loss(res, post, pre, x, f, reference=False):
        out = connections.write_streams(Maps(pre, post, res), x, f, reference)
        h = connections.read_streams(pre, x, reference)
        return jnp.sum(out * w_out) + jnp.sum(jnp.sin(h))

    args = (res, post, jax.nn.sigmoid(_rand(6, (B, T, N))), x, f)
    grad = jax.jit(jax.value_and_grad(loss, argnums=tuple(range(5))), static_argnums=5)
    (v_fused, g_fused), (v_ref, g_ref) = grad(*args, False), grad(*args, True)
    np.testing.assert_allclose(v_fused, v_ref, rtol=1e-5)
    for a, b in zip(g_fused, g_ref):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_write_and_read_check_grads():
    res, post, x, f = _site_inputs()
    pre = jax.nn.sigmoid(_rand(7, (B, T, N)))
    check_grads(lambda r, p, x, f: connections.write_streams(Maps(pre, p, r), x, f),
                (res, post, x, f), order=1, modes=("rev",), atol=2e-2, rtol=2e-2)
    check_grads(connections.read_streams, (pre, x), order=1, modes=("rev",), atol=2e-2,
                rtol=2e-2)


def test_write_broadcast_maps_and_bf16_streams():
    res, post, x, f = _site_inputs()
    # maps shared by all tokens (static connections broadcast them)
    out, ref = _both(connections.write_streams, Maps(post[0, 0], post[0, 0], res[0, 0]), x, f)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    xb, fb = x.astype(jnp.bfloat16), f.astype(jnp.bfloat16)
    out, ref = _both(connections.write_streams, Maps(post, post, res), xb, fb)
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(out.astype(jnp.float32), ref.astype(jnp.float32), rtol=1e-2)
    g = jax.grad(lambda x, f: jnp.sum(connections.write_streams(Maps(post, post, res), x, f)
                                      .astype(jnp.float32)), argnums=(0, 1))(xb, fb)
    assert g[0].dtype == jnp.bfloat16 and g[1].dtype == jnp.bfloat16


@pytest.mark.parametrize("n_axes", [1, 2])
def test_rms_project_matches_normalise_then_matmul(n_axes):
    x = _rand(8, (B, T, N, C), 3.0)
    d = C * (N if n_axes == 2 else 1)
    w = _rand(9, (d, 5), 0.1)

    def ref(x, w):
        rows = x.reshape(*x.shape[:x.ndim - n_axes], d)
        return connections.rms_normalize(rows, 1e-6) @ w

    np.testing.assert_allclose(connections.rms_project(x, w, 1e-6, n_axes), ref(x, w),
                               rtol=1e-5, atol=1e-5)
    g_out = _rand(10, ref(x, w).shape)
    g1 = jax.grad(lambda x, w: jnp.sum(connections.rms_project(x, w, 1e-6, n_axes) * g_out),
                  argnums=(0, 1))(x, w)
    g2 = jax.grad(lambda x, w: jnp.sum(ref(x, w) * g_out), argnums=(0, 1))(x, w)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    check_grads(lambda x, w: connections.rms_project(x, w, 1e-6, n_axes), (x, w), order=1,
                modes=("rev",), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("kind", ["hc", "mhc", "mhc_lite"])
def test_site_matches_reference_formulation(kind):
    spec = ConnectionSpec(width=C, n_streams=N, kind=kind)
    params = connections.init_params(spec, 1)
    params = {k: v + 0.3 * _rand(20 + i, v.shape) for i, (k, v) in enumerate(params.items())}
    x = _rand(11, (B, T, N, C))
    wmat = _rand(12, (C, C), 1 / np.sqrt(C))

    def loss(params, x, spec):
        out, maps = connections.apply_site(params, x, lambda h: jnp.tanh(h @ wmat), spec)
        return jnp.sum(out * jnp.cos(out)) + jnp.sum(maps.res ** 2)

    v1, g1 = jax.value_and_grad(loss, argnums=(0, 1))(params, x, spec)
    reference = dataclasses.replace(spec, kernels="reference")
    v2, g2 = jax.value_and_grad(loss, argnums=(0, 1))(params, x, reference)
    np.testing.assert_allclose(v1, v2, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_reference_formulation_is_part_of_the_jit_cache_key():
    """kernels="reference" is a spec value, so one jitted function traces each formulation
    (a trace-time global flag once let a cached trace outlive the switch)."""
    spec = ConnectionSpec(width=C, n_streams=N, kind="mhc", kernels="xla")
    params = connections.init_params(spec, 0)
    x = _rand(14, (B, T, N, C))
    traces = []

    def site(p, x, spec):
        traces.append(spec.kernels)
        return connections.apply_site(p, x, jnp.tanh, spec)[0]

    jitted = jax.jit(site, static_argnums=2)
    for kernels in ("xla", "reference", "xla", "reference"):
        jitted(params, x, dataclasses.replace(spec, kernels=kernels))
    assert traces == ["xla", "reference"]  # one trace each, reused after
    fused = {k: "name=_write" in str(jax.make_jaxpr(site, static_argnums=2)(
        params, x, dataclasses.replace(spec, kernels=k))) for k in ("xla", "reference")}
    assert fused == {"xla": True, "reference": False}  # the custom-VJP stream write


@pytest.mark.parametrize("convention", manifolds.CONVENTIONS)
def test_sinkhorn_token_minor_matches_per_matrix_loop(convention):
    """Batched call == one matrix at a time (the layout change mixes no tokens)."""
    logits = _rand(13, (3, 5, N, N), 2.0)
    batched = manifolds.sinkhorn(logits, 20, convention=convention)
    single = jnp.stack([manifolds.sinkhorn(logits[i, j], 20, convention=convention)
                        for i in range(3) for j in range(5)]).reshape(batched.shape)
    np.testing.assert_allclose(batched, single, atol=1e-6)


def test_model_loss_and_grads_match_reference_formulation():
    cfg = ModelConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64, residual="mhc")
    model = Decoder(cfg, rngs=nnx.Rngs(0))
    reference = Decoder(dataclasses.replace(cfg, kernels="reference"), rngs=nnx.Rngs(0))
    tokens = jax.random.randint(KEY, (2, 16), 0, 256)

    def loss(model):
        logits, _ = model(tokens)
        return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[..., 0])

    v1, g1 = nnx.value_and_grad(loss)(model)
    v2, g2 = nnx.value_and_grad(loss)(reference)
    np.testing.assert_allclose(v1, v2, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-6)
