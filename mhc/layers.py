"""Flax modules around the pure math in `connections`: NNX first, Linen wrappers for Linen code.

    hc = mhc.HyperConnection(width=C, n_streams=4, kind="mhc", layer_index=k)
    streams = mhc.expand_streams(x_BxTxC, 4)          # [B, T, N, C]
    streams = hc(streams, lambda h: mlp(norm(h)))     # H_res·x + H_postᵀ·F(H_pre·x)
    x = mhc.collapse_streams(streams)                 # or mhc.HyperHead(C, 4)(streams)

The modules hold parameters only (fp32, with logical axis names for sharding), so
`nnx.state(model)` checkpoints and a jitted step traces once. The maps a call used are returned by
`hc.apply(...)`, or recorded for a whole model by `mhc.capture_maps(model)(x)` (for that call
only; nothing is stored on the modules).
"""
from __future__ import annotations

import contextvars
import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
from flax import linen, nnx

from mhc import connections
from mhc.connections import ConnectionSpec, Maps

# Logical axis names of the parameters, in the vocabulary of the model's rules
# (`mhc.sharding.RULES`): an axis of size C or N*C is "embed", so a user's FSDP rule splits it
# like the rest of the model's weights; stream, logit and gate axes are None (a few floats,
# replicated). Metadata only (eager_sharding=False, as `mhc.model.attention.param_init`): a site
# is created without a mesh, and the caller places the state with its rules
# (`nnx.get_partition_spec(nnx.state(model))`).
PARAM_AXES = {
    "phi": ("embed", None), "bias": (None,), "alpha": (None,),  # mhc / mhc_lite
    "norm_weight": ("embed",), "theta_pre": ("embed",), "theta_post": ("embed",),  # hc
    "theta_res": (None, "embed"), "b_pre": (None,), "b_post": (None,), "b_res": (None, None),
}
HEAD_AXES = {"phi": ("embed", None), "bias": (None,), "alpha": ()}


def _param(value: jax.Array, axes: tuple) -> nnx.Param:
    if not axes:
        return nnx.Param(value)
    # the model's own way (mhc.model.attention.param_init), which every supported flax spells
    return nnx.Param(nnx.with_partitioning(lambda *_: value, axes, eager_sharding=False)(None))


def check_streams(streams, n: int, c: int, where: str) -> None:
    """Streams of a module are `[B, T, N, C]` (rank >= 4). A rank-3 `[B, T, C]` hidden state
    whose T happens to equal N would otherwise pass a check of the last two axes and be mixed
    as streams; the pure functions (`mhc.apply_site`) still take any `[..., N, C]`."""
    shape = tuple(getattr(streams, "shape", ()))
    if len(shape) >= 4 and shape[-2:] == (n, c):
        return
    hint = (f" (a [B, T, C] hidden state is expanded first: mhc.expand_streams(x, {n}); streams "
            "without a token axis take one of size 1)" if len(shape) < 4 else "")
    raise ValueError(f"{where}: streams shape {shape}; expected [B, T, n_streams={n}, "
                     f"width={c}]{hint}")


class HyperConnection(nnx.Module):
    """One residual site with n parallel streams. Parameters only (fp32, logical axes
    `PARAM_AXES`): the module keeps no activations, so `nnx.state(model)` checkpoints and
    restores into a fresh model, and a jitted step does not trace again.

    `hc(streams_BxTxNxC, branch)` -> new streams; `branch` maps `[B, T, C] -> [B, T, C]` (it
    includes its own pre-norm). The maps of the call: `hc.apply(...)` returns them, or
    `mhc.capture_maps(model)(x)` records every site's (for that call only).
    `layer_index` places HC's one-hot read (and mHC's ±1 pre/post logits) on stream
    `layer_index mod n`: give each site of a model its own (0, 1, 2, ... in depth order; the
    default 0 puts every site on stream 0). `mhc.Sites` numbers them for you.
    """

    def __init__(self, width: int | None = None, *, spec: ConnectionSpec | None = None,
                 layer_index=0, rngs: nnx.Rngs | None = None, **options):
        """From a `spec`, or from `width` and any other `ConnectionSpec` field as a keyword
        (`n_streams`, `kind`, `sinkhorn_iters`, `learned_maps`, ...; the spec's defaults).
        `rngs` is accepted so that a site is built like any NNX layer, and unused: the init is
        deterministic (HC/mHC start from their static maps, the dynamic weights at 0)."""
        del rngs
        if spec is None:
            spec = ConnectionSpec(width=width, **options)
        elif width is not None or options:
            given = ["width"] * (width is not None) + list(options)
            raise TypeError("HyperConnection takes a spec, or width and options, not both (got "
                            f"spec and {', '.join(given)})")
        self.spec = spec
        self.params = nnx.data({name: _param(value, PARAM_AXES[name]) for name, value in
                                connections.init_params(self.spec, layer_index).items()})

    @classmethod
    def from_spec(cls, spec: ConnectionSpec, layer_index=0) -> "HyperConnection":
        return cls(spec=spec, layer_index=layer_index)

    def _param_values(self) -> dict:
        return {name: p[...] for name, p in self.params.items()}

    def _check(self, streams):
        spec = self.spec
        check_streams(streams, spec.n_streams, spec.width,
                      f"HyperConnection(width={spec.width}, n_streams={spec.n_streams})")

    def maps(self, streams_BxTxNxC: jax.Array) -> Maps:
        """The maps this site would use for these streams."""
        self._check(streams_BxTxNxC)
        return connections.compute_maps(self._param_values(), streams_BxTxNxC, self.spec)

    def apply(self, streams_BxTxNxC: jax.Array, branch: Callable[[jax.Array], jax.Array], *,
              has_aux: bool = False, read_with: jax.Array | None = None):
        """(new streams, maps), recording nothing (use inside scans); with `has_aux`, `branch`
        returns (output, aux) and this returns (new streams, maps, aux).
        `read_with`: the pre-mix `[B, T, N]` that reads the streams (single-pass mHC: the previous
        site's H_pre; see `connections.apply_site`)."""
        self._check(streams_BxTxNxC)
        return connections.apply_site(self._param_values(), streams_BxTxNxC, branch, self.spec,
                                      has_aux=has_aux, read_with=read_with)

    def __call__(self, streams_BxTxNxC: jax.Array, branch: Callable[[jax.Array], jax.Array], *,
                 has_aux: bool = False):
        """New streams (with `has_aux`: (new streams, the branch's aux))."""
        new, maps, *aux = self.apply(streams_BxTxNxC, branch, has_aux=has_aux)
        recording = _RECORDING.get()  # inside mhc.capture_maps only
        if recording is not None:
            recording[id(self)] = maps
        return (new, *aux) if has_aux else new

    @property
    def last_maps(self):
        raise AttributeError(
            "HyperConnection keeps no maps (as state they broke nnx.state checkpoints and "
            "retraced jitted steps): `new, maps = hc.apply(streams, branch)`, or "
            "`out, maps = mhc.capture_maps(model)(x)` for every site of a model")


