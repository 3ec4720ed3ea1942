"""Projections of residual-mixing logits onto constraint sets (the "manifold" of mHC).

Every projection maps logits `[..., K]` to a stream-mixing matrix `H[..., N, N]` that is applied as
`new_i = sum_j H[i, j] x_j` (rows = output streams). Computation is always fp32.

Registry: `get(name)` returns a `Manifold`; `register(name, project, ...)` adds one. Built in:
  sinkhorn         Sinkhorn-Knopp onto the Birkhoff polytope (paper Eq. 9), K = N*N
  mhc_lite         convex combination of the N! permutation matrices (mHC-lite), exact, K = N!
  orthostochastic  H = Q∘Q with Q = Cayley(skew(A)) orthogonal, exact, K = N*N
  identity         H = I (plain residual mixing), K = 0
  unconstrained    H = reshape(logits) (Hyper-Connections), K = N*N
  kromhc           Kronecker product of log2(N) 2x2 doubly stochastic factors (KromHC), exact and
                   symmetric, N a power of two, K = 2 log2(N)
  go_mhc           generalized orthostochastic (go-mHC): block sums of Q∘Q for a Cayley-orthogonal
                   Q of size N·s (s = go_block), exact, K = Ns(Ns - 1)/2
  spectral_sphere  sHC: J/N + a Cayley-parametrised SVD on the complement of 1; row and column sums
                   exactly 1 and spectral norm exactly 1, but entries may be negative (NOT doubly
                   stochastic), K = (N - 1)²
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

CONVENTIONS = ("paper", "deepseek_v4")
GRADS = ("recompute", "implicit", "autodiff")
GO_BLOCK = 2  # go-mHC's block size s (the authors recommend 2)
OFF_DIAGONAL_LOGIT = -8.0  # identity-like init used by mHC-lite's code: exp(-8) ~ 3e-4 off-diagonal


# ----------------------------------------------------------------------------------- Sinkhorn
# The iterations run on a token-minor layout `[N, N, M]` (M = all batch entries): each
# normalisation is then a few vector ops over M instead of a tiny [N, N] reduction per token,
# 2-4x faster on XLA:CPU (fwd+bwd at M = 4096, N = 4). Same arithmetic, same results.
def _tokens_last(x_xNxN: jax.Array) -> jax.Array:
    n = x_xNxN.shape[-1]
    return jnp.moveaxis(x_xNxN.reshape(-1, n, n), 0, -1)


def _tokens_first(y_NxNxM: jax.Array, shape) -> jax.Array:
    return jnp.moveaxis(y_NxNxM, -1, 0).reshape(shape)


def _paper_iteration(log_m_NxNxM: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One log-domain Sinkhorn iteration of the paper: (rows-normalised output, the
    columns-normalised intermediate), both `[i, j, M]`."""
    cols = log_m_NxNxM - jax.nn.logsumexp(log_m_NxNxM, axis=0, keepdims=True)
    return cols - jax.nn.logsumexp(cols, axis=1, keepdims=True), cols


def _sinkhorn_paper(x_NxN: jax.Array, iters: int) -> jax.Array:
    """Paper Eq. 9 in the log domain: M0 = exp(x), then `iters` x (normalise columns, then rows).

    Identical to the exp-domain recursion in exact arithmetic, but safe for any logit range
    (no underflow to all-zero columns). Rows are normalised last, so row sums are exact.
    """
    def body(_, log_m):
        return _paper_iteration(log_m)[0]

    return _tokens_first(jnp.exp(jax.lax.fori_loop(0, iters, body, _tokens_last(x_NxN))),
                         x_NxN.shape)


