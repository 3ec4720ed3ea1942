"""The Sinkhorn on the Pallas generic backends: Triton (GPU), Mosaic TPU and Pallas' interpret
mode (CPU).

The kernel bodies of `sinkhorn_op.py` run unchanged through `pl.pallas_call`; the target's row
(`backends.call_options`) adds only Triton's compiler parameters or the interpret flag. Their
`[1, TM]` rows are whole vregs on TPU (TM a multiple of 128) and power-of-two tensors for Triton.
"""
from __future__ import annotations

from jax.experimental import pallas as pl

from mhc.kernels import backends


def call(kernel, *, out_shape, grid, in_specs, out_specs, name: str, target: str):
    """`pl.pallas_call(kernel, ...)` for `target`: returns the function of the inputs."""
    return pl.pallas_call(kernel, out_shape=out_shape, grid=grid, in_specs=in_specs,
                          out_specs=out_specs, name=name, **backends.call_options(target))
