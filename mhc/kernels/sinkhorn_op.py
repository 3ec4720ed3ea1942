"""Sinkhorn as a Pallas kernel: forward and a backward that recomputes the iterates on chip.

Layout (lane-dense, "token-minor"): the logits of M tokens are carried as `[N*N, M]`; block
`(Qp, TM)` with Qp = N*N rounded up to a power of two (Triton needs power-of-two tensors; Mosaic
accepts a block dim equal to the array dim) and TM a multiple of 128 by default (TPU lane width).
Every matrix entry (i, j) is then one `[1, TM]` row, and the kernel bodies below run the entry
math of `entry_math.py` on those rows.

Backward: nothing is stored between forward and backward but the logits; the backward kernel
recomputes the iterates (`entry_math.sinkhorn_entries_vjp`), so no iterate is kept in HBM.

Backends: the bodies here are `pl.pallas_call`-style (refs in, refs out, `pl.BlockSpec`s over a
1-D grid of token blocks); the target's Sinkhorn module (`backends.TABLE`) launches them:
`call(kernel, *, out_shape, grid, in_specs, out_specs, name, target)`, as `pl.pallas_call`
(`sinkhorn_pallas.py`) or through shared memory on Mosaic GPU (`sinkhorn_mosaic_gpu.py`).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from mhc import manifolds, sharding
from mhc.kernels import backends
from mhc.kernels.entry_math import sinkhorn_entries, sinkhorn_entries_vjp
from mhc.kernels.layout import F32, check_block_m


# ------------------------------------------------------------------------------ kernels
def _load_rows(ref, n):
    return [[ref[pl.ds(i * n + j, 1), :].astype(F32) for j in range(n)] for i in range(n)]


def _store_rows(ref, e):
    n = len(e)
    ref[...] = jnp.zeros(ref.shape, ref.dtype)  # padding rows: defined zeros
    for i in range(n):
        for j in range(n):
            ref[pl.ds(i * n + j, 1), :] = e[i][j].astype(ref.dtype)


def _fwd_kernel(x_ref, o_ref, *, n, iters, convention, eps):
    _store_rows(o_ref, sinkhorn_entries(_load_rows(x_ref, n), iters, convention, eps))


def _bwd_kernel(x_ref, g_ref, dx_ref, *, n, iters, convention, eps):
    dx = sinkhorn_entries_vjp(_load_rows(x_ref, n), _load_rows(g_ref, n), iters, convention, eps)
    _store_rows(dx_ref, dx)


def _call(kernel, out_rows, args, block_m, target, **static):
    """`kernel` over `[Qp, Mp]` arrays in `(Qp, block_m)` blocks -> fp32 `[out_rows, Mp]`."""
    qp, mp = args[0].shape
    spec = pl.BlockSpec((qp, block_m), lambda m: (0, m))
    return backends.implementation(target, "sinkhorn").call(
        functools.partial(kernel, **static),
        out_shape=jax.ShapeDtypeStruct((out_rows, mp), F32),
        grid=(mp // block_m,), in_specs=[spec] * len(args), out_specs=spec,
        name=kernel.__name__.strip("_"), target=target)(*args)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4, 5, 6))
def _sinkhorn_t(x_QxM, n, iters, convention, eps, block_m, target):
    return _call(_fwd_kernel, x_QxM.shape[0], (x_QxM,), block_m, target, n=n, iters=iters,
                 convention=convention, eps=eps)


def _sinkhorn_t_fwd(x_QxM, n, iters, convention, eps, block_m, target):
    return _sinkhorn_t(x_QxM, n, iters, convention, eps, block_m, target), x_QxM


def _sinkhorn_t_bwd(n, iters, convention, eps, block_m, target, x_QxM, g_QxM):
    return (_call(_bwd_kernel, x_QxM.shape[0], (x_QxM, g_QxM), block_m, target, n=n,
                  iters=iters, convention=convention, eps=eps),)


_sinkhorn_t.defvjp(_sinkhorn_t_fwd, _sinkhorn_t_bwd)


def sinkhorn(logits: jax.Array, iters: int = 20, *, convention: str = "paper",
             eps: float = 1e-6, block_m: int = 128, target: str | None = None) -> jax.Array:
    """Pallas Sinkhorn of `logits[..., N, N]` -> fp32 `[..., N, N]`; same values and gradient as
    `mhc.manifolds.sinkhorn(..., grad="recompute")`. `target`: one of `backends.TARGETS` (None =
    the default of the platform in context: interpret mode on CPU). Under a multi-device mesh it
    runs per shard of the leading dimension (`mhc.sharding.per_token_shard`)."""
    if convention not in manifolds.CONVENTIONS:  # the conventions of the reference
        raise ValueError(f"sinkhorn convention={convention!r}; allowed: "
                         f"{', '.join(manifolds.CONVENTIONS)}")
    if not isinstance(iters, int) or iters < 1:
        raise ValueError(f"sinkhorn iters={iters!r}; must be an integer >= 1")
    if logits.ndim < 2 or logits.shape[-1] != logits.shape[-2]:
        raise ValueError(f"sinkhorn logits shape {logits.shape}; expected [..., N, N]")
    target = backends.resolve(target).name
    check_block_m(block_m)

    def local(logits):  # one shard's tokens (all of them without a mesh)
        *batch, n, _ = logits.shape
        x = jnp.asarray(logits, F32).reshape(-1, n * n).T  # [N*N, M]
        m = x.shape[1]
        qp, mp = pl.next_power_of_2(n * n), pl.cdiv(m, block_m) * block_m
        x = jnp.pad(x, ((0, qp - n * n), (0, mp - m)))
        h = _sinkhorn_t(x, n, iters, convention, float(eps), block_m, target)
        return (h[:n * n, :m].T.reshape(*batch, n, n),)

    if logits.ndim == 2:
        return local(logits)[0]
    return sharding.per_token_shard(local, logits.shape[0], (logits.ndim,), (logits.ndim,))(
        logits)[0]
