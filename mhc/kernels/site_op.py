"""Fused mHC site as two kernels (input path, output path), each with a kernel backward.

  input path   streams [M, N, C] -> RMS norm over vec(x) [D] + projection by phi [D, Z]
               + alpha/bias -> H_pre = sigmoid + pre_eps, H_post = 2·sigmoid, H_res = Sinkhorn
               -> branch input H_pre·x [M, C]
  output path  H_res·x + H_postᵀ·F_out -> new streams [M, N, C]
Same parameter layout and semantics as `mhc.connections` (phi [D, Z], bias [Z], alpha [3],
segments [pre, post, res]; fp32 coefficient path; branch input and new streams in the streams'
dtype, so bf16 streams work with fp32 coefficients). Shapes: `site_layout.py`.

Here: the checks, the padding, the per-token-shard wrapping and the custom VJPs, the same on
every backend. The kernels come from the target's site module (`backends.TABLE`), which holds
BACKEND (its name in errors), ROWS (token rows per program it requires, or None: any multiple of
8), MAX_LOGITS (the most Zp it takes, or None) and four functions on the padded arrays:
  input_fwd(s, x, phi, gate, bias) -> (b, pre, post, res, u, r)
  input_bwd(s, x, phi, gate, bias, u, r, gb, gpre, gpost, gres) -> (gx, glog)
  output_fwd(s, x, f, post, res) -> new
  output_bwd(s, x, f, post, res, g) -> (gx, gf, gpost, gres)
u `[Mp, Zp]` (the projection scaled by 1/rms) and r `[Mp, 1]` (1/rms) are all the input path
saves for its backward beyond the streams. Left to XLA on purpose: the weight gradients (d phi =
vec(x)ᵀ · d proj, a plain [D, M] x [M, Zp] matmul, and the sums over tokens for d bias / d gate),
which XLA already runs at matmul speed.
"""
from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp

from mhc import sharding
from mhc.kernels import backends
from mhc.kernels.layout import F32
from mhc.kernels.site_layout import Static, block_rows, chunk_width
from mhc.maps import Maps, call_branch

HIGHEST = jax.lax.Precision.HIGHEST


def fusable(spec) -> bool:
    """Whether the fused kernels implement this connection exactly: dynamic mHC with the
    Sinkhorn manifold, all three maps learned, a gradient the kernels compute exactly."""
    return (spec.kind == "mhc" and spec.manifold == "sinkhorn" and spec.dynamic
            and len(spec.learned_maps) == 3 and spec.sinkhorn_grad in ("recompute", "autodiff")
            and spec.sinkhorn_range_cap is None)


