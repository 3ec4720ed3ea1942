"""The kernel targets: one row per target, and the only module that compares target names.

A target is where and how the kernels run: one Pallas backend, compiled for a GPU / TPU, or an
interpret mode of one on CPU (what the tests run). A row names the module implementing each op
there (`sinkhorn_<backend>.py`, `site_<backend>.py`: one file per (op, backend), none importing
another backend's) and the few facts the shared code asks of a target. Adding a backend is its
files and one row of TABLE.

  target                platform  ops from           what it is
  interpret             cpu       *_pallas           Pallas' interpret mode (the tests)
  triton                gpu       *_pallas           Pallas' Triton backend (deprecated by JAX 0.12)
  mosaic                tpu       *_pallas           Mosaic TPU
  mosaic_gpu            gpu       *_mosaic_gpu       Mosaic GPU, JAX >= 0.12 (then the GPU default)
  mosaic_gpu_interpret  cpu       *_mosaic_gpu       Mosaic GPU's own interpret mode (the tests)

The Triton and Mosaic TPU kernels are one "Pallas generic" implementation: the same kernel
bodies through `pl.pallas_call`, which differ only in what a row says (compiler parameters,
interpret, the lane multiple). Mosaic GPU has its own site kernels (Hopper's shared memory).
None has been compiled or run on a GPU/TPU in the tests: their lowerings are produced on CPU
(`tests/test_kernels.py`); `benchmarks/accelerator_check.py` compiles and runs them on one.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
from typing import Any, Callable

import jax

from mhc import targets

# the ops a row names a module for, and what that module defines (see sinkhorn_op.py, site_op.py)
OPS = {"sinkhorn": ("call",),
       "site": ("BACKEND", "ROWS", "MAX_LOGITS", "input_fwd", "input_bwd", "output_fwd",
                "output_bwd")}


def _always() -> bool:
    return True


@functools.cache
def _has_mosaic_gpu_kernel() -> bool:
    """Whether this JAX has Mosaic GPU's `kernel` entry point and its interpret mode."""
    try:
        from jax.experimental.pallas import mosaic_gpu as plgpu
    except ImportError:
        return False
    return hasattr(plgpu, "kernel") and hasattr(plgpu, "InterpretGPUParams")


def _triton_params():
    # explicit Triton parameters: jax 0.10 defaults a GPU pallas_call to Mosaic GPU, and the
    # generic kernels are written for Triton
    from jax.experimental.pallas import triton as pltriton
    return pltriton.CompilerParams(num_warps=4, num_stages=2)


@dataclasses.dataclass(frozen=True)
class Target:
    """One kernel target.

    platform: the `mhc.targets.current_platform()` whose targets list it. sinkhorn / site: the
    modules of `mhc.kernels` implementing each op there. interpret: run by an interpret mode on
    CPU, not compiled. lane_multiple: lane extents and offsets of the site kernels are multiples
    of it (Mosaic TPU must prove every lane offset a multiple of 128; Triton's dot takes >= 16).
    preferred: listed first on its platform. compiler_params: Pallas compiler parameters for
    `pl.pallas_call` (None: pass `interpret` instead). requires / available: what it needs of JAX,
    and whether this JAX has it."""
    name: str
    platform: str
    sinkhorn: str
    site: str
    interpret: bool = False
    lane_multiple: int = 16
    preferred: bool = False
    compiler_params: Callable[[], Any] | None = None
    requires: str = ""
    available: Callable[[], bool] = _always


_MOSAIC_GPU = dict(sinkhorn="sinkhorn_mosaic_gpu", site="site_mosaic_gpu",
                   requires="jax >= 0.12", available=_has_mosaic_gpu_kernel)
TABLE: tuple[Target, ...] = (
    Target("interpret", "cpu", "sinkhorn_pallas", "site_pallas", interpret=True),
    Target("triton", "gpu", "sinkhorn_pallas", "site_pallas", compiler_params=_triton_params),
    Target("mosaic", "tpu", "sinkhorn_pallas", "site_pallas", lane_multiple=128),
    Target("mosaic_gpu", "gpu", preferred=True, **_MOSAIC_GPU),
    Target("mosaic_gpu_interpret", "cpu", interpret=True, **_MOSAIC_GPU),
)
TARGETS = tuple(t.name for t in TABLE)
_BY_NAME = {t.name: t for t in TABLE}


def backend_targets(backend: str | None = None) -> tuple[str, ...]:
    """The targets that run on a platform (default: the one in context,
    `mhc.targets.current_platform`), the default first: on GPU Mosaic GPU (JAX >= 0.12) then
    the deprecated Triton; Mosaic on TPU; the interpret modes elsewhere (CPU)."""
    platform = backend or targets.current_platform()
    if platform not in {t.platform for t in TABLE}:
        platform = "cpu"
    rows = [t for t in TABLE if t.platform == platform and t.available()]
    return tuple(t.name for t in sorted(rows, key=lambda t: not t.preferred))


def default_target() -> str:
    """Mosaic GPU on GPU (Triton before JAX 0.12), Mosaic on TPU, interpret mode elsewhere."""
    return backend_targets()[0]


def available(target: str) -> bool:
    """Whether this JAX can run `target` (one of TARGETS)."""
    return _BY_NAME[target].available()


def resolve(target: str | None) -> Target:
    """The row of `target` (None = the default of the platform in context); the one check of a
    target argument: a name of TARGETS that this JAX can run."""
    row = _BY_NAME.get(default_target() if target is None else target)
    if row is None:
        raise ValueError(f"kernel target={target!r}; allowed: {', '.join(TARGETS)}")
    if not row.available():
        raise ValueError(f"kernel target={target!r} needs {row.requires} (this is "
                         f"{jax.__version__}); allowed here: "
                         f"{', '.join(t.name for t in TABLE if t.available())}")
    return row


def call_options(target: str | None) -> dict:
    """`pl.pallas_call` keyword arguments for a target (None = the default backend's)."""
    row = resolve(target)
    if row.compiler_params is not None:
        return {"compiler_params": row.compiler_params()}
    return {"interpret": row.interpret}


def implementation(target: str, op: str):
    """The module implementing `op` (one of OPS) on `target`: imported here, on first use, so a
    backend's Pallas modules load only where it runs (and Mosaic GPU's only on JAX >= 0.12)."""
    return importlib.import_module(f"{__package__}.{getattr(resolve(target), op)}")