# The sites' maps of the call in progress under `capture_maps` ({id(site): Maps}), else None: a
# context of the call rather than module state, so nothing stays on the model and it works on
# every flax this package supports (nnx.capture is newer than its floor).
_RECORDING: contextvars.ContextVar = contextvars.ContextVar("mhc_capture_maps", default=None)


def capture_maps(fn: Callable) -> Callable:
    """`mhc.capture_maps(model)(*args)` -> (output, {site path: Maps}).

    Runs `fn` (a Module, a bound method of one, or a function whose first argument is the
    module) and returns the maps used by each `HyperConnection` called as `hc(...)` inside it,
    keyed by its path in the model ("blocks.0.hc_attn"; the last call's when a site runs more
    than once), in the model's order. Call it inside a jitted function to get the maps out of
    jit. Nothing stays on the module afterwards. Sites run by `hc.apply` or the pure functions
    record nothing: they return their maps.
    """
    def run(*args, **kwargs):
        module = fn if isinstance(fn, nnx.Module) else getattr(fn, "__self__", None)
        if not isinstance(module, nnx.Module):
            module = args[0] if args and isinstance(args[0], nnx.Module) else None
        if module is None:
            raise TypeError("mhc.capture_maps(fn): fn must be an nnx.Module, a bound method of "
                            "one, or a function whose first argument is the module")
        paths = {id(node): ".".join(str(k) for k in path)
                 for path, node in nnx.iter_graph(module) if isinstance(node, HyperConnection)}
        recorded = {}
        token = _RECORDING.set(recorded)
        try:
            out = fn(*args, **kwargs)
        finally:
            _RECORDING.reset(token)
        return out, {name: recorded[key] for key, name in paths.items() if key in recorded}

    return run


class HyperHead(nnx.Module):
    """Learned collapse of the streams (DeepSeek-V4 HyperHead): `sum_i w_i x_i` with
    `w = sigmoid(alpha·(RMSNorm(vec x)·phi) + bias) + eps`. Init: phi 0, bias 0 (w = 0.5 each).
    `rngs` is accepted like any NNX layer's and unused (deterministic init)."""

    def __init__(self, width: int, n_streams: int = 4, *, alpha_init: float = 0.01,
                 rngs: nnx.Rngs | None = None):
        del rngs
        init = {"phi": jnp.zeros((n_streams * width, n_streams), jnp.float32),
                "bias": jnp.zeros((n_streams,), jnp.float32),
                "alpha": jnp.asarray(alpha_init, jnp.float32)}
        self.phi, self.bias, self.alpha = (_param(init[k], HEAD_AXES[k]) for k in init)

    def __call__(self, streams_BxTxNxC: jax.Array) -> jax.Array:
        n = self.bias[...].shape[0]
        c = self.phi[...].shape[0] // n
        check_streams(streams_BxTxNxC, n, c, f"HyperHead(width={c}, n_streams={n})")
        w = connections.hyper_head_weights(self.phi[...], self.bias[...], self.alpha[...],
                                           streams_BxTxNxC)
        return connections.read_streams(w, streams_BxTxNxC)
