"""Causal self-attention: multi-head (MHA) and DeepSeek's Multi-head Latent Attention (MLA).

Dimension letters (see `mhc`'s docstring): B batch, T tokens, C width, H heads, K query/key head
dim, J value head dim, R rank of the KV latent.
Parameters carry logical axis names (see mhc/sharding.py) for sharding.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mhc import sharding


_HEADS = ("batch", None, "heads", None)  # logical axes of a [B, T, H, K] activation


def param_init(std: float, names: tuple[str | None, ...]):
    """Normal(std) initializer that records logical axis names for sharding (metadata only:
    arrays are placed by mhc.sharding, not when the module is created)."""
    return nnx.with_partitioning(nnx.initializers.normal(std), names, eager_sharding=False)


def rope(x_BxTxHxK: jax.Array, positions_T: jax.Array, theta: float) -> jax.Array:
    """Rotate channel pairs (first half, second half) by position-dependent angles."""
    half = x_BxTxHxK.shape[-1] // 2
    freqs = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles = positions_T.astype(jnp.float32)[:, None] * freqs[None, :]  # [T, K/2]
    cos, sin = jnp.cos(angles)[:, None, :], jnp.sin(angles)[:, None, :]
    x = x_BxTxHxK.astype(jnp.float32)
    x1, x2 = x[..., :half], x[..., half:]
    out = jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
    return out.astype(x_BxTxHxK.dtype)


def causal_attention(q_BxTxHxK, k_BxTxHxK, v_BxTxHxJ) -> jax.Array:
    """softmax(q kᵀ / sqrt(K) + causal mask) v in fp32 logits -> `[B, T, H, J]` (v may have its
    own head dim J, as MLA's)."""
    scale = q_BxTxHxK.shape[-1] ** -0.5
    logits = jnp.einsum("bqhk,bshk->bhqs", q_BxTxHxK, k_BxTxHxK,
                        preferred_element_type=jnp.float32) * scale
    t = q_BxTxHxK.shape[1]
    logits = jnp.where(jnp.tril(jnp.ones((t, t), bool)), logits, -jnp.inf)
    probs = jax.nn.softmax(logits, axis=-1).astype(v_BxTxHxJ.dtype)
    return jnp.einsum("bhqs,bshj->bqhj", probs, v_BxTxHxJ)


class CausalSelfAttention(nnx.Module):
    """Standard multi-head attention with RoPE on the full head dim."""

    def __init__(self, d_model: int, n_heads: int, *, rope_theta: float = 10000.0,
                 init_std: float = 0.02, out_std: float | None = None, dtype=jnp.float32,
                 dot_general=jax.lax.dot_general, rngs: nnx.Rngs):
        # dot_general: the projections' GEMM (jax.lax.dot_general; mhc.fp8's under fp8);
        # the attention products themselves stay in the compute dtype (DeepSeek-V3's list)
        self.n_heads, self.head_dim, self.rope_theta = n_heads, d_model // n_heads, rope_theta
        self.qkv = nnx.Linear(d_model, 3 * d_model, use_bias=False, dtype=dtype, rngs=rngs,
                              dot_general=dot_general,
                              kernel_init=param_init(init_std, ("embed", "heads")))
        self.out = nnx.Linear(d_model, d_model, use_bias=False, dtype=dtype, rngs=rngs,
                              dot_general=dot_general,
                              kernel_init=param_init(out_std or init_std, ("heads", "embed")))

    def __call__(self, x_BxTxC: jax.Array) -> jax.Array:
        b, t, c = x_BxTxC.shape
        qkv = self.qkv(x_BxTxC).reshape(b, t, 3, self.n_heads, self.head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        positions = jnp.arange(t)
        q, k = rope(q, positions, self.rope_theta), rope(k, positions, self.rope_theta)
        y = sharding.constrain(jax.nn.dot_product_attention(q, k, v, is_causal=True), _HEADS)
        return self.out(y.reshape(b, t, c))


class MultiHeadLatentAttention(nnx.Module):
    """MLA (DeepSeek-V2/V3): keys and values come from a rank-R latent `c = RMSNorm(W_dkv x)`;
    a decoupled RoPE key of `rope_dim` channels is shared by all heads. Queries are full rank when
    `q_rank = 0` (the mHC paper does not give a query rank), else low-rank with their own norm.
    Per head: q = [q_nope (nope_dim) | rope(q_rope) (rope_dim)], k = [k_nope | rope(k_rope)],
    v (v_dim); scale 1/sqrt(nope_dim + rope_dim)."""

    def __init__(self, d_model: int, n_heads: int, *, kv_rank: int = 512, q_rank: int = 0,
                 nope_dim: int = 128, rope_dim: int = 64, v_dim: int = 128,
                 rope_theta: float = 10000.0, norm_eps: float = 1e-6, init_std: float = 0.02,
                 out_std: float | None = None, dtype=jnp.float32,
                 dot_general=jax.lax.dot_general,
                 rngs: nnx.Rngs):
        self.n_heads, self.nope_dim, self.rope_dim, self.v_dim = n_heads, nope_dim, rope_dim, v_dim
        self.kv_rank, self.rope_theta = kv_rank, rope_theta
        qk_dim = nope_dim + rope_dim

        def linear(d_in, d_out, names, std=init_std):
            return nnx.Linear(d_in, d_out, use_bias=False, dtype=dtype, rngs=rngs,
                              dot_general=dot_general, kernel_init=param_init(std, names))

        if q_rank:
            self.q_down = linear(d_model, q_rank, ("embed", "q_lora"))
            self.q_norm = nnx.RMSNorm(q_rank, epsilon=norm_eps, dtype=dtype, rngs=rngs)
            self.q_up = linear(q_rank, n_heads * qk_dim, ("q_lora", "heads"))
        else:
            self.q_down = self.q_norm = None
            self.q_up = linear(d_model, n_heads * qk_dim, ("embed", "heads"))
        self.kv_down = linear(d_model, kv_rank + rope_dim, ("embed", "kv_lora"))
        self.kv_norm = nnx.RMSNorm(kv_rank, epsilon=norm_eps, dtype=dtype, rngs=rngs)
        self.kv_up = linear(kv_rank, n_heads * (nope_dim + v_dim), ("kv_lora", "heads"))
        self.out = linear(n_heads * v_dim, d_model, ("heads", "embed"), out_std or init_std)

    def __call__(self, x_BxTxC: jax.Array) -> jax.Array:
        b, t, _ = x_BxTxC.shape
        h, positions = self.n_heads, jnp.arange(t)
        q_in = self.q_norm(self.q_down(x_BxTxC)) if self.q_down is not None else x_BxTxC
        q = self.q_up(q_in).reshape(b, t, h, self.nope_dim + self.rope_dim)
        q_nope, q_rope = q[..., :self.nope_dim], q[..., self.nope_dim:]
        kv_latent = self.kv_down(x_BxTxC)
        latent, k_rope = kv_latent[..., :self.kv_rank], kv_latent[..., self.kv_rank:]
        kv = self.kv_up(self.kv_norm(latent)).reshape(b, t, h, self.nope_dim + self.v_dim)
        k_nope, v = kv[..., :self.nope_dim], kv[..., self.nope_dim:]
        k_rope = jnp.broadcast_to(rope(k_rope[:, :, None, :], positions, self.rope_theta),
                                  (b, t, h, self.rope_dim))
        q = jnp.concatenate([q_nope, rope(q_rope, positions, self.rope_theta)], axis=-1)
        k = jnp.concatenate([k_nope, k_rope], axis=-1)
        q, k, v = (sharding.constrain(a, _HEADS) for a in (q, k, v))  # batch-split on a mesh
        y = sharding.constrain(causal_attention(q, k, v), _HEADS)
        return self.out(y.reshape(b, t, h * self.v_dim))
