"""The fused mHC site on Mosaic GPU (JAX >= 0.12): the four kernels of `fused_site.py` (input
path, output path, each forward and backward), written for Hopper's memory hierarchy.

Same arrays in and out as the Triton / Mosaic TPU kernels (`fused_site.py` calls these for the
"mosaic_gpu" targets and keeps the custom VJPs and the XLA weight gradients), but a different
schedule, because a token tile's streams do not fit in shared memory (SMEM) at the paper's width:
64 tokens x N*C = 10240 bf16 lanes is 1.25 MiB, against 228 KiB of SMEM per H100 SM. So every
kernel streams `[TM, TC]` chunks of the streams through SMEM with `plgpu.emit_pipeline` (TMA copies,
two chunks in flight), and keeps only per-token values in registers:

  input forward   pass 1 over the D = N*Cp lanes: the projection x·phi on the tensor cores
                  (`plgpu.wgmma` into a `[TM, Zp]` fp32 accumulator) and sum(x²) for the RMS; the
                  coefficient math (sigmoids, Sinkhorn) on `[TM]` vectors; pass 2 over the Cp
                  lanes: the branch input sum_i H_pre,i · x_i. Pass 2 reads the tile's streams a
                  second time, right after pass 1 (from L2 in practice: the paper's pre-mix is a
                  separate kernel too).
  input backward  d H_pre (a pass over gb · x_i), the coefficient VJPs, then per stream a pass
                  writing d x = d proj · phiᵀ (wgmma) + (RMS term) x + H_pre,i · gb.
  output forward  one pass: new_i = sum_k H_res,ik x_k + H_post,i f.
  output backward one pass: d x, d f, and the per-token d H_post / d H_res reductions.

TM = 64 token rows per program (wgmma's M; one warpgroup). Matmul precision: the tensor cores take
equal operand dtypes, so with bf16 streams phi (fp32) is split into bf16 hi + lo parts and both
are multiplied (x is exact in bf16: about 16 bits of phi, above the paper's tf32); with fp32
streams the operands go in as tf32 (the paper's "phi tf32"). The backward's d proj (fp32) is
split the same way. Mosaic GPU's interpret mode multiplies in full fp32 whatever the dtype, so the
CPU tests check the schedule and the math, not the tensor-core rounding (the accelerator check
does, on a GPU).

Per-token vectors are `[TM]` (one lane per token), reduced out of `[TM, W]` tiles with masked
lane sums (`lane_columns`), which Mosaic GPU's layout inference places in the wgmma row layout;
coefficient outputs are written as token-minor rows `[K, Mp]` and transposed by the wrapper (small
arrays).
What has run: values and gradients in Mosaic GPU's interpret mode on CPU, and the lowering (layout
inference, wgmma shape checks) for an abstract H100 at the paper's width (`tests/test_kernels.py`);
not compiled by ptxas, run or timed on a GPU here. Not tested: the interpret mode's race detector
(`detect_races`) flags emit_pipeline's own pattern (a body that reads its input block) even in a
kernel of a few lines, so it cannot judge these; tensor-core rounding (see above).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from mhc.kernels.sinkhorn_kernel import (assemble_columns, lane_columns, nested,
                                         sinkhorn_entries, sinkhorn_entries_vjp)

F32 = jnp.float32
TM = 64  # token rows per program: wgmma's M for one warpgroup
STEPS_IN_FLIGHT = 2  # chunks being copied while one is computed
SMEM_BUDGET = 160 * 1024  # bytes of pipeline buffers per program (H100: 227 KiB per block)
MAX_LOGITS = 256  # Zp: the projection's wgmma N (at most 256)


def _plgpu():
    from jax.experimental.pallas import mosaic_gpu as plgpu
    return plgpu


def _chunk(s, chunks_per_step: int, itemsize: int) -> int:
    """Lanes per pipelined chunk: the largest power of two <= s.tc (so it divides Cp) whose
    `chunks_per_step` [TM, TC] buffers, STEPS_IN_FLIGHT deep, fit SMEM_BUDGET."""
    tc = s.tc
    while tc > 16 and chunks_per_step * STEPS_IN_FLIGHT * TM * tc * itemsize > SMEM_BUDGET:
        tc //= 2
    return tc


def _zeros():
    """A `[TM]` zero carry, in the layout of the per-token reductions it accumulates."""
    plgpu = _plgpu()
    return plgpu.layout_cast(jnp.zeros((TM,), F32), plgpu.Layout.WGMMA.reduce(1))


def _to_rows(*parts):
    """(array `[Mp, >= w]`, w) pairs -> their first w columns as token-minor rows `[sum w, Mp]`."""
    return jnp.concatenate([a[:, :w] for a, w in parts], axis=1).T


def _from_rows(rows, *widths):
    """Token-minor rows `[sum w, Mp]` -> `[Mp, padded]` arrays, one per (w, padded) pair."""
    out, start = [], 0
    for w, padded in widths:
        out.append(_pad(rows[start:start + w].T, padded))
        start += w
    return out


def _pad(a, width):
    return jnp.pad(a, ((0, 0), (0, width - a.shape[1])))


def _store_rows(ref, rows, vectors):
    for k, v in enumerate(vectors):
        ref[k, rows] = v


def _tile(ref):
    """A `[TM, W]` SMEM chunk in registers, in the wgmma accumulator's layout (so per-token
    `[TM]` vectors broadcast against it without a relayout)."""
    plgpu = _plgpu()
    return plgpu.load(ref, layout=plgpu.Layout.WGMMA).astype(F32)


def _vecs(ref, count):
    """Rows 0..count-1 of a token-minor `[K, TM]` SMEM ref as `[TM]` vectors."""
    plgpu = _plgpu()
    return [plgpu.load(ref.at[k], layout=plgpu.Layout.WGMMA.reduce(1)) for k in range(count)]


def _with_copies(body, *gmem_slices):
    """`body(*smem)`, each GMEM slice first copied into its own SMEM buffer (TMA; one barrier):
    registers read per-token values from SMEM in a layout they can be broadcast in."""
    plgpu = _plgpu()

    def scoped(*refs):
        *smem, barrier = refs
        for src, dst in zip(gmem_slices, smem):
            plgpu.copy_gmem_to_smem(src, dst, barrier)
        plgpu.barrier_wait(barrier)
        return body(*smem)
    return pl.run_scoped(scoped, *[plgpu.SMEM(a.shape, a.dtype) for a in gmem_slices],
                         plgpu.Barrier(num_arrivals=len(gmem_slices)))


def _split(a, dtype):
    """fp32 `a` as operands of `dtype` for the tensor cores: [a] for fp32 (tf32), else the
    hi + lo parts, hi = a rounded to dtype, lo = the rest rounded to dtype."""
    if dtype == F32:
        return [a]
    hi = a.astype(dtype)
    return [hi, (a - hi.astype(F32)).astype(dtype)]


def _spec(block, index_map):
    return _plgpu().BlockSpec(block, index_map)


def _pipeline(body, grid, in_specs, out_specs=(), init_carry=None):
    """`plgpu.emit_pipeline(body, ...)` over a 1-D grid, called the same way (GMEM inputs, then
    GMEM outputs), except that the outputs are copied out here: the body writes each output
    block into one of STEPS_IN_FLIGHT SMEM slots, and the slot's TMA copy to GMEM runs while the
    next steps compute. (emit_pipeline's own output copies are predicated, which Mosaic GPU's
    interpret mode does not implement, so the tests could not run them.)"""
    plgpu = _plgpu()
    n_in, n_out = len(in_specs), len(out_specs)

    def run(*gmem):
        in_gmem, out_gmem = gmem[:n_in], gmem[n_in:]

        def scoped(*slots):
            def step(indices, *refs):
                (j,) = indices
                out_smem = [slot.at[j % STEPS_IN_FLIGHT] for slot in slots]
                if n_out:  # the copies that last read these slots (one round back) are done
                    plgpu.wait_smem_to_gmem(n_out * (STEPS_IN_FLIGHT - 1), wait_read_only=True)
                carry = body(indices, *refs[:n_in], *out_smem, *refs[n_in:])
                if n_out:
                    plgpu.commit_smem()
                    for src, dst, spec in zip(out_smem, out_gmem, out_specs):
                        plgpu.copy_smem_to_gmem(src, dst.at[tuple(
                            pl.ds(i * b, b) for i, b in zip(spec.index_map(j), spec.block_shape))])
                return carry
            out = plgpu.emit_pipeline(step, grid=grid, in_specs=in_specs,
                                      max_concurrent_steps=STEPS_IN_FLIGHT,
                                      init_carry=init_carry)(*in_gmem)
            if n_out:
                plgpu.wait_smem_to_gmem(0)
            return out
        return pl.run_scoped(scoped, *[plgpu.SMEM((STEPS_IN_FLIGHT, *spec.block_shape), ref.dtype)
                                       for spec, ref in zip(out_specs, out_gmem)])
    return run


def _kernel(body, out_shape, mp, s, name):
    plgpu = _plgpu()
    return plgpu.kernel(body, out_type=out_shape, grid=(mp // TM,), grid_names=("m",),
                        interpret=(plgpu.InterpretGPUParams()
                                   if s.target == "mosaic_gpu_interpret" else None),
                        kernel_name=name)


def _rows():
    return pl.ds(jax.lax.axis_index("m") * TM, TM)


def _row(ref):
    """A `[1, Zp]` SMEM ref as a `[1, Zp]` value broadcastable over the token rows."""
    plgpu = _plgpu()
    return plgpu.load(ref.at[0], layout=plgpu.Layout.WGMMA.reduce(0))[None, :]


def _maps(u, gate, bias, s):
    """Logit columns, sigmoid(pre), sigmoid(post) of a `[TM, Zp]` scaled projection u."""
    cols = lane_columns(u * gate + bias, 2 * s.n + s.n * s.n, keepdims=False)
    return (cols, [jax.lax.logistic(v) for v in cols[:s.n]],
            [jax.lax.logistic(v) for v in cols[s.n:2 * s.n]])


def _matmul_rows(x_gmem, phis, s, tc):
    """Pass 1 of the input path over one tile's `[TM, D]` streams: (x·phi `[TM, Zp]`, sum x²
    `[TM]`), x chunks and phi chunks pipelined through SMEM, the product on the tensor cores."""
    plgpu = _plgpu()

    def with_acc(acc):
        def step(_, x_smem, *rest):
            *phi_smem, ssq = rest
            for w in phi_smem:
                plgpu.wgmma(acc, x_smem, w)
            plgpu.wgmma_wait(0)  # the SMEM chunk is read below and then recycled
            xs = _tile(x_smem)
            return ssq + jnp.sum(xs * xs, axis=1)
        ssq = _pipeline(step, (x_gmem.shape[1] // tc,),
                        [_spec((TM, tc), lambda k: (0, k))]
                        + [_spec((tc, s.zp), lambda k: (k, 0)) for _ in phis],
                        init_carry=_zeros())(x_gmem, *phis)
        return acc[...], ssq
    return pl.run_scoped(with_acc, plgpu.ACC((TM, s.zp), F32))


def _streams_spec(tc, per, i):
    """Chunk j of stream i of a `[TM, N*Cp]` tile (per = chunks per stream)."""
    return _spec((TM, tc), lambda j: (0, i * per + j))


# ------------------------------------------------------------------------ input path
def input_fwd(s, x, phi, gate, bias):
    """Streams `[Mp, N*Cp]`, phi `[N*Cp, Zp]`, gate/bias `[Zp]` -> (branch input `[Mp, Cp]`,
    pre `[Mp, Np]`, post `[Mp, Np]`, res `[Mp, Qp]`, u `[Mp, Zp]`, 1/rms `[Mp, 1]`)."""
    n, mp = s.n, x.shape[0]
    phis = _split(phi, x.dtype)
    tc = _chunk(s, 1 + len(phis) * s.zp // TM, x.dtype.itemsize)
    tc_mix = _chunk(s, n + 1, x.dtype.itemsize)
    per_mix = s.cp // tc_mix

    def body(x_gmem, *refs):
        phi_gmem, (gate_ref, bias_ref, b_gmem, maps_gmem, u_gmem, r_gmem) = (
            refs[:len(phis)], refs[len(phis):])
        rows = _rows()
        proj, ssq = _matmul_rows(x_gmem.at[rows], phi_gmem, s, tc)
        r = jax.lax.rsqrt(ssq / (n * s.c) + s.norm_eps)
        u = proj * r[:, None]
        u_gmem[rows, :] = u
        r_gmem[0, rows] = r
        cols, pre_s, post_s = _with_copies(
            lambda g, b: _maps(u, _row(g), _row(b), s), gate_ref, bias_ref)
        pre = [v + s.pre_eps for v in pre_s]
        res = sinkhorn_entries(nested(cols[2 * n:], n), s.iters, s.convention, s.eps)
        _store_rows(maps_gmem, rows, pre + [2.0 * v for v in post_s] + sum(res, []))

        def mix(_, *refs):
            *xs, b_smem = refs
            b_smem[...] = sum(pre[i][:, None] * _tile(xs[i])
                              for i in range(n)).astype(b_smem.dtype)
        _pipeline(mix, (per_mix,), [_streams_spec(tc_mix, per_mix, i) for i in range(n)],
                  [_spec((TM, tc_mix), lambda j: (0, j))])(*[x_gmem.at[rows]] * n,
                                                            b_gmem.at[rows])

    shapes = [((mp, s.cp), x.dtype), ((2 * n + n * n, mp), F32), ((mp, s.zp), F32),
              ((1, mp), F32)]
    b, maps, u, r = _kernel(body, [jax.ShapeDtypeStruct(sh, dt) for sh, dt in shapes], mp, s,
                            "mhc_input_mgpu")(x, *phis, gate[None], bias[None])
    pre, post, res = _from_rows(maps, (n, s.np_), (n, s.np_), (n * n, s.qp))
    return b, pre, post, res, u, r.T


def input_bwd(s, x, phi, gate, bias, u, r, gb, gpre, gpost, gres):
    """The input path's backward -> (d streams `[Mp, N*Cp]`, d logits `[Mp, Zp]`); the weight
    gradients stay with the caller (XLA)."""
    n, mp = s.n, x.shape[0]
    phi_t = _split(phi.T, x.dtype)  # [Zp, N*Cp]: d x = d proj · phiᵀ
    tc_dot = _chunk(s, n + 1, x.dtype.itemsize)
    tc_gx = _chunk(s, 3 + len(phi_t) * s.zp // TM, x.dtype.itemsize)
    per_dot, per_gx = s.cp // tc_dot, s.cp // tc_gx
    g_rows = _to_rows((gpre, n), (gpost, n), (gres, n * n))
    parts = range(len(phi_t))
    terms = [(ia, iw) for ia in parts for iw in parts if ia + iw < 2]  # lo·lo dropped
    plgpu = _plgpu()

    def body(x_gmem, *refs):
        phi_gmem = refs[:len(phi_t)]
        gate_ref, bias_ref, u_gmem, r_gmem, gb_gmem, g_gmem, gx_gmem, glog_gmem = (
            refs[len(phi_t):])
        rows = _rows()

        def dots(_, *refs):  # d pre_i = sum_c gb · x_i
            *xs, gb_smem, acc = refs
            gb = _tile(gb_smem)
            return [a + jnp.sum(gb * _tile(xs[i]), axis=1) for i, a in enumerate(acc)]
        dpre = _pipeline(dots, (per_dot,),
                         [_streams_spec(tc_dot, per_dot, i) for i in range(n)]
                         + [_spec((TM, tc_dot), lambda j: (0, j))], init_carry=[_zeros()] * n)(
                             *[x_gmem.at[rows]] * n, gb_gmem.at[rows])

        def coefficients(gate_s, bias_s, u_s, r_s, g_s):
            u, r, g, gate = _tile(u_s), _vecs(r_s, 1)[0], _vecs(g_s, 2 * n + n * n), _row(gate_s)
            cols, pre_s, post_s = _maps(u, gate, _row(bias_s), s)
            dl_pre = [(dpre[i] + g[i]) * v * (1.0 - v) for i, v in enumerate(pre_s)]
            dl_post = [2.0 * g[n + i] * v * (1.0 - v) for i, v in enumerate(post_s)]
            dl_res = sinkhorn_entries_vjp(nested(cols[2 * n:], n), nested(g[2 * n:], n),
                                          s.iters, s.convention, s.eps)
            glog = assemble_columns(dl_pre + dl_post + sum(dl_res, []), s.zp)
            gu = glog * gate
            coef = -jnp.sum(gu * u, axis=1) * r * r / (n * s.c)  # through 1/rms
            return glog, gu * r[:, None], coef, [v + s.pre_eps for v in pre_s]
        glog, gproj, coef, pre = _with_copies(coefficients, gate_ref, bias_ref, u_gmem.at[rows],
                                              r_gmem.at[:, rows], g_gmem.at[:, rows])
        glog_gmem[rows, :] = glog

        def with_operands(*a_smem):  # d proj as tensor-core operands in SMEM
            for a, part in zip(a_smem, _split(gproj, x.dtype)):
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
                    gx_smem[...] = (dot + coef[:, None] * _tile(x_smem)
                                    + pre[i][:, None] * _tile(gb_smem)).astype(gx_smem.dtype)
                chunk = _streams_spec(tc_gx, per_gx, i)
                _pipeline(step, (per_gx,),
                          [chunk, _spec((TM, tc_gx), lambda j: (0, j))]
                          + [_spec((s.zp, tc_gx), lambda j, i=i: (0, i * per_gx + j))
                             for _ in phi_t], [chunk])(
                              x_gmem.at[rows], gb_gmem.at[rows], *phi_gmem, gx_gmem.at[rows])
        pl.run_scoped(with_operands, *[plgpu.SMEM((TM, s.zp), w.dtype) for w in phi_t])

    shapes = [(x.shape, x.dtype), ((mp, s.zp), F32)]
    return tuple(_kernel(body, [jax.ShapeDtypeStruct(sh, dt) for sh, dt in shapes], mp, s,
                         "mhc_input_bwd_mgpu")(
        x, *phi_t, gate[None], bias[None], u, r.T, gb, g_rows))


# ----------------------------------------------------------------------- output path
def _coefficients(post, res, s):
    """post `[Mp, Np]`, res `[Mp, Qp]` -> token-minor rows `[N + N*N, Mp]` for the kernels."""
    return _to_rows((post, s.n), (res, s.n * s.n))


def output_fwd(s, x, f, post, res):
    """`H_res·x + H_postᵀ·f` -> new streams `[Mp, N*Cp]` in the streams' dtype."""
    n, mp = s.n, x.shape[0]
    tc = _chunk(s, 2 * n + 1, x.dtype.itemsize)
    per = s.cp // tc

    def body(x_gmem, f_gmem, c_gmem, o_gmem):
        rows = _rows()
        c = _with_copies(lambda c_smem: _vecs(c_smem, n + n * n), c_gmem.at[:, rows])
        post, res = c[:n], nested(c[n:], n)

        def step(_, *refs):
            xs, f_smem, outs = refs[:n], refs[n], refs[n + 1:]
            xs = [_tile(a) for a in xs]
            f = _tile(f_smem)
            for i in range(n):
                outs[i][...] = (sum(res[i][k][:, None] * xs[k] for k in range(n))
                                + post[i][:, None] * f).astype(outs[i].dtype)
        streams = [_streams_spec(tc, per, i) for i in range(n)]
        _pipeline(step, (per,), streams + [_spec((TM, tc), lambda j: (0, j))], streams)(
            *[x_gmem.at[rows]] * n, f_gmem.at[rows], *[o_gmem.at[rows]] * n)

    return _kernel(body, jax.ShapeDtypeStruct(x.shape, x.dtype), mp, s, "mhc_output_mgpu")(
        x, f, _coefficients(post, res, s))


