"""Manifolds built from an orthogonal matrix Q (a Cayley transform of a skew matrix).

Letters (see `mhc`'s docstring): N streams, Y logits of H_res.
  orthostochastic  H = Q∘Q, exactly doubly stochastic, Y = N*N
  go_mhc           generalized orthostochastic (go-mHC, arXiv 2604.02309): block sums of Q∘Q for
                   a Q of size N·s (s = go_block), exactly doubly stochastic, Y = Ns(Ns - 1)/2
  spectral_sphere  sHC (arXiv 2603.20896): J/N + a Cayley-parametrised SVD on the complement of 1;
                   row and column sums exactly 1 and spectral norm exactly 1, but entries may be
                   negative (NOT doubly stochastic), Y = (N - 1)²
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from mhc.manifolds.base import (DOUBLY_STOCHASTIC, OFF_DIAGONAL_LOGIT, Manifold, as_square,
                                soft_identity_diagonal)

GO_BLOCK = 2  # go-mHC's block size s (the authors recommend 2)
SHC_SIGMA_LOGIT = 4.0  # sHC's identity init: σ = tanh(4), H ≈ I to 2e-4


def cayley_from_triangle(z_xY: jax.Array, m: int) -> jax.Array:
    """`(I + A)⁻¹(I - A)` with A skew, its strict upper triangle (row-major) from z `[..., Y]`."""
    rows, cols = np.triu_indices(m, 1)
    a = jnp.zeros((*z_xY.shape[:-1], m, m), jnp.float32).at[..., rows, cols].set(z_xY)
    a = a - jnp.swapaxes(a, -1, -2)
    eye = jnp.eye(m, dtype=jnp.float32)
    return jnp.linalg.solve(eye + a, jnp.broadcast_to(eye - a, a.shape))


# ------------------------------------------------------------------------- orthostochastic
def orthostochastic(logits_xNxN: jax.Array) -> jax.Array:
    """H = Q∘Q with Q = (I - S)^{-1}(I + S), S the skew part of the logits. Exact; zeros give I."""
    a = jnp.asarray(logits_xNxN, jnp.float32)
    s = 0.5 * (a - jnp.swapaxes(a, -1, -2))
    eye = jnp.eye(a.shape[-1], dtype=jnp.float32)
    q = jnp.linalg.solve(eye - s, jnp.broadcast_to(eye + s, s.shape))
    return q * q


def _zeros_init(n: int, how: str, offdiag_logit: float) -> np.ndarray:
    """All logits 0: Q = I, H = I (a saddle: H's derivative is zero there)."""
    return np.zeros(n * n, np.float32)


# ---------------------------------------------------------------------------------- go-mHC
def _go_size(n: int, block: int) -> int:
    if not isinstance(block, int) or isinstance(block, bool) or block < 1:
        raise ValueError(f"go_block={block!r}; must be an integer >= 1")
    return n * block


def go_mhc(logits_xY: jax.Array, n: int, block: int = GO_BLOCK) -> jax.Array:
    """go-mHC, the generalized orthostochastic map (arXiv 2604.02309): with m = n·s (s = `block`),
    Θ `[m, m]` holds the logits in its strict upper triangle (row-major, `np.triu_indices(m, 1)`),
    `A = Θ - Θᵀ` and `Q = (I - A)(I + A)⁻¹` (Cayley: orthogonal); then
    `H[i, j] = (1/s) Σ_{k,l<s} Q[i·s + k, j·s + l]²`. Exactly doubly stochastic and non-negative;
    s = 1 is the plain orthostochastic map. Sign convention: this is the Cayley transform of
    A = Θ - Θᵀ as written in the paper; the authors' notebook solves (I - X)⁻¹(I + X) with
    X = Θ - Θᵀ, which is Qᵀ and so gives Hᵀ (tested). logits `[..., m(m-1)/2]` -> `[..., n, n]`."""
    m = _go_size(n, block)
    z = jnp.asarray(logits_xY, jnp.float32)
    batch = z.shape[:-1]
    q = cayley_from_triangle(z, m)  # (I + A)⁻¹(I - A) = (I - A)(I + A)⁻¹: the factors commute
    sq = (q * q).reshape(*batch, n, block, n, block)
    return sq.sum((-3, -1)) / block


def _go_project(logits_xY: jax.Array, n: int, *, go_block: int = GO_BLOCK) -> jax.Array:
    return go_mhc(logits_xY, n, go_block)


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


def _go_init(n: int, how: str, offdiag_logit: float, go_block: int = GO_BLOCK) -> np.ndarray:
    """Θ = 0: A = 0, Q = I, H = I exactly (the init a port of the authors' code uses). At Θ = 0
    H's derivative is zero (every entry of H is a sum of squares of entries of Q that are 0
    there), so gradient descent cannot leave it: a saddle, like the orthostochastic map's.
    With another `offdiag_logit` L, every logit is the constant c > 0 whose H has the mean
    diagonal of Sinkhorn's soft identity of logit L (`soft_identity_diagonal`): a start off the
    saddle, chosen here (the authors' init is not published)."""
    k = _go_num_logits(n, go_block)
    if offdiag_logit == OFF_DIAGONAL_LOGIT:
        return np.zeros(k, np.float32)
    c = _go_constant_for_diagonal(n, go_block, soft_identity_diagonal(n, offdiag_logit))
    return np.full(k, c, np.float32)


# ------------------------------------------------------------------------ sHC (spectral sphere)
def helmert_basis(n: int) -> np.ndarray:
    """`[n, n - 1]` orthonormal basis of the complement of 1 (the Helmert basis as sHC builds it:
    column i - 1 holds 1/sqrt(i(i+1)) in rows 0..i-1 and -i/sqrt(i(i+1)) in row i)."""
    u = np.zeros((n, n - 1), np.float64)
    for i in range(1, n):
        u[:i, i - 1] = 1.0 / math.sqrt(i * (i + 1))
        u[i, i - 1] = -i / math.sqrt(i * (i + 1))
    return u.astype(np.float32)


def spectral_sphere(logits_xY: jax.Array, n: int) -> jax.Array:
    """sHC's residual map (arXiv 2603.20896): with J = 11ᵀ/n and U_z the Helmert basis,
    `H_auth = J + U_z · U diag(σ) Vᵀ · U_zᵀ`, U and V Cayley-orthogonal `(I + A)⁻¹(I - A)` of
    (n-1)x(n-1) skew matrices. Logits, in the authors' order: k = (n-1)(n-2)/2 for A_U's strict
    upper triangle (tanh), k for A_V's (tanh), n - 1 for σ (tanh). The authors apply H_auth
    transposed (`new[t] = Σ_s H_auth[s, t] x[s]`), so this returns `H = H_authᵀ` for our
    `new_i = Σ_j H[i, j] x_j`. Row and column sums are exactly 1 and the singular values are
    {1} ∪ {|σ_i|}: spectral norm exactly 1. Entries may be negative: it is NOT doubly stochastic.
    The authors also learn a scale γ on each tanh of the rotations (initialised 1); here γ = 1.
    logits `[..., (n-1)²]` -> `[..., n, n]`, fp32."""
    z = jnp.asarray(logits_xY, jnp.float32)
    if n == 1:
        return jnp.ones((*z.shape[:-1], 1, 1), jnp.float32)
    m = n - 1
    k = m * (m - 1) // 2
    u = cayley_from_triangle(jnp.tanh(z[..., :k]), m)
    v = cayley_from_triangle(jnp.tanh(z[..., k:2 * k]), m)
    sigma = jnp.tanh(z[..., 2 * k:])
    helmert = jnp.asarray(helmert_basis(n))
    core = jnp.einsum("...ab,...b,...cb->...ca", u, sigma, v)  # (U diag σ Vᵀ)ᵀ = V diag σ Uᵀ
    return 1.0 / n + jnp.einsum("ia,...ab,jb->...ij", helmert, core, helmert)


def _shc_init(n: int, how: str, offdiag_logit: float) -> np.ndarray:
    """Rotation logits 0 (U = V = I), so `H = J + tanh(b)(I - J)` with b the σ logits:
    "identity" takes the authors' b = 4; with another `offdiag_logit` L, b is chosen so that H
    equals Sinkhorn's symmetric start of that logit (diagonal 1 / (1 + (n-1)e^L)), the soft
    identity of the CPU studies; "uniform" is b = 0, H = J."""
    m = n - 1
    k = m * (m - 1) // 2
    if how == "uniform":
        return np.zeros(m * m, np.float32)
    b = SHC_SIGMA_LOGIT
    if offdiag_logit != OFF_DIAGONAL_LOGIT:
        diag = soft_identity_diagonal(n, offdiag_logit)
        b = math.atanh((diag - 1.0 / n) / (1.0 - 1.0 / n))
    return np.concatenate([np.zeros(2 * k, np.float32), np.full(m, b, np.float32)])


ORTHOSTOCHASTIC = Manifold("orthostochastic",
                           lambda logits, n: orthostochastic(as_square(logits, n)),
                           initial_logits=_zeros_init, guarantees=DOUBLY_STOCHASTIC,
                           inits=("identity",), sinkhorn_start=None)
GO_MHC = Manifold("go_mhc", _go_project, count=_go_num_logits, initial_logits=_go_init,
                  guarantees=DOUBLY_STOCHASTIC, inits=("identity",))
SPECTRAL_SPHERE = Manifold("spectral_sphere", spectral_sphere, count=lambda n: (n - 1) ** 2,
                           initial_logits=_shc_init, doubly_stochastic=False,
                           guarantees=("row_sums_one", "column_sums_one", "spectral_norm_one"))
