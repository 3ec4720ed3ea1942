"""DeepSeek-V3's fine-grained FP8 GEMM (arXiv 2412.19437, §3.3), forward and backward.

Every GEMM input is float8_e4m3fn (max 448), in the forward pass and in both backward GEMMs:
  activations (and activation gradients)  one fp32 scale per 1x128 tile along the contraction
  weights                                 one fp32 scale per 128x128 block
  accumulation                            each 128-element chunk of the contraction is one FP8
                                          product with fp32 output; the chunk's two scales are
                                          applied to it in fp32 and the chunks are summed in fp32
The last row is V3's "promotion to CUDA cores every N_C = 128 elements": the H100's tensor cores
accumulate an FP8 product in ~14 bits, so V3 never lets them accumulate more than 128 products.
Here the chunks are the batch axis of one batched FP8 dot (`[.., C, M, N]` fp32 partial sums,
C = K / 128), which XLA:GPU compiles to one FP8 GEMM (a Triton gemm fusion on f8e4m3fn operands
without autotuning, `__cublas$lt$matmul$f8` with cuBLASLt) followed by a fused scale-and-sum;
DeepGEMM does the same promotion inside one kernel, without writing the C partial sums out.

A contraction (or block) that is not a multiple of 128 is zero-padded to one: a partial tile is
the tile with zeros appended, which changes neither its amax nor any product (so a width-64 CPU
model has one tile of 64 real values per row). Scales are amax / 448 in fp32 (an all-zero tile
gets scale 1), not rounded to powers of two (V3's choice; DeepGEMM's UE8M0 scales are later).

Backward (V3's Figure 6, with y = x w):
  dgrad  dx = dy wᵀ   dy in 1x128 tiles along N; the forward's e4m3 w blocks, transposed
  wgrad  dw = xᵀ dy   the contraction runs over the M tokens: the forward's cached e4m3 x is
                      dequantised and requantised in 128x1 tiles (128 tokens of one channel), as
                      is dy; M is padded to a multiple of 128 likewise
Only e4m3 copies (and their scales) are kept for the backward pass: 1 byte an element.

Dimension letters: B batch of independent GEMMs (experts; 1 for a dense layer), M rows (tokens),
K contraction, N output features, C = ceil(K / 128) chunks, T = 128 the tile.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

E4M3 = jnp.float8_e4m3fn
E4M3_MAX = float(jnp.finfo(E4M3).max)  # 448
TILE = 128


def _pad_axis(x, axis: int, multiple: int = TILE):
    """Zero-pad `axis` of `x` up to a multiple of `multiple`."""
    size = x.shape[axis]
    extra = -size % multiple
    if not extra:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, extra)
    return jnp.pad(x, widths)


def _scale(amax):
    """fp32 scale that maps amax onto e4m3's largest value (1 for an all-zero tile/block)."""
    return jnp.where(amax > 0, amax / E4M3_MAX, 1.0).astype(jnp.float32)


def _to_e4m3(x_scaled):
    # x / s lies in [-448, 448] up to the division's rounding; clip so a value one ulp past
    # 448 cannot become e4m3fn's NaN (the format has no infinity)
    return jnp.clip(x_scaled, -E4M3_MAX, E4M3_MAX).astype(E4M3)


