"""The backward passes of Sinkhorn-Knopp that keep little for the backward (`GRADS`).

Letters (see `mhc`'s docstring): N streams, M tokens (every batch entry, flattened).
  recompute  exact gradient of the truncated iteration; keeps only the logits and re-runs the
             iterations inside the backward (the paper's kernel)
  implicit   gradient of the exact projection at the output (Neumann series, no re-run)
  autodiff   plain backprop through the loop (keeps every iterate; no custom rule needed)
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from mhc.manifolds.sinkhorn_iterations import (paper_iteration, sinkhorn_forward, tokens_first,
                                               tokens_last)

GRADS = ("recompute", "implicit", "autodiff")


def sinkhorn_paper_vjp(x_xNxN: jax.Array, g_xNxN: jax.Array, iters: int) -> jax.Array:
    """VJP of `sinkhorn_paper` by re-running it: the exact gradient of the truncated iteration.

    A log-domain normalisation y = z - logsumexp(z) has the VJP dz = g - exp(y) · sum(g), so a
    step needs only its output. The re-run keeps one iterate per iteration (the column-normalised
    one; the row step is recomputed from it), `iters x N x N` floats per token, where autodiff of
    the loop keeps several per half step.
    """
    log_h, cols = jax.lax.scan(lambda log_m, _: paper_iteration(log_m),
                               tokens_last(x_xNxN), None, length=iters, unroll=2)
    g = tokens_last(g_xNxN) * jnp.exp(log_h)  # through H = exp(log_h)

    def backward(g, cols):
        row_m = jax.nn.softmax(cols, axis=1)  # exp of the row step's output (stable)
        g = g - row_m * g.sum(1, keepdims=True)  # row step
        return g - jnp.exp(cols) * g.sum(0, keepdims=True), None  # column step

    g, _ = jax.lax.scan(backward, g, cols, reverse=True, unroll=2)
    return tokens_first(g, x_xNxN.shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def sinkhorn_recompute(x, iters, convention, eps):
    return sinkhorn_forward(x, iters, convention, eps)


def _recompute_fwd(x, iters, convention, eps):
    return sinkhorn_forward(x, iters, convention, eps), x  # keep only the logits


def _recompute_bwd(iters, convention, eps, x, g):
    # Re-run the iterations inside the backward: the iterates live only while this site's
    # gradient is computed, so what is held from forward to backward does not grow with `iters`.
    # The barrier ties the re-run to the incoming cotangent, so XLA can neither merge it with the
    # forward (CSE) nor hoist every site's re-run to the start of the backward.
    x, g = jax.lax.optimization_barrier((x, g))
    if convention == "paper":
        return (sinkhorn_paper_vjp(x, g, iters),)
    _, vjp = jax.vjp(lambda x: sinkhorn_forward(x, iters, convention, eps), x)
    return vjp(g)


sinkhorn_recompute.defvjp(_recompute_fwd, _recompute_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def sinkhorn_implicit(x, iters, convention, eps):
    return sinkhorn_forward(x, iters, convention, eps)


def _implicit_fwd(x, iters, convention, eps):
    h = sinkhorn_forward(x, iters, convention, eps)
    return h, h  # the only residual: the output itself, whatever `iters` is


def _implicit_bwd(iters, convention, eps, h_xNxN, g_xNxN):
    """Vector-Jacobian product of the exact Sinkhorn projection at its fixed point.

    With H = diag(a) exp(x) diag(b) doubly stochastic, dL/dx = H ∘ (G - u 1ᵀ - 1 vᵀ) where
    u + H v = r, Hᵀ u + v = c, r = (H∘G) 1, c = (H∘G)ᵀ 1. Eliminating v: (I - H Hᵀ) u = r - H c, whose
    right side is orthogonal to 1. We sum the Neumann series u = Σ_k (H Hᵀ)^k (r - H c) for `iters`
    terms: each term is bounded (H Hᵀ is doubly stochastic), so the gradient stays finite even when
    H is nearly a permutation and the system is singular. Accurate when the forward has converged
    (logits of order 1); no iterate is stored or recomputed.
    """
    del eps
    hg = h_xNxN * g_xNxN
    r, c = hg.sum(-1), hg.sum(-2)
    rhs = r - jnp.einsum("...ij,...j->...i", h_xNxN, c)
    hht = jnp.einsum("...ik,...jk->...ij", h_xNxN, h_xNxN)

    def body(_, carry):
        term, total = carry
        term = jnp.einsum("...ij,...j->...i", hht, term)
        return term, total + term

    _, u = jax.lax.fori_loop(0, iters - 1, body, (rhs, rhs))
    v = c - jnp.einsum("...ij,...i->...j", h_xNxN, u)
    grad = h_xNxN * (g_xNxN - u[..., :, None] - v[..., None, :])
    # deepseek_v4 returns comb^T, i.e. the projection of the transposed logits
    return (jnp.swapaxes(grad, -1, -2) if convention == "deepseek_v4" else grad,)


sinkhorn_implicit.defvjp(_implicit_fwd, _implicit_bwd)
# `sinkhorn(grad=...)` -> the function that forms that backward
BY_GRAD = {"recompute": sinkhorn_recompute, "implicit": sinkhorn_implicit,
           "autodiff": sinkhorn_forward}
