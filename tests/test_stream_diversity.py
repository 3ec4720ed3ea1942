"""Mean-zero gain and stream diversity (issue 25, item 5), against an independent NumPy
formulation: ||P H P||_2 with P = I - J/N from numpy.linalg.svd in float64, and the streams'
spread about their mean written out per token."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mhc import diagnostics, manifolds

mean_zero_gain = jax.jit(diagnostics.mean_zero_gain)
stream_diversity = jax.jit(diagnostics.stream_diversity)
composite = jax.jit(diagnostics.composite)


def numpy_gain(h):
    """Largest singular value of P H P, P = I - J/N, per matrix (float64)."""
    h = np.asarray(h, np.float64)
    n = h.shape[-1]
    p = np.eye(n) - np.full((n, n), 1.0 / n)
    return np.linalg.svd(p @ h @ p, compute_uv=False)[..., 0]


def numpy_diversity(x):
    """mean_i ||x_i - mean||² / ||mean||² per token, x [..., N, C] (float64)."""
    x = np.asarray(x, np.float64)
    mean = x.mean(-2, keepdims=True)
    return ((x - mean) ** 2).sum(-1).mean(-1) / (mean ** 2).sum((-2, -1))


def soft_identity(n, d):
    """Diagonal d, off-diagonals (1 - d)/(n - 1): symmetric and doubly stochastic."""
    return np.full((n, n), (1 - d) / (n - 1)) + (d - (1 - d) / (n - 1)) * np.eye(n)


def test_every_permutation_has_gain_one():
    for n in (2, 3, 4, 5):
        perms = np.array([np.eye(n)[list(p)] for p in itertools.permutations(range(n))])
        np.testing.assert_allclose(mean_zero_gain(perms), 1.0, atol=1e-6)
        np.testing.assert_allclose(numpy_gain(perms), 1.0, atol=1e-12)  # the reference agrees


def test_uniform_map_has_gain_zero_and_identity_one():
    for n in (2, 4, 6):
        assert float(mean_zero_gain(np.full((n, n), 1.0 / n))) == pytest.approx(0.0, abs=1e-7)
        assert float(mean_zero_gain(np.eye(n))) == pytest.approx(1.0, abs=1e-6)


def test_soft_identity_gain_is_its_second_eigenvalue():
    # the numbers: Sinkhorn's soft identity start (logits 0 / -2) at N = 4
    d = manifolds.soft_identity_diagonal(4, -2.0)
    assert d == pytest.approx(0.711, abs=5e-4)
    expected = abs(d - (1 - d) / 3)
    assert expected == pytest.approx(0.615, abs=5e-4)
    h = soft_identity(4, d)
    assert np.sort(np.abs(np.linalg.eigvalsh(h)))[-2] == pytest.approx(expected, rel=1e-12)
    assert float(mean_zero_gain(h)) == pytest.approx(expected, rel=1e-6)
    for n, d in ((3, 0.2), (4, 0.1), (5, 0.9), (4, 0.25)):  # |d - off| also when d < off
        assert float(mean_zero_gain(soft_identity(n, d))) == pytest.approx(
            abs(d - (1 - d) / (n - 1)), abs=1e-6)


def test_composite_of_24_soft_identities_is_the_power():
    d = manifolds.soft_identity_diagonal(4, -2.0)
    lam = d - (1 - d) / 3
    hs = np.broadcast_to(soft_identity(4, d), (24, 4, 4)).astype(np.float32)
    gain = float(mean_zero_gain(composite(hs)))
    # the float32 product's entries near 1/4 carry rounding of ~1e-8 each: that is the
    # resolution of a composite's gain (0.3 % of 9e-6 here)
    assert gain == pytest.approx(lam ** 24, abs=5e-8)
    assert gain == pytest.approx(0.615 ** 24, rel=0.02)  # ≈ 9e-6: J/4 from step 0
    assert 8e-6 < gain < 1e-5
    # a 24-site composite of the same map with J/4's mean-zero part removed is J/4 itself
    np.testing.assert_allclose(composite(hs), 0.25, atol=2e-5)


def test_gain_is_submultiplicative_for_doubly_stochastic_maps():
    # 1⊥ is invariant under a doubly stochastic map, so P H2 H1 P = (P H2 P)(P H1 P)
    hs = manifolds.mhc_lite(3.0 * jax.random.normal(jax.random.key(0), (6, 24)), 4)
    gains = np.asarray(mean_zero_gain(hs))
    prefix = np.asarray(mean_zero_gain(jax.jit(lambda h: diagnostics.composite(
        h, cumulative=True))(hs)))
    np.testing.assert_array_less(prefix, np.cumprod(gains) * (1 + 1e-5) + 1e-7)
    h = np.asarray(hs, np.float64)
    np.testing.assert_allclose(prefix[-1], numpy_gain(np.linalg.multi_dot(h[::-1])),
                               rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("n", [2, 3, 4, 6])
def test_arbitrary_matrices_against_numpy_svd(n):
    """Not doubly stochastic, batched [8, 5, N, N], with scales from 1e-6 to 1e3 (the squaring
    runs on a normalised matrix, so small composites do not underflow)."""
    h = np.asarray(jax.random.normal(jax.random.key(n), (8, 5, n, n)))
    h = h * np.logspace(-6, 3, 8)[:, None, None, None]
    got = np.asarray(mean_zero_gain(h))
    assert got.shape == (8, 5)
    np.testing.assert_allclose(got, numpy_gain(h), rtol=2e-6)


def test_near_degenerate_top_singular_values():
    """The squaring's slowest case: the top two singular values on 1⊥ nearly equal."""
    n = 4
    q = np.linalg.qr(np.column_stack([np.ones(n), np.eye(n)[:, :n - 1]]))[0][:, 1:]  # basis of 1⊥
    for gap in (0.0, 1e-7, 1e-4, 1e-2):
        h = q @ np.diag([1.0, 1.0 - gap, 0.3]) @ q.T + np.full((n, n), 1.0 / n)
        assert float(mean_zero_gain(h)) == pytest.approx(numpy_gain(h), rel=1e-6)


