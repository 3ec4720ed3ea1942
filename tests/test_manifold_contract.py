"""The contract of every registered manifold (`mhc.manifolds.Manifold`): what it declares is what
it does. Parametrised over `manifolds.names()`, so a new manifold is checked by registering it:
its guarantees hold (doubly stochastic where it claims so), its gradients are finite, it works
under jit and vmap, its inits and logit count match the declaration and the site's parameters,
its options are connection options with the same defaults, and its start matches Sinkhorn's."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mhc
from mhc import connections, manifolds

N = 4  # every built-in manifold takes it (KromHC needs a power of two)
NAMES = manifolds.names()


def _project(m, logits):
    return m.project(logits, N)


def _random_logits(m, key=0, batch=(3, 5), scale=1.5):
    return scale * jax.random.normal(jax.random.key(key), (*batch, m.num_logits(N)))


@pytest.mark.parametrize("name", NAMES)
def test_declaration_is_consistent(name):
    m = manifolds.get(name)
    assert m.name == name
    assert set(m.guarantees) <= set(manifolds.GUARANTEES)
    assert m.inits and set(m.inits) <= set(manifolds.INITS)
    assert not m.exact_doubly_stochastic or m.doubly_stochastic
    defaults = {f.name: f.default for f in dataclasses.fields(connections.ConnectionOptions)}
    for option, default in m.options.items():  # one channel: the connection's option, its default
        assert option in defaults, f"{name}: option {option!r} is not a ConnectionOptions field"
        assert defaults[option] == default, (name, option, default, defaults[option])
    spec = connections.ConnectionSpec(width=8, n_streams=N, manifold=name)
    assert set(spec.manifold_options) == set(m.options)  # no other option reaches it
    with pytest.raises(ValueError, match="no option bogus"):
        m.num_logits(N, bogus=1)


@pytest.mark.parametrize("name", NAMES)
def test_guarantees_hold(name):
    m = manifolds.get(name)
    h = np.asarray(_project(m, _random_logits(m)), np.float64)
    assert h.shape == (3, 5, N, N) and np.isfinite(h).all()
    checks = {
        "row_sums_one": lambda: np.abs(h.sum(-1) - 1).max() < 1e-5,
        "column_sums_one": lambda: np.abs(h.sum(-2) - 1).max() < 1e-5,
        "non_negative": lambda: h.min() >= 0,
        "symmetric": lambda: np.abs(h - np.swapaxes(h, -1, -2)).max() < 1e-6,
        "spectral_norm_one": lambda: np.abs(np.linalg.norm(h, 2, axis=(-2, -1)) - 1).max() < 1e-5,
    }
    for guarantee in m.guarantees:
        assert checks[guarantee](), f"{name} breaks its guarantee {guarantee}"
    if m.doubly_stochastic:  # approximately, at unit-scale logits, where it is not exact
        assert np.abs(h.sum(-2) - 1).max() < 1e-3 and np.abs(h.sum(-1) - 1).max() < 1e-3


@pytest.mark.parametrize("name", NAMES)
def test_jit_vmap_and_finite_gradients(name):
    m = manifolds.get(name)
    logits = _random_logits(m, key=1)
    eager = _project(m, logits)
    np.testing.assert_allclose(jax.jit(lambda z: _project(m, z))(logits), eager, atol=1e-6)
    np.testing.assert_allclose(jax.vmap(lambda z: _project(m, z))(logits), eager, atol=1e-6)
    w = jax.random.normal(jax.random.key(2), (N, N))
    grad = np.asarray(jax.jit(jax.grad(lambda z: jnp.sum(w * _project(m, z))))(logits))
    assert grad.shape == logits.shape and np.isfinite(grad).all()
    if m.num_logits(N):
        assert np.abs(grad).max() > 1e-4, f"{name}: no gradient reaches its logits"


@pytest.mark.parametrize("name", NAMES)
def test_inits_match_the_declaration(name):
    m = manifolds.get(name)
    for n in (1, 2, 4):
        assert m.init_logits(n, "identity").shape == (m.num_logits(n),)
    h_id = np.asarray(_project(m, jnp.asarray(m.init_logits(N, "identity"))))
    np.testing.assert_allclose(h_id, np.eye(N), atol=1e-2)  # mHC-lite: 6e-3
    if "uniform" in m.inits:
        np.testing.assert_allclose(_project(m, jnp.asarray(m.init_logits(N, "uniform"))),
                                   np.full((N, N), 1 / N), atol=1e-6)
    for how in {"bogus", *manifolds.INITS} - set(m.inits):
        with pytest.raises(ValueError, match=f"res_init='{how}'.*allowed: "
                                             f"{', '.join(m.inits)}"):
            m.init_logits(N, how)


@pytest.mark.parametrize("name", NAMES)
def test_parameter_count_matches_the_declared_count(name):
    m = manifolds.get(name)
    hc = mhc.HyperConnection(8, n_streams=N, manifold=name)
    assert hc.params["bias"].shape == (2 * N + m.num_logits(N),)
    assert hc.params["phi"].shape == (N * 8, 2 * N + m.num_logits(N))
    _, maps = hc.apply(jax.random.normal(jax.random.key(3), (2, 3, N, 8)), jnp.tanh)
    np.testing.assert_allclose(maps.res, np.broadcast_to(np.eye(N), (2, 3, N, N)), atol=1e-2)


@pytest.mark.parametrize("name", NAMES)
def test_start_matches_sinkhorn(name):
    """With `sinkhorn_start`'s logit, the identity init has Sinkhorn's soft-identity diagonal;
    without one, the manifold refuses an off-diagonal logit."""
    m = manifolds.get(name)
    if m.sinkhorn_start is None:
        with pytest.raises(ValueError, match="has no meaning"):
            m.init_logits(N, "identity", -2.0)
        return
    logit = m.sinkhorn_start(N, -2.0)
    h = np.asarray(_project(m, jnp.asarray(m.init_logits(N, "identity", logit))))
    np.testing.assert_allclose(np.diag(h).mean(), manifolds.soft_identity_diagonal(N, -2.0),
                               atol=1e-5)


def test_options_reach_only_the_manifolds_that_declare_them():
    """A projection without keyword options gets none of Sinkhorn's (no `**_` needed)."""
    name = "test_no_keywords"
    manifolds.register(name, lambda logits, n: manifolds.get("sinkhorn").project(logits, n),
                       guarantees=("row_sums_one", "non_negative"))
    try:
        assert manifolds.get(name).options == {}
        hc = mhc.HyperConnection(8, n_streams=N, manifold=name, sinkhorn_iters=3)
        streams = jax.random.normal(jax.random.key(4), (2, 3, N, 8))
        np.testing.assert_array_equal(hc.apply(streams, jnp.tanh)[1].res,
                                      mhc.HyperConnection(8, n_streams=N).apply(
                                          streams, jnp.tanh)[1].res)
    finally:
        manifolds._REGISTRY.pop(name, None)
