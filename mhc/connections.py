"""Hyper-connection math as pure functions over arrays (usable from NNX, Linen, Equinox, plain JAX).

Dimension letters (see `mhc`'s docstring): B batch, T tokens, N streams, C width, Z logits.
A site turns streams `[..., N, C]` and a branch F into `H_res·x + H_postᵀ·F(H_pre·x)` (paper
Eq. 3). Three maps per token:
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
  mhc_lite  mHC with the mHC-lite manifold (convex hull of permutations, exact): a manifold
            choice spelled as a kind (`KIND_MANIFOLD`), whatever `manifold` says
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from mhc import manifolds
from mhc.maps import BRANCH_OUT, KERNELS, MAP_NAMES, MAY_FUSE, Maps, call_branch

KINDS = ("residual", "hc", "mhc", "mhc_lite")
# kinds that are mHC with a fixed manifold: `kind="mhc_lite"` (`residual=mhc_lite`, the spelling
# of the mHC-lite runs) projects H_res onto mHC-lite's manifold, whatever `manifold` says
KIND_MANIFOLD = {"mhc_lite": "mhc_lite"}
# the defaults of the manifolds' options, stated once in their declarations (`Manifold.options`)
_SINKHORN, _GO_MHC = manifolds.get("sinkhorn").options, manifolds.get("go_mhc").options
COLLAPSE = ("sum", "mean")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConnectionOptions:
    """The options of a connection site, defined once: `ConnectionSpec` (one site) and
    `mhc.config.ModelConfig` (every site of a model, as `key=value` overrides) both inherit them,
    and the NNX / Linen modules take them as keywords. Validated in `ConnectionSpec`."""
    n_streams: int = 4
    dynamic: bool = True
    manifold: str = "sinkhorn"
    sinkhorn_iters: int = _SINKHORN["sinkhorn_iters"]  # 20, the paper's t_max
    sinkhorn_convention: str = _SINKHORN["sinkhorn_convention"]  # "paper"
    sinkhorn_grad: str = _SINKHORN["sinkhorn_grad"]  # "recompute"
    res_init: str = "identity"
    # logit of the non-identity terms of the "identity" init (-8: H_res ≈ I to 3e-4, mHC-lite's
    # choice; -2: a soft identity, diagonal ≈ 0.71 at n = 4, that AdamW can move in few steps)
    res_offdiag_logit: float = manifolds.OFF_DIAGONAL_LOGIT
    # Sinkhorn only: rescale each token's logits so that max - min <= cap before projecting
    # (range-capped Sinkhorn, RRCS; None = off)
    sinkhorn_range_cap: float | None = _SINKHORN["sinkhorn_range_cap"]  # None
    alpha_init: float = 0.01
    pre_eps: float | None = None  # added to H_pre; None = 1e-6 for deepseek_v4, else 0
    go_block: int = _GO_MHC["go_block"]  # go_mhc: block size s of its orthogonal Q (2)
    # the implementation of the site, one of mhc.maps.KERNELS ("reference": plain einsums +
    # autodiff, the formulation the fast paths are tested against)
    kernels: str = "auto"


@dataclasses.dataclass(frozen=True)
class ConnectionSpec(ConnectionOptions):
    """Static description of one connection site: its width, kind, the shared options
    (`ConnectionOptions`, keyword-only) and the site's own norm epsilon and learned maps;
    validates on construction."""
    width: int
    kind: str = "mhc"
    norm_eps: float = 1e-6
    # maps that are learned; the others are fixed at the residual's values (pre = 1/N, post = 1,
    # res = I), as in the paper's Table 1 component ablation
    learned_maps: tuple[str, ...] = MAP_NAMES

    def __post_init__(self):
        if self.kernels not in KERNELS:
            raise ValueError(f"kernels={self.kernels!r}; allowed: {', '.join(KERNELS)}")
        if self.kind not in KINDS:
            raise ValueError(f"unknown residual kind {self.kind!r}; allowed: {', '.join(KINDS)}")
        if not isinstance(self.n_streams, int) or self.n_streams < 1:
            raise ValueError(f"n_streams={self.n_streams!r}; must be an integer >= 1")
        if not isinstance(self.width, int) or self.width < 1:
            raise ValueError(f"width={self.width!r}; must be an integer >= 1")
        manifolds.get(self.manifold)  # raises on an unknown name, even where the kind fixes it
        if self.kind in ("mhc", "mhc_lite"):  # raises on an unknown res_init / offdiag logit
            self.res_manifold.init_logits(self.n_streams, self.res_init, self.res_offdiag_logit,
                                          **self.manifold_options)
        if self.sinkhorn_range_cap is not None:
            cap = self.sinkhorn_range_cap
            if not isinstance(cap, (int, float)) or isinstance(cap, bool) or not cap > 0:
                raise ValueError(f"sinkhorn_range_cap={cap!r}; must be > 0 (or None = off)")
            if self.kind != "mhc" or "sinkhorn_range_cap" not in self.manifold_options:
                raise ValueError(f"sinkhorn_range_cap={cap!r} applies to kind='mhc' with "
                                 f"manifold='sinkhorn' (got kind={self.kind!r}, "
                                 f"manifold={self.res_manifold.name!r})")
        if self.kind == "hc" and (self.res_init != "identity"
                                  or self.res_offdiag_logit != manifolds.OFF_DIAGONAL_LOGIT):
            raise ValueError(f"res_init={self.res_init!r}, res_offdiag_logit="
                             f"{self.res_offdiag_logit!r} for kind 'hc'; HC starts at b_res = I")
        if self.sinkhorn_convention not in manifolds.CONVENTIONS:
            raise ValueError(f"sinkhorn_convention={self.sinkhorn_convention!r}; allowed: "
                             f"{', '.join(manifolds.CONVENTIONS)}")
        if self.sinkhorn_grad not in manifolds.GRADS:
            raise ValueError(f"sinkhorn_grad={self.sinkhorn_grad!r}; allowed: "
                             f"{', '.join(manifolds.GRADS)}")
        if not isinstance(self.go_block, int) or isinstance(self.go_block, bool) \
                or self.go_block < 1:
            raise ValueError(f"go_block={self.go_block!r}; must be an integer >= 1")
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
    def res_manifold(self) -> manifolds.Manifold:
        """The manifold H_res is projected onto: `manifold`, or the one the kind fixes."""
        return manifolds.get(KIND_MANIFOLD.get(self.kind, self.manifold))

    @property
    def num_res_logits(self) -> int:
        return self.res_manifold.num_logits(self.n_streams, **self.manifold_options)

    @property
    def manifold_options(self) -> dict:
        """This site's values of the options its manifold declares (`Manifold.options`)."""
        return {o: getattr(self, o) for o in self.res_manifold.options}


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
    res_bias = jnp.asarray(spec.res_manifold.init_logits(
        n, spec.res_init, spec.res_offdiag_logit, **spec.manifold_options))
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


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _rms_project(x, w_DxZ, eps, n_axes):
    return _rms_project_fwd(x, w_DxZ, eps, n_axes)[0]