def test_gain_edge_cases():
    assert mean_zero_gain(np.ones((3, 1, 1))).shape == (3,)  # N = 1: 1⊥ = {0}
    np.testing.assert_array_equal(mean_zero_gain(np.ones((3, 1, 1))), 0.0)
    np.testing.assert_array_equal(mean_zero_gain(np.zeros((2, 4, 4))), 0.0)
    assert mean_zero_gain(np.eye(4, dtype=np.float16)).dtype == jnp.float32
    with pytest.raises(ValueError, match=r"\[\.\.\., N, N\]; got shape \(3, 4\)"):
        diagnostics.mean_zero_gain(np.zeros((3, 4)))
    # vmap and grad-free jit compose
    hs = np.broadcast_to(np.eye(4), (3, 4, 4))
    np.testing.assert_allclose(jax.vmap(diagnostics.mean_zero_gain)(hs), 1.0, atol=1e-6)


def test_diversity_identical_streams_is_zero():
    x = np.asarray(jax.random.normal(jax.random.key(1), (2, 3, 1, 16)))
    np.testing.assert_array_equal(stream_diversity(np.repeat(x, 4, axis=-2)), 0.0)
    np.testing.assert_array_equal(stream_diversity(x), 0.0)  # one stream (residual)


def test_diversity_hand_built():
    # mean (1, 0); deviations ±(0, 1): each ||x_i - mean||² = 1, ||mean||² = 1 -> 1
    assert float(stream_diversity(np.array([[1.0, 1.0], [1.0, -1.0]]))) == 1.0
    # N = 4, C = 1: streams 0, 0, 0, 4: mean 1, squared deviations 1, 1, 1, 9 -> 12/4 / 1 = 3
    assert float(stream_diversity(np.array([[0.0], [0.0], [0.0], [4.0]]))) == 3.0
    # scaling every stream leaves it unchanged; adding a common offset c shrinks it
    x = np.asarray(jax.random.normal(jax.random.key(2), (5, 4, 8)))
    np.testing.assert_allclose(stream_diversity(x), numpy_diversity(x), rtol=1e-5)
    np.testing.assert_allclose(stream_diversity(7.5 * x), numpy_diversity(x), rtol=1e-5)
    assert (np.asarray(stream_diversity(x + 10.0)) < np.asarray(stream_diversity(x))).all()


