"""Amax gain and composite-map diagnostics (arXiv 2512.24880, "Amax Gain Magnitude")."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mhc
from mhc import diagnostics, manifolds

# jitted once per shape (the eager scan inside `composite` re-traces on every call)
composite = jax.jit(mhc.composite, static_argnames="cumulative")
map_stats = jax.jit(mhc.map_stats)


def _ds_examples():
    """Doubly stochastic matrices [3, 4, 4]: converged Sinkhorn, a permutation, J/4."""
    sk = jax.jit(lambda x: mhc.sinkhorn(x, 300))(0.5 * jax.random.normal(jax.random.key(0), (4, 4)))
    perm = manifolds.permutation_matrices(4)[7]
    return jnp.stack([sk, jnp.asarray(perm), jnp.full((4, 4), 0.25)])


def test_amax_gain_doubly_stochastic_is_one():
    fwd, bwd = mhc.amax_gain(_ds_examples())
    assert fwd.shape == (3,) and bwd.shape == (3,)
    np.testing.assert_allclose(fwd, 1.0, atol=1e-5)
    np.testing.assert_allclose(bwd, 1.0, atol=1e-5)


def test_amax_gain_hand_computed():
    fwd, bwd = mhc.amax_gain(jnp.array([[2.0, -1.0], [0.0, 3.0]]))
    # rows |2|+|-1| = 3, |0|+|3| = 3 -> forward 3; columns 2+0 = 2, 1+3 = 4 -> backward 4
    assert float(fwd) == 3.0 and float(bwd) == 4.0
    fwd, bwd = mhc.amax_gain(jnp.array([[[0.5, 0.1], [-4.0, 0.2]], [[1.0, 0.0], [0.0, 1.0]]]))
    np.testing.assert_allclose(fwd, [4.2, 1.0], atol=1e-6)
    np.testing.assert_allclose(bwd, [4.5, 1.0], atol=1e-6)


def test_composite_is_ordered_product():
    hs = jax.random.normal(jax.random.key(1), (4, 3, 3))
    h = np.asarray(hs, np.float64)
    expected = h[3] @ h[2] @ h[1] @ h[0]  # layer 0 applied first
    wrong_order = h[0] @ h[1] @ h[2] @ h[3]
    assert np.abs(expected - wrong_order).max() > 0.1  # the matrices do not commute
    np.testing.assert_allclose(composite(hs), expected, rtol=1e-5, atol=1e-5)

    prefixes = composite(hs, cumulative=True)
    assert prefixes.shape == (4, 3, 3)
    np.testing.assert_allclose(prefixes[0], h[0], atol=1e-6)
    np.testing.assert_allclose(prefixes[1], h[1] @ h[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(prefixes[2], h[2] @ h[1] @ h[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(prefixes[3], expected, rtol=1e-5, atol=1e-5)


def test_composite_batched_and_bad_shape():
    hs = jax.random.normal(jax.random.key(2), (3, 2, 5, 4, 4))  # [L, B, T, N, N]
    out = composite(hs)
    assert out.shape == (2, 5, 4, 4)
    h = np.asarray(hs, np.float64)
    np.testing.assert_allclose(out[1, 3], h[2, 1, 3] @ h[1, 1, 3] @ h[0, 1, 3], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"\(3, 4\)"):
        composite(jnp.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"\(2, 4, 3\)"):
        composite(jnp.zeros((2, 4, 3)))


def test_composite_of_doubly_stochastic_stays_doubly_stochastic():
    logits = 3.0 * jax.random.normal(jax.random.key(3), (24, 4, 4))
    hs = manifolds.mhc_lite(jax.random.normal(jax.random.key(4), (24, 24)) * 3.0, 4)
    comp = composite(hs, cumulative=True)
    row, col = mhc.doubly_stochastic_error(comp)
    assert float(row.max()) < 1e-5 and float(col.max()) < 1e-5
    fwd, bwd = mhc.amax_gain(comp)
    np.testing.assert_allclose(fwd, 1.0, atol=1e-5)
    np.testing.assert_allclose(bwd, 1.0, atol=1e-5)
    # an unconstrained map does not stay bounded: gains drift far from 1 over depth
    ufwd, _ = mhc.amax_gain(composite(1.0 + 0.5 * logits / 3.0))
    assert float(ufwd) > 10.0


def test_doubly_stochastic_error():
    h = jnp.array([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5], [0.1, 0.1, 0.9]])
    row, col = mhc.doubly_stochastic_error(h)
    # rows: 1.0, 1.0, 1.1 -> 0.1 ; columns: 0.8, 0.9, 1.4 -> 0.4
    np.testing.assert_allclose(row, 0.1, atol=1e-6)
    np.testing.assert_allclose(col, 0.4, atol=1e-6)
    row, col = mhc.doubly_stochastic_error(_ds_examples())
    assert row.shape == (3,) and float(row.max()) < 1e-5 and float(col.max()) < 1e-5


def test_map_stats_shapes_and_values():
    L, B, T, N = 3, 2, 5, 4
    pre = jnp.full((L, B, T, N), 0.5)
    post = jnp.full((L, B, T, N), 2.0)
    res = manifolds.mhc_lite(jax.random.normal(jax.random.key(5), (L, B, T, 24)), N)
    stats = map_stats(pre, post, res)
    expected_keys = {"amax_fwd", "amax_bwd", "composite_fwd", "composite_bwd", "ds_row_err",
                     "ds_col_err", "ds_neg_mass", "pre_mean", "post_mean", "res_diag_mean", "res_min",
                     "res_offdiag", "res_dist_init", "res_entropy", "res_token_std",
                     "mz_gain", "composite_mz_gain"}
    assert set(stats) == expected_keys
    for key, value in stats.items():
        assert value.shape == (L,), key
    np.testing.assert_allclose(stats["amax_fwd"], 1.0, atol=1e-5)
    np.testing.assert_allclose(stats["composite_bwd"], 1.0, atol=1e-5)
    np.testing.assert_allclose(stats["pre_mean"], 0.5)
    np.testing.assert_allclose(stats["post_mean"], 2.0)
    diag = np.diagonal(np.asarray(res), axis1=-2, axis2=-1)
    np.testing.assert_allclose(stats["res_diag_mean"], diag.reshape(L, -1).mean(-1), rtol=1e-5)
    assert (np.asarray(stats["res_min"]) >= 0).all()
    np.testing.assert_array_equal(stats["ds_neg_mass"], 0.0)  # mHC-lite is non-negative

    summary = diagnostics.summarize(stats)
    np.testing.assert_allclose(summary["amax_fwd"], 1.0, atol=1e-5)
    assert summary["ds_col_err_max"].shape == ()


def test_map_stats_unconstrained_gain_grows():
    L, N = 6, 4
    res = jnp.broadcast_to(jnp.eye(N) + 0.5, (L, 1, 1, N, N))  # rows/cols sum to 3
    stats = map_stats(jnp.ones((L, 1, 1, N)), jnp.ones((L, 1, 1, N)), res)
    np.testing.assert_allclose(stats["amax_fwd"], 3.0, rtol=1e-6)
    np.testing.assert_allclose(stats["composite_fwd"], 3.0 ** np.arange(1, L + 1), rtol=1e-5)
    np.testing.assert_allclose(stats["ds_col_err"], 2.0, rtol=1e-6)


def test_negative_mass_sees_what_row_and_column_errors_do_not():
    """A map with unit row and column sums and a negative entry (like sHC's): zero DS row and
    column errors, negative mass = the sum of the negative entries' magnitudes, max over tokens."""
    h = np.array([[1.2, -0.2], [-0.2, 1.2]], np.float32)
    row, col = diagnostics.doubly_stochastic_error(h)
    assert float(row) == float(col) == 0.0
    np.testing.assert_allclose(diagnostics.negative_mass(h), 0.4, atol=1e-6)
    stats = map_stats(jnp.ones((1, 2, 1, 2)), jnp.ones((1, 2, 1, 2)),
                      jnp.stack([jnp.eye(2), jnp.asarray(h)])[None, :, None])
    np.testing.assert_allclose(stats["ds_neg_mass"], [0.4], atol=1e-6)
