"""Property tests of the manifold projections (the Birkhoff polytope of arXiv 2512.24880;
Sinkhorn-Knopp Eq. 9 and the DeepSeek-V4 ordering; mHC-lite, arXiv 2601.05732)."""
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mhc
from mhc import diagnostics, manifolds

CONVENTIONS = ("paper", "deepseek_v4")


def _key(i):
    return jax.random.key(i)


# Jitted entry points with stable identities: eager `sinkhorn` re-traces its loop on every call,
# a jitted one compiles once per (shape, dtype, static args).
sinkhorn_jit = jax.jit(mhc.sinkhorn, static_argnums=1, static_argnames=("convention", "grad"))


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def sinkhorn_grad(logits, weights, iters, convention, grad):
    """d/dlogits of sum(weights * sinkhorn(logits))."""
    return jax.grad(lambda x: jnp.sum(weights * mhc.sinkhorn(x, iters, convention=convention,
                                                              grad=grad)))(logits)


def _errors(h):
    """(max |row sum - 1|, max |column sum - 1|) over all matrices, as Python floats."""
    h = np.asarray(h, np.float64)
    return float(np.abs(h.sum(-1) - 1).max()), float(np.abs(h.sum(-2) - 1).max())


# ----------------------------------------------------------- independent float64 references
def np_sinkhorn_paper(x, iters):
    """arXiv 2512.24880 Eq. 9: M0 = exp(x); iters x (normalise columns, then rows)."""
    m = np.exp(np.asarray(x, np.float64))
    for _ in range(iters):
        m = m / m.sum(-2, keepdims=True)
        m = m / m.sum(-1, keepdims=True)
    return m


def np_sinkhorn_v4(x, iters, eps=1e-6):
    """DeepSeek-V4 (its Hugging Face port): softmax(last axis)+eps, columns once, (iters-1) x (rows, columns);
    returned transposed (the map that is applied as new = comb^T x)."""
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(-1, keepdims=True))
    comb = e / e.sum(-1, keepdims=True) + eps
    comb = comb / (comb.sum(-2, keepdims=True) + eps)
    for _ in range(iters - 1):
        comb = comb / (comb.sum(-1, keepdims=True) + eps)
        comb = comb / (comb.sum(-2, keepdims=True) + eps)
    return np.swapaxes(comb, -1, -2)


NP_SINKHORN = {"paper": np_sinkhorn_paper, "deepseek_v4": np_sinkhorn_v4}


