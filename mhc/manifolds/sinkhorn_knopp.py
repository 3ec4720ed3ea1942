"""Sinkhorn-Knopp onto the Birkhoff polytope (paper Eq. 9): the mHC paper's manifold.

Letters (see `mhc`'s docstring): N streams, Y logits of H_res (N*N here).
Approximately doubly stochastic: the row sums (the forward gain) are exact, the column sums
carry the truncation error of `iters` iterations.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from mhc.manifolds.base import Manifold, as_square
from mhc.manifolds.sinkhorn_grads import BY_GRAD, GRADS
from mhc.manifolds.sinkhorn_iterations import CONVENTIONS

ITERS = 20  # the paper's t_max
CONVENTION, GRAD = CONVENTIONS[0], GRADS[0]  # the paper's ordering; its kernel's backward


def sinkhorn(logits: jax.Array, iters: int = ITERS, *, convention: str = CONVENTION,
             grad: str = GRAD, eps: float = 1e-6) -> jax.Array:
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
    return BY_GRAD[grad](jnp.asarray(logits, jnp.float32), iters, convention, eps)


def range_cap(logits_xY: jax.Array, cap: float) -> jax.Array:
    """Range-capped logits (RRCS, range-capped Sinkhorn): per matrix (last axis, all Y logits),
    `r = max - min`, `s = min(cap / (r + 1e-8), 1)`, returns `s · logits` — rescaled, not
    clamped, and `s` is differentiable. Bounding the logit range bounds how far the start of
    Sinkhorn is from uniform, so 20 iterations converge and the -8 identity init's saturated
    exponentials (zero gradient) come back into range."""
    z = jnp.asarray(logits_xY, jnp.float32)
    r = z.max(-1, keepdims=True) - z.min(-1, keepdims=True)
    return z * jnp.minimum(cap / (r + 1e-8), 1.0)


def project(logits_xY: jax.Array, n: int, *, sinkhorn_iters: int = ITERS,
            sinkhorn_convention: str = CONVENTION, sinkhorn_grad: str = GRAD,
            sinkhorn_range_cap: float | None = None) -> jax.Array:
    """The site's H_res: `sinkhorn` of the (range-capped, where `sinkhorn_range_cap` is set)
    logits `[..., N*N]` seen as `[..., N, N]`."""
    if sinkhorn_range_cap is not None:
        logits_xY = range_cap(logits_xY, sinkhorn_range_cap)
    return sinkhorn(as_square(logits_xY, n), sinkhorn_iters, convention=sinkhorn_convention,
                    grad=sinkhorn_grad)


# columns carry the truncation error: row sums and signs are what it promises exactly
SINKHORN = Manifold("sinkhorn", project, guarantees=("row_sums_one", "non_negative"))
