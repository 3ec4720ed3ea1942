"""What the pure-JAX site (`mhc.connections`) and the fused kernels (`mhc.kernels`) share: the
three maps of a site, the checkpoint name of a branch's output and the list of implementations.

A leaf module (it imports nothing from `mhc`), so that the kernels need not import
`connections` and `connections` can choose the kernels without an import cycle.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
from jax.ad_checkpoint import checkpoint_name

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


def call_branch(branch: Callable, h_xC: jax.Array, has_aux: bool):
    """`branch(h)` -> (output `[..., C]` named BRANCH_OUT for the remat policies, aux or None);
    with `has_aux` the branch returns (output, aux)."""
    out, aux = branch(h_xC) if has_aux else (branch(h_xC), None)
    return checkpoint_name(out, BRANCH_OUT), aux