def apply_site(params: dict, streams_xNxC: jax.Array, branch: Callable[[jax.Array], jax.Array],
               spec, *, block_m: int | None = None, target: str | None = None,
               has_aux: bool = False):
    """`H_res·x + H_postᵀ·branch(H_pre·x)` for a fusable mHC `spec` -> (new streams, Maps), or
    with `has_aux` (a branch returning (output, aux)) -> (new streams, Maps, aux).

    block_m: token rows per kernel program (multiple of 8; default min(64, M rounded up to a power
    of two); always 64 on Mosaic GPU). target: one of `backends.TARGETS` (None = the default of
    the platform in context). Under a multi-device mesh the kernels run per shard of the leading
    (batch) dimension (`sharding.per_token_shard`); the branch runs outside them, on the mesh as
    the model shards it."""
    if not fusable(spec):
        raise ValueError(f"connection kind={spec.kind!r} manifold={spec.manifold!r} is not "
                         "fused; allowed: dynamic mhc with the sinkhorn manifold")
    target = backends.resolve(target).name
    kernels = backends.implementation(target, "site")
    *batch, n, c = streams_xNxC.shape
    if not batch:
        raise ValueError(f"streams shape {streams_xNxC.shape}; expected [..., N, C] with at "
                         f"least one token dimension")
    mesh = jax.sharding.get_abstract_mesh()  # the kernels see one token shard's rows
    shards = 1 if mesh.empty else math.prod(mesh.shape[a] for a in sharding.token_axes(
        batch[0], mesh))
    m_shard = math.prod(batch) // shards
    tc = chunk_width(c, target)
    s = Static(n=n, c=c, cp=-(-c // tc) * tc, tc=tc,
               block_m=block_rows(m_shard, block_m, kernels.ROWS, kernels.BACKEND),
               iters=spec.sinkhorn_iters, convention=spec.sinkhorn_convention, eps=1e-6,
               pre_eps=float(spec.pre_eps), norm_eps=float(spec.norm_eps), target=target)
    if kernels.MAX_LOGITS is not None and s.zp > kernels.MAX_LOGITS:
        raise ValueError(f"n_streams={n}; the {kernels.BACKEND} site kernels take at most "
                         f"{kernels.MAX_LOGITS} logits 2n + n^2 "
                         f"(n <= {math.isqrt(kernels.MAX_LOGITS + 1) - 1})")
    p = 2 * n + n * n
    phi = jnp.pad(params["phi"].reshape(n, c, p), ((0, 0), (0, s.cp - c), (0, s.zp - p)))
    alpha = params["alpha"]
    gate = jnp.concatenate([jnp.full((n,), alpha[0]), jnp.full((n,), alpha[1]),
                            jnp.full((n * n,), alpha[2]), jnp.zeros((s.zp - p,), jnp.float32)])
    bias = jnp.pad(params["bias"], (0, s.zp - p))
    rank = len(batch)
    b, pre, post, res = sharding.per_token_shard(
        functools.partial(_input_shard, s), batch[0], (rank + 2, None, None, None),
        (rank + 1, rank + 1, rank + 1, rank + 2))(
            streams_xNxC, phi.reshape(n * s.cp, s.zp), gate, bias)
    branch_out, aux = call_branch(branch, b, has_aux)
    new, = sharding.per_token_shard(
        functools.partial(_output_shard, s), batch[0], (rank + 2, rank + 1, rank + 1, rank + 2),
        (rank + 2,))(streams_xNxC, branch_out, post, res)
    maps = Maps(pre, post, res)
    return (new, maps, aux) if has_aux else (new, maps)


def _rows(s: Static, streams_xNxC: jax.Array) -> jax.Array:
    """Streams `[..., N, C]` -> the kernels' padded rows `[Mp, N*Cp]`."""
    m = math.prod(streams_xNxC.shape[:-2])
    mp = -(-m // s.block_m) * s.block_m
    x = jnp.pad(streams_xNxC.reshape(m, s.n, s.c), ((0, mp - m), (0, 0), (0, s.cp - s.c)))
    return x.reshape(mp, s.n * s.cp)


def _input_shard(s: Static, streams_xNxC, phi, gate, bias):
    """One shard's input path: (branch input [..., C], pre [..., N], post [..., N],
    res [..., N, N])."""
    *batch, n, c = streams_xNxC.shape
    m = math.prod(batch)
    b, pre, post, res = fused_input(s, _rows(s, streams_xNxC), phi, gate, bias)
    return (b[:m, :c].reshape(*batch, c), pre[:m, :n].reshape(*batch, n),
            post[:m, :n].reshape(*batch, n), res[:m, :n * n].reshape(*batch, n, n))


def _output_shard(s: Static, streams_xNxC, branch_out, post, res):
    """One shard's output path: the new streams [..., N, C]."""
    *batch, n, c = streams_xNxC.shape
    m = math.prod(batch)
    mp = -(-m // s.block_m) * s.block_m
    f = jnp.pad(branch_out.reshape(m, c), ((0, mp - m), (0, s.cp - c)))
    post = jnp.pad(post.reshape(m, n), ((0, mp - m), (0, s.np_ - n)))
    res = jnp.pad(res.reshape(m, n * n), ((0, mp - m), (0, s.qp - n * n)))
    new = fused_output(s, _rows(s, streams_xNxC), f, post, res)
    return (new.reshape(mp, n, s.cp)[:m, :, :c].reshape(*batch, n, c),)


def _kernels(s: Static):
    return backends.implementation(s.target, "site")


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def fused_input(s: Static, x_MxD, phi_DxZ, gate_Z, bias_Z):
    """Padded core: streams `[Mp, N*Cp]`, phi `[N*Cp, Zp]`, gate/bias `[Zp]` -> (branch input
    `[Mp, Cp]`, pre `[Mp, Np]`, post `[Mp, Np]`, res `[Mp, Qp]` (row-major N x N))."""
    return tuple(_kernels(s).input_fwd(s, x_MxD, phi_DxZ, gate_Z, bias_Z)[:4])


def _fused_input_fwd(s, x, phi, gate, bias):
    b, pre, post, res, u, r = _kernels(s).input_fwd(s, x, phi, gate, bias)
    return (b, pre, post, res), (x, phi, gate, bias, u, r)


def _fused_input_bwd(s, saved, cts):
    x, phi, gate, bias, u, r = saved
    gb, gpre, gpost, gres = cts
    gx, glog = _kernels(s).input_bwd(s, x, phi, gate, bias, u, r, gb, gpre, gpost, gres)
    # weight gradients: plain XLA matmul / reductions over tokens
    gphi = jnp.dot(x.astype(F32).T, glog * gate * r, precision=HIGHEST)
    return gx, gphi, jnp.sum(glog * u, axis=0), jnp.sum(glog, axis=0)


fused_input.defvjp(_fused_input_fwd, _fused_input_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def fused_output(s: Static, x_MxD, f_MxC, post_MxN, res_MxQ):
    """Padded core: `H_res·x + H_postᵀ·f` -> new streams `[Mp, N*Cp]` in the streams' dtype."""
    return _kernels(s).output_fwd(s, x_MxD, f_MxC, post_MxN, res_MxQ)


def _fused_output_fwd(s, x, f, post, res):
    return fused_output(s, x, f, post, res), (x, f, post, res)


def _fused_output_bwd(s, saved, g):
    return tuple(_kernels(s).output_bwd(s, *saved, g))


fused_output.defvjp(_fused_output_fwd, _fused_output_bwd)