# ------------------------------------------------------------------------- Sinkhorn forward
@pytest.mark.parametrize("convention", CONVENTIONS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_sinkhorn_doubly_stochastic_random_logits(convention, dtype):
    logits = jax.random.normal(_key(0), (3, 5, 4, 4)).astype(dtype)
    h = sinkhorn_jit(logits, 20, convention=convention)
    assert h.shape == (3, 5, 4, 4) and h.dtype == jnp.float32
    assert bool((h >= 0).all())
    row, col = _errors(h)
    assert row < 1e-5 and col < 1e-5, (row, col)


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_sinkhorn_matches_float64_reference(convention):
    logits = 2.0 * jax.random.normal(_key(1), (2, 3, 4, 4))
    for iters in (1, 20):
        h = sinkhorn_jit(logits, iters, convention=convention)
        np.testing.assert_allclose(h, NP_SINKHORN[convention](logits, iters), atol=2e-6, rtol=0)


EXTREME = {  # every case is [3, 4, 4] so that one compiled function serves all of them
    "scale50": lambda: 50.0 * jax.random.normal(_key(2), (3, 4, 4)),
    "scale1000": lambda: 1000.0 * jax.random.normal(_key(3), (3, 4, 4)),
    "huge1e30": lambda: 1e30 * jax.random.normal(_key(4), (3, 4, 4)),
    "all_equal_zero": lambda: jnp.zeros((3, 4, 4)),
    "all_equal_huge": lambda: jnp.full((3, 4, 4), 1e30),
    "one_huge_entry": lambda: jnp.zeros((3, 4, 4)).at[:, 1, 2].set(1e30),
    "one_very_negative_row": lambda: jnp.zeros((3, 4, 4)).at[:, 1].set(-1e30),
}


@pytest.mark.parametrize("convention", CONVENTIONS)
@pytest.mark.parametrize("case", sorted(EXTREME))
def test_sinkhorn_extreme_logits_rows_exact(convention, case):
    h = sinkhorn_jit(EXTREME[case](), 20, convention=convention)
    assert bool(jnp.isfinite(h).all())
    assert bool((h >= 0).all())
    row, _ = _errors(h)
    assert row < 1e-5, row  # rows are normalised last: the forward gain is exact


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_sinkhorn_orientation_rows_exact_columns_truncated(convention):
    logits = 10.0 * jax.random.normal(_key(5), (8, 4, 4))
    row, col = _errors(sinkhorn_jit(logits, 20, convention=convention))
    assert row < 1e-5, row
    assert col > 1e-3, col  # truncation error is visible at this logit scale (finite Sinkhorn is approximate; mHC-lite, arXiv 2601.05732)
    assert col > 100 * max(row, 1e-7)


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_sinkhorn_more_iterations_reduce_column_error(convention):
    logits = 3.0 * jax.random.normal(_key(6), (8, 4, 4))
    errs = [_errors(sinkhorn_jit(logits, it, convention=convention))[1] for it in (3, 20, 100)]
    assert errs[0] > errs[1] > errs[2], errs
    assert errs[2] < 0.1 * errs[0], errs


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_sinkhorn_n1_is_one(convention):
    h = sinkhorn_jit(jnp.array([[[3.7]], [[-50.0]]]), 20, convention=convention)
    assert h.shape == (2, 1, 1)
    np.testing.assert_allclose(h, 1.0, atol=1e-5)


def test_sinkhorn_jit_and_vmap():
    logits = jax.random.normal(_key(7), (5, 4, 4))
    eager = mhc.sinkhorn(logits, 20)
    jitted = jax.jit(lambda x: mhc.sinkhorn(x, 20, convention="paper"))(logits)
    vmapped = jax.vmap(lambda x: mhc.sinkhorn(x, 20))(logits)
    np.testing.assert_allclose(jitted, eager, atol=1e-6)
    np.testing.assert_allclose(vmapped, eager, atol=1e-6)


@pytest.mark.parametrize("kwargs, needle", [
    (dict(convention="foo"), "'foo'"),
    (dict(grad="backprop"), "'backprop'"),
    (dict(iters=0), "iters=0"),
    (dict(iters=2.5), "2.5"),
])
def test_sinkhorn_bad_args(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        mhc.sinkhorn(jnp.zeros((4, 4)), **kwargs)


def test_sinkhorn_non_square_raises():
    with pytest.raises(ValueError, match=r"\(4, 3\)"):
        mhc.sinkhorn(jnp.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"\(4,\)"):
        mhc.sinkhorn(jnp.zeros((4,)))


# ------------------------------------------------------------------------ Sinkhorn gradients
def _fd_grad(np_fn, x, weights, eps=1e-6):
    x = np.asarray(x, np.float64)
    w = np.asarray(weights, np.float64)
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[idx] += eps
        xm[idx] -= eps
        g[idx] = (np.sum(w * np_fn(xp)) - np.sum(w * np_fn(xm))) / (2 * eps)
    return g


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_sinkhorn_grad_recompute_autodiff_and_finite_differences(convention):
    iters = 20
    logits = 1.5 * jax.random.normal(_key(8), (2, 4, 4))
    weights = jax.random.normal(_key(9), (2, 4, 4))
    g_rec = sinkhorn_grad(logits, weights, iters, convention, "recompute")
    g_auto = sinkhorn_grad(logits, weights, iters, convention, "autodiff")
    np.testing.assert_allclose(g_rec, g_auto, atol=1e-5, rtol=0)
    g_fd = _fd_grad(lambda x: NP_SINKHORN[convention](x, iters), logits, weights)
    assert np.abs(g_fd).max() > 0.05  # a non-trivial gradient
    np.testing.assert_allclose(g_auto, g_fd, atol=1e-4, rtol=0)


@pytest.mark.parametrize("iters", [1, 3, 20])
def test_sinkhorn_recompute_vjp_matches_autodiff_far_from_convergence(iters):
    """The hand-written VJP of the paper convention equals autodiff of the truncated loop also
    for large logits, where the iteration has not converged."""
    logits = 8.0 * jax.random.normal(_key(12), (5, 4, 4))
    weights = jax.random.normal(_key(13), (5, 4, 4))
    g_rec = sinkhorn_grad(logits, weights, iters, "paper", "recompute")
    g_auto = sinkhorn_grad(logits, weights, iters, "paper", "autodiff")
    assert np.abs(np.asarray(g_auto)).max() > 0.05
    np.testing.assert_allclose(g_rec, g_auto, atol=1e-5, rtol=0)


def _implicit_vs_autodiff(convention):
    logits = 0.5 * jax.random.normal(_key(10), (3, 4, 4))
    weights = jax.random.normal(_key(11), (3, 4, 4))
    g_imp = sinkhorn_grad(logits, weights, 200, convention, "implicit")
    g_auto = sinkhorn_grad(logits, weights, 200, convention, "autodiff")
    assert np.abs(np.asarray(g_auto)).max() > 0.05
    np.testing.assert_allclose(g_imp, g_auto, atol=1e-4, rtol=0)


def test_sinkhorn_grad_implicit_matches_autodiff_paper():
    _implicit_vs_autodiff("paper")


def test_sinkhorn_grad_implicit_matches_autodiff_deepseek_v4():
    _implicit_vs_autodiff("deepseek_v4")


@pytest.mark.parametrize("convention", CONVENTIONS)
@pytest.mark.parametrize("grad", manifolds.GRADS)
def test_sinkhorn_grads_finite_for_extreme_logits(convention, grad):
    cases = ("scale50", "scale1000", "huge1e30", "one_huge_entry", "all_equal_huge",
             "one_very_negative_row")
    logits = jnp.concatenate([EXTREME[case]() for case in cases])
    weights = jnp.broadcast_to(jnp.arange(16.0).reshape(4, 4), logits.shape)
    g = np.asarray(sinkhorn_grad(logits, weights, 20, convention, grad)).reshape(len(cases), -1)
    for case, g_case in zip(cases, g):
        assert np.isfinite(g_case).all(), case


def _residual_bytes(f, x):
    return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(jax.vjp(f, x)[1]))


def test_sinkhorn_saved_residuals_flat_in_iterations():
    x = jax.random.normal(_key(12), (16, 4, 4))
    sizes = {g: [_residual_bytes(lambda z, it=it, g=g: mhc.sinkhorn(z, it, grad=g), x)
                 for it in (5, 40)] for g in manifolds.GRADS}
    assert sizes["recompute"][0] == sizes["recompute"][1], sizes
    assert sizes["implicit"][0] == sizes["implicit"][1], sizes
    assert sizes["autodiff"][1] > 2 * sizes["autodiff"][0], sizes
    assert sizes["recompute"][0] <= 2 * x.nbytes and sizes["implicit"][0] <= 2 * x.nbytes, sizes


def test_sinkhorn_implicit_compiled_memory_flat_in_iterations():
    x = jax.random.normal(_key(13), (16, 4, 4))

    def temp_bytes(iters, grad):
        def f(x):
            h = x
            for _ in range(8):  # a stack of 8 sinkhorn sites
                h = mhc.sinkhorn(1.5 * h + x, iters, grad=grad)
            return jnp.sum(h * h)
        return jax.jit(jax.grad(f)).lower(x).compile().memory_analysis().temp_size_in_bytes

    implicit = (temp_bytes(5, "implicit"), temp_bytes(40, "implicit"))
    assert implicit[0] == implicit[1], implicit
    # far below what storing the iterates would take (8 sites x 40 iterates x 1 KiB)
    assert 0 < implicit[1] < 8 * 40 * x.nbytes // 4, implicit


# ------------------------------------------------------------------------------- mHC-lite
def test_permutation_matrices_n4():
    p = manifolds.permutation_matrices(4)
    assert p.shape == (24, 4, 4)
    np.testing.assert_array_equal(p[0], np.eye(4))
    assert len({m.tobytes() for m in p}) == 24
    for m in p:
        assert set(np.unique(m)) == {0.0, 1.0}
        np.testing.assert_array_equal(m.sum(0), 1)
        np.testing.assert_array_equal(m.sum(1), 1)


@pytest.mark.parametrize("scale", [1.0, 30.0, 1e30])
def test_mhc_lite_exactly_doubly_stochastic(scale):
    logits = scale * jax.random.normal(_key(14), (3, 5, 24))
    h = manifolds.mhc_lite(logits, 4)
    assert h.shape == (3, 5, 4, 4) and h.dtype == jnp.float32
    assert bool(jnp.isfinite(h).all()) and bool((h >= 0).all())
    row, col = _errors(h)
    assert row < 1e-6 and col < 1e-6, (row, col)
    via_registry = manifolds.get("mhc_lite").project(logits, 4)
    np.testing.assert_array_equal(via_registry, h)


def test_mhc_lite_is_softmax_weighted_permutations():
    logits = jax.random.normal(_key(15), (6,))
    a = np.exp(np.asarray(logits, np.float64))
    a /= a.sum()
    expected = sum(a[k] * np.eye(3)[list(p)] for k, p in enumerate(itertools.permutations(range(3))))
    np.testing.assert_allclose(manifolds.mhc_lite(logits, 3), expected, atol=1e-6)


# ------------------------------------------------------------------------- orthostochastic
def test_orthostochastic_exact_and_identity_at_zero():
    logits = 2.0 * jax.random.normal(_key(16), (3, 4, 4))
    h = jax.jit(manifolds.orthostochastic)(logits)
    assert bool((h >= 0).all())
    row, col = _errors(h)
    assert row < 1e-5 and col < 1e-5, (row, col)
    np.testing.assert_allclose(jax.jit(manifolds.orthostochastic)(jnp.zeros((3, 4, 4))),
                               np.broadcast_to(np.eye(4), (3, 4, 4)), atol=1e-7)
    assert float(jnp.abs(h - jnp.eye(4)).max()) > 0.1  # non-trivial for non-zero logits
    via_registry = jax.jit(manifolds.get("orthostochastic").project, static_argnums=1)(
        logits.reshape(3, 16), 4)
    np.testing.assert_allclose(via_registry, h, atol=1e-7)


# ------------------------------------------------------------------------------- registry
def test_registry_names_and_get():
    names = manifolds.names()
    for name in ("sinkhorn", "mhc_lite", "orthostochastic", "identity", "unconstrained"):
        assert name in names
        assert manifolds.get(name).name == name
    assert manifolds.get("mhc_lite").num_logits(4) == 24
    assert manifolds.get("sinkhorn").num_logits(4) == 16
    assert manifolds.get("mhc_lite").exact_doubly_stochastic
    assert not manifolds.get("sinkhorn").exact_doubly_stochastic


def test_registry_unknown_name_lists_allowed():
    with pytest.raises(ValueError, match="'no_such_manifold'") as err:
        manifolds.get("no_such_manifold")
    for name in ("sinkhorn", "mhc_lite", "orthostochastic"):
        assert name in str(err.value)
    with pytest.raises(ValueError):
        manifolds.register("", lambda logits, n, **_: logits)


@pytest.fixture
def reversal_manifold():
    name = "test_reversal"

    def project(logits, n, **_):
        rev = jnp.eye(n, dtype=jnp.float32)[::-1]
        return jnp.broadcast_to(rev, (*logits.shape[:-1], n, n))

    manifolds.register(name, project, exact_doubly_stochastic=True)
    yield name
    manifolds._REGISTRY.pop(name, None)


def test_register_custom_manifold_used_by_hyperconnection(reversal_manifold):
    assert reversal_manifold in manifolds.names()
    hc = mhc.HyperConnection(8, n_streams=4, kind="mhc", manifold=reversal_manifold)
    streams = jax.random.normal(_key(17), (2, 3, 4, 8))
    out, maps = hc.apply(streams, lambda h: jnp.zeros_like(h))  # zero branch: out = H_res · x
    np.testing.assert_array_equal(maps.res[0, 0], np.eye(4)[::-1])
    np.testing.assert_allclose(out, streams[..., ::-1, :], atol=1e-6)


# --------------------------------------------------------------------------------- init
@pytest.mark.parametrize("name", ["sinkhorn", "mhc_lite"])
def test_init_logits_identity_and_uniform(name):
    m = manifolds.get(name)
    h_id = np.asarray(m.project(jnp.asarray(m.init_logits(4, "identity")), 4))
    # sinkhorn: off-diagonal exp(-8)/(1+3 exp(-8)) ~ 3.4e-4. mhc_lite (official init, -8 on the 23
    # non-identity permutations): each off-diagonal entry collects 3! = 6 of them, 6 exp(-8) ~ 2e-3.
    off_tol = 1e-3 if name == "sinkhorn" else 2.5e-3
    off = np.abs(h_id - np.diag(np.diag(h_id))).max()
    assert 0 < off < off_tol, off
    np.testing.assert_allclose(np.diag(h_id), 1.0, atol=3 * off_tol)
    h_uni = m.project(jnp.asarray(m.init_logits(4, "uniform")), 4)
    np.testing.assert_allclose(h_uni, np.full((4, 4), 0.25), atol=1e-6)
    with pytest.raises(ValueError, match="'bogus'"):
        m.init_logits(4, "bogus")


# ------------------------------------------------------------------------------- KromHC
def _kromhc_numpy(logits, n):
    """Independent NumPy formulation from KromHC's description (arXiv 2601.21579, the authors'
    `KromHC` class): per factor k, p = softmax(c_k)[0], U_k = p I + (1 - p) swap; H = U_1 ⊗ ...
    ⊗ U_K with U_1 outermost."""
    logits = np.asarray(logits, np.float64)
    h = np.ones((1, 1))
    for k in range(int(np.log2(n))):
        c = logits[2 * k:2 * k + 2]
        p = np.exp(c[0]) / np.exp(c).sum()
        h = np.kron(h, np.array([[p, 1 - p], [1 - p, p]]))
    return h


@pytest.mark.parametrize("n", [1, 2, 4, 8, 16])
def test_kromhc_golden_and_properties(n):
    m = manifolds.get("kromhc")
    k = m.num_logits(n)
    assert k == 2 * int(np.log2(n))
    logits = 2.0 * jax.random.normal(_key(n), (5, k))
    h = np.asarray(jax.jit(lambda z: manifolds.kromhc(z, n))(logits))
    for z, hz in zip(np.asarray(logits), h):
        np.testing.assert_allclose(hz, _kromhc_numpy(z, n), atol=1e-6)
    np.testing.assert_allclose(h.sum(-1), 1.0, atol=1e-6)  # exactly doubly stochastic
    np.testing.assert_allclose(h.sum(-2), 1.0, atol=1e-6)
    assert (h >= 0).all()
    np.testing.assert_allclose(h, np.swapaxes(h, -1, -2), atol=1e-7)  # symmetric
    # vmap over a leading axis is the batched call
    np.testing.assert_allclose(jax.vmap(lambda z: manifolds.kromhc(z, n))(logits), h, atol=1e-7)


def test_kromhc_orientation_first_factor_is_outermost():
    """U_1 acts on the most significant bit: with factor 1 a swap (p = 0) and factor 2 the
    identity, H maps stream s to s XOR 2 (for n = 4)."""
    big = 30.0
    h = np.asarray(manifolds.kromhc(jnp.array([-big, big, big, -big]), 4))
    np.testing.assert_allclose(h, np.eye(4)[[2, 3, 0, 1]], atol=1e-6)


def test_kromhc_gradient_matches_finite_differences():
    n = 8
    logits = jax.random.normal(_key(3), (6,))
    w = jax.random.normal(_key(4), (n, n))

    def f(z):
        return jnp.sum(w * manifolds.kromhc(z, n))

    g = np.asarray(jax.grad(f)(logits))
    assert np.isfinite(g).all()
    eps = 1e-3
    for i in range(logits.shape[0]):
        e = jnp.zeros_like(logits).at[i].set(eps)
        fd = (f(logits + e) - f(logits - e)) / (2 * eps)
        np.testing.assert_allclose(g[i], fd, atol=2e-3, rtol=2e-3)


def test_kromhc_init_and_bad_n():
    m = manifolds.get("kromhc")
    h_id = np.asarray(m.project(jnp.asarray(m.init_logits(4, "identity")), 4))
    np.testing.assert_allclose(np.diag(h_id), 1.0, atol=1e-3)  # the authors' [0, -8] per factor
    soft = np.asarray(m.project(jnp.asarray(m.init_logits(4, "identity", -2.0)), 4))
    np.testing.assert_allclose(np.diag(soft), jax.nn.sigmoid(2.0) ** 2, rtol=1e-6)
    np.testing.assert_allclose(m.project(jnp.asarray(m.init_logits(8, "uniform")), 8),
                               np.full((8, 8), 1 / 8), atol=1e-7)
    with pytest.raises(ValueError, match="power of two.*n_streams=3"):
        mhc.ConnectionSpec(width=8, n_streams=3, manifold="kromhc")
    from mhc import recipes
    from mhc.config import ConfigError, apply_overrides
    with pytest.raises(ConfigError, match="power of two"):
        apply_overrides(recipes.get("tiny"), ["manifold=kromhc", "n_streams=6"])


def _one_model_step(overrides):
    """One training step of a 2-block model with `overrides`: (model, FFN site 0's bias before,
    after). Block 0's FFN site: at the first site the n copies are identical, and under the sum
    collapse the last site's H_res is invisible (its columns sum to 1), so neither gets a
    gradient; a middle site does."""
    from flax import nnx
    from mhc import recipes, train_step
    from mhc.config import apply_overrides
    from mhc.model import Decoder
    cfg = apply_overrides(recipes.get("tiny"), [*overrides, "n_layers=2", "d_model=32",
                                                "n_heads=2", "d_ff=64", "seq_len=16",
                                                "batch_size=2", "warmup_steps=0"])  # lr > 0
    model = Decoder(cfg.model, rngs=nnx.Rngs(0))
    optimizer = train_step.make_optimizer(model, cfg)
    tokens = jax.random.randint(_key(5), (2, 17), 0, 256)
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}
    before = np.asarray(model.dense_blocks.ffn_hc.params["bias"][...]).copy()
    out, _ = nnx.jit(train_step.train_step_body)(model, optimizer, batch)
    assert bool(out["finite"]) and np.isfinite(float(out["loss"]))
    return model, before, np.asarray(model.dense_blocks.ffn_hc.params["bias"][...])


