"""Stability diagnostics of stream-mixing maps (paper Section 4, "Amax Gain Magnitude").

For a map H `[..., N, N]` applied as `new_i = sum_j H[i, j] x_j`:
  forward gain  = max_i sum_j |H[i, j]|   (max absolute row sum: worst-case signal amplification)
  backward gain = max_j sum_i |H[i, j]|   (max absolute column sum: worst-case gradient amplification)
A doubly stochastic map has both gains exactly 1, and so has any product of such maps.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


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
    `res_offdiag`, `res_dist_init`, `res_entropy`, `res_token_std`.
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
    }


# per-step scalars of H_res's movement: (name, per-layer stat, reduction over depth)
RES_LEARNING_SUMMARY = (
    ("h_res_offdiag", "res_offdiag", "mean"), ("h_res_offdiag_max", "res_offdiag", "max"),
    ("h_res_dist_init", "res_dist_init", "mean"), ("h_res_dist_init_max", "res_dist_init", "max"),
    ("h_res_entropy", "res_entropy", "mean"), ("h_res_token_std", "res_token_std", "mean"),
)


def summarize(stats: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Scalar run metrics from per-layer `map_stats`: worst layer, the full-depth composite, and
    depth summaries of H_res's movement (mean and worst site)."""
    reduce = {"mean": jnp.mean, "max": jnp.max}
    return {
        "amax_fwd": stats["composite_fwd"][-1], "amax_bwd": stats["composite_bwd"][-1],
        "amax_fwd_max": stats["composite_fwd"].max(), "amax_bwd_max": stats["composite_bwd"].max(),
        "layer_amax_fwd_max": stats["amax_fwd"].max(), "layer_amax_bwd_max": stats["amax_bwd"].max(),
        "ds_col_err_max": stats["ds_col_err"].max(), "ds_row_err_max": stats["ds_row_err"].max(),
        "ds_neg_mass_max": stats["ds_neg_mass"].max(),
        **{name: reduce[how](stats[key]) for name, key, how in RES_LEARNING_SUMMARY
           if key in stats},
    }