def _sinkhorn_paper_vjp(x_NxN: jax.Array, g_NxN: jax.Array, iters: int) -> jax.Array:
    """VJP of `_sinkhorn_paper` by re-running it: the exact gradient of the truncated iteration.

    A log-domain normalisation y = z - logsumexp(z) has the VJP dz = g - exp(y) · sum(g), so a
    step needs only its output. The re-run keeps one iterate per iteration (the column-normalised
    one; the row step is recomputed from it), `iters x N x N` floats per token, where autodiff of
    the loop keeps several per half step.
    """
    log_h, cols = jax.lax.scan(lambda log_m, _: _paper_iteration(log_m),
                               _tokens_last(x_NxN), None, length=iters, unroll=2)
    g = _tokens_last(g_NxN) * jnp.exp(log_h)  # through H = exp(log_h)

    def backward(g, cols):
        row_m = jax.nn.softmax(cols, axis=1)  # exp of the row step's output (stable)
        g = g - row_m * g.sum(1, keepdims=True)  # row step
        return g - jnp.exp(cols) * g.sum(0, keepdims=True), None  # column step

    g, _ = jax.lax.scan(backward, g, cols, reverse=True, unroll=2)
    return _tokens_first(g, x_NxN.shape)


def _sinkhorn_deepseek_v4(x_NxN: jax.Array, iters: int, eps: float) -> jax.Array:
    """DeepSeek-V4 production ordering: softmax over the last axis + eps, columns once, then
    (iters - 1) x (rows, columns), eps in every denominator. V4 applies the result transposed
    (`new = comb^T x`), so we return comb^T: like the paper's map, its row sums are the exact ones.
    """
    comb = jax.nn.softmax(_tokens_last(x_NxN), axis=1) + eps  # [i, j, M]
    comb = comb / (comb.sum(0, keepdims=True) + eps)

    def body(_, c):
        c = c / (c.sum(1, keepdims=True) + eps)
        return c / (c.sum(0, keepdims=True) + eps)

    comb = jax.lax.fori_loop(0, iters - 1, body, comb)
    return jnp.swapaxes(_tokens_first(comb, x_NxN.shape), -1, -2)


def _sinkhorn_forward(x, iters, convention, eps):
    if convention == "paper":
        return _sinkhorn_paper(x, iters)
    return _sinkhorn_deepseek_v4(x, iters, eps)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _sinkhorn_recompute(x, iters, convention, eps):
    return _sinkhorn_forward(x, iters, convention, eps)


def _sinkhorn_recompute_fwd(x, iters, convention, eps):
    return _sinkhorn_forward(x, iters, convention, eps), x  # keep only the logits


def _sinkhorn_recompute_bwd(iters, convention, eps, x, g):
    # Re-run the iterations inside the backward: the iterates live only while this site's
    # gradient is computed, so what is held from forward to backward does not grow with `iters`.
    # The barrier ties the re-run to the incoming cotangent, so XLA can neither merge it with the
    # forward (CSE) nor hoist every site's re-run to the start of the backward.
    x, g = jax.lax.optimization_barrier((x, g))
    if convention == "paper":
        return (_sinkhorn_paper_vjp(x, g, iters),)
    _, vjp = jax.vjp(lambda x: _sinkhorn_forward(x, iters, convention, eps), x)
    return vjp(g)


