"""The forward iterations of Sinkhorn-Knopp in its two conventions (paper Eq. 9; DeepSeek-V4).

Letters (see `mhc`'s docstring): N streams, M tokens (every batch entry, flattened).
The iterations run on a token-minor layout `[N, N, M]`: each normalisation is then a few vector
ops over M instead of a tiny [N, N] reduction per token, 2-4x faster on XLA:CPU (fwd+bwd at
M = 4096, N = 4). Same arithmetic, same results.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

CONVENTIONS = ("paper", "deepseek_v4")


def tokens_last(x_xNxN: jax.Array) -> jax.Array:
    """`[..., N, N]` -> `[N, N, M]`."""
    n = x_xNxN.shape[-1]
    return jnp.moveaxis(x_xNxN.reshape(-1, n, n), 0, -1)


def tokens_first(y_NxNxM: jax.Array, shape) -> jax.Array:
    """`[N, N, M]` -> `shape` (`[..., N, N]`), the inverse of `tokens_last`."""
    return jnp.moveaxis(y_NxNxM, -1, 0).reshape(shape)


def paper_iteration(log_m_NxNxM: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One log-domain Sinkhorn iteration of the paper: (rows-normalised output, the
    columns-normalised intermediate), both `[i, j, M]`."""
    cols = log_m_NxNxM - jax.nn.logsumexp(log_m_NxNxM, axis=0, keepdims=True)
    return cols - jax.nn.logsumexp(cols, axis=1, keepdims=True), cols


def sinkhorn_paper(x_xNxN: jax.Array, iters: int) -> jax.Array:
    """Paper Eq. 9 in the log domain: M0 = exp(x), then `iters` x (normalise columns, then rows).

    Identical to the exp-domain recursion in exact arithmetic, but safe for any logit range
    (no underflow to all-zero columns). Rows are normalised last, so row sums are exact.
    """
    def body(_, log_m):
        return paper_iteration(log_m)[0]

    return tokens_first(jnp.exp(jax.lax.fori_loop(0, iters, body, tokens_last(x_xNxN))),
                        x_xNxN.shape)


def sinkhorn_deepseek_v4(x_xNxN: jax.Array, iters: int, eps: float) -> jax.Array:
    """DeepSeek-V4 production ordering: softmax over the last axis + eps, columns once, then
    (iters - 1) x (rows, columns), eps in every denominator. V4 applies the result transposed
    (`new = comb^T x`), so we return comb^T: like the paper's map, its row sums are the exact ones.
    """
    comb = jax.nn.softmax(tokens_last(x_xNxN), axis=1) + eps  # [i, j, M]
    comb = comb / (comb.sum(0, keepdims=True) + eps)

    def body(_, c):
        c = c / (c.sum(1, keepdims=True) + eps)
        return c / (c.sum(0, keepdims=True) + eps)

    comb = jax.lax.fori_loop(0, iters - 1, body, comb)
    return jnp.swapaxes(tokens_first(comb, x_xNxN.shape), -1, -2)


def sinkhorn_forward(x_xNxN: jax.Array, iters: int, convention: str, eps: float) -> jax.Array:
    """The truncated iteration of `convention` (one of CONVENTIONS), fp32 `[..., N, N]`."""
    if convention == "paper":
        return sinkhorn_paper(x_xNxN, iters)
    return sinkhorn_deepseek_v4(x_xNxN, iters, eps)
