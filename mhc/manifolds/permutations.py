"""Manifolds built from permutation matrices, exactly doubly stochastic by construction.

Letters (see `mhc`'s docstring): N streams, Y logits of H_res.
  mhc_lite  convex combination of the N! permutation matrices (mHC-lite, arXiv 2601.05732), Y = N!
  kromhc    Kronecker product of log2(N) 2x2 doubly stochastic factors (KromHC, arXiv
            2601.21579): symmetric, N a power of two, Y = 2 log2(N)
"""
from __future__ import annotations

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np

from mhc.manifolds.base import DOUBLY_STOCHASTIC, Manifold, soft_identity_diagonal


# ------------------------------------------------------------------------------- mHC-lite
@functools.lru_cache(maxsize=None)
def permutation_matrices(n: int) -> np.ndarray:
    """All n! permutation matrices `[n!, n, n]`, identity first (itertools order)."""
    perms = list(itertools.permutations(range(n)))
    return np.stack([np.eye(n, dtype=np.float32)[list(p)] for p in perms])


def mhc_lite(logits_xY: jax.Array, n: int) -> jax.Array:
    """mHC-lite: `softmax(logits)[k]`-weighted sum of the n! permutation matrices. Exact.
    logits `[..., n!]` -> `[..., n, n]`, fp32."""
    weights = jax.nn.softmax(jnp.asarray(logits_xY, jnp.float32), axis=-1)
    return jnp.einsum("...k,kij->...ij", weights, jnp.asarray(permutation_matrices(n)))


def _lite_init(n: int, how: str, offdiag_logit: float) -> np.ndarray:
    """Logit 0 on the identity and `offdiag_logit` on the n! - 1 other permutations (the
    official init is -8), or all 0 ("uniform": H = J/n)."""
    k = math.factorial(n)
    if how == "identity":
        return np.array([0.0] + [offdiag_logit] * (k - 1), np.float32)
    return np.zeros(k, np.float32)


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


# --------------------------------------------------------------------------------- KromHC
def kron_factors(n: int) -> int:
    """k with n = 2^k: KromHC's number of 2x2 factors (ValueError for another n)."""
    if not isinstance(n, int) or n < 1 or n & (n - 1):
        raise ValueError(f"manifold='kromhc' needs n_streams a power of two (1, 2, 4, 8, ...); "
                         f"got n_streams={n!r}")
    return n.bit_length() - 1


def kromhc(logits_xY: jax.Array, n: int) -> jax.Array:
    """KromHC (arXiv 2601.21579): `H = U_1 ⊗ U_2 ⊗ ... ⊗ U_k` for n = 2^k, each factor
    `U_k = [[p_k, 1 - p_k], [1 - p_k, p_k]]` with `p_k = softmax(logits[2k:2k+2])[0]`; U_1 is the
    outermost factor (it acts on the most significant bit of the stream index), as in the
    authors' code. Exactly doubly stochastic and symmetric with 2k logits per token, instead of
    mHC-lite's n!. logits `[..., 2k]` -> H `[..., n, n]`, fp32."""
    k = kron_factors(n)
    z = jnp.asarray(logits_xY, jnp.float32)
    batch = z.shape[:-1]
    p = jax.nn.softmax(z.reshape(*batch, k, 2), axis=-1)[..., 0]  # [..., k]
    h = jnp.ones((*batch, 1, 1), jnp.float32)
    for i in range(k):
        q = p[..., i, None, None]
        u = q * jnp.eye(2, dtype=jnp.float32) + (1 - q) * jnp.eye(2, dtype=jnp.float32)[::-1]
        m = h.shape[-1]  # kron(h, u)[2a + c, 2b + d] = h[a, b] u[c, d]
        h = jnp.einsum("...ab,...cd->...acbd", h, u).reshape(*batch, 2 * m, 2 * m)
    return h


def _kromhc_init(n: int, how: str, offdiag_logit: float) -> np.ndarray:
    """Per factor the logits [0, offdiag_logit] (the authors' init is [0, -8]: p ≈ 0.9997,
    H ≈ I) or [0, 0] (p = 1/2 in every factor: H = J/n)."""
    k = kron_factors(n)
    if how == "identity":
        return np.tile(np.array([0.0, offdiag_logit], np.float32), k)
    return np.zeros(2 * k, np.float32)


def kromhc_logit_matching_sinkhorn(n: int, offdiag_logit: float) -> float:
    """The KromHC per-factor logit L' (factor init [0, L']) whose initial H_res has the diagonal of
    Sinkhorn's soft identity with logits 0 / `offdiag_logit`: the diagonal of a Kronecker product
    of k factors with p = 1 / (1 + e^L') is p^k, so p = a^(1/k), a = 1 / (1 + (n-1)·e^L)."""
    k = kron_factors(n)
    a = soft_identity_diagonal(n, offdiag_logit)
    p = a ** (1.0 / max(k, 1))
    return math.log((1.0 - p) / p)


MHC_LITE = Manifold("mhc_lite", mhc_lite, count=math.factorial, initial_logits=_lite_init,
                    guarantees=DOUBLY_STOCHASTIC, sinkhorn_start=lite_logit_matching_sinkhorn)
KROMHC = Manifold("kromhc", kromhc, count=lambda n: 2 * kron_factors(n),
                  initial_logits=_kromhc_init, guarantees=(*DOUBLY_STOCHASTIC, "symmetric"),
                  sinkhorn_start=kromhc_logit_matching_sinkhorn)