def _rows(x, n_axes):
    """x viewed as [M, D] with D the product of its last `n_axes` axes (a free reshape)."""
    return x.reshape(-1, int(np.prod(x.shape[x.ndim - n_axes:])))


def _rms_project_fwd(x, w_DxZ, eps, n_axes):
    # x itself is the saved residual (not a reshaped view of it), so that under scan + remat it
    # is the same stored array as the one the stream read/write keep
    rows = _rows(x, n_axes)
    raw = jnp.dot(rows, w_DxZ, precision=jax.lax.Precision.HIGHEST)
    inv_rms = jax.lax.rsqrt(jnp.mean(rows * rows, axis=-1, keepdims=True) + eps)
    out = (raw * inv_rms).reshape(*x.shape[:x.ndim - n_axes], w_DxZ.shape[-1])
    # the output (not the raw matmul) is saved: callers keep it for their own backward anyway
    return out, (x, w_DxZ, out, inv_rms)


def _rms_project_bwd(eps, n_axes, saved, g_xZ):
    x, w, out, inv_rms = saved
    rows = _rows(x, n_axes)
    out = out.reshape(rows.shape[0], -1)
    g = g_xZ.reshape(out.shape)
    g_raw = g * inv_rms
    # d/dx of rsqrt(mean(x²) + eps) = -inv_rms³ x / D, weighted by sum_k g_k raw_k, where
    # raw = out / inv_rms
    coef = -jnp.sum(g * out, axis=-1, keepdims=True) * inv_rms ** 2 / rows.shape[-1]
    # dW as [K, D] (a [D, K] output with K ~ 24 is ~3x slower on XLA:CPU); the barrier keeps
    # XLA from folding the transpose back into the dot
    dw = jax.lax.optimization_barrier(
        jnp.dot(g_raw.T, rows, precision=jax.lax.Precision.HIGHEST)).T
    dx = jnp.dot(g_raw, w.T, precision=jax.lax.Precision.HIGHEST) + coef * rows
    return dx.reshape(x.shape), dw


