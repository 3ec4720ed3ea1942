"""The fused site's kernels on Mosaic GPU (JAX >= 0.12), written for Hopper's memory hierarchy
(the interface: `site_op.py`; the building blocks: `mosaic_gpu_pipeline.py`).

Same arrays in and out as `site_pallas.py`, but a different schedule: a token tile's streams do
not fit in shared memory (SMEM) at the paper's width (64 tokens x N*C = 10240 bf16 lanes is
1.25 MiB, against 228 KiB per H100 SM). So every kernel streams `[TM, TC]` chunks of the streams
through SMEM (TMA copies, two chunks in flight) and keeps only per-token values in registers:
  input forward   pass 1 over the D = N*Cp lanes: x·phi on the tensor cores (`plgpu.wgmma` into a
                  `[TM, Zp]` fp32 accumulator) and sum(x²) for the RMS; the coefficient math on
                  `[TM]` vectors; pass 2 over the Cp lanes: the branch input sum_i H_pre,i · x_i
                  (reading the tile's streams again, from L2 in practice).
  input backward  d H_pre (a pass over gb · x_i), the coefficient VJPs, then per stream a pass
                  writing d x = d proj · phiᵀ (wgmma) + (RMS term) x + H_pre,i · gb.
  output forward  one pass: new_i = sum_k H_res,ik x_k + H_post,i f.
  output backward one pass: d x, d f, and the per-token d H_post / d H_res reductions.
Matmul precision: the tensor cores take equal operand dtypes, so with bf16 streams phi (fp32) is
split into bf16 hi + lo parts, both multiplied (about 16 bits of phi, above the paper's tf32);
fp32 streams go in as tf32; the backward's d proj is split the same way. Mosaic GPU's interpret
mode multiplies in full fp32 (and its race detector flags emit_pipeline's own pattern): the CPU
tests check the schedule and the math, not the tensor-core rounding nor races. Not run here.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from mhc.kernels.entry_math import nested, sinkhorn_entries, sinkhorn_entries_vjp
from mhc.kernels.layout import F32, assemble_columns, lane_columns, out_shapes
from mhc.kernels.mosaic_gpu_pipeline import (TM, block_spec, chunk_lanes, from_rows, launch,
                                             pipeline, plgpu, row_vector, split_operands,
                                             store_rows, streams_spec, tile, tile_rows, to_rows,
                                             token_zeros, vecs, width_spec, with_copies)

BACKEND = "Mosaic GPU"
ROWS = TM  # one warpgroup's wgmma takes 64 rows
MAX_LOGITS = 256  # Zp: the projection's wgmma N (at most 256)


def _maps(u, gate, bias, s):
    """Logit columns, sigmoid(pre), sigmoid(post) of a `[TM, Zp]` scaled projection u."""
    cols = lane_columns(u * gate + bias, 2 * s.n + s.n * s.n, keepdims=False)
    return (cols, [jax.lax.logistic(v) for v in cols[:s.n]],
            [jax.lax.logistic(v) for v in cols[s.n:2 * s.n]])


def _matmul_rows(x_gmem, phis, s, tc):
    """Pass 1 of the input path over one tile's `[TM, D]` streams: (x·phi `[TM, Zp]`, sum x²
    `[TM]`), x chunks and phi chunks pipelined through SMEM, the product on the tensor cores."""
    def with_acc(acc):
        def step(_, x_smem, *rest):
            *phi_smem, ssq = rest
            for w in phi_smem:
                plgpu.wgmma(acc, x_smem, w)
            plgpu.wgmma_wait(0)  # the SMEM chunk is read below and then recycled
            xs = tile(x_smem)
            return ssq + jnp.sum(xs * xs, axis=1)
        ssq = pipeline(step, (x_gmem.shape[1] // tc,),
                       [width_spec(tc)] + [block_spec((tc, s.zp), lambda k: (k, 0)) for _ in phis],
                       init_carry=token_zeros())(x_gmem, *phis)
        return acc[...], ssq
    return pl.run_scoped(with_acc, plgpu.ACC((TM, s.zp), F32))


# ------------------------------------------------------------------------ input path
def input_fwd(s, x, phi, gate, bias):
    """Streams `[Mp, N*Cp]`, phi `[N*Cp, Zp]`, gate/bias `[Zp]` -> (branch input `[Mp, Cp]`,
    pre `[Mp, Np]`, post `[Mp, Np]`, res `[Mp, Qp]`, u `[Mp, Zp]`, 1/rms `[Mp, 1]`)."""
    n, mp = s.n, x.shape[0]
    phis = split_operands(phi, x.dtype)
    tc = chunk_lanes(s, 1 + len(phis) * s.zp // TM, x.dtype.itemsize)
    tc_mix = chunk_lanes(s, n + 1, x.dtype.itemsize)
    per_mix = s.cp // tc_mix

    def body(x_gmem, *refs):
        phi_gmem, (gate_ref, bias_ref, b_gmem, maps_gmem, u_gmem, r_gmem) = (
            refs[:len(phis)], refs[len(phis):])
        rows = tile_rows()
        proj, ssq = _matmul_rows(x_gmem.at[rows], phi_gmem, s, tc)
        r = jax.lax.rsqrt(ssq / (n * s.c) + s.norm_eps)
        u = proj * r[:, None]
        u_gmem[rows, :] = u
        r_gmem[0, rows] = r
        cols, pre_s, post_s = with_copies(
            lambda g, b: _maps(u, row_vector(g), row_vector(b), s), gate_ref, bias_ref)
        pre = [v + s.pre_eps for v in pre_s]
        res = sinkhorn_entries(nested(cols[2 * n:], n), s.iters, s.convention, s.eps)
        store_rows(maps_gmem, rows, pre + [2.0 * v for v in post_s] + sum(res, []))

        def mix(_, *refs):
            *xs, b_smem = refs
            b_smem[...] = sum(pre[i][:, None] * tile(xs[i])
                              for i in range(n)).astype(b_smem.dtype)
        pipeline(mix, (per_mix,), [streams_spec(tc_mix, per_mix, i) for i in range(n)],
                 [width_spec(tc_mix)])(*[x_gmem.at[rows]] * n, b_gmem.at[rows])

    shapes = [((mp, s.cp), x.dtype), ((2 * n + n * n, mp), F32), ((mp, s.zp), F32),
              ((1, mp), F32)]
    b, maps, u, r = launch(body, out_shapes(shapes), mp // TM, s.target, "mhc_input_mgpu")(
        x, *phis, gate[None], bias[None])
    pre, post, res = from_rows(maps, (n, s.np_), (n, s.np_), (n * n, s.qp))
    return b, pre, post, res, u, r.T


def input_bwd(s, x, phi, gate, bias, u, r, gb, gpre, gpost, gres):
    """The input path's backward -> (d streams `[Mp, N*Cp]`, d logits `[Mp, Zp]`); the weight
    gradients stay with the caller (XLA)."""
    n, mp = s.n, x.shape[0]
    phi_t = split_operands(phi.T, x.dtype)  # [Zp, N*Cp]: d x = d proj · phiᵀ
    tc_dot = chunk_lanes(s, n + 1, x.dtype.itemsize)
    tc_gx = chunk_lanes(s, 3 + len(phi_t) * s.zp // TM, x.dtype.itemsize)
    per_dot, per_gx = s.cp // tc_dot, s.cp // tc_gx
    g_rows = to_rows((gpre, n), (gpost, n), (gres, n * n))
    parts = range(len(phi_t))
    terms = [(ia, iw) for ia in parts for iw in parts if ia + iw < 2]  # lo·lo dropped

    def body(x_gmem, *refs):
        phi_gmem = refs[:len(phi_t)]
        gate_ref, bias_ref, u_gmem, r_gmem, gb_gmem, g_gmem, gx_gmem, glog_gmem = (
            refs[len(phi_t):])
        rows = tile_rows()

        def dots(_, *refs):  # d pre_i = sum_c gb · x_i
            *xs, gb_smem, acc = refs
            gb = tile(gb_smem)
            return [a + jnp.sum(gb * tile(xs[i]), axis=1) for i, a in enumerate(acc)]
        dpre = pipeline(dots, (per_dot,),
                        [streams_spec(tc_dot, per_dot, i) for i in range(n)] + [width_spec(tc_dot)],
                        init_carry=[token_zeros()] * n)(*[x_gmem.at[rows]] * n, gb_gmem.at[rows])

        def coefficients(gate_s, bias_s, u_s, r_s, g_s):
            u, r, g = tile(u_s), vecs(r_s, 1)[0], vecs(g_s, 2 * n + n * n)
            gate = row_vector(gate_s)
            cols, pre_s, post_s = _maps(u, gate, row_vector(bias_s), s)
            dl_pre = [(dpre[i] + g[i]) * v * (1.0 - v) for i, v in enumerate(pre_s)]
            dl_post = [2.0 * g[n + i] * v * (1.0 - v) for i, v in enumerate(post_s)]
            dl_res = sinkhorn_entries_vjp(nested(cols[2 * n:], n), nested(g[2 * n:], n),
                                          s.iters, s.convention, s.eps)
            glog = assemble_columns(dl_pre + dl_post + sum(dl_res, []), s.zp)
            gu = glog * gate
            coef = -jnp.sum(gu * u, axis=1) * r * r / (n * s.c)  # through 1/rms
            return glog, gu * r[:, None], coef, [v + s.pre_eps for v in pre_s]
        glog, gproj, coef, pre = with_copies(coefficients, gate_ref, bias_ref, u_gmem.at[rows],
                                             r_gmem.at[:, rows], g_gmem.at[:, rows])
        glog_gmem[rows, :] = glog

        def with_operands(*a_smem):  # d proj as tensor-core operands in SMEM
            for a, part in zip(a_smem, split_operands(gproj, x.dtype)):
                a[...] = part
            plgpu.commit_smem()
            for i in range(n):
                def step(_, x_smem, gb_smem, *rest, i=i):
                    *w_smem, gx_smem = rest

                    def with_acc(acc):
                        for ia, iw in terms:
                            plgpu.wgmma(acc, a_smem[ia], w_smem[iw])
                        plgpu.wgmma_wait(0)
                        return acc[...]
                    dot = pl.run_scoped(with_acc, plgpu.ACC((TM, tc_gx), F32))
                    gx_smem[...] = (dot + coef[:, None] * tile(x_smem)
                                    + pre[i][:, None] * tile(gb_smem)).astype(gx_smem.dtype)
                chunk = streams_spec(tc_gx, per_gx, i)
                pipeline(step, (per_gx,),
                         [chunk, width_spec(tc_gx)]
                         + [block_spec((s.zp, tc_gx), lambda j, i=i: (0, i * per_gx + j))
                            for _ in phi_t], [chunk])(
                             x_gmem.at[rows], gb_gmem.at[rows], *phi_gmem, gx_gmem.at[rows])
        pl.run_scoped(with_operands, *[plgpu.SMEM((TM, s.zp), w.dtype) for w in phi_t])

    shapes = [(x.shape, x.dtype), ((mp, s.zp), F32)]
    return tuple(launch(body, out_shapes(shapes), mp // TM, s.target, "mhc_input_bwd_mgpu")(
        x, *phi_t, gate[None], bias[None], u, r.T, gb, g_rows))


# ----------------------------------------------------------------------- output path
def _coefficients(post, res, s):
    """post `[Mp, Np]`, res `[Mp, Qp]` -> token-minor rows `[N + N*N, Mp]` for the kernels."""
    return to_rows((post, s.n), (res, s.n * s.n))


def _post_res(c_gmem, rows, n):
    """This program's H_post as N `[TM]` vectors and H_res as an N x N entry list, from the
    token-minor rows `[N + N*N, Mp]` (through SMEM)."""
    c = with_copies(lambda c_smem: vecs(c_smem, n + n * n), c_gmem.at[:, rows])
    return c[:n], nested(c[n:], n)


def output_fwd(s, x, f, post, res):
    """`H_res·x + H_postᵀ·f` -> new streams `[Mp, N*Cp]` in the streams' dtype."""
    n, mp = s.n, x.shape[0]
    tc = chunk_lanes(s, 2 * n + 1, x.dtype.itemsize)
    per = s.cp // tc

    def body(x_gmem, f_gmem, c_gmem, o_gmem):
        rows = tile_rows()
        post, res = _post_res(c_gmem, rows, n)

        def step(_, *refs):
            xs, f_smem, outs = refs[:n], refs[n], refs[n + 1:]
            xs = [tile(a) for a in xs]
            f = tile(f_smem)
            for i in range(n):
                outs[i][...] = (sum(res[i][k][:, None] * xs[k] for k in range(n))
                                + post[i][:, None] * f).astype(outs[i].dtype)
        streams = [streams_spec(tc, per, i) for i in range(n)]
        pipeline(step, (per,), streams + [width_spec(tc)], streams)(
            *[x_gmem.at[rows]] * n, f_gmem.at[rows], *[o_gmem.at[rows]] * n)

    return launch(body, jax.ShapeDtypeStruct(x.shape, x.dtype), mp // TM, s.target,
                  "mhc_output_mgpu")(x, f, _coefficients(post, res, s))


