"""Pallas kernels for mHC and when they are used.

  sinkhorn(logits, iters, convention=...)    Sinkhorn forward + recomputing backward
                                             (sinkhorn_op.py)
  apply_site(params, streams, branch, spec)  one mHC site through the fused input/output kernels
                                             (site_op.py); same results as
                                             `mhc.connections.apply_site`

Selection (`ConnectionSpec.kernels` / `ModelConfig.kernels`):
  "auto"    Pallas on the platforms in AUTO_PALLAS (where the kernels were measured faster than
            XLA; none yet), the pure-JAX (XLA) path everywhere else
  "pallas"  always Pallas; on CPU that is interpret mode (slow, for tests)
  "xla"     always the pure-JAX path
  "reference" the pure-JAX path as plain einsums + autodiff (what the fast paths are tested against)
Under a multi-device mesh the kernels run per shard of the tokens (`jax.shard_map`, see
`mhc.sharding.per_token_shard`), so the compiled program holds no gather of the streams around them.
Backends (`target=`; `backend_targets()` lists a platform's, its default first): on GPU Mosaic GPU
(JAX >= 0.12), else the deprecated Triton; Mosaic on TPU; interpret modes on CPU. The table of
targets, and what runs where, is `backends.py`; each op has one module per backend
(`sinkhorn_pallas.py`, `sinkhorn_mosaic_gpu.py`, `site_pallas.py`, `site_mosaic_gpu.py`) behind
the shared checks, layouts and custom VJPs of `sinkhorn_op.py` / `site_op.py`.
Only dynamic mHC with the Sinkhorn manifold, all three maps learned, and the "recompute" or
"autodiff" Sinkhorn gradient (both give the exact gradient of the truncated iteration, which the
kernels compute) is fused; every other kind / option silently uses the pure-JAX path.
"""
from __future__ import annotations

from mhc import targets
from mhc.kernels.backends import (TARGETS, available, backend_targets, call_options,
                                  default_target)
from mhc.kernels.sinkhorn_op import sinkhorn
from mhc.kernels.site_op import apply_site, fusable
from mhc.kernels.site_layout import chunk_width
from mhc.maps import KERNELS, MAY_FUSE

# The platforms (`mhc.targets.current_platform()`) on which "auto" takes the kernels: only where
# benchmarks/accelerator_check.py measured them ahead of the XLA path (benchmarks/README.md records
# each run). No accelerator run has shown that yet, so "auto" is XLA everywhere; "pallas" forces
# the kernels on any platform.
AUTO_PALLAS: tuple[str, ...] = ()


def check_kernels(kernels: str) -> str:
    if kernels not in KERNELS:
        raise ValueError(f"kernels={kernels!r}; allowed: {', '.join(KERNELS)}")
    return kernels


def pallas_selected(kernels: str) -> bool:
    """Whether `kernels` means Pallas on the platform in context (`targets.current_platform`)."""
    check_kernels(kernels)
    return kernels == "pallas" or (kernels == "auto"
                                   and targets.current_platform() in AUTO_PALLAS)


def use_fused(spec) -> bool:
    """Whether `mhc.connections.apply_site` routes this site to the fused kernels (at trace
    time): a fusable spec with "pallas", or "auto" on a platform in AUTO_PALLAS."""
    return fusable(spec) and spec.kernels in MAY_FUSE and pallas_selected(spec.kernels)


__all__ = ["AUTO_PALLAS", "KERNELS", "TARGETS", "apply_site", "available", "backend_targets",
           "call_options", "check_kernels", "chunk_width", "default_target", "fusable",
           "pallas_selected", "sinkhorn", "use_fused"]