_rms_project.defvjp(_rms_project_fwd, _rms_project_bwd)


def rms_project(x: jax.Array, w_DxZ: jax.Array, eps: float, n_axes: int = 1) -> jax.Array:
    """`RMSNorm(x) @ w` as `(x @ w) · rsqrt(mean(x²) + eps)`, fp32 `[..., Z]`.

    The norm and the matmul run over the last `n_axes` axes of x flattened (D = their product):
    `n_axes=2` on streams `[..., N, C]` is mHC's norm over vec(x). One read of x forward; the
    backward (custom VJP) forms dx with one matmul plus the norm term and dw in XLA:CPU's fast
    layout (2.3x faster fwd+bwd than autodiff of the same expression at 4096 x 2048 x 24).
    """
    return _rms_project(jnp.asarray(x, jnp.float32), jnp.asarray(w_DxZ, jnp.float32), eps,
                        n_axes)


def _batch_shape(streams):
    return streams.shape[:-2]


def residual_maps(streams_xNxC: jax.Array) -> Maps:
    """Fixed maps of a plain residual: pre = 1/N, post = 1, res = I."""
    *batch, n, _ = streams_xNxC.shape
    return Maps(jnp.full((*batch, n), 1.0 / n, jnp.float32), jnp.ones((*batch, n), jnp.float32),
                jnp.broadcast_to(jnp.eye(n, dtype=jnp.float32), (*batch, n, n)))


def hc_maps(params: dict, streams_xNxC: jax.Array, spec: ConnectionSpec) -> Maps:
    """Hyper-Connections: H = alpha·tanh(theta · RMSNorm(x)) + b, per stream (tanh path optional).

    The norm weight is folded into the thetas and the RMS division applied after one matmul
    `x [.., N, C] @ [C, 2 + N]`, so the normalised streams are never materialised.
    """
    batch = _batch_shape(streams_xNxC)
    n = spec.n_streams
    pre = jnp.broadcast_to(params["b_pre"], (*batch, n))
    post = jnp.broadcast_to(params["b_post"], (*batch, n))
    res = jnp.broadcast_to(params["b_res"], (*batch, n, n))
    if not spec.dynamic:
        return Maps(pre, post, res)
    alpha = params["alpha"]
    if spec.kernels == "reference":
        x = rms_normalize(streams_xNxC, spec.norm_eps) * params["norm_weight"]  # [..., N, C]
        dyn_pre, dyn_post = x @ params["theta_pre"], x @ params["theta_post"]
        # (theta_res · x̃ᵀ)[i, j] = theta_res[i] · x̃_j
        dyn_res = jnp.einsum("...jc,ic->...ij", x, params["theta_res"])
    else:
        thetas = jnp.concatenate([params["theta_pre"][:, None], params["theta_post"][:, None],
                                  params["theta_res"].T], axis=1)  # [C, 2 + N]
        proj = rms_project(streams_xNxC, params["norm_weight"][:, None] * thetas, spec.norm_eps)
        dyn_pre, dyn_post = proj[..., 0], proj[..., 1]
        dyn_res = jnp.swapaxes(proj[..., 2:], -1, -2)  # [..., j, i] -> [..., i, j]
    return Maps(pre + alpha[0] * jnp.tanh(dyn_pre), post + alpha[1] * jnp.tanh(dyn_post),
                res + alpha[2] * jnp.tanh(dyn_res))