@pytest.mark.slow  # a whole multi-step or sharded run
def test_kromhc_site_trains_in_the_model():
    """manifold=kromhc through the whole model: one training step on the XLA path, finite
    gradients that reach the residual logits, H_res exactly doubly stochastic."""
    model, before, after = _one_model_step(["manifold=kromhc", "res_offdiag_logit=-2"])
    assert np.abs(after[0, -4:] - before[0, -4:]).max() > 0  # its 4 residual logits moved
    tokens = jax.random.randint(_key(5), (2, 16), 0, 256)
    res = model(tokens)[1].res
    np.testing.assert_allclose(np.asarray(res).sum(-2), 1.0, atol=1e-5)


# ------------------------------------------------------------------------------- go-mHC
def _go_mhc_numpy(logits, n, s, notebook=False):
    """Independent NumPy formulation from go-mHC (arXiv 2604.02309): Θ's strict upper triangle
    (row-major) holds the logits, A = Θ - Θᵀ, Q = (I - A)(I + A)⁻¹ (the paper), or the authors'
    notebook's `solve(I - X, I + X)` with X = Θ - Θᵀ; H[i, j] = (1/s) Σ_{k,l} Q[is+k, js+l]²."""
    m = n * s
    theta = np.zeros((m, m))
    theta[np.triu_indices(m, 1)] = np.asarray(logits, np.float64)
    a, eye = theta - theta.T, np.eye(m)
    q = np.linalg.solve(eye - a, eye + a) if notebook else (eye - a) @ np.linalg.inv(eye + a)
    return (q ** 2).reshape(n, s, n, s).sum((1, 3)) / s


