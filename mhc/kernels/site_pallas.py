"""The fused site's kernels on the Pallas generic backends: Triton (GPU), Mosaic TPU and Pallas'
interpret mode (CPU), through `pl.pallas_call` (the interface: `site_op.py`).

One implementation for the three: the kernel bodies are the same code, and what differs is what
a target's row holds (`backends.call_options`: Triton's compiler parameters or the interpret
flag; the lane multiple, 128 on Mosaic TPU, in `site_layout`'s chunk width and logit tile).

Kernel layout: a grid over token tiles of TM rows; inside a tile the streams are read in chunks of
TC lanes (a power of two in [16, 128], 128 on TPU). The projection is a `[TM, TC] x [TC, Zp]`
matmul per chunk accumulated in fp32; the per-token coefficient math runs on `[TM, 1]` columns
(one column per map entry), picked out of the `[TM, Zp]` logits with masked lane reductions
(Triton cannot slice register tensors). The input-path backward recomputes the maps from the
saved u and 1/rms; the output-path backward writes d streams, d F_out and the per-token
d H_post / d H_res reductions. Known TPU inefficiency: the `[TM, 1]` columns use one lane of each
vreg (the standalone Sinkhorn uses the lane-dense `[N*N, M]` layout instead). Block sizes
(TM = 64, TC <= 128, Triton num_warps = 4) are untuned guesses until measured on hardware.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from mhc.kernels import backends
from mhc.kernels.entry_math import nested, sinkhorn_entries, sinkhorn_entries_vjp
from mhc.kernels.layout import F32, assemble_columns, lane_columns, out_shapes
from mhc.kernels.site_layout import Static

HIGHEST = jax.lax.Precision.HIGHEST
BACKEND = "Pallas"
ROWS = None  # token rows per program: the caller's block_m (a multiple of 8)
MAX_LOGITS = None


# ----------------------------------------------------------------------------- helpers
def _lanes(s: Static, i, j):
    """Lanes of chunk j (traced) of stream i (static) in a `[TM, N*Cp]` block."""
    return pl.ds(pl.multiple_of(i * s.cp + j * s.tc, s.tc), s.tc)


def _width_lanes(s: Static, j):
    """Lanes of chunk j (traced) in a `[TM, Cp]` block (branch input / output)."""
    return pl.ds(pl.multiple_of(j * s.tc, s.tc), s.tc)


def _chunk(ref, s: Static, n, j):
    """Chunk j (traced) of stream n (static) of a `[TM, N*Cp]` ref."""
    return ref[:, _lanes(s, n, j)]


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
            w = phi_ref[_lanes(s, i, j), :]
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
        b_ref[:, _width_lanes(s, j)] = acc.astype(b_ref.dtype)
        return 0
    jax.lax.fori_loop(0, nc, mix, 0)


def _input_bwd_kernel(x_ref, phi_ref, gate_ref, bias_ref, u_ref, r_ref, gb_ref, gpre_ref,
                      gpost_ref, gres_ref, gx_ref, glog_ref, *, s: Static):
    n, nc = s.n, s.cp // s.tc
    u, r, gate = u_ref[...], r_ref[...], gate_ref[...]
    cols, pre_s, post_s = _maps_from_logits(u * gate + bias_ref[...], s)
    pre = [v + s.pre_eps for v in pre_s]

    def dots(j, acc):  # d pre_i = sum_c d b · x_i
        gb = gb_ref[:, _width_lanes(s, j)].astype(F32)
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
            w = phi_ref[_lanes(s, i, j), :]
            gb = gb_ref[:, _width_lanes(s, j)].astype(F32)
            g = jax.lax.dot_general(gproj, w, (((1,), (1,)), ((), ())), precision=HIGHEST,
                                    preferred_element_type=F32)
            g = g + coef * xs + pre[i] * gb
            gx_ref[:, _lanes(s, i, j)] = g.astype(gx_ref.dtype)
            return 0
        jax.lax.fori_loop(0, nc, body, 0)


# ----------------------------------------------------------------------- output path
def _post_res(post_ref, res_ref, n):
    """The tile's H_post as N `[TM, 1]` columns and H_res as an N x N entry list."""
    return lane_columns(post_ref[...], n), nested(lane_columns(res_ref[...], n * n), n)


def _output_kernel(x_ref, f_ref, post_ref, res_ref, o_ref, *, s: Static):
    n, nc = s.n, s.cp // s.tc
    post, res = _post_res(post_ref, res_ref, n)

    def body(j, _):
        f = f_ref[:, _width_lanes(s, j)].astype(F32)
        xs = [_chunk(x_ref, s, i, j).astype(F32) for i in range(n)]
        for i in range(n):
            out = sum(res[i][k] * xs[k] for k in range(n)) + post[i] * f
            o_ref[:, _lanes(s, i, j)] = out.astype(o_ref.dtype)
        return 0
    jax.lax.fori_loop(0, nc, body, 0)