def output_bwd(s, x, f, post, res, g):
    """-> (d streams, d f, d post `[Mp, Np]`, d res `[Mp, Qp]`)."""
    n, mp = s.n, x.shape[0]
    tc = _chunk(s, 3 * n + 2, x.dtype.itemsize)
    per = s.cp // tc

    def body(x_gmem, f_gmem, c_gmem, g_gmem, gx_gmem, gf_gmem, gc_gmem):
        rows = _rows()
        c = _with_copies(lambda c_smem: _vecs(c_smem, n + n * n), c_gmem.at[:, rows])
        post, res = c[:n], nested(c[n:], n)

        def step(_, *refs):
            xs, f_smem, gs = refs[:n], refs[n], refs[n + 1:2 * n + 1]
            gxs, gf_smem, (gpost, gres) = refs[2 * n + 1:3 * n + 1], refs[3 * n + 1], refs[-1]
            xs = [_tile(a) for a in xs]
            gs = [_tile(a) for a in gs]
            f = _tile(f_smem)
            for k in range(n):
                gxs[k][...] = sum(res[i][k][:, None] * gs[i]
                                  for i in range(n)).astype(gxs[k].dtype)
            gf_smem[...] = sum(post[i][:, None] * gs[i] for i in range(n)).astype(gf_smem.dtype)
            return ([gpost[i] + jnp.sum(gs[i] * f, axis=1) for i in range(n)],
                    [gres[i * n + k] + jnp.sum(gs[i] * xs[k], axis=1)
                     for i in range(n) for k in range(n)])
        streams = [_streams_spec(tc, per, i) for i in range(n)]
        width = _spec((TM, tc), lambda j: (0, j))
        zero = _zeros()
        gpost, gres = _pipeline(step, (per,), streams + [width] + streams, streams + [width],
                                init_carry=([zero] * n, [zero] * (n * n)))(
            *[x_gmem.at[rows]] * n, f_gmem.at[rows], *[g_gmem.at[rows]] * n,
            *[gx_gmem.at[rows]] * n, gf_gmem.at[rows])
        _store_rows(gc_gmem, rows, gpost + gres)

    shapes = [(x.shape, x.dtype), (f.shape, f.dtype), ((n + n * n, mp), F32)]
    gx, gf, gc = _kernel(body, [jax.ShapeDtypeStruct(sh, dt) for sh, dt in shapes], mp, s,
                         "mhc_output_bwd_mgpu")(x, f, _coefficients(post, res, s), g)
    return (gx, gf, *_from_rows(gc, (n, s.np_), (n * n, s.qp)))


__all__ = ["TM", "input_bwd", "input_fwd", "output_bwd", "output_fwd"]