def mhc_logits(params: dict, streams_xNxC: jax.Array, spec: ConnectionSpec) -> jax.Array:
    """Gated logits `alpha ∘ (RMSNorm(vec x)·phi) + bias`, `[..., 2N + K]` (paper Eq. 7-8).

    Fused form of the paper's kernel: the RMS division is applied after the matmul.
    """
    n = spec.n_streams
    bias = params["bias"]
    if not spec.dynamic:
        return jnp.broadcast_to(bias, (*_batch_shape(streams_xNxC), bias.shape[-1]))
    if spec.kernels == "reference":
        flat = jnp.asarray(streams_xNxC, jnp.float32).reshape(*_batch_shape(streams_xNxC), -1)
        inv_rms = jax.lax.rsqrt(jnp.mean(flat * flat, axis=-1, keepdims=True) + spec.norm_eps)
        proj = jnp.dot(flat, params["phi"], precision=jax.lax.Precision.HIGHEST) * inv_rms
    else:
        proj = rms_project(streams_xNxC, params["phi"], spec.norm_eps, n_axes=2)
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
    res = spec.res_manifold.project(logits[..., 2 * n:], n, **spec.manifold_options)
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
    # materialised (2N + N² floats per token): fused into the loops over the streams, XLA:CPU
    # recomputes the maps for every element of C (measured: benchmarks/README.md)
    return Maps(*jax.lax.optimization_barrier(tuple(maps)))


@functools.lru_cache(maxsize=64)
def initial_res(spec: ConnectionSpec) -> np.ndarray:
    """H_res of a freshly initialised site `[N, N]` (the same at every site: the dynamic terms
    start at 0, so the map is the projection of the initial bias). The start that diagnostics
    measure H_res's movement from."""
    n = spec.n_streams
    if spec.kind == "residual" or "res" not in spec.learned_maps:
        return np.eye(n, dtype=np.float32)
    def evaluate():
        zeros = jnp.zeros((n, spec.width), jnp.float32)
        return np.asarray(compute_maps(init_params(spec), zeros, spec).res)

    # A constant, also when first asked inside a jit: evaluated on a worker thread, where no
    # trace and no mesh are in context (both are thread-local), so a jit lowered for a mesh of
    # compile-only accelerator devices does not try to run it on them.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(evaluate).result()


# ------------------------------------------------------------------------------- applying
# Forward: einsums (one pass each). Backward: custom VJPs written in the forms XLA:CPU runs near
# memory speed. Its own transposes of these einsums are batched [N, C] x [C, N] matmuls per token
# (slow), and broadcast-multiply-sums over C materialise [..., N, N, C] (the measurements:
# benchmarks/README.md).
# `reference=True` (a site with kernels="reference") uses the plain einsums and autodiff instead.
_LANES = 16  # reductions over C run as [C / 16, 16]: XLA:CPU then accumulates full vectors


