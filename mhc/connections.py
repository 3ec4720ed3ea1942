"""Hyper-connection math as pure functions over arrays (usable from NNX, Linen, Equinox, plain JAX).

Dimension letters: B batch, T tokens, N streams, C width. A site turns streams `[..., N, C]` and a
branch F into `H_res·x + H_postᵀ·F(H_pre·x)` (paper Eq. 3). Three maps per token:
  pre  [..., N]      reads the N streams into F's input
  post [..., N]      writes F's output back to each stream
  res  [..., N, N]   mixes the streams (row i = output stream i)
The coefficient path (norm, projections, sigmoid/tanh, manifold) always runs in fp32.

Kinds:
  residual  pre = 1/N, post = 1, res = I (with N = 1 exactly x + F(x); with copied streams, a
            residual network; it is also the "all maps disabled" point of the paper's Table 1)
  hc        Hyper-Connections (Zhu et al.): per-stream RMSNorm, tanh-gated dynamic terms + static
  mhc       mHC (paper Eqs. 7-9): RMSNorm over the flattened N*C state, one fused linear head,
            sigmoid / 2·sigmoid / manifold projection (Sinkhorn by default)
  mhc_lite  mHC with the mHC-lite manifold (convex hull of permutations, exact)
"""
from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from mhc import manifolds

KINDS = ("residual", "hc", "mhc", "mhc_lite")
MAP_NAMES = ("pre", "post", "res")
BRANCH_OUT = "branch_out"  # name of F's output, kept by the "mhc" remat policy
COLLAPSE = ("sum", "mean")
KERNELS = ("auto", "xla", "pallas")  # implementation of a site (mhc.kernels)


class Maps(NamedTuple):
    """The three maps of one site, fp32: pre `[..., N]`, post `[..., N]`, res `[..., N, N]`."""
    pre: jax.Array
    post: jax.Array
    res: jax.Array


@dataclasses.dataclass(frozen=True)
class ConnectionSpec:
    """Static description of one connection site; validates on construction."""
    width: int
    n_streams: int = 4
    kind: str = "mhc"
    dynamic: bool = True
    manifold: str = "sinkhorn"
    sinkhorn_iters: int = 20
    sinkhorn_convention: str = "paper"
    sinkhorn_grad: str = "recompute"
    res_init: str = "identity"
    alpha_init: float = 0.01
    norm_eps: float = 1e-6
    pre_eps: float | None = None  # added to H_pre; None = 1e-6 for deepseek_v4, else 0
    # maps that are learned; the others are fixed at the residual's values (pre = 1/N, post = 1,
    # res = I), as in the paper's Table 1 component ablation
    learned_maps: tuple[str, ...] = MAP_NAMES
    # "auto": fused Pallas kernels on GPU/TPU for dynamic mHC + Sinkhorn, pure JAX otherwise;
    # "pallas": always (interpret mode on CPU); "xla": never (see mhc.kernels)
    kernels: str = "auto"

    def __post_init__(self):
        if self.kernels not in KERNELS:
            raise ValueError(f"kernels={self.kernels!r}; allowed: {', '.join(KERNELS)}")
        if self.kind not in KINDS:
            raise ValueError(f"unknown residual kind {self.kind!r}; allowed: {', '.join(KINDS)}")
        if not isinstance(self.n_streams, int) or self.n_streams < 1:
            raise ValueError(f"n_streams={self.n_streams!r}; must be an integer >= 1")
        if not isinstance(self.width, int) or self.width < 1:
            raise ValueError(f"width={self.width!r}; must be an integer >= 1")
        if self.kind == "mhc_lite":
            object.__setattr__(self, "manifold", "mhc_lite")
        manifold = manifolds.get(self.manifold)  # raises on an unknown name
        if self.kind in ("mhc", "mhc_lite"):
            manifold.init_logits(self.n_streams, self.res_init)  # raises on an unknown res_init
        if self.kind == "hc" and self.res_init != "identity":
            raise ValueError(f"res_init={self.res_init!r} for kind 'hc'; HC starts at identity")
        if self.sinkhorn_convention not in manifolds.CONVENTIONS:
            raise ValueError(f"sinkhorn_convention={self.sinkhorn_convention!r}; allowed: "
                             f"{', '.join(manifolds.CONVENTIONS)}")
        if self.sinkhorn_grad not in manifolds.GRADS:
            raise ValueError(f"sinkhorn_grad={self.sinkhorn_grad!r}; allowed: "
                             f"{', '.join(manifolds.GRADS)}")
        if not isinstance(self.sinkhorn_iters, int) or self.sinkhorn_iters < 1:
            raise ValueError(f"sinkhorn_iters={self.sinkhorn_iters!r}; must be an integer >= 1")
        learned = tuple(self.learned_maps)
        if not learned or not set(learned) <= set(MAP_NAMES) or len(set(learned)) < len(learned):
            raise ValueError(f"learned_maps={self.learned_maps!r}; allowed: a non-empty subset of "
                             f"{', '.join(MAP_NAMES)} (use kind='residual' for none)")
        object.__setattr__(self, "learned_maps", learned)
        if self.pre_eps is None:
            object.__setattr__(self, "pre_eps",
                               1e-6 if self.sinkhorn_convention == "deepseek_v4" else 0.0)

    @property
    def num_res_logits(self) -> int:
        return manifolds.get(self.manifold).num_logits(self.n_streams)


