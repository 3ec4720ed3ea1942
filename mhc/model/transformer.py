"""Decoder-only transformer with a pluggable residual connection and scanned layers.

Each block has two connection sites (attention, then FFN), each branch with its own pre-norm:
    streams = hc_attn(streams, lambda h: attn(norm1(h)));  streams = hc_ffn(streams, ...)
Streams: the embedding is copied into N streams (N = 1 for a plain residual), collapsed at the
end by sum / mean / a learned HyperHead, then final RMSNorm and the LM head.
Single-pass mHC (`single_pass=true`, DeepSeek-V4.1): the carry through the blocks is (streams,
pre-mix `[B, T, N]` fp32); site k reads its streams with site k-1's H_pre (site 0 with a one-hot
on stream 0) and the final merge uses the last site's H_pre, so the pre slice of site k gets its
gradient from site k + 1 (the last one's from the head).
Dimension letters (see `mhc`'s docstring): B batch, T tokens, N streams, C width, V vocab, L
layers (2L sites), E experts.
Layers are created with `nnx.vmap` and run with `nnx.scan` (compile time flat in depth): one stack
of dense blocks, then (for `ffn="moe"`) one stack of MoE blocks.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from mhc import connections, diagnostics, fp8, sharding
from mhc.config import ModelConfig
from mhc.connections import Maps
from mhc.layers import HyperConnection, HyperHead
from mhc.model.attention import CausalSelfAttention, MultiHeadLatentAttention, param_init
from mhc.model.mlp import SwiGLU
from mhc.model.moe import MoE, balance_router_bias
from mhc.remat import remat_policy


def _dtype(cfg: ModelConfig):
    return jnp.bfloat16 if cfg.compute_dtype == "bfloat16" else jnp.float32


def _connection(cfg: ModelConfig, site_index):
    return HyperConnection.from_spec(cfg.connection_spec(), layer_index=site_index)


def _branch(norm, f, has_aux: bool = False):
    """`h -> f(norm(h))` with its input and output `[B, T, C]` constrained to split over the
    batch axes on a mesh (no-ops without one): otherwise XLA's partitioner may let the
    FSDP-split weights pull activations onto a split C with the batch gathered (at 2048
    devices, the whole batch's [B, T, C] on every device)."""
    def run(h_BxTxC):
        out = f(norm(sharding.constrain(h_BxTxC, _TOKENS)))
        if has_aux:
            return sharding.constrain(out[0], _TOKENS), out[1]
        return sharding.constrain(out, _TOKENS)
    return run


_TOKENS = ("batch", None, None)


class Block(nnx.Module):
    """Attention site then FFN site. `block_index` may be a traced scalar (vmapped creation)."""

    def __init__(self, cfg: ModelConfig, block_index=0, *, moe: bool = False, rngs: nnx.Rngs):
        dtype = _dtype(cfg)
        out_std = cfg.init_std / (2 * cfg.n_layers) ** 0.5  # GPT-2 style depth scaling
        # the GEMMs of attention's projections and the FFNs (FP8 under fp8=deepseek); the
        # norms and the connection sites (HC/mHC coefficients: fp32 by design) are untouched
        dot_general = fp8.linear_dot_general(cfg.fp8)
        self.attn_norm = nnx.RMSNorm(cfg.d_model, epsilon=cfg.norm_eps, dtype=dtype, rngs=rngs)
        if cfg.attention == "mla":
            self.attn = MultiHeadLatentAttention(
                cfg.d_model, cfg.n_heads, kv_rank=cfg.kv_lora_rank, q_rank=cfg.q_lora_rank,
                nope_dim=cfg.qk_nope_dim, rope_dim=cfg.qk_rope_dim, v_dim=cfg.v_head_dim,
                rope_theta=cfg.rope_theta, norm_eps=cfg.norm_eps, init_std=cfg.init_std,
                out_std=out_std, dtype=dtype, dot_general=dot_general, rngs=rngs)
        else:
            self.attn = CausalSelfAttention(cfg.d_model, cfg.n_heads, rope_theta=cfg.rope_theta,
                                            init_std=cfg.init_std, out_std=out_std, dtype=dtype,
                                            dot_general=dot_general, rngs=rngs)
        self.ffn_norm = nnx.RMSNorm(cfg.d_model, epsilon=cfg.norm_eps, dtype=dtype, rngs=rngs)
        if moe:
            self.ffn = MoE(cfg.d_model, cfg.expert_ff, cfg.n_routed_experts, cfg.n_shared_experts,
                           cfg.n_active_experts, capacity_factor=cfg.capacity_factor,
                           dispatch=cfg.moe_dispatch, routed_scale=cfg.routed_scale,
                           groups=cfg.router_groups, topk_groups=cfg.router_topk_groups,
                           init_std=cfg.init_std, out_std=out_std, dtype=dtype, fp8=cfg.fp8,
                           rngs=rngs)
        else:
            self.ffn = SwiGLU(cfg.d_model, cfg.d_ff, init_std=cfg.init_std, out_std=out_std,
                              dtype=dtype, dot_general=dot_general, rngs=rngs)
        self.moe = moe
        self.single_pass = cfg.single_pass
        self.attn_hc = _connection(cfg, 2 * block_index)
        self.ffn_hc = _connection(cfg, 2 * block_index + 1)

    def __call__(self, carry):
        """carry: streams `[B, T, N, C]`, or with single_pass (streams, the previous site's pre-mix
        `[B, T, N]` fp32). Returns (new carry, (attention maps, FFN maps, router stats or {}))."""
        streams, pre = carry if self.single_pass else (carry, None)
        streams, attn_maps = self.attn_hc.apply(streams, _branch(self.attn_norm, self.attn),
                                                read_with=pre)
        pre = attn_maps.pre if self.single_pass else None
        if self.moe:  # the MoE layer returns (output, router stats)
            streams, ffn_maps, stats = self.ffn_hc.apply(
                streams, _branch(self.ffn_norm, self.ffn, has_aux=True), has_aux=True,
                read_with=pre)
        else:
            streams, ffn_maps = self.ffn_hc.apply(streams, _branch(self.ffn_norm, self.ffn),
                                                  read_with=pre)
            stats = {}
        carry = (streams, ffn_maps.pre) if self.single_pass else streams
        # batch-split on a mesh: a plain residual's maps are constants (1/N, 1, I) broadcast to
        # [B, T, ...], which XLA would otherwise keep whole on every device (the 2048-H100 plan:
        # 61 GiB of them, stacked over microbatches)
        attn_maps, ffn_maps = jax.tree.map(
            lambda a: sharding.constrain(a, ("batch",) + (None,) * (a.ndim - 1)),
            (attn_maps, ffn_maps))
        return carry, (attn_maps, ffn_maps, stats)


def remat_group_size(cfg: ModelConfig, n_blocks: int) -> int:
    """Blocks per recompute group: `remat_group`, or with 0 the divisor of `n_blocks` nearest the
    paper's optimum L_r* = sqrt(n·L / (n + 2)) (Eq. 20). L and L_r count layers as the paper's
    figures do, two per block (attention and FFN sites), so the optimum in blocks is L_r* / 2."""
    if cfg.remat_group:
        group = min(cfg.remat_group, n_blocks)
    else:
        group = math.sqrt(cfg.streams * 2 * n_blocks / (cfg.streams + 2)) / 2
    divisors = [d for d in range(1, n_blocks + 1) if n_blocks % d == 0]
    return min(divisors, key=lambda d: (abs(d - group), d))


class ModelOutput(NamedTuple):
    """logits [B, T, V] fp32; maps of every site in depth order (`Maps` of [2L, B, T, ...]);
    router stats of the MoE blocks ({"load": [L_moe, E], "dropped": [L_moe]}, or {}; with an
    MoE MTP block, `mtp_ffn="moe"`, its row is appended: [L_moe + 1, E]); logits of the
    multi-token-prediction head when `mtp_depth = 1`."""
    logits: jax.Array
    maps: Maps
    router: dict
    mtp_logits: jax.Array | None = None  # [B, T, V]: position t predicts token t+2
    # [B, T]: `diagnostics.stream_diversity` of the last site's output streams (before the merge)
    stream_diversity: jax.Array | None = None


def _make_stack(cfg: ModelConfig, first: int, count: int, moe: bool, rngs: nnx.Rngs):
    @nnx.split_rngs(splits=count)
    @nnx.vmap(in_axes=(0, 0), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make(rngs, index):
        return Block(cfg, index, moe=moe, rngs=rngs)

    return make(rngs, jnp.arange(first, first + count))


class Decoder(nnx.Module):
    """`model(tokens_BxT) -> (logits_BxTxV fp32, maps)`; `model.forward(tokens)` -> ModelOutput
    (adds the MoE router statistics). Maps stack every site in depth order:
    `Maps(pre [2L,B,T,N], post [2L,B,T,N], res [2L,B,T,N,N])` (site 2l = attention of block l)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        dtype = _dtype(cfg)
        with nnx.use_eager_sharding(False):  # vmap adds the "layers" axis name as metadata only
            self.embed = nnx.Embed(cfg.vocab_size, cfg.d_model, dtype=dtype, rngs=rngs,
                                   embedding_init=param_init(cfg.init_std, ("vocab", "embed")))
            n_dense = cfg.n_layers - cfg.n_moe_layers
            self.dense_blocks = _make_stack(cfg, 0, n_dense, False, rngs) if n_dense else None
            self.moe_blocks = (_make_stack(cfg, n_dense, cfg.n_moe_layers, True, rngs)
                               if cfg.n_moe_layers else None)
            # symmetry breaking at expansion (stream_offset_std > 0): a learned offset per stream
            self.stream_offset = (nnx.Param(cfg.stream_offset_std * jax.random.normal(
                rngs.params(), (cfg.streams, cfg.d_model), jnp.float32))
                if cfg.stream_offset_std > 0 and cfg.streams > 1 else None)
            self.head_collapse = (HyperHead(cfg.d_model, cfg.streams)
                                  if cfg.collapse == "head" and cfg.streams > 1 else None)
            self.final_norm = nnx.RMSNorm(cfg.d_model, epsilon=cfg.norm_eps, dtype=dtype,
                                          rngs=rngs)
            self.lm_head = nnx.Linear(cfg.d_model, cfg.vocab_size, use_bias=False, dtype=dtype,
                                      kernel_init=param_init(cfg.init_std, ("embed", "vocab")),
                                      rngs=rngs)
            if cfg.mtp_depth:  # shares the embedding, final norm and LM head (DeepSeek-V3)
                norm = functools.partial(nnx.RMSNorm, cfg.d_model, epsilon=cfg.norm_eps,
                                         dtype=dtype, rngs=rngs)
                self.mtp_norm_hidden, self.mtp_norm_embed = norm(), norm()
                self.mtp_proj = nnx.Linear(2 * cfg.d_model, cfg.d_model, use_bias=False,
                                           dtype=dtype, rngs=rngs, kernel_init=param_init(
                                               cfg.init_std, ("mlp", "embed")),
                                           dot_general=fp8.linear_dot_general(cfg.fp8))
                self.mtp_block = Block(cfg, cfg.n_layers, moe=cfg.mtp_ffn == "moe", rngs=rngs)
            else:
                self.mtp_block = None

    def _run_stack(self, blocks, n_blocks: int, streams):
        """Scan the `n_blocks` stacked blocks over the carry (streams, or with single_pass
        (streams, pre-mix)); with remat, recompute in groups of `remat_group`."""
        policy = remat_policy(self.cfg.remat, self.cfg.streams, self.cfg.d_model)
        group = remat_group_size(self.cfg, n_blocks)

        def body(block, streams):
            return block(streams)

        def scan(blocks, streams, body=body):
            return nnx.scan(body, in_axes=(0, nnx.Carry), out_axes=(nnx.Carry, 0),
                            transform_metadata={nnx.PARTITION_NAME: "layers"})(blocks, streams)

        if policy is None:
            return scan(blocks, streams)
        if group == 1:
            return scan(blocks, streams, nnx.remat(body, policy=policy))
        # Paper Eq. 20: keep only each group's input streams; recompute inside the group.
        graphdef, state = nnx.split(blocks)
        grouped = jax.tree.map(lambda a: a.reshape(n_blocks // group, group, *a.shape[1:]),
                               state)

        @functools.partial(jax.checkpoint, policy=policy)
        def run_group(streams, group_state):
            # the policy inside the group too: recomputing a group keeps only what the policy
            # saves per block, not every intermediate of its blocks
            return scan(nnx.merge(graphdef, group_state), streams, nnx.remat(body, policy=policy))

        streams, outs = jax.lax.scan(run_group, streams, grouped)
        return streams, jax.tree.map(lambda a: a.reshape(n_blocks, *a.shape[2:]), outs)

    def _expand(self, x_BxTxC: jax.Array) -> jax.Array:
        """[B, T, C] -> [B, T, N, C]: copies, plus the learned per-stream offset when enabled."""
        streams = connections.expand_streams(x_BxTxC, self.cfg.streams)
        if self.stream_offset is None:
            return streams
        return streams + self.stream_offset[...].astype(streams.dtype)

    def initial_res(self) -> jax.Array:
        """The sites' H_res at initialisation `[N, N]` (what diagnostics measure movement from)."""
        return jnp.asarray(connections.initial_res(self.cfg.connection_spec())
                           if self.cfg.residual != "residual" else jnp.eye(1))

    def _first_carry(self, streams_BxTxNxC: jax.Array):
        """The carry into the first block: the streams, or with single_pass (streams, the fixed
        pre-mix of site 0, one-hot on stream 0, fp32)."""
        if not self.cfg.single_pass:
            return streams_BxTxNxC
        pre = jnp.zeros(streams_BxTxNxC.shape[:-1], jnp.float32).at[..., 0].set(1.0)
        return streams_BxTxNxC, sharding.constrain(pre, ("batch", None, None))

    def _merge(self, carry, use_head: bool = True) -> jax.Array:
        """Streams -> `[B, T, C]`: the HyperHead (unless `use_head` is False: the MTP block), sum
        or mean; with single_pass the last site's pre-mix (DeepSeek-V4.1's final merge)."""
        if self.cfg.single_pass:
            streams, pre = carry
            return connections.read_streams(pre, streams)
        if use_head and self.head_collapse is not None:
            return self.head_collapse(carry)
        return connections.collapse_streams(carry, "mean" if self.cfg.collapse == "mean"
                                            else "sum")

    def forward(self, tokens_BxT: jax.Array) -> ModelOutput:
        cfg = self.cfg
        streams = self._expand(sharding.embed_tokens(self.embed, tokens_BxT))
        streams = self._first_carry(sharding.constrain(streams, ("batch", None, None, None)))
        attn_maps, ffn_maps, router = [], [], {}
        stacks = ((self.dense_blocks, cfg.n_layers - cfg.n_moe_layers),
                  (self.moe_blocks, cfg.n_moe_layers))
        for blocks, n_blocks in stacks:
            if blocks is None:
                continue
            streams, (attn, ffn, stats) = self._run_stack(blocks, n_blocks, streams)
            attn_maps.append(attn)
            ffn_maps.append(ffn)
            router = stats or router
        # a [B, T] by-product for the logs (XLA drops it where the caller does not use it)
        diversity = diagnostics.stream_diversity(streams[0] if cfg.single_pass else streams)
        x = self._merge(streams)
        logits = self.lm_head(self.final_norm(x)).astype(jnp.float32)
        mtp_logits = None
        if self.mtp_block is not None:
            mtp_logits, mtp_stats = self._mtp(x, tokens_BxT)
            if mtp_stats:  # an MoE MTP block: its router's row comes after the MoE blocks'
                router = {k: jnp.concatenate([router[k], v[None]]) if router else v[None]
                          for k, v in mtp_stats.items()}
        attn = jax.tree.map(lambda *a: jnp.concatenate(a), *attn_maps)
        ffn = jax.tree.map(lambda *a: jnp.concatenate(a), *ffn_maps)
        maps = jax.tree.map(lambda a, f: jnp.stack([a, f], 1).reshape(-1, *a.shape[1:]),
                            attn, ffn)
        return ModelOutput(logits, Maps(*maps), router, mtp_logits, diversity)

    def _mtp(self, hidden_BxTxC, tokens_BxT):
        """One extra block on [norm(h_t); norm(embed(token_{t+1}))]; the last position has no
        next token (its prediction is masked out of the loss). Returns (logits [B, T, V], the
        block's router stats, {} for a dense block)."""
        next_tokens = jnp.concatenate([tokens_BxT[:, 1:], tokens_BxT[:, -1:]], axis=1)
        h = self.mtp_proj(jnp.concatenate([self.mtp_norm_hidden(hidden_BxTxC),
                                           self.mtp_norm_embed(sharding.embed_tokens(
                                               self.embed, next_tokens))], -1))
        # with single_pass the MTP block carries its own pre-mix, from its one-hot start
        carry, (_, _, stats) = self.mtp_block(self._first_carry(self._expand(h)))
        x = self._merge(carry, use_head=False)
        return self.lm_head(self.final_norm(x)).astype(jnp.float32), stats

    def __call__(self, tokens_BxT: jax.Array) -> tuple[jax.Array, Maps]:
        out = self.forward(tokens_BxT)
        return out.logits, out.maps

    def balance_routers(self, load_LxE: jax.Array) -> None:
        """Aux-loss-free balancing step for every MoE block (call after each optimizer step).
        `load_LxE`: the MoE blocks' loads in depth order, then the MoE MTP block's if any."""
        n_moe, rate = self.cfg.n_moe_layers, self.cfg.router_bias_rate
        if self.moe_blocks is not None:
            bias = self.moe_blocks.ffn.router_bias
            bias[...] = balance_router_bias(bias[...], load_LxE[:n_moe], rate)
        if self.mtp_block is not None and self.mtp_block.moe:
            bias = self.mtp_block.ffn.router_bias
            bias[...] = balance_router_bias(bias[...], load_LxE[n_moe], rate)