def quantise_tiles(x_Xx_K: jax.Array) -> tuple[jax.Array, jax.Array]:
    """1x128 tiles along the last axis: `x [..., K]` -> (`q [..., C, 128]` e4m3,
    `s [..., C]` fp32) with x ≈ q * s per tile (K zero-padded to C·128)."""
    x = _pad_axis(x_Xx_K.astype(jnp.float32), -1)
    tiles = x.reshape(*x.shape[:-1], x.shape[-1] // TILE, TILE)
    s = _scale(jnp.max(jnp.abs(tiles), axis=-1))
    return _to_e4m3(tiles / s[..., None]), s


def dequantise_tiles(q_Xx_CxT: jax.Array, s_Xx_C: jax.Array) -> jax.Array:
    """Inverse of `quantise_tiles` up to rounding: `[..., C, 128]`, `[..., C]` -> `[..., C·128]`
    fp32 (the padded width; slice to K)."""
    x = q_Xx_CxT.astype(jnp.float32) * s_Xx_C[..., None]
    return x.reshape(*x.shape[:-2], -1)


def quantise_blocks(w_Xx_KxN: jax.Array) -> tuple[jax.Array, jax.Array]:
    """128x128 blocks over the last two axes: `w [..., K, N]` -> (`q [..., Kp, Np]` e4m3,
    `s [..., Kp/128, Np/128]` fp32) with K, N zero-padded to Kp, Np (multiples of 128)."""
    w = _pad_axis(_pad_axis(w_Xx_KxN.astype(jnp.float32), -1), -2)
    *lead, kp, np_ = w.shape
    blocks = w.reshape(*lead, kp // TILE, TILE, np_ // TILE, TILE)
    s = _scale(jnp.max(jnp.abs(blocks), axis=(-3, -1)))
    q = _to_e4m3(blocks / s[..., :, None, :, None])
    return q.reshape(*lead, kp, np_), s


def dequantise_blocks(q_Xx_KpxNp: jax.Array, s_Xx_CkxCn: jax.Array) -> jax.Array:
    """Inverse of `quantise_blocks` up to rounding: `[..., Kp, Np]` fp32 (slice to K, N)."""
    expand = jnp.repeat(jnp.repeat(s_Xx_CkxCn, TILE, axis=-2), TILE, axis=-1)
    return q_Xx_KpxNp.astype(jnp.float32) * expand


def chunked_dot(aq_BxMxCxT, sa_BxMxC, bq_BxCxTxN, sb_BxCxN) -> jax.Array:
    """sum_c (aq[:, :, c] · bq[:, c]) * sa[:, :, c] * sb[:, c] -> `[B, M, N]` fp32.

    One batched FP8 dot over (B, C) gives the per-chunk products `[B, C, M, N]` with fp32
    output (each accumulates only 128 e4m3 products: V3's promotion interval); the chunk's
    tile scale (per row) and block scale (per column) are applied in fp32 and the C chunks
    summed in fp32."""
    partial = jax.lax.dot_general(aq_BxMxCxT, bq_BxCxTxN, (((3,), (2,)), ((0, 2), (0, 1))),
                                  preferred_element_type=jnp.float32)  # [B, C, M, N]
    scale = jnp.swapaxes(sa_BxMxC, 1, 2)[..., None] * sb_BxCxN[:, :, None, :]
    return jnp.sum(partial * scale, axis=1)


def _column_scales(s_BxCkxCn, n: int) -> jax.Array:
    """Block scales `[B, Ck, Cn]` -> a scale per (chunk, column) `[B, Ck, n]`."""
    return jnp.repeat(s_BxCkxCn, TILE, axis=-1)[..., :n]


def _forward(x_BxMxK, w_BxKxN):
    b, m, k = x_BxMxK.shape
    n = w_BxKxN.shape[-1]
    xq, sx = quantise_tiles(x_BxMxK)  # [B, M, C, T], [B, M, C]
    wq, sw = quantise_blocks(w_BxKxN)  # [B, Kp, Np], [B, C, Cn]
    c = xq.shape[2]
    w_chunks = wq[..., :n].reshape(b, c, TILE, n)  # padded columns would only be sliced off
    y = chunked_dot(xq, sx, w_chunks, _column_scales(sw, n))
    return y, (xq, sx, wq, sw)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _gemm(x_BxMxK, w_BxKxN, out_dtype):
    return _forward(x_BxMxK, w_BxKxN)[0].astype(out_dtype)


def _gemm_fwd(x_BxMxK, w_BxKxN, out_dtype):
    y, cached = _forward(x_BxMxK, w_BxKxN)
    # the e4m3 copies are the residuals (V3 caches activations in FP8); zero-size templates
    # carry the cotangents' dtypes and the unpadded K
    like = (jnp.zeros((0, x_BxMxK.shape[-1]), x_BxMxK.dtype), jnp.zeros((0,), w_BxKxN.dtype))
    return y.astype(out_dtype), (cached, like)


def _gemm_bwd(out_dtype, residuals, dy_BxMxN):
    (xq, sx, wq, sw), (x_like, w_like) = residuals
    b, _, c, _ = xq.shape
    k = x_like.shape[-1]
    dy = dy_BxMxN.astype(jnp.float32)
    # dgrad: contraction over N. dy in 1x128 tiles along N; wᵀ's 128x128 blocks are w's
    gq, sg = quantise_tiles(dy)  # [B, M, Cn, T], [B, M, Cn]
    cn = gq.shape[2]
    wt_chunks = jnp.swapaxes(wq, 1, 2)[:, :cn * TILE].reshape(b, cn, TILE, -1)  # [B, Cn, T, Kp]
    wt_scales = _column_scales(jnp.swapaxes(sw, 1, 2), c * TILE)  # [B, Cn, Kp]
    dx = chunked_dot(gq, sg, wt_chunks, wt_scales)[..., :k]
    # wgrad: contraction over the M tokens, in 128x1 tiles (128 tokens of one channel)
    x_t = jnp.swapaxes(dequantise_tiles(xq, sx), 1, 2)  # [B, Kp, M]
    xtq, sxt = quantise_tiles(x_t)  # [B, Kp, Cm, T], [B, Kp, Cm]
    gtq, sgt = quantise_tiles(jnp.swapaxes(dy, 1, 2))  # [B, N, Cm, T], [B, N, Cm]
    dw = chunked_dot(xtq, sxt, jnp.moveaxis(gtq, 1, 3), jnp.swapaxes(sgt, 1, 2))[:, :k]
    return dx.astype(x_like.dtype), dw.astype(w_like.dtype)


_gemm.defvjp(_gemm_fwd, _gemm_bwd)


def batched_matmul(x_BxMxK: jax.Array, w_BxKxN: jax.Array, out_dtype=None) -> jax.Array:
    """B independent block-scaled FP8 GEMMs `[B, M, K] x [B, K, N] -> [B, M, N]` (the experts'
    GEMMs), with the FP8 backward. Output in `out_dtype` (default: the inputs' result type)."""
    out_dtype = out_dtype or jnp.result_type(x_BxMxK, w_BxKxN)
    return _gemm(x_BxMxK, w_BxKxN, jnp.dtype(out_dtype))


def matmul(x_Xx_K: jax.Array, w_KxN: jax.Array, out_dtype=None) -> jax.Array:
    """`x [..., K] @ w [K, N] -> [..., N]` as one block-scaled FP8 GEMM (leading axes of x are
    the M rows: the 1x128 tiles never cross a token)."""
    lead = x_Xx_K.shape[:-1]
    y = batched_matmul(x_Xx_K.reshape(1, math.prod(lead), x_Xx_K.shape[-1]), w_KxN[None],
                       out_dtype)
    return y.reshape(*lead, w_KxN.shape[-1])


def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None,
                out_sharding=None):
    """A drop-in `dot_general` for `flax.nnx.Linear(dot_general=...)`: the layer's contraction
    (lhs's last axis with rhs's first, no batch axes) as an FP8 `matmul`. `precision` does not
    apply to e4m3 inputs; `out_sharding` is left to the partitioner."""
    del precision, out_sharding
    (lhs_c, rhs_c), (lhs_b, rhs_b) = dimension_numbers
    if tuple(lhs_c) != (lhs.ndim - 1,) or tuple(rhs_c) != (0,) or rhs.ndim != 2 or lhs_b or rhs_b:
        raise NotImplementedError(f"fp8.dot_general handles x[..., K] @ w[K, N] only; got "
                                  f"{dimension_numbers} for shapes {lhs.shape}, {rhs.shape}")
    return matmul(lhs, rhs, preferred_element_type)


def linear_dot_general(fp8: str):
    """The `dot_general` for the model's dense GEMMs under the `fp8` option: `nnx.Linear`'s own
    default, `jax.lax.dot_general`, when off (the program is unchanged); `dot_general` above
    for "deepseek"."""
    return dot_general if fp8 == "deepseek" else jax.lax.dot_general
