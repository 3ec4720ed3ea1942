"""The two unprojected ends: the plain residual's fixed H = I, and HC's raw H.

Letters (see `mhc`'s docstring): N streams, Y logits of H_res.
  identity       H = I (plain residual mixing), Y = 0
  unconstrained  H = reshape(logits) (Hyper-Connections), no constraint at all, Y = N*N
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mhc.manifolds.base import GUARANTEES, Manifold, as_square


def identity(logits_xY: jax.Array, n: int) -> jax.Array:
    """I `[..., n, n]` for every token (the logits `[..., 0]` only carry the batch shape)."""
    return jnp.broadcast_to(jnp.eye(n, dtype=jnp.float32), (*logits_xY.shape[:-1], n, n))


def _no_logits(n: int, how: str, offdiag_logit: float) -> np.ndarray:
    return np.zeros(0, np.float32)


def _raw_init(n: int, how: str, offdiag_logit: float) -> np.ndarray:
    """The matrix itself: I ("identity") or J/n ("uniform")."""
    if how == "identity":
        return np.eye(n, dtype=np.float32).ravel()
    return np.full(n * n, 1.0 / n, np.float32)


# no logits: H = I whatever the init, so only the identity init is honest
IDENTITY = Manifold("identity", identity, count=lambda n: 0, initial_logits=_no_logits,
                    guarantees=GUARANTEES, inits=("identity",), sinkhorn_start=None)
UNCONSTRAINED = Manifold("unconstrained", as_square, initial_logits=_raw_init,
                         doubly_stochastic=False, sinkhorn_start=None)