# ------------------------------------------------------------------------------ parameters
def init_params(spec: ConnectionSpec, layer_index=0) -> dict[str, jax.Array]:
    """Initial fp32 parameters of one site (deterministic; `layer_index` may be traced).

    hc: equal to a pre-norm residual network (HC paper): dynamic weights 0, b_pre one-hot on stream
      `layer_index mod N`, b_post = 1, b_res = I, tanh scales 0.01.
    mhc / mhc_lite: phi = 0 (so the maps start at their static values), alpha = 0.01, pre/post logits
      +1 on stream `layer_index mod N` and -1 elsewhere (mHC-lite's official init), res logits from
      the manifold (`res_init`: "identity" -> H_res ≈ I, "uniform" -> H_res ≈ J/N).
    Layout of `phi [N*C, 2N + K]` and `bias [2N + K]`: segments [pre, post, res] (DeepSeek-V4 order).
    """
    n, c = spec.n_streams, spec.width
    one_hot = jax.nn.one_hot(jnp.asarray(layer_index) % n, n, dtype=jnp.float32)
    alpha = jnp.full((3,), spec.alpha_init, jnp.float32)
    if spec.kind == "residual":
        return {}
    if spec.kind == "hc":
        params = {"norm_weight": jnp.ones((c,), jnp.float32), "b_pre": one_hot,
                  "b_post": jnp.ones((n,), jnp.float32), "b_res": jnp.eye(n, dtype=jnp.float32)}
        if spec.dynamic:
            params |= {"theta_pre": jnp.zeros((c,), jnp.float32),
                       "theta_post": jnp.zeros((c,), jnp.float32),
                       "theta_res": jnp.zeros((n, c), jnp.float32), "alpha": alpha}
        return params
    k = spec.num_res_logits
    res_bias = jnp.asarray(manifolds.get(spec.manifold).init_logits(n, spec.res_init))
    pre_post = 2.0 * one_hot - 1.0
    params = {"bias": jnp.concatenate([pre_post, pre_post, res_bias])}
    if spec.dynamic:
        params |= {"phi": jnp.zeros((n * c, 2 * n + k), jnp.float32), "alpha": alpha}
    return params


# ------------------------------------------------------------------------------------ maps
def rms_normalize(x: jax.Array, eps: float) -> jax.Array:
    """x / sqrt(mean(x²) + eps) over the last axis, in fp32 (no weight)."""
    x = jnp.asarray(x, jnp.float32)
    return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps)


def _batch_shape(streams):
    return streams.shape[:-2]


def residual_maps(streams_xNxC: jax.Array) -> Maps:
    """Fixed maps of a plain residual: pre = 1/N, post = 1, res = I."""
    *batch, n, _ = streams_xNxC.shape
    return Maps(jnp.full((*batch, n), 1.0 / n, jnp.float32), jnp.ones((*batch, n), jnp.float32),
                jnp.broadcast_to(jnp.eye(n, dtype=jnp.float32), (*batch, n, n)))


