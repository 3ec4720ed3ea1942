"""Stability diagnostics of stream-mixing maps (paper Section 4, "Amax Gain Magnitude").

For a map H `[..., N, N]` applied as `new_i = sum_j H[i, j] x_j`:
  forward gain  = max_i sum_j |H[i, j]|   (max absolute row sum: worst-case signal amplification)
  backward gain = max_j sum_i |H[i, j]|   (max absolute column sum: worst-case gradient amplification)
A doubly stochastic map has both gains exactly 1, and so has any product of such maps.

Those gains say nothing about whether the streams stay different: a doubly stochastic map fixes
the all-ones vector 1 (the streams' common part), so what it does to the streams' independent
information is its action on the mean-zero subspace 1⊥. `mean_zero_gain` measures that (1 for a
permutation, 0 for J/N, which averages the streams into copies of their mean), and
`stream_diversity` how different the streams themselves are.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


def _stacked(pair) -> jax.Array:
    return jnp.stack([jnp.asarray(v) for v in pair])


def _worst(pair) -> jax.Array:
    """The largest value of either field, a scalar."""
    return jnp.max(_stacked(pair))


# Named pairs: they unpack as the tuples they used to be, and compose with jnp: `jnp.max(pair)`
# (through __jax_array__, which stacks the two fields [2, ...]) or `pair.max()` is the worse of
# the two.
class AmaxGain(NamedTuple):
    """Forward (max absolute row sum) and backward (max absolute column sum) gain, `[...]`."""
    forward: jax.Array
    backward: jax.Array
    __jax_array__ = _stacked
    max = _worst


class StochasticError(NamedTuple):
    """max |row sum - 1| and max |column sum - 1| per matrix, `[...]`."""
    row: jax.Array
    col: jax.Array
    __jax_array__ = _stacked
    max = _worst


def amax_gain(h_xNxN: jax.Array) -> AmaxGain:
    """AmaxGain(forward, backward): Amax gain magnitudes of `h[..., N, N]`, each `[...]`."""
    a = jnp.abs(jnp.asarray(h_xNxN, jnp.float32))
    return AmaxGain(a.sum(-1).max(-1), a.sum(-2).max(-1))


def composite(hs_LxNxN: jax.Array, *, cumulative: bool = False) -> jax.Array:
    """Product of per-layer maps in application order: `H[L-1] ··· H[1] H[0]`.

    hs: `[L, ..., N, N]` with layer 0 applied first. With `cumulative=True` returns `[L, ..., N, N]`
    whose entry l is the composite of layers 0..l (what the paper plots per layer).
    """
    hs = jnp.asarray(hs_LxNxN, jnp.float32)
    if hs.ndim < 3 or hs.shape[-1] != hs.shape[-2]:
        raise ValueError(f"composite expects [L, ..., N, N]; got shape {tuple(hs.shape)}")

    def step(acc, h):
        acc = jnp.matmul(h, acc, precision=jax.lax.Precision.HIGHEST)
        return acc, acc

    eye = jnp.broadcast_to(jnp.eye(hs.shape[-1], dtype=hs.dtype), hs.shape[1:])
    total, prefix = jax.lax.scan(step, eye, hs)
    return prefix if cumulative else total


def _mean_zero_basis(n: int) -> np.ndarray:
    """An orthonormal basis of 1⊥ in R^n, `[n, n-1]` (Helmert's: column k-1 is
    (1, ..., 1, -k, 0, ...) / sqrt(k (k+1)) with k ones)."""
    q = np.zeros((n, n - 1))
    for k in range(1, n):
        q[:k, k - 1], q[k, k - 1] = 1.0, -k
        q[:, k - 1] /= math.sqrt(k * (k + 1))
    return q


# Squarings in `mean_zero_gain`: after K of them the Rayleigh quotient's relative error on the top
# eigenvalue of MᵀM is at most (N-2) / (e·2^K) (worst case over the spectrum), 4e-8 for N = 4:
# below float32's resolution.
_SQUARINGS = 24


def mean_zero_gain(h_xNxN: jax.Array) -> jax.Array:
    """The largest singular value of H restricted to the mean-zero subspace 1⊥, `[...]`:
    ||P H P||_2 with P = I - J/N (J all ones), in float32.

    1 for a permutation (and I), 0 for J/N; for a symmetric doubly stochastic map |λ₂|, the
    largest |λ| but the eigenvalue 1 of the all-ones vector. For a doubly stochastic H, 1⊥ is
    invariant, so the gain of a product is at most the product of the gains: the composite's
    gain says how much of the streams' differences survives depth. 0 for N = 1 (1⊥ = {0}: a
    single stream has no mean-zero part). Relative error ~3e-7 against a float64 SVD.

    How (cheap enough to run on every token of every site at every step, in plain float32
    arithmetic: no reduced-precision matmul, no LAPACK call per 4x4 matrix): M = QᵀHQ `[N-1, N-1]` with Q an orthonormal
    basis of 1⊥ (the same singular values as P H P), scaled to unit Frobenius norm; A = MᵀM is
    squared `_SQUARINGS` times (normalised to unit trace), which converges to the projector onto
    A's top eigenspace over its dimension, so tr(A·B) is A's largest eigenvalue.
    """
    h = jnp.asarray(h_xNxN, jnp.float32)
    if h.ndim < 2 or h.shape[-1] != h.shape[-2]:
        raise ValueError(f"mean_zero_gain expects [..., N, N]; got shape {tuple(h.shape)}")
    n, r = h.shape[-1], h.shape[-1] - 1
    if r == 0:
        return jnp.zeros(h.shape[:-2], jnp.float32)
    # entries as separate [...] arrays: the tiny products become elementwise ops over the tokens,
    # which XLA fuses (batched 3x3 dots and one LAPACK call per matrix are 2-7x slower on CPU)
    q = _mean_zero_basis(n)
    hs = [[h[..., i, j] for j in range(n)] for i in range(n)]
    e = [[sum(float(q[i, a] * q[j, b]) * hs[i][j] for i in range(n) for j in range(n)
              if q[i, a] * q[j, b] != 0) for b in range(r)] for a in range(r)]  # QᵀHQ
    fro2 = sum(v * v for row in e for v in row)
    scale = jax.lax.rsqrt(jnp.where(fro2 > 0, fro2, 1.0))
    e = [[v * scale for v in row] for row in e]
    upper = [(i, k) for i in range(r) for k in range(i, r)]
    a = {(i, k): sum(e[j][i] * e[j][k] for j in range(r)) for i, k in upper}  # MᵀM, symmetric

    def at(sym, i, k):
        return sym[(min(i, k), max(i, k))]

    b = a
    for _ in range(_SQUARINGS):
        b = {(i, k): sum(at(b, i, j) * at(b, j, k) for j in range(r)) for i, k in upper}
        # tr(B²) >= tr(B)²/(N-1) = 1/(N-1), or 0 where M = 0 (B stays 0: gain 0)
        trace = sum(b[(i, i)] for i in range(r))
        trace = jnp.where(trace > 0, trace, 1.0)
        b = {key: v / trace for key, v in b.items()}
    top = sum(at(a, i, j) * at(b, j, i) for i in range(r) for j in range(r))
    return jnp.sqrt(fro2 * jnp.maximum(top, 0.0))


def stream_diversity(streams_xNxC: jax.Array) -> jax.Array:
    """How different the streams are, relative to their mean, per token `[...]`, in float32:

        D = (1/N) sum_i ||x_i - x̄||² / ||x̄||²,   x̄ = (1/N) sum_i x_i,   norms over C.

    0 when all streams are equal (also for N = 1); D = V / ||x̄||² with V the mean squared
    distance of a stream from the mean, so V / (mean ||x_i||²) = D / (1 + D). Convention where
    ||x̄|| = 0: 0 if the streams are all zero (no difference to measure), +inf otherwise (streams
    that cancel exactly: D's limit as x̄ -> 0).
    """
    x = jnp.asarray(streams_xNxC, jnp.float32)
    if x.ndim < 2:
        raise ValueError(f"stream_diversity expects [..., N, C]; got shape {tuple(x.shape)}")
    mean = x.mean(-2)
    spread = jnp.sum((x - mean[..., None, :]) ** 2, axis=-1).mean(-1)
    size = jnp.sum(mean * mean, axis=-1)
    return jnp.where(size > 0, spread / jnp.where(size > 0, size, 1.0),
                     jnp.where(spread > 0, jnp.inf, 0.0))


def doubly_stochastic_error(h_xNxN: jax.Array) -> StochasticError:
    """StochasticError(row, col): max |row sum - 1| and max |column sum - 1| per matrix, each
    `[...]`."""
    h = jnp.asarray(h_xNxN, jnp.float32)
    return StochasticError(jnp.abs(h.sum(-1) - 1).max(-1), jnp.abs(h.sum(-2) - 1).max(-1))


def negative_mass(h_xNxN: jax.Array) -> jax.Array:
    """Sum of the negative entries' magnitudes per matrix `[...]`: 0 on the Birkhoff polytope.
    With exact row and column sums (sHC's spectral sphere) it is the whole of the distance from
    being doubly stochastic, which the row / column errors do not see."""
    return jnp.sum(jnp.maximum(-jnp.asarray(h_xNxN, jnp.float32), 0.0), axis=(-2, -1))


def res_learning(res_xNxN: jax.Array, res0_NxN: jax.Array | None = None,
                 token_axes: tuple[int, ...] = ()) -> dict[str, jax.Array]:
    """How far H_res has learned away from its start, over the tokens in `token_axes`.

    res: `[..., N, N]`; res0: the site's initial map `[N, N]` (default I). Returns, reduced over
    `token_axes` (the remaining leading axes are kept):
      offdiag     1 - mean diagonal entry: the mass moved off the identity (0 at H = I,
                  1 - 1/N at J/N; for a doubly stochastic map the mean off-diagonal row mass;
                  negative when an unconstrained map's diagonal grows above 1, as HC's can)
      dist_init   mean over tokens of the Frobenius distance ||H - H0||_F
      entropy     mean entropy (nats) of the rows of |H| normalised to sum 1: 0 for a
                  permutation, log N for J/N
      token_std   standard deviation over tokens of each entry, averaged over the N² entries
                  (0 for a static map: how much the dynamic term makes H depend on the token)
    """
    res = jnp.asarray(res_xNxN, jnp.float32)
    n = res.shape[-1]
    res0 = jnp.eye(n, dtype=jnp.float32) if res0_NxN is None else jnp.asarray(res0_NxN,
                                                                               jnp.float32)
    diag = jnp.diagonal(res, axis1=-2, axis2=-1).mean(-1)  # [...]
    dist = jnp.sqrt(jnp.sum((res - res0) ** 2, axis=(-2, -1)))
    rows = jnp.abs(res)
    p = rows / jnp.maximum(rows.sum(-1, keepdims=True), 1e-30)
    entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), -1).mean(-1)
    axes = tuple(token_axes)
    return {"offdiag": 1.0 - diag.mean(axes), "dist_init": dist.mean(axes),
            "entropy": entropy.mean(axes),
            "token_std": res.std(axis=axes).mean((-2, -1)) if axes else jnp.zeros(res.shape[:-2])}


def map_stats(pre_LxBxTxN, post_LxBxTxN, res_LxBxTxNxN, res0_NxN=None) -> dict[str, jax.Array]:
    """Per-layer statistics of stacked maps `[L, B, T, ...]` (tokens averaged, or max where noted).

    Returns arrays of shape `[L]`: Amax gain of each layer's H_res (mean over tokens) and of the
    composite up to that layer (fwd/bwd), doubly-stochastic error (max over tokens), mean of H_pre,
    H_post and of H_res's diagonal, the min entry of H_res (negative means not doubly
    stochastic), the negative mass of H_res (max over tokens, `negative_mass`), and how
    far H_res has learned from `res0` (its initial map, default I; see `res_learning`):
    `res_offdiag`, `res_dist_init`, `res_entropy`, `res_token_std`; the mean-zero gain
    (`mean_zero_gain`, mean over tokens) of each layer's H_res, `mz_gain`, and of the composite
    up to that layer (per token, then the mean), `composite_mz_gain`: computed from the float32
    product, whose entries near 1/N round at ~1e-8, so it resolves gains down to ~1e-7.
    """
    fwd, bwd = amax_gain(res_LxBxTxNxN)
    comp = composite(res_LxBxTxNxN, cumulative=True)
    cfwd, cbwd = amax_gain(comp)
    row_err, col_err = doubly_stochastic_error(res_LxBxTxNxN)
    layer_axes = tuple(range(1, fwd.ndim))
    diag = jnp.diagonal(res_LxBxTxNxN, axis1=-2, axis2=-1)
    res_axes = tuple(range(1, res_LxBxTxNxN.ndim))
    learning = res_learning(res_LxBxTxNxN, res0_NxN, token_axes=layer_axes)
    return {
        "amax_fwd": fwd.mean(layer_axes), "amax_bwd": bwd.mean(layer_axes),
        "composite_fwd": cfwd.mean(layer_axes), "composite_bwd": cbwd.mean(layer_axes),
        "ds_row_err": row_err.max(layer_axes), "ds_col_err": col_err.max(layer_axes),
        "ds_neg_mass": negative_mass(res_LxBxTxNxN).max(layer_axes),
        "pre_mean": pre_LxBxTxN.mean(tuple(range(1, pre_LxBxTxN.ndim))),
        "post_mean": post_LxBxTxN.mean(tuple(range(1, post_LxBxTxN.ndim))),
        "res_diag_mean": diag.mean(tuple(range(1, diag.ndim))),
        "res_min": res_LxBxTxNxN.min(res_axes),
        **{f"res_{k}": v for k, v in learning.items()},
        "mz_gain": mean_zero_gain(res_LxBxTxNxN).mean(layer_axes),
        "composite_mz_gain": mean_zero_gain(comp).mean(layer_axes),
    }


# per-step scalars of H_res's movement: (name, per-layer stat, reduction over depth)
RES_LEARNING_SUMMARY = (
    ("h_res_offdiag", "res_offdiag", "mean"), ("h_res_offdiag_max", "res_offdiag", "max"),
    ("h_res_dist_init", "res_dist_init", "mean"), ("h_res_dist_init_max", "res_dist_init", "max"),
    ("h_res_entropy", "res_entropy", "mean"), ("h_res_token_std", "res_token_std", "mean"),
)


def summarize(stats: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Scalar run metrics from per-layer `map_stats`: worst layer, the full-depth composite, and
    depth summaries of H_res's movement (mean and worst site). Mean-zero gains (token means):
    `res_mz_gain_max` of the worst single site, `composite_mz_gain` of the full-depth composite
    (first to last site)."""
    reduce = {"mean": jnp.mean, "max": jnp.max}
    return {
        "amax_fwd": stats["composite_fwd"][-1], "amax_bwd": stats["composite_bwd"][-1],
        "amax_fwd_max": stats["composite_fwd"].max(), "amax_bwd_max": stats["composite_bwd"].max(),
        "layer_amax_fwd_max": stats["amax_fwd"].max(), "layer_amax_bwd_max": stats["amax_bwd"].max(),
        "ds_col_err_max": stats["ds_col_err"].max(), "ds_row_err_max": stats["ds_row_err"].max(),
        "ds_neg_mass_max": stats["ds_neg_mass"].max(),
        "res_mz_gain_max": stats["mz_gain"].max(),
        "composite_mz_gain": stats["composite_mz_gain"][-1],
        **{name: reduce[how](stats[key]) for name, key, how in RES_LEARNING_SUMMARY
           if key in stats},
    }