def test_diversity_zero_mean_convention():
    streams = np.array([[[1.0, 2.0], [-1.0, -2.0]],  # cancel exactly: +inf
                        [[0.0, 0.0], [0.0, 0.0]]])   # all zero: 0
    got = np.asarray(stream_diversity(streams))
    assert got[0] == np.inf and got[1] == 0.0
    assert stream_diversity(np.ones((4, 8), np.float16)).dtype == jnp.float32
    with pytest.raises(ValueError, match=r"\[\.\.\., N, C\]; got shape \(8,\)"):
        diagnostics.stream_diversity(np.ones(8))


def test_map_stats_and_summary_carry_the_mean_zero_gains():
    L, B, T, N = 3, 2, 5, 4
    res = manifolds.mhc_lite(jax.random.normal(jax.random.key(5), (L, B, T, 24)), N)
    ones = jnp.ones((L, B, T, N))
    stats = jax.jit(diagnostics.map_stats)(ones, ones, res)
    r = np.asarray(res, np.float64)
    np.testing.assert_allclose(stats["mz_gain"], numpy_gain(r).mean((1, 2)), rtol=1e-5)
    prefix = np.stack([r[0], r[1] @ r[0], r[2] @ r[1] @ r[0]])
    np.testing.assert_allclose(stats["composite_mz_gain"], numpy_gain(prefix).mean((1, 2)),
                               rtol=1e-4)
    summary = diagnostics.summarize(stats)
    assert float(summary["res_mz_gain_max"]) == pytest.approx(float(stats["mz_gain"].max()))
    assert float(summary["composite_mz_gain"]) == pytest.approx(
        float(stats["composite_mz_gain"][-1]))
    # residual runs (N = 1): defined, 0
    one = jnp.ones((L, B, T, 1))
    stats = jax.jit(diagnostics.map_stats)(one, one, one[..., None])
    np.testing.assert_array_equal(stats["mz_gain"], 0.0)
    np.testing.assert_array_equal(stats["composite_mz_gain"], 0.0)


@pytest.mark.parametrize("overrides, diverse", [
    (["residual=residual"], False),                       # one stream: 0, keys still defined
    # copied streams, but H_post's init logits (+1 on stream l mod N) write unequally
    (["residual=mhc"], True),
    (["residual=mhc", "stream_offset_std=0.1"], True),    # learned offsets: the streams differ
    (["residual=mhc", "single_pass=true", "stream_offset_std=0.1"], True),
])
def test_model_reports_the_last_sites_stream_diversity(overrides, diverse):
    from flax import nnx

    from mhc import train_step
    from mhc.model import Decoder
    from trainkit import tiny_config
    cfg = tiny_config(*overrides)
    model = Decoder(cfg.model, rngs=nnx.Rngs(0))
    tokens = jnp.asarray(np.arange(2 * 8).reshape(2, 8) % 256, jnp.int32)
    out = nnx.jit(lambda m, t: m.forward(t))(model, tokens)
    assert out.stream_diversity.shape == (2, 8) and out.stream_diversity.dtype == jnp.float32
    assert bool((out.stream_diversity > 0).all()) == diverse
    assert bool(jnp.isfinite(out.stream_diversity).all())
    scalars, per_layer = train_step._map_metrics(out.maps, model.initial_res(),
                                                 out.stream_diversity)
    assert float(scalars["stream_diversity"]) == pytest.approx(float(out.stream_diversity.mean()))
    assert per_layer["mz_gain"].shape == per_layer["composite_mz_gain"].shape == (2,)
    single = 0.0 if cfg.model.residual == "residual" else 1.0  # N = 1: 1⊥ = {0}; hard identity
    assert float(scalars["res_mz_gain_max"]) == pytest.approx(single, abs=2e-3)
    assert float(scalars["composite_mz_gain"]) == pytest.approx(single, abs=4e-3)