def hc_maps(params: dict, streams_xNxC: jax.Array, spec: ConnectionSpec) -> Maps:
    """Hyper-Connections: H = alpha·tanh(theta · RMSNorm(x)) + b, per stream (tanh path optional)."""
    batch = _batch_shape(streams_xNxC)
    n = spec.n_streams
    pre = jnp.broadcast_to(params["b_pre"], (*batch, n))
    post = jnp.broadcast_to(params["b_post"], (*batch, n))
    res = jnp.broadcast_to(params["b_res"], (*batch, n, n))
    if spec.dynamic:
        x = rms_normalize(streams_xNxC, spec.norm_eps) * params["norm_weight"]  # [..., N, C]
        alpha = params["alpha"]
        pre = pre + alpha[0] * jnp.tanh(x @ params["theta_pre"])
        post = post + alpha[1] * jnp.tanh(x @ params["theta_post"])
        # (theta_res · x̃ᵀ)[i, j] = theta_res[i] · x̃_j
        res = res + alpha[2] * jnp.tanh(jnp.einsum("...jc,ic->...ij", x, params["theta_res"]))
    return Maps(pre, post, res)


def mhc_logits(params: dict, streams_xNxC: jax.Array, spec: ConnectionSpec) -> jax.Array:
    """Gated logits `alpha ∘ (RMSNorm(vec x)·phi) + bias`, `[..., 2N + K]` (paper Eq. 7-8).

    Fused form of the paper's kernel: the RMS division is applied after the matmul.
    """
    n = spec.n_streams
    bias = params["bias"]
    if not spec.dynamic:
        return jnp.broadcast_to(bias, (*_batch_shape(streams_xNxC), bias.shape[-1]))
    flat = jnp.asarray(streams_xNxC, jnp.float32).reshape(*_batch_shape(streams_xNxC), -1)
    inv_rms = jax.lax.rsqrt(jnp.mean(flat * flat, axis=-1, keepdims=True) + spec.norm_eps)
    proj = jnp.dot(flat, params["phi"], precision=jax.lax.Precision.HIGHEST) * inv_rms
    alpha = params["alpha"]
    gate = jnp.concatenate([jnp.full((n,), alpha[0]), jnp.full((n,), alpha[1]),
                            jnp.full((proj.shape[-1] - 2 * n,), alpha[2])])
    return proj * gate + bias


def mhc_maps(params: dict, streams_xNxC: jax.Array, spec: ConnectionSpec) -> Maps:
    """mHC maps: H_pre = sigmoid(.) (+eps), H_post = 2·sigmoid(.), H_res = manifold(.) (Eq. 8-9)."""
    n = spec.n_streams
    logits = mhc_logits(params, streams_xNxC, spec)
    pre = jax.nn.sigmoid(logits[..., :n]) + spec.pre_eps
    post = 2.0 * jax.nn.sigmoid(logits[..., n:2 * n])
    res = manifolds.get(spec.manifold).project(
        logits[..., 2 * n:], n, iters=spec.sinkhorn_iters, convention=spec.sinkhorn_convention,
        grad=spec.sinkhorn_grad)
    return Maps(pre, post, res)


def compute_maps(params: dict, streams_xNxC: jax.Array, spec: ConnectionSpec) -> Maps:
    """The maps of one site for the given streams, whatever the kind."""
    if spec.kind == "residual":
        return residual_maps(streams_xNxC)
    maps = (hc_maps if spec.kind == "hc" else mhc_maps)(params, streams_xNxC, spec)
    if len(spec.learned_maps) < len(MAP_NAMES):  # Table 1 ablation: fix the others
        fixed = residual_maps(streams_xNxC)
        maps = Maps(*(m if name in spec.learned_maps else f
                      for name, m, f in zip(MAP_NAMES, maps, fixed)))
    return maps


