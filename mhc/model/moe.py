"""DeepSeek-V3-style mixture of experts: shared experts + routed experts chosen by the router of
`mhc.model.routing` (sigmoid scores, top-k with an auxiliary-loss-free balancing bias, optionally
group-limited; normalised top-k weights times the routed scaling factor).

Dimension letters (see `mhc`'s docstring): G groups, S tokens of a group, C width, E routed
experts, F expert width, A active experts per token, U capacity (slots per expert).

Two dispatch implementations with the same result when no token is dropped:
  capacity  scatter into per-expert buffers [E, U, C], batched matmuls, gather back (fast on CPU;
            one group per sequence; assignments beyond an expert's capacity are dropped and
            counted)
  ragged    sort assignments by expert and run `jax.lax.ragged_dot` (no drops; for GPU/TPU)
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec as P

from mhc import fp8 as fp8_gemm
from mhc import sharding, targets
from mhc.model.attention import param_init
from mhc.model.mlp import SwiGLU
from mhc.model.routing import RouterBias, balance_router_bias, check_groups, route
from mhc.model_choices import DISPATCH

__all__ = ["MoE", "RouterBias", "balance_router_bias", "capacity_dispatch",
           "expert_parallel_dispatch", "ragged_dispatch", "route"]  # the router: routing.py

# what "auto" dispatches by, per platform of the mesh in context (`targets.current_platform`).
# GPU: XLA:GPU expands `ragged_dot` densely (the 3b plan for 8 H100s: 1,130.58 GiB per device
# with ragged, 63.10 GiB with capacity; benchmarks/README.md, "MoE dispatch on GPU").
AUTO_DISPATCH = {"cpu": "capacity", "gpu": "capacity", "tpu": "ragged"}


def _to_buffers(x_GxSxC, ids_GxSxA, n_experts: int, capacity: int):
    """Scatter each (token, choice) into its expert's buffer: ([G, E, U, C], where-info)."""
    g, s, k = ids_GxSxA.shape
    flat_ids = ids_GxSxA.reshape(g, s * k)  # token-major within each group
    one_hot = jax.nn.one_hot(flat_ids, n_experts, dtype=jnp.int32)
    slot = jnp.sum((jnp.cumsum(one_hot, axis=1) - 1) * one_hot, axis=-1)  # position in expert
    keep = slot < capacity
    slot = jnp.where(keep, slot, capacity)  # out of range -> dropped by the scatter/gather
    group = jnp.broadcast_to(jnp.arange(g)[:, None], flat_ids.shape)
    tokens = jnp.repeat(x_GxSxC, k, axis=1)
    buffers = jnp.zeros((g, n_experts, capacity, x_GxSxC.shape[-1]), x_GxSxC.dtype)
    buffers = buffers.at[group, flat_ids, slot].set(tokens, mode="drop")
    return buffers, (group, flat_ids, slot, keep)


def _from_buffers(out_GxExUxC, where, weights_GxSxA):
    """Gather each (token, choice)'s expert output and mix with the routing weights."""
    group, flat_ids, slot, _ = where
    g, s, k = weights_GxSxA.shape
    per_assignment = out_GxExUxC.at[group, flat_ids, slot].get(mode="fill", fill_value=0)
    return jnp.sum(per_assignment.reshape(g, s, k, -1)
                   * weights_GxSxA[..., None].astype(out_GxExUxC.dtype), 2)


def _expert_fp8(x_GxExUxC, w_ExCxF):
    """"gepc,ecf->gepf" as E block-scaled FP8 GEMMs (mhc.fp8): each expert's slots of every group
    are its M rows."""
    g, e, u, c = x_GxExUxC.shape
    rows = jnp.swapaxes(x_GxExUxC, 0, 1).reshape(e, g * u, c)
    out = fp8_gemm.batched_matmul(rows, w_ExCxF)
    return jnp.swapaxes(out.reshape(e, g, u, -1), 0, 1)


def _experts(buffers_GxExUxC, w_gate_up_ExCx2F, w_down_ExFxC, fp8: bool = False):
    if fp8:
        gate, up = jnp.split(_expert_fp8(buffers_GxExUxC, w_gate_up_ExCx2F), 2, -1)
        return _expert_fp8(jax.nn.silu(gate) * up, w_down_ExFxC)
    gate, up = jnp.split(jnp.einsum("gepc,ecf->gepf", buffers_GxExUxC, w_gate_up_ExCx2F), 2, -1)
    return jnp.einsum("gepf,efc->gepc", jax.nn.silu(gate) * up, w_down_ExFxC)


