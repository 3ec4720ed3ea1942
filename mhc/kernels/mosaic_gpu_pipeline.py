"""Mosaic GPU building blocks (JAX >= 0.12): launching a kernel, tiles and per-token vectors in
the tensor cores' layouts, TMA copies, and a pipeline over chunks of the streams.

Used by the Mosaic GPU kernels of both ops (`site_mosaic_gpu.py`, `sinkhorn_mosaic_gpu.py`).
Sizes are Hopper's: TM = 64 token rows per program (wgmma's M for one warpgroup), pipeline
buffers within SMEM_BUDGET of the 227 KiB of shared memory (SMEM) per H100 block. Per-token
vectors are `[TM]` (one lane per token) in the wgmma row layout, tiles `[TM, W]` in the wgmma
accumulator's layout, so the two broadcast against each other without a relayout. Coefficient
arrays cross GMEM as token-minor rows `[K, Mp]` (`to_rows` / `from_rows`, small arrays).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from mhc.kernels import backends
from mhc.kernels.layout import F32

try:  # jax >= 0.12 for `plgpu.kernel` (`backends` offers the Mosaic GPU targets only then)
    from jax.experimental.pallas import mosaic_gpu as plgpu
except ImportError:
    plgpu = None

TM = 64  # token rows per program: wgmma's M for one warpgroup
STEPS_IN_FLIGHT = 2  # chunks being copied while one is computed
SMEM_BUDGET = 160 * 1024  # bytes of pipeline buffers per program (H100: 227 KiB per block)


def launch(body, out_type, steps: int, target: str, name: str | None = None):
    """`plgpu.kernel(body)` over a 1-D grid of `steps` programs (axis "m"), in Mosaic GPU's
    interpret mode where `target` is one; `name` None names the kernel after `body`."""
    return plgpu.kernel(body, out_type=out_type, grid=(steps,), grid_names=("m",),
                        interpret=(plgpu.InterpretGPUParams()
                                   if backends.resolve(target).interpret else None),
                        kernel_name=name)


def chunk_lanes(s, chunks_per_step: int, itemsize: int) -> int:
    """Lanes per pipelined chunk: the largest power of two <= s.tc (so it divides Cp) whose
    `chunks_per_step` [TM, TC] buffers, STEPS_IN_FLIGHT deep, fit SMEM_BUDGET."""
    tc = s.tc
    while tc > 16 and chunks_per_step * STEPS_IN_FLIGHT * TM * tc * itemsize > SMEM_BUDGET:
        tc //= 2
    return tc


def token_zeros():
    """A `[TM]` zero carry, in the layout of the per-token reductions it accumulates."""
    return plgpu.layout_cast(jnp.zeros((TM,), F32), plgpu.Layout.WGMMA.reduce(1))


def to_rows(*parts):
    """(array `[Mp, >= w]`, w) pairs -> their first w columns as token-minor rows `[sum w, Mp]`."""
    return jnp.concatenate([a[:, :w] for a, w in parts], axis=1).T


def from_rows(rows, *widths):
    """Token-minor rows `[sum w, Mp]` -> `[Mp, padded]` arrays, one per (w, padded) pair."""
    out, start = [], 0
    for w, padded in widths:
        out.append(_pad(rows[start:start + w].T, padded))
        start += w
    return out


def _pad(a, width):
    return jnp.pad(a, ((0, 0), (0, width - a.shape[1])))


def store_rows(ref, rows, vectors):
    """Per-token `[TM]` vectors into rows 0..K-1 of a token-minor `[K, Mp]` GMEM ref, at this
    program's token columns `rows`."""
    for k, v in enumerate(vectors):
        ref[k, rows] = v


def tile(ref):
    """A `[TM, W]` SMEM chunk in registers, in the wgmma accumulator's layout (so per-token
    `[TM]` vectors broadcast against it without a relayout)."""
    return plgpu.load(ref, layout=plgpu.Layout.WGMMA).astype(F32)


def vecs(ref, count):
    """Rows 0..count-1 of a token-minor `[K, TM]` SMEM ref as `[TM]` vectors."""
    return [plgpu.load(ref.at[k], layout=plgpu.Layout.WGMMA.reduce(1)) for k in range(count)]


def with_copies(body, *gmem_slices):
    """`body(*smem)`, each GMEM slice first copied into its own SMEM buffer (TMA; one barrier):
    registers read per-token values from SMEM in a layout they can be broadcast in."""

    def scoped(*refs):
        *smem, barrier = refs
        for src, dst in zip(gmem_slices, smem):
            plgpu.copy_gmem_to_smem(src, dst, barrier)
        plgpu.barrier_wait(barrier)
        return body(*smem)
    return pl.run_scoped(scoped, *[plgpu.SMEM(a.shape, a.dtype) for a in gmem_slices],
                         plgpu.Barrier(num_arrivals=len(gmem_slices)))


def split_operands(a, dtype):
    """fp32 `a` as operands of `dtype` for the tensor cores: [a] for fp32 (tf32), else the
    hi + lo parts, hi = a rounded to dtype, lo = the rest rounded to dtype."""
    if dtype == F32:
        return [a]
    hi = a.astype(dtype)
    return [hi, (a - hi.astype(F32)).astype(dtype)]


def block_spec(block, index_map):
    return plgpu.BlockSpec(block, index_map)


def block_slice(spec, step):
    """The slice of an array that `spec` maps grid step `step` to (block indices x shape)."""
    return tuple(pl.ds(i * b, b) for i, b in zip(spec.index_map(step), spec.block_shape))


def pipeline(body, grid, in_specs, out_specs=(), init_carry=None):
    """`plgpu.emit_pipeline(body, ...)` over a 1-D grid, called the same way (GMEM inputs, then
    GMEM outputs), except that the outputs are copied out here: the body writes each output
    block into one of STEPS_IN_FLIGHT SMEM slots, and the slot's TMA copy to GMEM runs while the
    next steps compute. (emit_pipeline's own output copies are predicated, which Mosaic GPU's
    interpret mode does not implement, so the tests could not run them.)"""
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
                        plgpu.copy_smem_to_gmem(src, dst.at[block_slice(spec, j)])
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


def tile_rows():
    """This program's TM token rows of a `[Mp, ...]` GMEM array."""
    return pl.ds(jax.lax.axis_index("m") * TM, TM)


def row_vector(ref):
    """A `[1, Zp]` SMEM ref as a `[1, Zp]` value broadcastable over the token rows."""
    return plgpu.load(ref.at[0], layout=plgpu.Layout.WGMMA.reduce(0))[None, :]


def streams_spec(tc, per, i):
    """Chunk j of stream i of a `[TM, N*Cp]` tile (per = chunks per stream)."""
    return block_spec((TM, tc), lambda j: (0, i * per + j))


def width_spec(tc):
    """Chunk j of a `[TM, Cp]` tile (the branch-width arrays: branch input / output)."""
    return block_spec((TM, tc), lambda j: (0, j))
