"""Fused mHC site as two Pallas kernels (input path, output path), each with a Pallas backward.

Dimension letters (see `mhc`'s docstring): M tokens (B*T flattened), N streams, C width, D = N*C,
Q = N*N, Z = 2N + N*N logits.
  input path   streams [M, N, C] -> RMS norm over vec(x) [D] + projection by phi [D, Z]
               + alpha/bias -> H_pre = sigmoid + pre_eps, H_post = 2·sigmoid, H_res = Sinkhorn
               -> branch input H_pre·x [M, C]
  output path  H_res·x + H_postᵀ·F_out -> new streams [M, N, C]
Same parameter layout and semantics as `mhc.connections` (phi [D, Z], bias [Z], alpha [3],
segments [pre, post, res]; fp32 coefficient path; branch input and new streams in the streams'
dtype, so bf16 streams work with fp32 coefficients).

Kernel layout: a grid over token tiles of TM rows (padded up in the wrapper); inside a tile the
streams are read in chunks of TC lanes (TC a power of two in [16, 128], 128 on TPU; C padded up to
a multiple of it when needed, never for the paper's widths). The projection is a `[TM, TC] x [TC, Zp]` matmul
per chunk accumulated in fp32 (Zp = Z rounded up to a power of two >= 16 for Triton's dot); the
per-token coefficient math runs on `[TM, 1]` columns (one column per map entry), picked out of the
`[TM, Zp]` logits with masked lane reductions (Triton cannot slice register tensors).

Backward kernels: the input-path backward recomputes the maps from the saved scaled projection u
and 1/rms ([M, Zp] + [M, 1] fp32; no stream-sized residual beyond the streams themselves) and
writes d streams and d logits; the output-path backward writes d streams, d F_out and the per-token
d H_post / d H_res reductions. Left to XLA on purpose: the weight gradients (d phi = vec(x)ᵀ · d
proj, a plain [D, M] x [M, Zp] matmul, and the sums over tokens for d bias / d gate), which XLA
already runs at matmul speed.

What has run where: all kernels run in interpret mode on CPU in the tests (values and gradients
against `mhc.connections`); their Triton (GPU) and Mosaic (TPU) lowerings are produced on CPU in
`tests/test_kernels.py` (lowering only: neither was compiled or timed on hardware here). On the
"mosaic_gpu" targets the same custom VJPs call the kernels of `fused_site_mgpu.py` instead (a
different schedule for Hopper's SMEM; same arrays in and out). Known TPU
inefficiency: the `[TM, 1]` coefficient columns use one lane of each vreg (the standalone
`mhc.kernels.sinkhorn` uses the lane-dense `[N*N, M]` layout instead). Block sizes (TM = 64,
TC <= 128, Triton num_warps = 4) are untuned guesses until measured on hardware.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from mhc.kernels import fused_site_mgpu
from mhc.kernels.sinkhorn_kernel import (MOSAIC_GPU, assemble_columns, lane_columns, nested,
                                         pallas_call, sinkhorn_entries, sinkhorn_entries_vjp)

F32 = jnp.float32
HIGHEST = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class Static:
    """Shapes and options baked into the kernels (hashable: a custom_vjp static argument)."""
    n: int
    c: int  # true width
    cp: int  # padded width (multiple of tc)
    tc: int
    block_m: int
    iters: int
    convention: str
    eps: float  # Sinkhorn eps (deepseek_v4)
    pre_eps: float
    norm_eps: float
    target: str  # one of sinkhorn_kernel.TARGETS

    @property
    def np_(self):
        return pl.next_power_of_2(self.n)

    @property
    def qp(self):
        return pl.next_power_of_2(self.n * self.n)

    @property
    def zp(self):
        """Logit columns: a power of two >= 16 (Triton's dot); 128-lane multiples on TPU."""
        p = max(16, pl.next_power_of_2(2 * self.n + self.n * self.n))
        return -(-p // 128) * 128 if self.target == "mosaic" else p


def chunk_width(c: int, target: str | None = None) -> int:
    """Lanes per stream chunk: the largest power of two in [16, 128] dividing C, else 128 or the
    next power of two above C (then C is zero-padded). Always 128 on Mosaic TPU: its compiler
    must prove every lane offset a multiple of 128 (C = 64 or 96 is padded to 128 there)."""
    if target == "mosaic":
        return 128
    for tc in (128, 64, 32, 16):
        if c % tc == 0:
            return tc
    return min(128, max(16, pl.next_power_of_2(c)))


# ----------------------------------------------------------------------------- helpers
def _chunk(ref, s: Static, n, j):
    """Chunk j (traced) of stream n (static) of a `[TM, N*Cp]` ref."""
    return ref[:, pl.ds(pl.multiple_of(n * s.cp + j * s.tc, s.tc), s.tc)]


def _maps_from_logits(logits, s: Static):
    n = s.n
    cols = lane_columns(logits, 2 * n + n * n)
    pre_s = [jax.lax.logistic(v) for v in cols[:n]]
    post_s = [jax.lax.logistic(v) for v in cols[n:2 * n]]
    return cols, pre_s, post_s


# ------------------------------------------------------------------------ input path
def _input_kernel(x_ref, phi_ref, gate_ref, bias_ref, b_ref, pre_ref, post_ref, res_ref,
                  u_ref, r_ref, *, s: Static):
    n, tm, nc = s.n, s.block_m, s.cp // s.tc

    proj = jnp.zeros((tm, s.zp), F32)
    ssq = jnp.zeros((tm, 1), F32)
    for i in range(n):
        def body(j, carry, i=i):
            ssq, proj = carry
            xs = _chunk(x_ref, s, i, j).astype(F32)
            w = phi_ref[pl.ds(pl.multiple_of(i * s.cp + j * s.tc, s.tc), s.tc), :]
            return (ssq + jnp.sum(xs * xs, axis=1, keepdims=True),
                    proj + jnp.dot(xs, w, precision=HIGHEST, preferred_element_type=F32))
        ssq, proj = jax.lax.fori_loop(0, nc, body, (ssq, proj))
    r = jax.lax.rsqrt(ssq / (n * s.c) + s.norm_eps)
    u = proj * r
    u_ref[...] = u
    r_ref[...] = r
    cols, pre_s, post_s = _maps_from_logits(u * gate_ref[...] + bias_ref[...], s)
    pre = [v + s.pre_eps for v in pre_s]
    res = sinkhorn_entries(nested(cols[2 * n:], n), s.iters, s.convention, s.eps)
    pre_ref[...] = assemble_columns(pre, s.np_)
    post_ref[...] = assemble_columns([2.0 * v for v in post_s], s.np_)
    res_ref[...] = assemble_columns([v for row in res for v in row], s.qp)

    def mix(j, _):
        acc = sum(pre[i] * _chunk(x_ref, s, i, j).astype(F32) for i in range(n))
        b_ref[:, pl.ds(pl.multiple_of(j * s.tc, s.tc), s.tc)] = acc.astype(b_ref.dtype)
        return 0
    jax.lax.fori_loop(0, nc, mix, 0)


def _input_bwd_kernel(x_ref, phi_ref, gate_ref, bias_ref, u_ref, r_ref, gb_ref, gpre_ref,
                      gpost_ref, gres_ref, gx_ref, glog_ref, *, s: Static):
    n, nc = s.n, s.cp // s.tc
    u, r, gate = u_ref[...], r_ref[...], gate_ref[...]
    cols, pre_s, post_s = _maps_from_logits(u * gate + bias_ref[...], s)
    pre = [v + s.pre_eps for v in pre_s]

    def dots(j, acc):  # d pre_i = sum_c d b · x_i
        gb = gb_ref[:, pl.ds(pl.multiple_of(j * s.tc, s.tc), s.tc)].astype(F32)
        return [a + jnp.sum(gb * _chunk(x_ref, s, i, j).astype(F32), axis=1, keepdims=True)
                for i, a in enumerate(acc)]
    dpre = jax.lax.fori_loop(0, nc, dots, [jnp.zeros_like(r) for _ in range(n)])
    gpre, gpost, gres = gpre_ref[...], gpost_ref[...], gres_ref[...]
    gpre, gpost = lane_columns(gpre, n), lane_columns(gpost, n)
    dl_pre = [(dpre[i] + gpre[i]) * v * (1.0 - v) for i, v in enumerate(pre_s)]
    dl_post = [2.0 * gpost[i] * v * (1.0 - v) for i, v in enumerate(post_s)]
    dl_res = sinkhorn_entries_vjp(nested(cols[2 * n:], n), nested(lane_columns(gres, n * n), n),
                                  s.iters, s.convention, s.eps)
    glog = assemble_columns(dl_pre + dl_post + [v for row in dl_res for v in row], s.zp)
    glog_ref[...] = glog
    gu = glog * gate
    gproj = gu * r
    coef = -jnp.sum(gu * u, axis=1, keepdims=True) * r * r / (n * s.c)  # through 1/rms

    for i in range(n):
        def body(j, _, i=i):
            xs = _chunk(x_ref, s, i, j).astype(F32)
            w = phi_ref[pl.ds(pl.multiple_of(i * s.cp + j * s.tc, s.tc), s.tc), :]
            gb = gb_ref[:, pl.ds(pl.multiple_of(j * s.tc, s.tc), s.tc)].astype(F32)
            g = jax.lax.dot_general(gproj, w, (((1,), (1,)), ((), ())), precision=HIGHEST,
                                    preferred_element_type=F32)
            g = g + coef * xs + pre[i] * gb
            gx_ref[:, pl.ds(pl.multiple_of(i * s.cp + j * s.tc, s.tc), s.tc)] = (
                g.astype(gx_ref.dtype))
            return 0
        jax.lax.fori_loop(0, nc, body, 0)


def _row_spec(s: Static, width):
    return pl.BlockSpec((s.block_m, width), lambda m: (m, 0))


def _full_spec(shape):
    return pl.BlockSpec(shape, lambda m: (0,) * len(shape))


def _input_call(s: Static, x, phi, gate, bias):
    if s.target in MOSAIC_GPU:
        return fused_site_mgpu.input_fwd(s, x, phi, gate, bias)
    mp, d = x.shape
    shapes = [((mp, s.cp), x.dtype), ((mp, s.np_), F32), ((mp, s.np_), F32), ((mp, s.qp), F32),
              ((mp, s.zp), F32), ((mp, 1), F32)]
    return pallas_call(
        functools.partial(_input_kernel, s=s),
        out_shape=[jax.ShapeDtypeStruct(shape, dt) for shape, dt in shapes],
        grid=(mp // s.block_m,),
        in_specs=[_row_spec(s, d), _full_spec((d, s.zp)), _full_spec((1, s.zp)),
                  _full_spec((1, s.zp))],
        out_specs=[_row_spec(s, shape[1]) for shape, _ in shapes],
        target=s.target, name="mhc_input")(x, phi, gate[None], bias[None])


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def fused_input(s: Static, x_MxD, phi_DxZ, gate_Z, bias_Z):
    """Padded core: streams `[Mp, N*Cp]`, phi `[N*Cp, Zp]`, gate/bias `[Zp]` -> (branch input
    `[Mp, Cp]`, pre `[Mp, Np]`, post `[Mp, Np]`, res `[Mp, Qp]` (row-major N x N))."""
    return tuple(_input_call(s, x_MxD, phi_DxZ, gate_Z, bias_Z)[:4])


def _fused_input_fwd(s, x, phi, gate, bias):
    b, pre, post, res, u, r = _input_call(s, x, phi, gate, bias)
    return (b, pre, post, res), (x, phi, gate, bias, u, r)


def _fused_input_bwd(s, saved, cts):
    x, phi, gate, bias, u, r = saved
    gb, gpre, gpost, gres = cts
    gx, glog = (fused_site_mgpu.input_bwd if s.target in MOSAIC_GPU else _input_bwd_call)(
        s, x, phi, gate, bias, u, r, gb, gpre, gpost, gres)
    # weight gradients: plain XLA matmul / reductions over tokens
    gphi = jnp.dot(x.astype(F32).T, glog * gate * r, precision=HIGHEST)
    return gx, gphi, jnp.sum(glog * u, axis=0), jnp.sum(glog, axis=0)


fused_input.defvjp(_fused_input_fwd, _fused_input_bwd)


def _input_bwd_call(s, x, phi, gate, bias, u, r, gb, gpre, gpost, gres):
    mp, d = x.shape
    return pallas_call(
        functools.partial(_input_bwd_kernel, s=s),
        out_shape=[jax.ShapeDtypeStruct(x.shape, x.dtype), jax.ShapeDtypeStruct((mp, s.zp), F32)],
        grid=(mp // s.block_m,),
        in_specs=[_row_spec(s, d), _full_spec((d, s.zp)), _full_spec((1, s.zp)),
                  _full_spec((1, s.zp)), _row_spec(s, s.zp), _row_spec(s, 1), _row_spec(s, s.cp),
                  _row_spec(s, s.np_), _row_spec(s, s.np_), _row_spec(s, s.qp)],
        out_specs=[_row_spec(s, d), _row_spec(s, s.zp)],
        target=s.target, name="mhc_input_bwd")(
            x, phi, gate[None], bias[None], u, r, gb, gpre, gpost, gres)


# ----------------------------------------------------------------------- output path
def _output_kernel(x_ref, f_ref, post_ref, res_ref, o_ref, *, s: Static):
    n, nc = s.n, s.cp // s.tc
    post = lane_columns(post_ref[...], n)
    res = nested(lane_columns(res_ref[...], n * n), n)

    def body(j, _):
        f = f_ref[:, pl.ds(pl.multiple_of(j * s.tc, s.tc), s.tc)].astype(F32)
        xs = [_chunk(x_ref, s, i, j).astype(F32) for i in range(n)]
        for i in range(n):
            out = sum(res[i][k] * xs[k] for k in range(n)) + post[i] * f
            o_ref[:, pl.ds(pl.multiple_of(i * s.cp + j * s.tc, s.tc), s.tc)] = (
                out.astype(o_ref.dtype))
        return 0
    jax.lax.fori_loop(0, nc, body, 0)


def _output_bwd_kernel(x_ref, f_ref, post_ref, res_ref, g_ref, gx_ref, gf_ref, gpost_ref,
                       gres_ref, *, s: Static):
    n, nc = s.n, s.cp // s.tc
    post = lane_columns(post_ref[...], n)
    res = nested(lane_columns(res_ref[...], n * n), n)

    def body(j, acc):
        gpost, gres = acc
        sl = pl.ds(pl.multiple_of(j * s.tc, s.tc), s.tc)
        f = f_ref[:, sl].astype(F32)
        xs = [_chunk(x_ref, s, i, j).astype(F32) for i in range(n)]
        gs = [_chunk(g_ref, s, i, j).astype(F32) for i in range(n)]
        for k in range(n):
            gx = sum(res[i][k] * gs[i] for i in range(n))
            gx_ref[:, pl.ds(pl.multiple_of(k * s.cp + j * s.tc, s.tc), s.tc)] = (
                gx.astype(gx_ref.dtype))
        gf_ref[:, sl] = sum(post[i] * gs[i] for i in range(n)).astype(gf_ref.dtype)
        gpost = [gpost[i] + jnp.sum(gs[i] * f, axis=1, keepdims=True) for i in range(n)]
        gres = [gres[i * n + k] + jnp.sum(gs[i] * xs[k], axis=1, keepdims=True)
                for i in range(n) for k in range(n)]
        return gpost, gres
    zero = jnp.zeros((s.block_m, 1), F32)
    gpost, gres = jax.lax.fori_loop(0, nc, body, ([zero] * n, [zero] * (n * n)))
    gpost_ref[...] = assemble_columns(gpost, s.np_)
    gres_ref[...] = assemble_columns(gres, s.qp)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def fused_output(s: Static, x_MxD, f_MxC, post_MxN, res_MxQ):
    """Padded core: `H_res·x + H_postᵀ·f` -> new streams `[Mp, N*Cp]` in the streams' dtype."""
    if s.target in MOSAIC_GPU:
        return fused_site_mgpu.output_fwd(s, x_MxD, f_MxC, post_MxN, res_MxQ)
    mp, d = x_MxD.shape
    return pallas_call(
        functools.partial(_output_kernel, s=s),
        out_shape=jax.ShapeDtypeStruct(x_MxD.shape, x_MxD.dtype), grid=(mp // s.block_m,),
        in_specs=[_row_spec(s, d), _row_spec(s, s.cp), _row_spec(s, s.np_), _row_spec(s, s.qp)],
        out_specs=_row_spec(s, d), target=s.target, name="mhc_output")(
            x_MxD, f_MxC, post_MxN, res_MxQ)


def _fused_output_fwd(s, x, f, post, res):
    return fused_output(s, x, f, post, res), (x, f, post, res)


def _fused_output_bwd(s, saved, g):
    x, f, post, res = saved
    if s.target in MOSAIC_GPU:
        return fused_site_mgpu.output_bwd(s, x, f, post, res, g)
    mp, d = x.shape
    shapes = [(x.shape, x.dtype), (f.shape, f.dtype), ((mp, s.np_), F32), ((mp, s.qp), F32)]
    return pallas_call(
        functools.partial(_output_bwd_kernel, s=s),
        out_shape=[jax.ShapeDtypeStruct(shape, dt) for shape, dt in shapes],
        grid=(mp // s.block_m,),
        in_specs=[_row_spec(s, d), _row_spec(s, s.cp), _row_spec(s, s.np_), _row_spec(s, s.qp),
                  _row_spec(s, d)],
        out_specs=[_row_spec(s, shape[1]) for shape, _ in shapes],
        target=s.target, name="mhc_output_bwd")(x, f, post, res, g)


fused_output.defvjp(_fused_output_fwd, _fused_output_bwd)