# ------------------------------------------------------------------------------- applying
# The stream contractions are written as einsums (batched matmuls), not as broadcast-multiply-sum:
# forward costs the same, but XLA's backward of a broadcast-sum over C is ~18x slower on CPU
# (measured: 1.86 s vs 0.10 s for the H_res mix at 4096 tokens x 4 x 512).
def read_streams(pre_xN: jax.Array, streams_xNxC: jax.Array) -> jax.Array:
    """H_pre · x: `[..., C]` in the streams' dtype."""
    out = jnp.einsum("...n,...nc->...c", pre_xN, streams_xNxC.astype(jnp.float32))
    return out.astype(streams_xNxC.dtype)


def mix_streams(res_xNxN: jax.Array, streams_xNxC: jax.Array) -> jax.Array:
    """H_res · x: `new[..., i, :] = sum_j res[..., i, j] x[..., j, :]`, fp32 result."""
    return jnp.einsum("...ij,...jc->...ic", res_xNxN, streams_xNxC.astype(jnp.float32))


def write_streams(maps: Maps, streams_xNxC: jax.Array, branch_out_xC: jax.Array) -> jax.Array:
    """H_res · x + H_postᵀ · F(...): the new streams `[..., N, C]` in the streams' dtype."""
    out = jnp.einsum("...i,...c->...ic", maps.post, branch_out_xC.astype(jnp.float32))
    return (mix_streams(maps.res, streams_xNxC) + out).astype(streams_xNxC.dtype)


def apply_site(params: dict, streams_xNxC: jax.Array, branch: Callable[[jax.Array], jax.Array],
               spec: ConnectionSpec) -> tuple[jax.Array, Maps]:
    """One connection site: returns (new streams `[..., N, C]`, the maps used)."""
    if streams_xNxC.ndim < 2 or streams_xNxC.shape[-2:] != (spec.n_streams, spec.width):
        raise ValueError(f"streams shape {tuple(streams_xNxC.shape)}; expected "
                         f"[..., n_streams={spec.n_streams}, width={spec.width}]")
    if spec.kernels != "xla" and spec.kind == "mhc":
        from mhc import kernels  # Pallas is imported only when a site may use it
        if kernels.use_fused(spec):
            return kernels.apply_site(params, streams_xNxC, branch, spec)
    maps = compute_maps(params, streams_xNxC, spec)
    if spec.kind == "residual":  # fixed maps: skip the mixing arithmetic
        branch_out = checkpoint_name(branch(jnp.mean(streams_xNxC.astype(jnp.float32), -2)
                                            .astype(streams_xNxC.dtype)), BRANCH_OUT)
        new = streams_xNxC + branch_out[..., None, :].astype(streams_xNxC.dtype)
        return new, maps
    branch_out = checkpoint_name(branch(read_streams(maps.pre, streams_xNxC)), BRANCH_OUT)
    return write_streams(maps, streams_xNxC, branch_out), maps


# --------------------------------------------------------------------------- streams in/out
def expand_streams(x_xC: jax.Array, n: int) -> jax.Array:
    """Copy the hidden state into n streams: `[..., C]` -> `[..., N, C]` (HC and DeepSeek-V4)."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n_streams={n!r}; must be an integer >= 1")
    return jnp.broadcast_to(x_xC[..., None, :], (*x_xC.shape[:-1], n, x_xC.shape[-1]))


def collapse_streams(streams_xNxC: jax.Array, how: str = "sum") -> jax.Array:
    """Merge the streams: `[..., N, C]` -> `[..., C]` by "sum" (HC) or "mean"."""
    if how == "sum":
        return jnp.sum(streams_xNxC, axis=-2)
    if how == "mean":
        return jnp.mean(streams_xNxC, axis=-2)
    raise ValueError(f"collapse how={how!r}; allowed: {', '.join(COLLAPSE)} (or use HyperHead)")


def hyper_head_weights(phi_DxN, bias_N, alpha, streams_xNxC, norm_eps=1e-6, eps=1e-6):
    """DeepSeek-V4 HyperHead weights: sigmoid(alpha·(RMSNorm(vec x)·phi) + bias) + eps, `[..., N]`."""
    flat = rms_normalize(streams_xNxC.reshape(*_batch_shape(streams_xNxC), -1), norm_eps)
    return jax.nn.sigmoid(alpha * jnp.dot(flat, phi_DxN, precision=jax.lax.Precision.HIGHEST)
                          + bias_N) + eps