def _output_bwd_kernel(x_ref, f_ref, post_ref, res_ref, g_ref, gx_ref, gf_ref, gpost_ref,
                       gres_ref, *, s: Static):
    n, nc = s.n, s.cp // s.tc
    post, res = _post_res(post_ref, res_ref, n)

    def body(j, acc):
        gpost, gres = acc
        sl = _width_lanes(s, j)
        f = f_ref[:, sl].astype(F32)
        xs = [_chunk(x_ref, s, i, j).astype(F32) for i in range(n)]
        gs = [_chunk(g_ref, s, i, j).astype(F32) for i in range(n)]
        for k in range(n):
            gx = sum(res[i][k] * gs[i] for i in range(n))
            gx_ref[:, _lanes(s, k, j)] = gx.astype(gx_ref.dtype)
        gf_ref[:, sl] = sum(post[i] * gs[i] for i in range(n)).astype(gf_ref.dtype)
        gpost = [gpost[i] + jnp.sum(gs[i] * f, axis=1, keepdims=True) for i in range(n)]
        gres = [gres[i * n + k] + jnp.sum(gs[i] * xs[k], axis=1, keepdims=True)
                for i in range(n) for k in range(n)]
        return gpost, gres
    zero = jnp.zeros((s.block_m, 1), F32)
    gpost, gres = jax.lax.fori_loop(0, nc, body, ([zero] * n, [zero] * (n * n)))
    gpost_ref[...] = assemble_columns(gpost, s.np_)
    gres_ref[...] = assemble_columns(gres, s.qp)


def _row_spec(s: Static, width):
    return pl.BlockSpec((s.block_m, width), lambda m: (m, 0))


def _full_spec(shape):
    return pl.BlockSpec(shape, lambda m: (0,) * len(shape))


def _call(s: Static, kernel, name, out_shape, in_specs, out_specs, *args):
    """`kernel` over the token tiles of the `[Mp, ...]` arrays `args`, for `s.target`."""
    return pl.pallas_call(
        functools.partial(kernel, s=s), out_shape=out_shape, grid=(args[0].shape[0] // s.block_m,),
        in_specs=in_specs, out_specs=out_specs, name=name, **backends.call_options(s.target))(
            *args)


# ------------------------------------------------------------------- calls (see site_op.py)
def input_fwd(s: Static, x, phi, gate, bias):
    mp, d = x.shape
    shapes = [((mp, s.cp), x.dtype), ((mp, s.np_), F32), ((mp, s.np_), F32), ((mp, s.qp), F32),
              ((mp, s.zp), F32), ((mp, 1), F32)]
    return _call(s, _input_kernel, "mhc_input", out_shapes(shapes),
                 [_row_spec(s, d), _full_spec((d, s.zp)), _full_spec((1, s.zp)),
                  _full_spec((1, s.zp))],
                 [_row_spec(s, shape[1]) for shape, _ in shapes], x, phi, gate[None], bias[None])


def input_bwd(s: Static, x, phi, gate, bias, u, r, gb, gpre, gpost, gres):
    mp, d = x.shape
    return _call(s, _input_bwd_kernel, "mhc_input_bwd", out_shapes([(x.shape, x.dtype),
                                                                   ((mp, s.zp), F32)]),
                 [_row_spec(s, d), _full_spec((d, s.zp)), _full_spec((1, s.zp)),
                  _full_spec((1, s.zp)), _row_spec(s, s.zp), _row_spec(s, 1), _row_spec(s, s.cp),
                  _row_spec(s, s.np_), _row_spec(s, s.np_), _row_spec(s, s.qp)],
                 [_row_spec(s, d), _row_spec(s, s.zp)],
                 x, phi, gate[None], bias[None], u, r, gb, gpre, gpost, gres)


def output_fwd(s: Static, x, f, post, res):
    d = x.shape[1]
    return _call(s, _output_kernel, "mhc_output", jax.ShapeDtypeStruct(x.shape, x.dtype),
                 [_row_spec(s, d), _row_spec(s, s.cp), _row_spec(s, s.np_), _row_spec(s, s.qp)],
                 _row_spec(s, d), x, f, post, res)


def output_bwd(s: Static, x, f, post, res, g):
    mp, d = x.shape
    shapes = [(x.shape, x.dtype), (f.shape, f.dtype), ((mp, s.np_), F32), ((mp, s.qp), F32)]
    return _call(s, _output_bwd_kernel, "mhc_output_bwd", out_shapes(shapes),
                 [_row_spec(s, d), _row_spec(s, s.cp), _row_spec(s, s.np_), _row_spec(s, s.qp),
                  _row_spec(s, d)],
                 [_row_spec(s, shape[1]) for shape, _ in shapes], x, f, post, res, g)