# ----------------------------------------------------------------------------- one-line wrap
class Residual(nnx.Module):
    """A branch with its residual connection (made by `Sites.wrap`): `site(streams, *args,
    **kwargs)` -> new streams, calling `branch(h, *args, **kwargs)` (with `has_aux`: (new
    streams, aux)). With `hc` None (a disabled `Sites`) it is the plain residual
    `x + branch(x)` on `[B, T, C]`, with no stream axis and no extra parameter."""

    def __init__(self, branch: Callable, hc: HyperConnection | None, has_aux: bool = False):
        self.branch = branch
        self.hc = hc
        self.has_aux = has_aux

    def __call__(self, x, *args, **kwargs):
        def run(h):
            return self.branch(h, *args, **kwargs)

        if self.hc is not None:
            return self.hc(x, run, has_aux=self.has_aux)
        result = connections.checked_branch(run, self.has_aux)(x)
        if self.has_aux:
            out, aux = result
            return x + out, aux
        return x + result


class Sites:
    """The residual sites of one model, numbered for you, each branch wrapped in one line:

        sites = mhc.Sites(C, n_streams=4, kind="mhc")  # disable=True: the plain residual model
        self.attn = sites.wrap(Attention(...))         # site 0 (layer_index 0)
        self.mlp = sites.wrap(Mlp(...))                # site 1 (layer_index 1), ...
        self.sites = sites                             # for expand / reduce in __call__
        # __call__:
        s = self.sites.expand(x_BxTxC)                 # [B, T, N, C]
        s = self.mlp(self.attn(s))
        x = self.sites.reduce(s)                       # [B, T, C]

    Each `wrap` builds a `HyperConnection` (any `ConnectionSpec` option as a keyword here) with
    the next `layer_index`, in creation order, which is depth order when the model creates its
    blocks in order (blocks created under `nnx.vmap` pass `layer_index=` themselves). Branches
    include their own pre-norm. `disable=True` gives the ablation's baseline from the same code:
    `expand` and `reduce` return x unchanged and every site is `x + branch(x)`. A plain Python
    object (no arrays), so a module may keep it as a static attribute.
    """

    def __init__(self, width: int, *, disable: bool = False, collapse: str = "sum",
                 **options):
        self.spec = ConnectionSpec(width=width, **options)  # refuses a bad option here
        if collapse not in connections.COLLAPSE:
            raise ValueError(f"collapse={collapse!r}; allowed: {', '.join(connections.COLLAPSE)}"
                             " (or collapse with mhc.HyperHead)")
        self.disable, self.collapse, self.count = disable, collapse, 0

    def __repr__(self):
        return (f"Sites(width={self.spec.width}, n_streams={self.spec.n_streams}, "
                f"kind={self.spec.kind!r}, disable={self.disable}, sites={self.count})")

    def wrap(self, branch: Callable, *, has_aux: bool = False, layer_index=None) -> Residual:
        """`branch` (`[B, T, C] -> [B, T, C]`) as a residual site; `layer_index` None = the
        next one (sites made after an explicit index continue from it)."""
        index = self.count if layer_index is None else layer_index
        if isinstance(index, int):
            self.count = index + 1
        hc = None if self.disable else HyperConnection(spec=self.spec, layer_index=index)
        return Residual(branch, hc, has_aux)

    def expand(self, x_BxTxC: jax.Array) -> jax.Array:
        """`[B, T, C]` -> streams `[B, T, N, C]` (disabled: x)."""
        return x_BxTxC if self.disable else connections.expand_streams(x_BxTxC,
                                                                       self.spec.n_streams)

    def reduce(self, streams_BxTxNxC: jax.Array) -> jax.Array:
        """Streams -> `[B, T, C]` by `collapse` (disabled: the input)."""
        if self.disable:
            return streams_BxTxNxC
        check_streams(streams_BxTxNxC, self.spec.n_streams, self.spec.width, "Sites.reduce")
        return connections.collapse_streams(streams_BxTxNxC, self.collapse)


# ------------------------------------------------------------------------------------- Linen
class _LinenSite(linen.Module):
    """The call of `LinenHyperConnection`, whose attributes are `ConnectionSpec`'s fields."""

    @linen.compact
    def __call__(self, streams_BxTxNxC, branch):
        spec = ConnectionSpec(**{f.name: getattr(self, f.name)
                                 for f in dataclasses.fields(ConnectionSpec)})
        check_streams(streams_BxTxNxC, spec.n_streams, spec.width,
                      f"LinenHyperConnection(width={spec.width}, n_streams={spec.n_streams})")
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
        check_streams(streams_BxTxNxC, n, self.width,
                      f"LinenHyperHead(width={self.width}, n_streams={n})")
        phi = self.param("phi", linen.initializers.zeros, (n * self.width, n), jnp.float32)
        bias = self.param("bias", linen.initializers.zeros, (n,), jnp.float32)
        alpha = self.param("alpha", lambda _key: jnp.asarray(self.alpha_init, jnp.float32))
        w = connections.hyper_head_weights(phi, bias, alpha, streams_BxTxNxC)
        return connections.read_streams(w, streams_BxTxNxC)