def _rowdot(a: jax.Array, b: jax.Array) -> jax.Array:
    """sum_c a[..., c] * b[..., c] (broadcasting), fp32: per-token reductions over C."""
    c = a.shape[-1]
    if c % _LANES:
        return jnp.sum(a * b, axis=-1)
    a = a.reshape(*a.shape[:-1], c // _LANES, _LANES)
    b = b.reshape(*b.shape[:-1], c // _LANES, _LANES)
    return jnp.sum(jnp.sum(a * b, axis=-2), axis=-1)


@jax.custom_vjp
def _read(pre_xN, streams_xNxC):
    out = jnp.einsum("...n,...nc->...c", pre_xN, streams_xNxC.astype(jnp.float32))
    return out.astype(streams_xNxC.dtype)


def _read_fwd(pre_xN, streams_xNxC):
    return _read(pre_xN, streams_xNxC), (pre_xN, streams_xNxC)


def _read_bwd(saved, g_xC):
    pre, x = saved
    # the barrier keeps XLA from fusing the producers of g into the reduction (re-computing them
    # per element)
    x32, g = jax.lax.optimization_barrier((x.astype(jnp.float32), g_xC.astype(jnp.float32)))
    d_pre = _rowdot(g[..., None, :], x32)  # [..., N]
    d_x = pre[..., :, None] * g[..., None, :]
    return d_pre, d_x.astype(x.dtype)


_read.defvjp(_read_fwd, _read_bwd)


@jax.custom_vjp
def _write(res_xNxN, post_xN, streams_xNxC, branch_out_xC):
    out = mix_streams(res_xNxN, streams_xNxC) + jnp.einsum(
        "...i,...c->...ic", post_xN, branch_out_xC.astype(jnp.float32))
    return out.astype(streams_xNxC.dtype)


def _write_fwd(res, post, x, f):
    return _write(res, post, x, f), (res, post, x, f)


def _write_bwd(saved, g_xNxC):
    res, post, x, f = saved
    x32, f32, g = jax.lax.optimization_barrier(
        (x.astype(jnp.float32), f.astype(jnp.float32), g_xNxC.astype(jnp.float32)))
    # H_resᵀ g as one reduction over the stream axis i: a sum of N sliced products made XLA
    # materialise every slice of g first (measured: benchmarks/README.md)
    d_x = jnp.sum(res[..., :, :, None] * g[..., :, None, :], axis=-3)
    d_f = jnp.sum(post[..., :, None] * g, axis=-2)  # H_postᵀ g (an einsum would transpose g)
    d_res = _rowdot(g[..., :, None, :], x32[..., None, :, :])  # g xᵀ per token
    d_post = _rowdot(g, f32[..., None, :])
    return d_res, d_post, d_x.astype(x.dtype), d_f.astype(f.dtype)


_write.defvjp(_write_fwd, _write_bwd)


def read_streams(pre_xN: jax.Array, streams_xNxC: jax.Array, reference: bool = False
                 ) -> jax.Array:
    """H_pre · x: `[..., C]` in the streams' dtype (`reference`: as a plain einsum)."""
    if reference:
        out = jnp.einsum("...n,...nc->...c", pre_xN, streams_xNxC.astype(jnp.float32))
        return out.astype(streams_xNxC.dtype)
    batch = jnp.broadcast_shapes(pre_xN.shape[:-1], streams_xNxC.shape[:-2])
    return _read(jnp.broadcast_to(jnp.asarray(pre_xN, jnp.float32), (*batch, pre_xN.shape[-1])),
                 jnp.broadcast_to(streams_xNxC, (*batch, *streams_xNxC.shape[-2:])))


def mix_streams(res_xNxN: jax.Array, streams_xNxC: jax.Array) -> jax.Array:
    """H_res · x: `new[..., i, :] = sum_j res[..., i, j] x[..., j, :]`, fp32 result."""
    return jnp.einsum("...ij,...jc->...ic", res_xNxN, streams_xNxC.astype(jnp.float32))


def write_streams(maps: Maps, streams_xNxC: jax.Array, branch_out_xC: jax.Array,
                  reference: bool = False) -> jax.Array:
    """H_res · x + H_postᵀ · F(...): the new streams `[..., N, C]` in the streams' dtype
    (`reference`: as plain einsums)."""
    if reference:
        out = jnp.einsum("...i,...c->...ic", maps.post, branch_out_xC.astype(jnp.float32))
        return (mix_streams(maps.res, streams_xNxC) + out).astype(streams_xNxC.dtype)
    batch = jnp.broadcast_shapes(maps.res.shape[:-2], maps.post.shape[:-1],
                                 streams_xNxC.shape[:-2], branch_out_xC.shape[:-1])
    n, c = streams_xNxC.shape[-2:]
    return _write(jnp.broadcast_to(jnp.asarray(maps.res, jnp.float32), (*batch, n, n)),
                  jnp.broadcast_to(jnp.asarray(maps.post, jnp.float32), (*batch, n)),
                  jnp.broadcast_to(streams_xNxC, (*batch, n, c)),
                  jnp.broadcast_to(branch_out_xC, (*batch, c)))


def checked_branch(branch: Callable, has_aux: bool = False) -> Callable:
    """`branch`, refusing at trace time (one ValueError line naming the shapes) what would
    otherwise fail deep inside the site's einsums: an output of another shape than its input
    `[..., C]` (a branch that changes the width), a tuple without `has_aux`, or with `has_aux`
    something other than (output, aux)."""

    def run(h_xC):
        result = branch(h_xC)
        if has_aux and not (isinstance(result, tuple) and len(result) == 2):
            raise ValueError(f"has_aux=True: the branch must return (output, aux); got "
                             f"{_describe(result)}")
        if not has_aux and isinstance(result, (tuple, list)):
            raise ValueError(f"the branch returned {_describe(result)}; a branch that returns "
                             "(output, aux) needs has_aux=True")
        out = result[0] if has_aux else result
        if tuple(getattr(out, "shape", ())) != tuple(h_xC.shape):
            raise ValueError(f"the branch maps its input of shape {tuple(h_xC.shape)} to "
                             f"{_describe(out)}; a site's branch keeps the shape [..., C] "
                             f"(width C = {h_xC.shape[-1]})")
        return result

    return run


def _describe(x) -> str:
    if isinstance(x, (tuple, list)):
        return f"a {type(x).__name__} of {len(x)} ({', '.join(_describe(v) for v in x)})"
    shape = getattr(x, "shape", None)
    return f"shape {tuple(shape)}" if shape is not None else type(x).__name__


def apply_site(params: dict, streams_xNxC: jax.Array, branch: Callable[[jax.Array], jax.Array],
               spec: ConnectionSpec, *, has_aux: bool = False, read_with: jax.Array | None = None):
    """One connection site: returns (new streams `[..., N, C]`, the maps used). With `has_aux`,
    `branch` returns (output, aux) — e.g. an MoE layer's router statistics — and the site
    returns (new streams, maps, aux).

    read_with: the pre-mix `[..., N]` (fp32) that collapses the streams into F's input; None =
    this site's own H_pre. DeepSeek-V4.1's single-pass mHC passes the previous site's H_pre
    (`maps.pre` of that site), so the read needs nothing computed from these streams; the maps
    returned still hold this site's own H_pre, to be carried to the next site. Such a site takes
    the pure-JAX path (the fused kernels apply a site's own H_pre)."""
    if streams_xNxC.ndim < 2 or streams_xNxC.shape[-2:] != (spec.n_streams, spec.width):
        raise ValueError(f"streams shape {tuple(streams_xNxC.shape)}; expected "
                         f"[..., n_streams={spec.n_streams}, width={spec.width}]")
    if read_with is not None and spec.kind not in ("mhc", "mhc_lite"):
        raise ValueError(f"read_with (single-pass mHC) needs kind 'mhc' or 'mhc_lite'; got "
                         f"kind={spec.kind!r}")
    branch = checked_branch(branch, has_aux)
    if spec.kernels in MAY_FUSE and spec.kind == "mhc" and read_with is None:
        from mhc import kernels  # Pallas is imported only when a site may use it
        if kernels.use_fused(spec):
            return kernels.apply_site(params, streams_xNxC, branch, spec, has_aux=has_aux)
    maps = compute_maps(params, streams_xNxC, spec)
    if spec.kind == "residual":  # fixed maps: skip the mixing arithmetic
        branch_out, aux = call_branch(
            branch, jnp.mean(streams_xNxC.astype(jnp.float32), -2).astype(streams_xNxC.dtype),
            has_aux)
        new = streams_xNxC + branch_out[..., None, :].astype(streams_xNxC.dtype)
    else:
        reference = spec.kernels == "reference"
        pre = maps.pre if read_with is None else read_with
        branch_out, aux = call_branch(branch, read_streams(pre, streams_xNxC, reference), has_aux)
        new = write_streams(maps, streams_xNxC, branch_out, reference)
    return (new, maps, aux) if has_aux else (new, maps)


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
