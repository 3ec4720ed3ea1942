"""SwiGLU feed-forward block: `down(silu(gate(x)) * up(x))`. C width, F hidden width."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mhc.model.attention import param_init


class SwiGLU(nnx.Module):
    def __init__(self, d_model: int, d_ff: int, *, init_std: float = 0.02,
                 out_std: float | None = None, dtype=jnp.float32,
                 dot_general=jax.lax.dot_general,
                 rngs: nnx.Rngs):
        # dot_general: jax.lax.dot_general (nnx.Linear's default) or mhc.fp8's FP8 GEMM
        self.gate_up = nnx.Linear(d_model, 2 * d_ff, use_bias=False, dtype=dtype, rngs=rngs,
                                  dot_general=dot_general,
                                  kernel_init=param_init(init_std, ("embed", "mlp")))
        self.down = nnx.Linear(d_ff, d_model, use_bias=False, dtype=dtype, rngs=rngs,
                               dot_general=dot_general,
                               kernel_init=param_init(out_std or init_std, ("mlp", "embed")))

    def __call__(self, x_BxTxC: jax.Array) -> jax.Array:
        gate, up = jnp.split(self.gate_up(x_BxTxC), 2, axis=-1)
        return self.down(jax.nn.silu(gate) * up)
