"""The Sinkhorn on Mosaic GPU, JAX's supported GPU backend from 0.12 (Pallas' Triton backend is
deprecated there): the kernel bodies of `sinkhorn_op.py`, unchanged, run as a `plgpu.kernel`.

One program per grid step: each block is copied from global memory (GMEM) into shared memory
(SMEM), the body runs on the SMEM refs, and the output blocks are copied back. The bodies do only
element-wise work on `[1, TM]` rows (the "token-minor" layout), which Mosaic GPU's layout
inference places without annotations. An input whose block is the whole array is not copied: it
stays in GMEM and is read where it is used. No pipelining: the blocks are `[Qp, TM]` logits, the
work is the iteration, not the copy. (The fused site has its own kernels, `site_mosaic_gpu.py`,
pipelined and on the tensor cores: a token tile of the streams does not fit in SMEM.)
"""
from __future__ import annotations

import jax
from jax.experimental import pallas as pl

from mhc.kernels.mosaic_gpu_pipeline import block_slice, launch, plgpu


def call(kernel, *, out_shape, grid, in_specs, out_specs, name: str, target: str):
    """`pl.pallas_call(kernel, out_shape=..., grid=(G,), in_specs=..., out_specs=...)` on Mosaic
    GPU: returns the function of the inputs. `out_shape` / `out_specs` may be one
    `ShapeDtypeStruct` / spec or lists of them. The kernel is named after its launcher, `body`
    (`name` is unused: kept for the call's shape, the same on every backend)."""
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
                    s[...] = gmem[i][block_slice(specs[i], m)]
            kernel(*refs)
            for i, s in zip(copied, smem):
                if i >= n_in:
                    gmem[i][block_slice(specs[i], m)] = s[...]

        pl.run_scoped(scoped, *[plgpu.SMEM(specs[i].block_shape, gmem[i].dtype) for i in copied])

    return launch(body, out_shape if single else list(out_shape), steps, target)