def output_bwd(s, x, f, post, res, g):
    """-> (d streams, d f, d post `[Mp, Np]`, d res `[Mp, Qp]`)."""
    n, mp = s.n, x.shape[0]
    tc = chunk_lanes(s, 3 * n + 2, x.dtype.itemsize)
    per = s.cp // tc

    def body(x_gmem, f_gmem, c_gmem, g_gmem, gx_gmem, gf_gmem, gc_gmem):
        rows = tile_rows()
        post, res = _post_res(c_gmem, rows, n)

        def step(_, *refs):
            xs, f_smem, gs = refs[:n], refs[n], refs[n + 1:2 * n + 1]
            gxs, gf_smem, (gpost, gres) = refs[2 * n + 1:3 * n + 1], refs[3 * n + 1], refs[-1]
            xs = [tile(a) for a in xs]
            gs = [tile(a) for a in gs]
            f = tile(f_smem)
            for k in range(n):
                gxs[k][...] = sum(res[i][k][:, None] * gs[i]
                                  for i in range(n)).astype(gxs[k].dtype)
            gf_smem[...] = sum(post[i][:, None] * gs[i] for i in range(n)).astype(gf_smem.dtype)
            return ([gpost[i] + jnp.sum(gs[i] * f, axis=1) for i in range(n)],
                    [gres[i * n + k] + jnp.sum(gs[i] * xs[k], axis=1)
                     for i in range(n) for k in range(n)])
        streams = [streams_spec(tc, per, i) for i in range(n)]
        width = width_spec(tc)
        zero = token_zeros()
        gpost, gres = pipeline(step, (per,), streams + [width] + streams, streams + [width],
                               init_carry=([zero] * n, [zero] * (n * n)))(
            *[x_gmem.at[rows]] * n, f_gmem.at[rows], *[g_gmem.at[rows]] * n,
            *[gx_gmem.at[rows]] * n, gf_gmem.at[rows])
        store_rows(gc_gmem, rows, gpost + gres)

    shapes = [(x.shape, x.dtype), (f.shape, f.dtype), ((n + n * n, mp), F32)]
    gx, gf, gc = launch(body, out_shapes(shapes), mp // TM, s.target, "mhc_output_bwd_mgpu")(
        x, f, _coefficients(post, res, s), g)
    return (gx, gf, *from_rows(gc, (n, s.np_), (n * n, s.qp)))

