"""Flax modules around the pure math in `connections`: NNX first, Linen wrappers for Linen code.

    hc = mhc.HyperConnection(width=C, n_streams=4, kind="mhc", rngs=nnx.Rngs(0))
    streams = mhc.expand_streams(x_BxTxC, 4)          # [B, T, N, C]
    streams = hc(streams, lambda h: mlp(norm(h)))     # H_res·x + H_postᵀ·F(H_pre·x)
    x = mhc.collapse_streams(streams)                 # or mhc.HyperHead(C, 4, rngs=...)(streams)
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
from flax import linen, nnx

from mhc import connections
from mhc.connections import ConnectionSpec, Maps


class HyperConnection(nnx.Module):
    """One residual site with n parallel streams. Parameters are fp32.

    Call `hc(streams_BxTxNxC, branch)` -> new streams; `branch` maps `[..., C] -> [..., C]` (it
    includes its own pre-norm). The maps used by the last call are kept in `hc.last_maps`
    (`Maps(pre, post, res)`, or None before the first call); `hc.apply(...)` returns them instead.
    `layer_index` places HC's one-hot read (and mHC's ±1 pre/post logits) on stream k mod n.
    """

    def __init__(self, width: int | None = None, *, spec: ConnectionSpec | None = None,
                 layer_index=0, rngs: nnx.Rngs | None = None, **options):
        """From a `spec`, or from `width` and any other `ConnectionSpec` field as a keyword
        (`n_streams`, `kind`, `sinkhorn_iters`, `learned_maps`, ...; the spec's defaults)."""
        del rngs  # deterministic init (HC/mHC start from their static maps); kept for API symmetry
        if spec is None:
            spec = ConnectionSpec(width=width, **options)
        elif width is not None or options:
            given = ["width"] * (width is not None) + list(options)
            raise TypeError("HyperConnection takes a spec, or width and options, not both (got "
                            f"spec and {', '.join(given)})")
        self.spec = spec
        self.params = nnx.data({name: nnx.Param(value) for name, value in
                                connections.init_params(self.spec, layer_index).items()})
        self._last_maps = nnx.data(None)

    @classmethod
    def from_spec(cls, spec: ConnectionSpec, layer_index=0) -> "HyperConnection":
        return cls(spec=spec, layer_index=layer_index)

    def _param_values(self) -> dict:
        return {name: p[...] for name, p in self.params.items()}

    def maps(self, streams_BxTxNxC: jax.Array) -> Maps:
        """The maps this site would use for these streams."""
        return connections.compute_maps(self._param_values(), streams_BxTxNxC, self.spec)

    def apply(self, streams_BxTxNxC: jax.Array, branch: Callable[[jax.Array], jax.Array], *,
              has_aux: bool = False, read_with: jax.Array | None = None):
        """(new streams, maps) without storing anything on the module (use inside scans); with
        `has_aux`, `branch` returns (output, aux) and this returns (new streams, maps, aux).
        `read_with`: the pre-mix `[B, T, N]` that reads the streams (single-pass mHC: the previous
        site's H_pre; see `connections.apply_site`)."""
        return connections.apply_site(self._param_values(), streams_BxTxNxC, branch, self.spec,
                                      has_aux=has_aux, read_with=read_with)

    def __call__(self, streams_BxTxNxC: jax.Array, branch: Callable[[jax.Array], jax.Array]
                 ) -> jax.Array:
        new, maps = self.apply(streams_BxTxNxC, branch)
        self._last_maps = nnx.data(nnx.Intermediate(maps))
        return new

    @property
    def last_maps(self) -> Maps | None:
        return None if self._last_maps is None else self._last_maps.get_value()


class HyperHead(nnx.Module):
    """Learned collapse of the streams (DeepSeek-V4 HyperHead): `sum_i w_i x_i` with
    `w = sigmoid(alpha·(RMSNorm(vec x)·phi) + bias) + eps`. Init: phi 0, bias 0 (w = 0.5 each)."""

    def __init__(self, width: int, n_streams: int = 4, *, alpha_init: float = 0.01,
                 rngs: nnx.Rngs | None = None):
        del rngs
        self.phi = nnx.Param(jnp.zeros((n_streams * width, n_streams), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((n_streams,), jnp.float32))
        self.alpha = nnx.Param(jnp.asarray(alpha_init, jnp.float32))

    def __call__(self, streams_BxTxNxC: jax.Array) -> jax.Array:
        w = connections.hyper_head_weights(self.phi[...], self.bias[...], self.alpha[...],
                                           streams_BxTxNxC)
        return connections.read_streams(w, streams_BxTxNxC)


# ------------------------------------------------------------------------------------- Linen
class _LinenSite(linen.Module):
    """The call of `LinenHyperConnection`, whose attributes are `ConnectionSpec`'s fields."""

    @linen.compact
    def __call__(self, streams_BxTxNxC, branch):
        spec = ConnectionSpec(**{f.name: getattr(self, f.name)
                                 for f in dataclasses.fields(ConnectionSpec)})
        init = connections.init_params(spec, self.layer_index)
        params = {name: self.param(name, lambda _key, v=value: v) for name, value in init.items()}
        new, maps = connections.apply_site(params, streams_BxTxNxC, branch, spec)
        self.sow("intermediates", "maps", maps)
        return new


# the attributes are ConnectionSpec's fields (width first, same defaults) plus layer_index, taken
# from the spec rather than listed again, so a new connection option reaches Linen by itself
LinenHyperConnection = type("LinenHyperConnection", (_LinenSite,), {
    "__module__": __name__, "__qualname__": "LinenHyperConnection",
    "__doc__": """Linen version of `HyperConnection` (same parameters, same math): attributes
    `width`, every other `ConnectionSpec` field (same defaults) and `layer_index`.

    `branch` may be any callable, including a Linen submodule of the parent. The maps are sown
    into the "intermediates" collection as `maps`.
    """,
    "__annotations__": {"width": "int",
                        **{f.name: f.type for f in dataclasses.fields(ConnectionSpec)
                           if f.name != "width"},
                        "layer_index": "int"},
    **{f.name: f.default for f in dataclasses.fields(ConnectionSpec)
       if f.default is not dataclasses.MISSING},
    "layer_index": 0})


class LinenHyperHead(linen.Module):
    """Linen version of `HyperHead`."""
    width: int
    n_streams: int = 4
    alpha_init: float = 0.01

    @linen.compact
    def __call__(self, streams_BxTxNxC):
        n = self.n_streams
        phi = self.param("phi", linen.initializers.zeros, (n * self.width, n), jnp.float32)
        bias = self.param("bias", linen.initializers.zeros, (n,), jnp.float32)
        alpha = self.param("alpha", lambda _key: jnp.asarray(self.alpha_init, jnp.float32))
        w = connections.hyper_head_weights(phi, bias, alpha, streams_BxTxNxC)
        return connections.read_streams(w, streams_BxTxNxC)
