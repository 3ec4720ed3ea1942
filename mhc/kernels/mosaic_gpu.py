"""The kernels on JAX's supported GPU backend, Mosaic GPU (Pallas' Triton backend is deprecated
from JAX 0.12 on).

`call(kernel, ...)` runs a `pl.pallas_call`-style kernel (refs in, refs out, blocks described by
`pl.BlockSpec`s over a 1-D grid of token blocks) as a `plgpu.kernel`: one program per grid step;
each block is copied from global memory (GMEM) into shared memory (SMEM), the unchanged kernel
body runs on the SMEM refs, and the output blocks are copied back. The bodies in
`sinkhorn_kernel.py` do only element-wise work on `[1, TM]` rows (the "token-minor" layout), which
Mosaic GPU's layout inference places without annotations. An input whose block is the whole
array is not copied: it stays in GMEM and is read where it is used. Only the Sinkhorn kernel
comes through here: its blocks are small. The fused site has its own Mosaic GPU kernels
(`fused_site_mgpu.py`), pipelined and on the tensor cores, because a token tile of the streams
does not fit in SMEM at the paper's width.

No pipelining: a program copies its blocks in and out synchronously (the Sinkhorn's blocks are
`[Qp, TM]` logits, its work is the iteration, not the copy). Never chosen by "auto"
(`mhc.kernels.AUTO_PALLAS`) until measured.

Targets: "mosaic_gpu" (compiled for a GPU) and "mosaic_gpu_interpret" (Mosaic GPU's own
interpret mode on CPU, `plgpu.InterpretGPUParams`: what the tests run). Needs JAX >= 0.12
(`plgpu.kernel` with interpret mode).
"""
from __future__ import annotations

import jax
from jax.experimental import pallas as pl


def available() -> bool:
    """Whether this JAX has Mosaic GPU's `kernel` entry point and its interpret mode."""
    try:
        from jax.experimental.pallas import mosaic_gpu as plgpu
    except ImportError:
        return False
    return hasattr(plgpu, "kernel") and hasattr(plgpu, "InterpretGPUParams")


def _block(ref, spec: pl.BlockSpec, m):
    """The slice of `ref` that `spec` maps grid step `m` to (block indices x block shape)."""
    index = spec.index_map(m)
    return tuple(pl.ds(i * b, b) for i, b in zip(index, spec.block_shape))


def call(kernel, *, out_shape, grid, in_specs, out_specs, interpret: bool):
    """`pl.pallas_call(kernel, out_shape=..., grid=(G,), in_specs=..., out_specs=...)` on Mosaic
    GPU: returns the function of the inputs. `out_shape` / `out_specs` may be one
    `ShapeDtypeStruct` / spec or lists of them. The caller checks the target first
    (`sinkhorn_kernel.call_options`: JAX >= 0.12)."""
    from jax.experimental.pallas import mosaic_gpu as plgpu
    single = not isinstance(out_shape, (list, tuple))
    o_specs = [out_specs] if single else list(out_specs)
    in_specs = list(in_specs)
    (steps,) = grid

    def body(*gmem):
        m = jax.lax.axis_index("m")
        specs, n_in = [*in_specs, *o_specs], len(in_specs)
        # every block goes through SMEM except an input whose block is the whole array (weights):
        # that one stays in GMEM, read where it is used
        copied = [i for i, (g, spec) in enumerate(zip(gmem, specs))
                  if i >= n_in or tuple(spec.block_shape) != tuple(g.shape)]

        def scoped(*smem):
            refs = list(gmem)
            for i, s in zip(copied, smem):
                refs[i] = s
                if i < n_in:
                    s[...] = gmem[i][_block(gmem[i], specs[i], m)]
            kernel(*refs)
            for i, s in zip(copied, smem):
                if i >= n_in:
                    gmem[i][_block(gmem[i], specs[i], m)] = s[...]

        pl.run_scoped(scoped, *[plgpu.SMEM(specs[i].block_shape, gmem[i].dtype) for i in copied])

    return plgpu.kernel(body, out_type=out_shape if single else list(out_shape), grid=(steps,),
                        grid_names=("m",),
                        interpret=plgpu.InterpretGPUParams() if interpret else None)