@pytest.mark.parametrize("n,s", [(4, 2), (4, 1), (2, 3), (8, 2)])
def test_go_mhc_golden_properties_and_sign_convention(n, s):
    m = manifolds.get("go_mhc")
    k = m.num_logits(n, go_block=s)
    assert k == n * s * (n * s - 1) // 2
    logits = 0.7 * jax.random.normal(_key(n * s), (3, k))
    h = np.asarray(jax.jit(lambda z: manifolds.go_mhc(z, n, s))(logits))
    for z, hz in zip(np.asarray(logits), h):
        np.testing.assert_allclose(hz, _go_mhc_numpy(z, n, s), atol=2e-5)
        # the notebook's solve(I - X, I + X) is Qᵀ: it gives the transpose
        np.testing.assert_allclose(hz.T, _go_mhc_numpy(z, n, s, notebook=True), atol=2e-5)
    np.testing.assert_allclose(h.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(h.sum(-2), 1.0, atol=1e-5)
    assert (h >= 0).all()
    np.testing.assert_allclose(jax.vmap(lambda z: manifolds.go_mhc(z, n, s))(logits), h,
                               atol=1e-6)


def test_go_mhc_gradient_and_the_identity_saddle():
    n, s = 4, 2
    k = manifolds.get("go_mhc").num_logits(n, go_block=s)
    w = jax.random.normal(_key(8), (n, n))

    def f(z):
        return jnp.sum(w * manifolds.go_mhc(z, n, s))

    z = 0.5 * jax.random.normal(_key(9), (k,))
    g = np.asarray(jax.grad(f)(z))
    eps = 1e-2
    for i in range(0, k, 5):
        e = jnp.zeros_like(z).at[i].set(eps)
        np.testing.assert_allclose(g[i], (f(z + e) - f(z - e)) / (2 * eps), atol=3e-3, rtol=3e-3)
    # the zero init is exactly H = I, and its gradient is exactly zero there (a saddle)
    z0 = jnp.asarray(manifolds.get("go_mhc").init_logits(n, "identity", go_block=s))
    np.testing.assert_allclose(manifolds.go_mhc(z0, n, s), np.eye(n), atol=1e-7)
    assert np.abs(np.asarray(jax.grad(f)(z0))).max() == 0.0


def test_go_mhc_through_the_connection_and_config():
    from mhc import recipes
    from mhc.config import ConfigError, apply_overrides
    hc = mhc.HyperConnection(8, n_streams=4, manifold="go_mhc", go_block=2)
    assert hc.params["bias"].shape == (2 * 4 + 28,)  # 28 logits for n = 4, s = 2 (the paper)
    streams = jax.random.normal(_key(10), (2, 3, 4, 8))
    np.testing.assert_allclose(hc.apply(streams, jnp.tanh)[1].res, np.broadcast_to(np.eye(4), (2, 3, 4, 4)),
                               atol=1e-6)
    cfg = apply_overrides(recipes.get("tiny"), ["manifold=go_mhc", "go_block=1"])
    assert cfg.model.connection_spec().num_res_logits == 6
    for bad, needle in ((["manifold=go_mhc", "go_block=0"], "go_block=0"),
                        (["manifold=go_mhc", "res_init=uniform"], "not available for go_mhc"),
                        (["manifold=go_mhc", "res_offdiag_logit=5"], "cannot start")):
        with pytest.raises(ConfigError, match=needle):
            apply_overrides(recipes.get("tiny"), bad)


# ---------------------------------------------------------------------- sHC (spectral sphere)
def _shc_numpy(logits, n):
    """Independent NumPy formulation of sHC's residual map, written from the authors'
    `SHyperConnections.width_connection` (arXiv 2603.20896): Helmert basis Uz, Cayley
    U = solve(I + A_U, I - A_U) from the strict upper triangle (torch.triu_indices order),
    H_auth = J + Uz · U diag(σ) Vᵀ · Uzᵀ, applied as `new[t] = Σ_s H_auth[s, t] x[s]`. Returns
    the matrix that acts as `new = M x`, i.e. H_authᵀ."""
    z = np.asarray(logits, np.float64)
    m = n - 1
    k = m * (m - 1) // 2
    uz = np.zeros((n, m))
    for i in range(1, n):
        uz[:i, i - 1] = 1 / np.sqrt(i * (i + 1))
        uz[i, i - 1] = -i / np.sqrt(i * (i + 1))

    def cayley(t):
        a = np.zeros((m, m))
        a[np.triu_indices(m, 1)] = t
        a = a - a.T
        return np.linalg.solve(np.eye(m) + a, np.eye(m) - a)

    u, v = cayley(np.tanh(z[:k])), cayley(np.tanh(z[k:2 * k]))
    h_auth = np.ones((n, n)) / n + uz @ (u @ np.diag(np.tanh(z[2 * k:])) @ v.T) @ uz.T
    x = np.random.default_rng(0).normal(size=(n, 5))
    new = np.einsum("st,sd->td", h_auth, x)  # the authors' mix
    np.testing.assert_allclose(h_auth.T @ x, new, atol=1e-12)
    return h_auth.T


@pytest.mark.parametrize("n", [2, 3, 4, 8])
def test_spectral_sphere_golden_and_properties(n):
    m = manifolds.get("spectral_sphere")
    assert m.num_logits(n) == (n - 1) ** 2 and not m.doubly_stochastic
    logits = 1.5 * jax.random.normal(_key(20 + n), (4, m.num_logits(n)))
    h = np.asarray(jax.jit(lambda z: manifolds.spectral_sphere(z, n))(logits))
    for z, hz in zip(np.asarray(logits), h):
        np.testing.assert_allclose(hz, _shc_numpy(z, n), atol=2e-6)
        sv = np.linalg.svd(hz.astype(np.float64), compute_uv=False)
        k = (n - 1) * (n - 2) // 2
        expected = np.sort(np.concatenate([[1.0], np.abs(np.tanh(z[2 * k:]))]))[::-1]
        np.testing.assert_allclose(sv, expected, atol=2e-6)  # {1} ∪ |σ|: spectral norm 1
    np.testing.assert_allclose(h.sum(-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(h.sum(-2), 1.0, atol=1e-6)
    if n >= 3:  # not doubly stochastic: some entries are negative, which the diagnostics see
        assert h.min() < -0.05
        assert float(diagnostics.negative_mass(h).max()) > 0.05
    assert float(diagnostics.negative_mass(manifolds.sinkhorn(logits[..., :1, None]
                                                              * jnp.ones((n, n)))).max()) == 0
    np.testing.assert_allclose(jax.vmap(lambda z: manifolds.spectral_sphere(z, n))(logits), h,
                               atol=1e-6)


def test_spectral_sphere_is_not_symmetric_and_orientation_is_the_authors():
    """A rotation in U alone (V = I) makes H_auth = J + Uz U diag σ Uzᵀ non-symmetric; ours is
    its transpose, so the golden's orientation check is not vacuous."""
    n = 4
    z = np.zeros(9, np.float32)
    z[0], z[6:] = 1.0, 0.5
    h = np.asarray(manifolds.spectral_sphere(jnp.asarray(z), n))
    assert np.abs(h - h.T).max() > 0.05
    np.testing.assert_allclose(h, _shc_numpy(z, n), atol=2e-6)


def test_spectral_sphere_gradient_and_inits():
    n = 4
    m = manifolds.get("spectral_sphere")
    w = jax.random.normal(_key(30), (n, n))

    def f(z):
        return jnp.sum(w * manifolds.spectral_sphere(z, n))

    z = 0.5 * jax.random.normal(_key(31), (9,))
    g = np.asarray(jax.grad(f)(z))
    eps = 1e-2
    for i in range(9):
        e = jnp.zeros_like(z).at[i].set(eps)
        np.testing.assert_allclose(g[i], (f(z + e) - f(z - e)) / (2 * eps), atol=3e-3, rtol=3e-3)
    # the authors' init: σ logits 4, H = tanh(4)·I + (1 - tanh(4))·J
    t = np.tanh(4.0)
    np.testing.assert_allclose(m.project(jnp.asarray(m.init_logits(n, "identity")), n),
                               t * np.eye(n) + (1 - t) / n, atol=1e-6)
    np.testing.assert_allclose(m.project(jnp.asarray(m.init_logits(n, "uniform")), n),
                               np.full((n, n), 1 / n), atol=1e-7)
    # a soft identity: exactly Sinkhorn's start of the same off-diagonal logit
    soft = m.project(jnp.asarray(m.init_logits(n, "identity", -2.0)), n)
    sink = manifolds.get("sinkhorn")
    np.testing.assert_allclose(soft, sink.project(jnp.asarray(sink.init_logits(n, "identity",
                                                                               -2.0)), n),
                               atol=1e-6)
    np.testing.assert_allclose(manifolds.spectral_sphere(jnp.zeros((2, 0)), 1), np.ones((2, 1, 1)))


def test_spectral_sphere_site_trains_in_the_model():
    """manifold=spectral_sphere through the whole model: one step, finite, the residual logits
    move, and H_res keeps unit row and column sums (but not non-negativity)."""
    model, before, after = _one_model_step(["manifold=spectral_sphere", "res_offdiag_logit=-2"])
    assert before.shape[-1] == 2 * 4 + 9
    assert np.abs(after[0, -9:] - before[0, -9:]).max() > 0
    tokens = jax.random.randint(_key(5), (2, 16), 0, 256)
    res = np.asarray(model(tokens)[1].res)
    np.testing.assert_allclose(res.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(res.sum(-2), 1.0, atol=1e-5)


def test_go_mhc_soft_init_leaves_the_saddle():
    """With res_offdiag_logit=L, go-mHC starts from a constant Θ whose H has the mean diagonal
    of Sinkhorn's soft identity of logit L, exactly doubly stochastic, with a non-zero gradient."""
    n, s = 4, 2
    m = manifolds.get("go_mhc")
    z = jnp.asarray(m.init_logits(n, "identity", -2.0, go_block=s))
    assert np.unique(np.asarray(z)).size == 1 and float(z[0]) > 0
    h = np.asarray(manifolds.go_mhc(z, n, s))
    np.testing.assert_allclose(np.diag(h).mean(), manifolds.soft_identity_diagonal(n, -2.0),
                               atol=1e-5)
    np.testing.assert_allclose(h.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(h.sum(-2), 1.0, atol=1e-5)
    assert (h >= 0).all()
    w = jax.random.normal(_key(12), (n, n))
    g = jax.grad(lambda z: jnp.sum(w * manifolds.go_mhc(z, n, s)))(z)
    assert float(jnp.abs(g).max()) > 1e-2