def capacity_dispatch(x_GxSxC, ids_GxSxA, weights_GxSxA, w_gate_up_ExCx2F, w_down_ExFxC,
                      capacity: int, fp8: bool = False):
    """Per-expert buffers of `capacity` slots for each of G token groups (a leading G axis is
    optional). Returns (y [G, S, C], dropped assignment count). `fp8`: the expert GEMMs in
    DeepSeek-V3's FP8 (mhc.fp8)."""
    grouped = x_GxSxC.ndim == 3
    if not grouped:
        x_GxSxC, ids_GxSxA, weights_GxSxA = x_GxSxC[None], ids_GxSxA[None], weights_GxSxA[None]
    buffers, where = _to_buffers(x_GxSxC, ids_GxSxA, w_gate_up_ExCx2F.shape[0], capacity)
    y = _from_buffers(_experts(buffers, w_gate_up_ExCx2F, w_down_ExFxC, fp8), where,
                      weights_GxSxA)
    return (y if grouped else y[0]), jnp.sum(~where[3])


def expert_parallel_dispatch(x_BxTxC, ids_BxTxA, weights_BxTxA, w_gate_up_ExCx2F, w_down_ExFxC,
                             capacity: int, mesh, fp8: bool = False):
    """Capacity dispatch under `shard_map`: each device fills buffers for its own sequences,
    an all-to-all over `expert` sends them to the devices holding those experts, and a second
    all-to-all brings the outputs back. FSDP-sharded expert weights are all-gathered first."""
    batch_axes = tuple(a for a in sharding.BATCH_AXES if mesh.shape[a] > 1) or None
    fsdp = "fsdp" if mesh.shape["fsdp"] > 1 else None
    ep = mesh.shape["expert"]
    expert = "expert" if ep > 1 else None
    tokens_spec = P(batch_axes)

    def local(x, ids, weights, w1, w2):
        if fsdp:
            w1 = jax.lax.all_gather(w1, fsdp, axis=1, tiled=True)
            w2 = jax.lax.all_gather(w2, fsdp, axis=2, tiled=True)
        buffers, where = _to_buffers(x, ids, w1.shape[0] * ep, capacity)
        if expert:  # [G, E, U, C] -> [G*ep, E/ep, U, C]: my experts, everyone's tokens
            buffers = jax.lax.all_to_all(buffers, expert, 1, 0, tiled=True)
        out = _experts(buffers, w1, w2, fp8)
        if expert:
            out = jax.lax.all_to_all(out, expert, 0, 1, tiled=True)
        dropped = jnp.sum(~where[3])
        if batch_axes:
            dropped = jax.lax.psum(dropped, batch_axes)
        return _from_buffers(out, where, weights), dropped

    return jax.shard_map(local, mesh=mesh, out_specs=(tokens_spec, P()), check_vma=False,
                         in_specs=(tokens_spec, tokens_spec, tokens_spec, P(expert, fsdp),
                                   P(expert, None, fsdp)))(
        x_BxTxC, ids_BxTxA, weights_BxTxA, w_gate_up_ExCx2F, w_down_ExFxC)


def ragged_dispatch(x_SxC, ids_SxA, weights_SxA, w_gate_up_ExCx2F, w_down_ExFxC):
    """Sort assignments by expert and use grouped matmuls; returns (y [S, C], 0 dropped)."""
    s, k = ids_SxA.shape
    e, c = w_gate_up_ExCx2F.shape[0], x_SxC.shape[-1]
    flat_ids = ids_SxA.reshape(-1)
    order = jnp.argsort(flat_ids, stable=True)
    sizes = jnp.bincount(flat_ids, length=e).astype(jnp.int32)
    tokens = jnp.repeat(x_SxC, k, axis=0)[order]
    gate, up = jnp.split(jax.lax.ragged_dot(tokens, w_gate_up_ExCx2F, sizes), 2, axis=-1)
    out = jax.lax.ragged_dot(jax.nn.silu(gate) * up, w_down_ExFxC, sizes)
    per_assignment = jnp.zeros_like(out).at[order].set(out)
    y = jnp.sum(per_assignment.reshape(s, k, c) * weights_SxA[..., None].astype(out.dtype), 1)
    return y, jnp.zeros((), jnp.int32)


