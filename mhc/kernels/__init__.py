"""Pallas kernels for mHC and when they are used.

  sinkhorn(logits, iters, convention=...)    Sinkhorn forward + recomputing backward
                                             (sinkhorn_kernel.py)
  apply_site(params, streams, branch, spec)  one mHC site through the fused input/output kernels
                                             (fused_site.py); same results as
                                             `mhc.connections.apply_site`

Selection (`ConnectionSpec.kernels` / `ModelConfig.kernels`):
  "auto"    Pallas on the platforms in AUTO_PALLAS (where the kernels were measured faster than
            XLA; none yet), the pure-JAX (XLA) path everywhere else
  "pallas"  always Pallas; on CPU that is interpret mode (slow, for tests)
  "xla"     always the pure-JAX path
  "reference" the pure-JAX path as plain einsums + autodiff (what the fast paths are tested against)
Under a multi-device mesh the kernels run per shard of the tokens (`jax.shard_map`, see
`mhc.sharding.per_token_shard`), so the compiled program holds no gather of the streams around them.
Backends (`target=`; `backend_targets()` lists a platform's, its default first): on GPU Mosaic GPU
(JAX >= 0.12: the Sinkhorn through `mosaic_gpu.py`, the site through `fused_site_mgpu.py`), else
the deprecated Triton; Mosaic on TPU; interpret modes on CPU. See `sinkhorn_kernel.py` for what
lowers and runs where.
Only dynamic mHC with the Sinkhorn manifold, all three maps learned, and the "recompute" or
"autodiff" Sinkhorn gradient (both give the exact gradient of the truncated iteration, which the
kernels compute) is fused; every other kind / option silently uses the pure-JAX path.
"""
from __future__ import annotations

import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from mhc import sharding, targets
from mhc.maps import KERNELS, MAY_FUSE, Maps, call_branch
from mhc.kernels import fused_site_mgpu
from mhc.kernels.fused_site import Static, chunk_width, fused_input, fused_output
from mhc.kernels.sinkhorn_kernel import (MOSAIC_GPU, TARGETS, backend_targets, call_options,
                                         default_target, sinkhorn)

# The platforms (`mhc.targets.current_platform()`) on which "auto" takes the kernels: only where
# benchmarks/accelerator_check.py measured them ahead of the XLA path (benchmarks/README.md records
# each run). No accelerator run has shown that yet, so "auto" is XLA everywhere; "pallas" forces
# the kernels on any platform.
AUTO_PALLAS: tuple[str, ...] = ()
DEFAULT_BLOCK_M = 64


def check_kernels(kernels: str) -> str:
    if kernels not in KERNELS:
        raise ValueError(f"kernels={kernels!r}; allowed: {', '.join(KERNELS)}")
    return kernels


def pallas_selected(kernels: str) -> bool:
    """Whether `kernels` means Pallas on the platform in context (`targets.current_platform`)."""
    check_kernels(kernels)
    return kernels == "pallas" or (kernels == "auto"
                                   and targets.current_platform() in AUTO_PALLAS)


def fusable(spec) -> bool:
    """Whether the fused kernels implement this connection exactly (see the module docstring)."""
    return (spec.kind == "mhc" and spec.manifold == "sinkhorn" and spec.dynamic
            and len(spec.learned_maps) == 3 and spec.sinkhorn_grad in ("recompute", "autodiff")
            and spec.sinkhorn_range_cap is None)


def use_fused(spec) -> bool:
    """Whether `mhc.connections.apply_site` routes this site to the fused kernels (at trace
    time): a fusable spec with "pallas", or "auto" on a platform in AUTO_PALLAS."""
    return fusable(spec) and spec.kernels in MAY_FUSE and pallas_selected(spec.kernels)


def _block_m(m: int, block_m: int | None, target: str) -> int:
    if target in MOSAIC_GPU:  # one warpgroup's wgmma takes 64 rows
        if block_m not in (None, fused_site_mgpu.TM):
            raise ValueError(f"block_m={block_m!r}; the Mosaic GPU kernels take "
                             f"{fused_site_mgpu.TM} token rows per program")
        return fused_site_mgpu.TM
    if block_m is not None:
        if not isinstance(block_m, int) or block_m < 8 or block_m % 8:
            raise ValueError(f"block_m={block_m!r}; must be a multiple of 8")
        return block_m
    return min(DEFAULT_BLOCK_M, max(8, pl.next_power_of_2(m)))


def apply_site(params: dict, streams_xNxC: jax.Array, branch: Callable[[jax.Array], jax.Array],
               spec, *, block_m: int | None = None, target: str | None = None,
               has_aux: bool = False):
    """`H_res·x + H_postᵀ·branch(H_pre·x)` for a fusable mHC `spec` -> (new streams, Maps), or
    with `has_aux` (a branch returning (output, aux)) -> (new streams, Maps, aux).

    block_m: token rows per kernel program (multiple of 8; default min(64, M rounded up to a power
    of two); always 64 on Mosaic GPU). target: one of `sinkhorn_kernel.TARGETS` (None = the
    default of the platform in context). Under a multi-device mesh the kernels run per shard of
    the leading (batch) dimension (`sharding.per_token_shard`); the branch runs outside them, on
    the mesh as the model shards it."""
    if not fusable(spec):
        raise ValueError(f"connection kind={spec.kind!r} manifold={spec.manifold!r} is not "
                         "fused; allowed: dynamic mhc with the sinkhorn manifold")
    call_options(target)  # validates
    target = target or default_target()
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
               block_m=_block_m(m_shard, block_m, target), iters=spec.sinkhorn_iters,
               convention=spec.sinkhorn_convention, eps=1e-6, pre_eps=float(spec.pre_eps),
               norm_eps=float(spec.norm_eps), target=target)
    if target in MOSAIC_GPU and s.zp > fused_site_mgpu.MAX_LOGITS:
        raise ValueError(f"n_streams={n}; the Mosaic GPU site kernels take at most "
                         f"{fused_site_mgpu.MAX_LOGITS} logits 2n + n^2 (n <= 15)")
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


__all__ = ["AUTO_PALLAS", "KERNELS", "TARGETS", "apply_site", "backend_targets", "call_options",
           "check_kernels", "default_target", "fusable", "pallas_selected", "sinkhorn", "use_fused"]
