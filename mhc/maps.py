"""What the pure-JAX site (`mhc.connections`) and the fused kernels (`mhc.kernels`) share: the
three maps of a site, the checkpoint name of a branch's output and the list of implementations.

A leaf module (it imports nothing from `mhc`), so that the kernels need not import
`connections` and `connections` can choose the kernels without an import cycle.
"""
from __future__ import annotations

from typing import NamedTuple

import jax

MAP_NAMES = ("pre", "post", "res")
BRANCH_OUT = "branch_out"  # name of F's output, kept by the "mhc" remat policy
# implementation of a site (`ConnectionSpec.kernels`; chosen in `mhc.kernels.use_fused`):
#   auto       the fused kernels on the platforms of `mhc.kernels.AUTO_PALLAS`, else the pure-JAX
#              path
#   pallas     always the kernels (interpret mode on CPU)
#   xla        always the pure-JAX path (custom VJPs in the forms XLA:CPU runs fast)
#   reference  the same math as plain einsums + autodiff: the formulation the fast paths are
#              tested against (a spec value, so it is part of every jit cache key)
KERNELS = ("auto", "xla", "pallas", "reference")
MAY_FUSE = ("auto", "pallas")  # the values under which a site may take the fused kernels


class Maps(NamedTuple):
    """The three maps of one site, fp32: pre `[..., N]`, post `[..., N]`, res `[..., N, N]`."""
    pre: jax.Array
    post: jax.Array
    res: jax.Array