class MoE(nnx.Module):
    """`moe(x_BxTxC) -> (y_BxTxC, stats)`; stats: `load` [E] (assignments per expert) and
    `dropped` (assignments beyond capacity)."""

    def __init__(self, d_model: int, expert_ff: int, n_routed: int, n_shared: int, k: int, *,
                 capacity_factor: float = 1.25, dispatch: str = "auto", routed_scale: float = 1.0,
                 groups: int = 1, topk_groups: int = 1, init_std: float = 0.02,
                 out_std: float | None = None, dtype=jnp.float32, fp8: str = "none",
                 rngs: nnx.Rngs):
        if dispatch not in DISPATCH:
            raise ValueError(f"moe_dispatch={dispatch!r}; allowed: {', '.join(DISPATCH)}")
        check_groups(n_routed, k, groups, topk_groups)
        if fp8 != "none" and dispatch == "ragged":
            raise ValueError(f"fp8={fp8!r} with moe_dispatch='ragged'; allowed: capacity, auto")
        self.k, self.capacity_factor, self.routed_scale = k, capacity_factor, routed_scale
        self.groups, self.topk_groups = groups, topk_groups
        # fp8: the shared and routed experts' GEMMs in FP8; the router stays fp32 (V3's gating)
        self.dispatch, self.dtype, self.fp8 = dispatch, dtype, fp8 == "deepseek"
        key = rngs.params
        self.router = nnx.Param(param_init(init_std, ("embed", "expert"))(
            key(), (d_model, n_routed), jnp.float32))
        self.router_bias = RouterBias(jnp.zeros((n_routed,), jnp.float32))
        self.w_gate_up = nnx.Param(param_init(init_std, ("expert", "embed", "mlp"))(
            key(), (n_routed, d_model, 2 * expert_ff), jnp.float32))
        self.w_down = nnx.Param(param_init(out_std or init_std, ("expert", "mlp", "embed"))(
            key(), (n_routed, expert_ff, d_model), jnp.float32))
        self.shared = (SwiGLU(d_model, n_shared * expert_ff, init_std=init_std, out_std=out_std,
                              dtype=dtype, dot_general=fp8_gemm.linear_dot_general(fp8),
                              rngs=rngs) if n_shared else None)

    def capacity(self, n_tokens: int) -> int:
        """Slots per expert for a group of `n_tokens` tokens."""
        e = self.router.shape[-1]
        return max(1, math.ceil(n_tokens * self.k / e * self.capacity_factor))

    def __call__(self, x_BxTxC: jax.Array) -> tuple[jax.Array, dict]:
        b, t, c = x_BxTxC.shape
        x = x_BxTxC.astype(self.dtype)
        ids, weights = route(x, self.router[...], self.router_bias[...], self.k, self.routed_scale,
                             self.groups, self.topk_groups)
        w_gate_up = self.w_gate_up[...].astype(self.dtype)
        w_down = self.w_down[...].astype(self.dtype)
        dispatch = self.dispatch
        if dispatch == "auto":  # the FP8 expert GEMMs are per-expert batched: capacity
            dispatch = "capacity" if self.fp8 else AUTO_DISPATCH[targets.current_platform()]
        mesh = jax.sharding.get_abstract_mesh()
        if dispatch == "capacity" and not mesh.empty and mesh.shape.get("tensor", 1) == 1:
            y, dropped = expert_parallel_dispatch(x, ids, weights, w_gate_up, w_down,
                                                  self.capacity(t), mesh, self.fp8)
        elif dispatch == "capacity":
            # one dispatch group per sequence: the batch axis stays data-parallel on a mesh
            y, dropped = capacity_dispatch(x, ids, weights, w_gate_up, w_down, self.capacity(t),
                                           self.fp8)
        else:
            y, dropped = ragged_dispatch(x.reshape(b * t, c), ids.reshape(b * t, -1),
                                         weights.reshape(b * t, -1), w_gate_up, w_down)
            y = y.reshape(b, t, c)
        if self.shared is not None:
            y = y + self.shared(x)
        load = jnp.bincount(ids.reshape(-1), length=self.router.shape[-1]).astype(jnp.float32)
        return y.astype(x_BxTxC.dtype), {"load": load, "dropped": dropped.astype(jnp.float32)}