_sinkhorn_recompute.defvjp(_sinkhorn_recompute_fwd, _sinkhorn_recompute_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _sinkhorn_implicit(x, iters, convention, eps):
    return _sinkhorn_forward(x, iters, convention, eps)


def _sinkhorn_implicit_fwd(x, iters, convention, eps):
    h = _sinkhorn_forward(x, iters, convention, eps)
    return h, h  # the only residual: the output itself, whatever `iters` is


def _sinkhorn_implicit_bwd(iters, convention, eps, h_NxN, g_NxN):
    """Vector-Jacobian product of the exact Sinkhorn projection at its fixed point.

    With H = diag(a) exp(x) diag(b) doubly stochastic, dL/dx = H ∘ (G - u 1ᵀ - 1 vᵀ) where
    u + H v = r, Hᵀ u + v = c, r = (H∘G) 1, c = (H∘G)ᵀ 1. Eliminating v: (I - H Hᵀ) u = r - H c, whose
    right side is orthogonal to 1. We sum the Neumann series u = Σ_k (H Hᵀ)^k (r - H c) for `iters`
    terms: each term is bounded (H Hᵀ is doubly stochastic), so the gradient stays finite even when
    H is nearly a permutation and the system is singular. Accurate when the forward has converged
    (logits of order 1); no iterate is stored or recomputed.
    """
    del eps
    hg = h_NxN * g_NxN
    r, c = hg.sum(-1), hg.sum(-2)
    rhs = r - jnp.einsum("...ij,...j->...i", h_NxN, c)
    hht = jnp.einsum("...ik,...jk->...ij", h_NxN, h_NxN)

    def body(_, carry):
        term, total = carry
        term = jnp.einsum("...ij,...j->...i", hht, term)
        return term, total + term

    _, u = jax.lax.fori_loop(0, iters - 1, body, (rhs, rhs))
    v = c - jnp.einsum("...ij,...i->...j", h_NxN, u)
    grad = h_NxN * (g_NxN - u[..., :, None] - v[..., None, :])
    # deepseek_v4 returns comb^T, i.e. the projection of the transposed logits
    return (jnp.swapaxes(grad, -1, -2) if convention == "deepseek_v4" else grad,)


_sinkhorn_implicit.defvjp(_sinkhorn_implicit_fwd, _sinkhorn_implicit_bwd)
_SINKHORN_BY_GRAD = {"recompute": _sinkhorn_recompute, "implicit": _sinkhorn_implicit}


def sinkhorn(logits: jax.Array, iters: int = 20, *, convention: str = "paper",
             grad: str = "recompute", eps: float = 1e-6) -> jax.Array:
    """Project `logits[..., N, N]` onto (approximately) doubly stochastic matrices, in fp32.

    convention: "paper" (exp start, columns then rows, `iters` times) or "deepseek_v4" (softmax + eps
      start, production ordering, returned transposed so that it applies like the paper's H_res).
      In both, the row sums (the forward gain) are exact; column sums carry the truncation error.
    grad: how the backward is formed.
      "recompute" (default, as the paper's kernel): exact gradient of the truncated map; only the
        logits are kept for the backward, which re-runs the iterations.
      "implicit": gradient of the exact projection at the output (Neumann series, no re-run);
        cheapest, accurate once the forward has converged (logits of order 1).
      "autodiff": plain backprop through the loop; exact, but keeps all `iters` iterates.
    Returns fp32 `[..., N, N]`.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"sinkhorn convention={convention!r}; allowed: {', '.join(CONVENTIONS)}")
    if grad not in GRADS:
        raise ValueError(f"sinkhorn grad={grad!r}; allowed: {', '.join(GRADS)}")
    if not isinstance(iters, int) or iters < 1:
        raise ValueError(f"sinkhorn iters={iters!r}; must be an integer >= 1")
    if logits.ndim < 2 or logits.shape[-1] != logits.shape[-2]:
        raise ValueError(f"sinkhorn logits shape {logits.shape}; expected [..., N, N]")
    x = jnp.asarray(logits, jnp.float32)
    if grad == "autodiff":
        return _sinkhorn_forward(x, iters, convention, eps)
    return _SINKHORN_BY_GRAD[grad](x, iters, convention, eps)


# ------------------------------------------------------------------------------ other manifolds
@functools.lru_cache(maxsize=None)
def permutation_matrices(n: int) -> np.ndarray:
    """All n! permutation matrices `[n!, n, n]`, identity first (itertools order)."""
    perms = list(itertools.permutations(range(n)))
    return np.stack([np.eye(n, dtype=np.float32)[list(p)] for p in perms])


def mhc_lite(logits_K: jax.Array, n: int) -> jax.Array:
    """mHC-lite: `softmax(logits)[k]`-weighted sum of the n! permutation matrices. Exact."""
    weights = jax.nn.softmax(jnp.asarray(logits_K, jnp.float32), axis=-1)
    return jnp.einsum("...k,kij->...ij", weights, jnp.asarray(permutation_matrices(n)))


def orthostochastic(logits_NxN: jax.Array) -> jax.Array:
    """H = Q∘Q with Q = (I - S)^{-1}(I + S), S the skew part of the logits. Exact; zeros give I."""
    a = jnp.asarray(logits_NxN, jnp.float32)
    s = 0.5 * (a - jnp.swapaxes(a, -1, -2))
    eye = jnp.eye(a.shape[-1], dtype=jnp.float32)
    q = jnp.linalg.solve(eye - s, jnp.broadcast_to(eye + s, s.shape))
    return q * q


# ------------------------------------------------------------------------------------ registry
@dataclasses.dataclass(frozen=True)
class Manifold:
    """A projection from `num_logits(n)` logits to an `[n, n]` mixing matrix.

    project(logits[..., K], n, **options) -> H[..., n, n];
    init_logits(n, how, offdiag_logit=OFF_DIAGONAL_LOGIT) -> np.ndarray[K] with how in
    {"identity", "uniform"} giving H ≈ I or H ≈ J/n at initialisation; `offdiag_logit` is the
    logit of the non-identity terms of the identity init (-8: a hard identity, -2: a soft one
    with diagonal ≈ 0.71 for n = 4), where the manifold has such terms.
    """
    name: str
    project: Callable[..., jax.Array]
    num_logits: Callable[[int], int]
    init_logits: Callable[..., np.ndarray]
    exact_doubly_stochastic: bool  # every output is doubly stochastic up to rounding
    # meant to be (approximately) doubly stochastic; False where entries may be negative (HC's
    # unconstrained map, sHC's spectral sphere), whose diagnostics are read as such
    doubly_stochastic: bool = True
    # connection options (ConnectionOptions fields) that num_logits, init_logits and project
    # take as keywords, e.g. go_mhc's block size
    options: tuple[str, ...] = ()


def _square_init(n: int, how: str, offdiag_logit: float = OFF_DIAGONAL_LOGIT) -> np.ndarray:
    if how == "identity":
        return np.where(np.eye(n, dtype=bool), 0.0, offdiag_logit).astype(np.float32).ravel()
    if how == "uniform":
        return np.zeros(n * n, np.float32)
    raise ValueError(f"res_init={how!r}; allowed: identity, uniform")


def _lite_init(n: int, how: str, offdiag_logit: float = OFF_DIAGONAL_LOGIT) -> np.ndarray:
    k = math.factorial(n)
    if how == "identity":
        return np.array([0.0] + [offdiag_logit] * (k - 1), np.float32)
    if how == "uniform":
        return np.zeros(k, np.float32)
    raise ValueError(f"res_init={how!r}; allowed: identity, uniform")


def soft_identity_diagonal(n: int, offdiag_logit: float) -> float:
    """The diagonal of Sinkhorn's symmetric start with logits 0 / `offdiag_logit`:
    `1 / (1 + (n-1)·e^L)`, the start the other manifolds' inits are matched to."""
    return 1.0 / (1.0 + (n - 1) * math.exp(offdiag_logit))


def lite_logit_matching_sinkhorn(n: int, offdiag_logit: float) -> float:
    """The mHC-lite off-diagonal logit whose initial H_res equals Sinkhorn's soft identity with
    logits 0 / `offdiag_logit` (so that the two manifolds start from the same map).

    Sinkhorn's symmetric start is `a·I + b·(J - I)`, a = 1 / (1 + (n-1)·e^L). mHC-lite's is
    `w·I + (1-w)·P̄`, P̄ the mean of the n! - 1 other permutations, which has diagonal
    c = ((n-1)! - 1) / (n! - 1) and equal off-diagonal entries; matching the diagonal gives
    w = (a - c) / (1 - c) and the logit log((1 - w) / (w·(n! - 1)))."""
    a = soft_identity_diagonal(n, offdiag_logit)
    k = math.factorial(n)
    c = (math.factorial(n - 1) - 1) / (k - 1)
    w = (a - c) / (1 - c)
    if not 0 < w < 1:
        raise ValueError(f"offdiag_logit={offdiag_logit!r}: Sinkhorn's start (diagonal {a:.3g})"
                         f" is not reachable by mHC-lite's identity-weighted init at n={n}")
    return math.log((1 - w) / (w * (k - 1)))


def _no_offdiag_logit(name: str, offdiag_logit: float) -> None:
    """Manifolds whose identity init has no tunable off-diagonal logits refuse a custom one."""
    if offdiag_logit != OFF_DIAGONAL_LOGIT:
        raise ValueError(f"res_offdiag_logit={offdiag_logit!r} has no meaning for manifold "
                         f"{name!r}; it applies to sinkhorn, mhc_lite, kromhc, go_mhc and spectral_sphere")


def _ortho_init(n: int, how: str, offdiag_logit: float = OFF_DIAGONAL_LOGIT) -> np.ndarray:
    _no_offdiag_logit("orthostochastic", offdiag_logit)
    if how == "identity":
        return np.zeros(n * n, np.float32)
    raise ValueError(f"res_init={how!r} is not available for orthostochastic; allowed: identity")


def _unconstrained_init(n: int, how: str, offdiag_logit: float = OFF_DIAGONAL_LOGIT
                        ) -> np.ndarray:
    _no_offdiag_logit("unconstrained", offdiag_logit)
    if how == "identity":
        return np.eye(n, dtype=np.float32).ravel()
    if how == "uniform":
        return np.full(n * n, 1.0 / n, np.float32)
    raise ValueError(f"res_init={how!r}; allowed: identity, uniform")


def _identity_init(n: int, how: str, offdiag_logit: float = OFF_DIAGONAL_LOGIT) -> np.ndarray:
    _no_offdiag_logit("identity", offdiag_logit)
    return np.zeros(0, np.float32)


def _kron_factors(n: int) -> int:
    """K with n = 2^K: KromHC's number of 2x2 factors (ValueError for another n)."""
    if not isinstance(n, int) or n < 1 or n & (n - 1):
        raise ValueError(f"manifold='kromhc' needs n_streams a power of two (1, 2, 4, 8, ...); "
                         f"got n_streams={n!r}")
    return n.bit_length() - 1


def kromhc(logits_xK: jax.Array, n: int) -> jax.Array:
    """KromHC (arXiv 2601.21579): `H = U_1 ⊗ U_2 ⊗ ... ⊗ U_K` for n = 2^K, each factor
    `U_k = [[p_k, 1 - p_k], [1 - p_k, p_k]]` with `p_k = softmax(logits[2k:2k+2])[0]`; U_1 is the
    outermost factor (it acts on the most significant bit of the stream index), as in the
    authors' code. Exactly doubly stochastic and symmetric with 2K logits per token, instead of
    mHC-lite's n!. logits `[..., 2K]` -> H `[..., n, n]`, fp32."""
    k = _kron_factors(n)
    z = jnp.asarray(logits_xK, jnp.float32)
    batch = z.shape[:-1]
    p = jax.nn.softmax(z.reshape(*batch, k, 2), axis=-1)[..., 0]  # [..., K]
    h = jnp.ones((*batch, 1, 1), jnp.float32)
    for i in range(k):
        q = p[..., i, None, None]
        u = q * jnp.eye(2, dtype=jnp.float32) + (1 - q) * jnp.eye(2, dtype=jnp.float32)[::-1]
        m = h.shape[-1]  # kron(h, u)[2a + c, 2b + d] = h[a, b] u[c, d]
        h = jnp.einsum("...ab,...cd->...acbd", h, u).reshape(*batch, 2 * m, 2 * m)
    return h


def _kromhc_init(n: int, how: str, offdiag_logit: float = OFF_DIAGONAL_LOGIT) -> np.ndarray:
    """Per factor the logits [0, offdiag_logit] (the authors' init is [0, -8]: p ≈ 0.9997,
    H ≈ I) or [0, 0] (p = 1/2 in every factor: H = J/n)."""
    k = _kron_factors(n)
    if how == "identity":
        return np.tile(np.array([0.0, offdiag_logit], np.float32), k)
    if how == "uniform":
        return np.zeros(2 * k, np.float32)
    raise ValueError(f"res_init={how!r}; allowed: identity, uniform")


def _cayley_from_triangle(z_xK: jax.Array, m: int) -> jax.Array:
    """`(I + A)⁻¹(I - A)` with A skew, its strict upper triangle (row-major) from z `[..., K]`."""
    rows, cols = np.triu_indices(m, 1)
    a = jnp.zeros((*z_xK.shape[:-1], m, m), jnp.float32).at[..., rows, cols].set(z_xK)
    a = a - jnp.swapaxes(a, -1, -2)
    eye = jnp.eye(m, dtype=jnp.float32)
    return jnp.linalg.solve(eye + a, jnp.broadcast_to(eye - a, a.shape))


def kromhc_logit_matching_sinkhorn(n: int, offdiag_logit: float) -> float:
    """The KromHC per-factor logit L' (factor init [0, L']) whose initial H_res has the diagonal of
    Sinkhorn's soft identity with logits 0 / `offdiag_logit`: the diagonal of a Kronecker product
    of K factors with p = 1 / (1 + e^L') is p^K, so p = a^(1/K), a = 1 / (1 + (n-1)·e^L)."""
    k = _kron_factors(n)
    a = soft_identity_diagonal(n, offdiag_logit)
    p = a ** (1.0 / max(k, 1))
    return math.log((1.0 - p) / p)


def _go_size(n: int, block: int) -> int:
    if not isinstance(block, int) or isinstance(block, bool) or block < 1:
        raise ValueError(f"go_block={block!r}; must be an integer >= 1")
    return n * block


def go_mhc(logits_xK: jax.Array, n: int, block: int = GO_BLOCK) -> jax.Array:
    """go-mHC, the generalized orthostochastic map (arXiv 2604.02309): with m = n·s (s = `block`),
    Θ `[m, m]` holds the logits in its strict upper triangle (row-major, `np.triu_indices(m, 1)`),
    `A = Θ - Θᵀ` and `Q = (I - A)(I + A)⁻¹` (Cayley: orthogonal); then
    `H[i, j] = (1/s) Σ_{k,l<s} Q[i·s + k, j·s + l]²`. Exactly doubly stochastic and non-negative;
    s = 1 is the plain orthostochastic map. Sign convention: this is the Cayley transform of
    A = Θ - Θᵀ as written in the paper; the authors' notebook solves (I - X)⁻¹(I + X) with
    X = Θ - Θᵀ, which is Qᵀ and so gives Hᵀ (tested). logits `[..., m(m-1)/2]` -> `[..., n, n]`."""
    m = _go_size(n, block)
    z = jnp.asarray(logits_xK, jnp.float32)
    batch = z.shape[:-1]
    q = _cayley_from_triangle(z, m)  # (I + A)⁻¹(I - A) = (I - A)(I + A)⁻¹: the factors commute
    sq = (q * q).reshape(*batch, n, block, n, block)
    return sq.sum((-3, -1)) / block


def _go_num_logits(n: int, go_block: int = GO_BLOCK) -> int:
    m = _go_size(n, go_block)
    return m * (m - 1) // 2


def _go_mean_diagonal(c: float, n: int, block: int) -> float:
    """Mean diagonal of go-mHC's H when every logit (Θ's strict upper triangle) is `c` (NumPy)."""
    m = n * block
    a = np.triu(np.full((m, m), c), 1)
    a = a - a.T
    q = np.linalg.solve(np.eye(m) + a, np.eye(m) - a)
    return float(np.trace((q * q).reshape(n, block, n, block).sum((1, 3))) / block / n)


@functools.lru_cache(maxsize=64)  # every config built validates its init: solve once
def _go_constant_for_diagonal(n: int, block: int, target: float) -> float:
    """The smallest c > 0 whose constant-Θ H has mean diagonal `target` (grid, then bisection)."""
    grid = np.linspace(0.0, 2.0, 201)
    diag = [_go_mean_diagonal(c, n, block) for c in grid]
    below = [i for i, d in enumerate(diag) if d <= target]
    if not below or below[0] == 0:
        raise ValueError(f"go_mhc cannot start from a mean diagonal of {target:.3g} with a "
                         f"constant Θ at n={n}, go_block={block} (its smallest is "
                         f"{min(diag):.3g}); use a smaller res_offdiag_logit")
    lo, hi = grid[below[0] - 1], grid[below[0]]
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _go_mean_diagonal(mid, n, block) > target else (lo, mid)
    return 0.5 * (lo + hi)


def _go_init(n: int, how: str, offdiag_logit: float = OFF_DIAGONAL_LOGIT,
             go_block: int = GO_BLOCK) -> np.ndarray:
    """Θ = 0: A = 0, Q = I, H = I exactly (the init a port of the authors' code uses). At Θ = 0
    H's derivative is zero (every entry of H is a sum of squares of entries of Q that are 0
    there), so gradient descent cannot leave it: a saddle, like the orthostochastic map's.
    With another `offdiag_logit` L, every logit is the constant c > 0 whose H has the mean
    diagonal of Sinkhorn's soft identity of logit L (`soft_identity_diagonal`): a start off the
    saddle, chosen here (the authors' init is not published)."""
    if how != "identity":
        raise ValueError(f"res_init={how!r} is not available for go_mhc; allowed: identity")
    k = _go_num_logits(n, go_block)
    if offdiag_logit == OFF_DIAGONAL_LOGIT:
        return np.zeros(k, np.float32)
    c = _go_constant_for_diagonal(n, go_block, soft_identity_diagonal(n, offdiag_logit))
    return np.full(k, c, np.float32)


def helmert_basis(n: int) -> np.ndarray:
    """`[n, n - 1]` orthonormal basis of the complement of 1 (the Helmert basis as sHC builds it:
    column i - 1 holds 1/sqrt(i(i+1)) in rows 0..i-1 and -i/sqrt(i(i+1)) in row i)."""
    u = np.zeros((n, n - 1), np.float64)
    for i in range(1, n):
        u[:i, i - 1] = 1.0 / math.sqrt(i * (i + 1))
        u[i, i - 1] = -i / math.sqrt(i * (i + 1))
    return u.astype(np.float32)


def spectral_sphere(logits_xK: jax.Array, n: int) -> jax.Array:
    """sHC's residual map (arXiv 2603.20896): with J = 11ᵀ/n and U_z the Helmert basis,
    `H_auth = J + U_z · U diag(σ) Vᵀ · U_zᵀ`, U and V Cayley-orthogonal `(I + A)⁻¹(I - A)` of
    (n-1)x(n-1) skew matrices. Logits, in the authors' order: k = (n-1)(n-2)/2 for A_U's strict
    upper triangle (tanh), k for A_V's (tanh), n - 1 for σ (tanh). The authors apply H_auth
    transposed (`new[t] = Σ_s H_auth[s, t] x[s]`), so this returns `H = H_authᵀ` for our
    `new_i = Σ_j H[i, j] x_j`. Row and column sums are exactly 1 and the singular values are
    {1} ∪ {|σ_i|}: spectral norm exactly 1. Entries may be negative: it is NOT doubly stochastic.
    The authors also learn a scale γ on each tanh of the rotations (initialised 1); here γ = 1.
    logits `[..., (n-1)²]` -> `[..., n, n]`, fp32."""
    z = jnp.asarray(logits_xK, jnp.float32)
    if n == 1:
        return jnp.ones((*z.shape[:-1], 1, 1), jnp.float32)
    m = n - 1
    k = m * (m - 1) // 2
    u = _cayley_from_triangle(jnp.tanh(z[..., :k]), m)
    v = _cayley_from_triangle(jnp.tanh(z[..., k:2 * k]), m)
    sigma = jnp.tanh(z[..., 2 * k:])
    helmert = jnp.asarray(helmert_basis(n))
    core = jnp.einsum("...ab,...b,...cb->...ca", u, sigma, v)  # (U diag σ Vᵀ)ᵀ = V diag σ Uᵀ
    return 1.0 / n + jnp.einsum("ia,...ab,jb->...ij", helmert, core, helmert)


SHC_SIGMA_LOGIT = 4.0  # the authors' identity init: σ = tanh(4), H ≈ I to 2e-4


def _shc_init(n: int, how: str, offdiag_logit: float = OFF_DIAGONAL_LOGIT) -> np.ndarray:
    """Rotation logits 0 (U = V = I), so `H = J + tanh(b)(I - J)` with b the σ logits:
    "identity" takes the authors' b = 4; with another `offdiag_logit` L, b is chosen so that H
    equals Sinkhorn's symmetric start of that logit (diagonal 1 / (1 + (n-1)e^L)), the soft
    identity of the CPU studies; "uniform" is b = 0, H = J."""
    m = n - 1
    k = m * (m - 1) // 2
    if how == "uniform":
        return np.zeros(m * m, np.float32)
    if how != "identity":
        raise ValueError(f"res_init={how!r}; allowed: identity, uniform")
    b = SHC_SIGMA_LOGIT
    if offdiag_logit != OFF_DIAGONAL_LOGIT:
        diag = soft_identity_diagonal(n, offdiag_logit)
        b = math.atanh((diag - 1.0 / n) / (1.0 - 1.0 / n))
    return np.concatenate([np.zeros(2 * k, np.float32), np.full(m, b, np.float32)])


def range_cap(logits_xK: jax.Array, cap: float) -> jax.Array:
    """Range-capped logits (RRCS, range-capped Sinkhorn): per matrix (last axis, all K logits),
    `r = max - min`, `s = min(cap / (r + 1e-8), 1)`, returns `s · logits` — rescaled, not
    clamped, and `s` is differentiable. Bounding the logit range bounds how far the start of
    Sinkhorn is from uniform, so 20 iterations converge and the -8 identity init's saturated
    exponentials (zero gradient) come back into range."""
    z = jnp.asarray(logits_xK, jnp.float32)
    r = z.max(-1, keepdims=True) - z.min(-1, keepdims=True)
    return z * jnp.minimum(cap / (r + 1e-8), 1.0)


def _as_square(logits, n):
    return jnp.asarray(logits, jnp.float32).reshape(*logits.shape[:-1], n, n)


def _project_sinkhorn(logits, n, *, iters=20, convention="paper", grad="recompute",
                      range_cap_to=None, **_):
    if range_cap_to is not None:
        logits = range_cap(logits, range_cap_to)
    return sinkhorn(_as_square(logits, n), iters, convention=convention, grad=grad)


def _project_identity(logits, n, **_):
    return jnp.broadcast_to(jnp.eye(n, dtype=jnp.float32), (*logits.shape[:-1], n, n))


_REGISTRY: dict[str, Manifold] = {}


def register(name: str, project: Callable[..., jax.Array], *,
             num_logits: Callable[[int], int] = lambda n: n * n,
             init_logits: Callable[..., np.ndarray] = _square_init,
             exact_doubly_stochastic: bool = False, doubly_stochastic: bool = True,
             options: tuple[str, ...] = ()) -> Manifold:
    """Add a projection `project(logits[..., K], n, **options) -> [..., n, n]` under `name`.

    Options passed by the connection layer: iters, convention, grad, range_cap_to (ignore what
    you do not use). `init_logits(n, how, offdiag_logit)` as in `Manifold`.
    """
    if not name or not isinstance(name, str):
        raise ValueError(f"manifold name {name!r} must be a non-empty string")
    manifold = Manifold(name, project, num_logits, init_logits, exact_doubly_stochastic,
                        doubly_stochastic, tuple(options))
    _REGISTRY[name] = manifold
    return manifold


def get(name: str) -> Manifold:
    """The registered manifold called `name` (ValueError naming the allowed ones otherwise)."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"manifold={name!r}; allowed: {', '.join(names())}") from None


def names() -> list[str]:
    return sorted(_REGISTRY)


register("sinkhorn", _project_sinkhorn)
register("mhc_lite", lambda logits, n, **_: mhc_lite(logits, n),
         num_logits=math.factorial, init_logits=_lite_init, exact_doubly_stochastic=True)
register("orthostochastic", lambda logits, n, **_: orthostochastic(_as_square(logits, n)),
         init_logits=_ortho_init, exact_doubly_stochastic=True)
register("identity", _project_identity, num_logits=lambda n: 0, init_logits=_identity_init,
         exact_doubly_stochastic=True)
register("unconstrained", lambda logits, n, **_: _as_square(logits, n),
         init_logits=_unconstrained_init, doubly_stochastic=False)
register("go_mhc", lambda logits, n, go_block=GO_BLOCK, **_: go_mhc(logits, n, go_block),
         num_logits=_go_num_logits, init_logits=_go_init, exact_doubly_stochastic=True,
         options=("go_block",))
register("spectral_sphere", lambda logits, n, **_: spectral_sphere(logits, n),
         num_logits=lambda n: (n - 1) ** 2, init_logits=_shc_init, doubly_stochastic=False)
register("kromhc", lambda logits, n, **_: kromhc(logits, n),
         num_logits=lambda n: 2 * _kron_factors(n), init_logits=_kromhc_init,
         exact_doubly_stochastic=True)
