"""Token blocks and lanes, shared by the kernels of every op and backend.

Per-token values travel as columns of `[TM, W]` lane tiles (TM tokens, one lane per value);
the kernels pick them out and put them back with masked lane sums / selects, because Triton
cannot slice register tensors and Mosaic GPU places these reductions in the wgmma row layout.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

F32 = jnp.float32


def check_block_m(block_m) -> int:
    """A token block size given by the caller: a multiple of 8 (a sublane tile)."""
    if not isinstance(block_m, int) or block_m < 8 or block_m % 8:
        raise ValueError(f"block_m={block_m!r}; must be a multiple of 8")
    return block_m


# lax.select / lax.logistic rather than jnp.where / jax.nn.sigmoid: no nested jit calls, which
# keeps the interpret-mode programs (and their compile time in the tests) small.
def lane_columns(a, count, keepdims: bool = True):
    """Columns 0..count-1 of a `[TM, W]` value as `[TM, 1]` each (`[TM]` without keepdims), by
    masked lane sums: Triton cannot slice register tensors, Mosaic GPU places these reductions
    in the wgmma row layout."""
    lane = jax.lax.broadcasted_iota(jnp.int32, a.shape, 1)
    zero = jnp.zeros_like(a)
    return [jnp.sum(jax.lax.select(lane == k, a, zero), axis=1, keepdims=keepdims)
            for k in range(count)]


def assemble_columns(cols, width):
    """`[TM, width]` fp32 from `[TM, 1]` or `[TM]` columns as its first columns (the rest 0)."""
    shape = (cols[0].shape[0], width)
    lane = jax.lax.broadcasted_iota(jnp.int32, shape, 1)
    out = jnp.zeros(shape, F32)
    for k, col in enumerate(cols):
        out = jax.lax.select(lane == k, jnp.broadcast_to(col if col.ndim == 2 else col[:, None],
                                                         shape), out)
    return out



def out_shapes(shapes):
    """(shape, dtype) pairs -> the `jax.ShapeDtypeStruct`s of a kernel's outputs."""
    return [jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in shapes]
