"""The fused site's padded shapes, shared by its kernels on every backend.

Dimension letters (see `mhc`'s docstring): M tokens (B*T flattened), N streams, C width, Q = N*N,
Z = 2N + N*N logits. The kernels see the streams as rows `[Mp, N*Cp]`: M padded up to a multiple
of the token block, C up to a multiple of the chunk width TC (never for the paper's widths). The
logits are `Zp` lanes, the per-token maps `Np` / `Qp` lanes (powers of two: Triton's tensors).
"""
from __future__ import annotations

import dataclasses

from jax.experimental import pallas as pl

from mhc.kernels import backends
from mhc.kernels.layout import check_block_m

DEFAULT_BLOCK_M = 64
MIN_LANES = 16  # the narrowest chunk / logit tile (Triton's dot takes >= 16)


@dataclasses.dataclass(frozen=True)
class Static:
    """Shapes and options baked into the kernels (hashable: a custom_vjp static argument)."""
    n: int
    c: int  # true width
    cp: int  # padded width (multiple of tc)
    tc: int
    block_m: int
    iters: int
    convention: str
    eps: float  # Sinkhorn eps (deepseek_v4)
    pre_eps: float
    norm_eps: float
    target: str  # one of backends.TARGETS

    @property
    def np_(self):
        return pl.next_power_of_2(self.n)

    @property
    def qp(self):
        return pl.next_power_of_2(self.n * self.n)

    @property
    def zp(self):
        """Logit columns: a power of two >= 16 (Triton's dot), rounded up to the target's lane
        multiple (128 on Mosaic TPU)."""
        p = max(MIN_LANES, pl.next_power_of_2(2 * self.n + self.n * self.n))
        lanes = backends.resolve(self.target).lane_multiple
        return -(-p // lanes) * lanes


def chunk_width(c: int, target: str | None = None) -> int:
    """Lanes per stream chunk: the largest power of two in [16, 128] dividing C, else 128 or the
    next power of two above C (then C is zero-padded). At least the target's lane multiple:
    always 128 on Mosaic TPU, whose compiler must prove every lane offset a multiple of 128
    (C = 64 or 96 is padded to 128 there). `target` None: no target's constraint."""
    lanes = MIN_LANES if target is None else backends.resolve(target).lane_multiple
    for tc in (128, 64, 32, 16):
        if tc >= lanes and c % tc == 0:
            return tc
    return min(128, max(lanes, pl.next_power_of_2(c)))


def block_rows(m: int, block_m: int | None, fixed: int | None, backend: str) -> int:
    """Token rows per kernel program for M = `m` rows: the `fixed` count of a backend whose
    kernels take only that one (named `backend` in the error), else the caller's `block_m`
    (a multiple of 8), by default min(64, M rounded up to a power of two)."""
    if fixed is not None:
        if block_m not in (None, fixed):
            raise ValueError(f"block_m={block_m!r}; the {backend} kernels take {fixed} token "
                             f"rows per program")
        return fixed
    if block_m is not None:
        return check_block_m(block_m)
    return min(DEFAULT_BLOCK_M, max(8, pl.next_power_of_2(m)))
