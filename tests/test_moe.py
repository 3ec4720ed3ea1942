"""MLA and MoE: shapes, causality, routing, aux-loss-free balancing, capacity vs ragged dispatch."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mhc.config import ConfigError, ModelConfig
from mhc.model import Decoder
from mhc.model.attention import MultiHeadLatentAttention
from mhc.model.moe import (MoE, RouterBias, balance_router_bias, capacity_dispatch,
                           ragged_dispatch, route)

MOE_CFG = ModelConfig(d_model=32, n_layers=3, n_heads=2, d_ff=64, attention="mla",
                      kv_lora_rank=16, qk_nope_dim=8, qk_rope_dim=4, v_head_dim=12, ffn="moe",
                      n_routed_experts=8, n_active_experts=2, expert_ff=16, n_shared_experts=1)


def _x(shape, seed=0):
    return jax.random.normal(jax.random.PRNGKey(seed), shape)


@pytest.mark.parametrize("q_rank", [0, 8])
def test_mla_shapes_and_causality(q_rank):
    mla = MultiHeadLatentAttention(32, 2, kv_rank=16, q_rank=q_rank, nope_dim=8, rope_dim=4,
                                   v_dim=12, rngs=nnx.Rngs(0))
    x = _x((2, 10, 32))
    y = mla(x)
    assert y.shape == (2, 10, 32)
    y2 = mla(x.at[:, 6:].set(7.0))  # changing the future leaves the past unchanged
    np.testing.assert_allclose(y2[:, :6], y[:, :6], atol=1e-6)
    assert float(jnp.abs(y2[:, 6:] - y[:, 6:]).max()) > 1e-3
    assert mla.kv_down.kernel.shape == (32, 16 + 4)  # latent + shared rope key


def test_route_topk_uses_bias_and_normalised_weights():
    x = _x((64, 16))
    router = _x((16, 8), 1)
    ids, w = route(x, router, jnp.zeros(8), 3)
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-6)
    scores = jax.nn.sigmoid(x @ router)
    np.testing.assert_array_equal(np.sort(ids, -1), np.sort(jax.lax.top_k(scores, 3)[1], -1))
    ids_b, w_b = route(x, router, jnp.zeros(8).at[5].set(10.0), 3)
    assert bool((ids_b == 5).any(-1).all())  # a large bias forces selection...
    chosen = jnp.take_along_axis(scores, ids_b, -1)
    np.testing.assert_allclose(w_b, chosen / chosen.sum(-1, keepdims=True), atol=1e-6)  # ...not weight
    _, w_s = route(x, router, jnp.zeros(8), 3, scale=2.5)
    np.testing.assert_allclose(w_s.sum(-1), 2.5, atol=1e-5)


def test_aux_loss_free_balancing_evens_out_a_skewed_router():
    e, k = 8, 2
    x = _x((512, 16)).at[:, 0].set(1.0)  # a constant feature...
    router = _x((16, e), 1).at[0].set(jnp.linspace(-4, 4, e))  # ...that favours the last experts
    bias = jnp.zeros(e)

    def imbalance(bias):
        ids, _ = route(x, router, bias, k)
        load = jnp.bincount(ids.reshape(-1), length=e).astype(jnp.float32)
        return load, float(load.max() / load.mean())

    load, start = imbalance(bias)
    for _ in range(300):
        bias = balance_router_bias(bias, load, 0.01)
        load, end = imbalance(bias)
    assert start > 2.0 and end < 1.15, (start, end)


@pytest.mark.parametrize("k", [1, 3])
def test_capacity_and_ragged_dispatch_agree_when_nothing_is_dropped(k):
    e, c, f, s = 6, 8, 5, 40
    x, w1, w2 = _x((s, c)), _x((e, c, 2 * f), 1) * 0.3, _x((e, f, c), 2) * 0.3
    ids, weights = route(x, _x((c, e), 3), jnp.zeros(e), k)
    y_cap, dropped = capacity_dispatch(x, ids, weights, w1, w2, capacity=s * k)
    y_rag, _ = ragged_dispatch(x, ids, weights, w1, w2)
    assert int(dropped) == 0
    np.testing.assert_allclose(y_cap, y_rag, atol=1e-5)
    # and their gradients with respect to the expert weights agree too
    g_cap = jax.grad(lambda w: capacity_dispatch(x, ids, weights, w, w2, s * k)[0].sum())(w1)
    g_rag = jax.grad(lambda w: ragged_dispatch(x, ids, weights, w, w2)[0].sum())(w1)
    np.testing.assert_allclose(g_cap, g_rag, atol=1e-4)


def test_capacity_drops_are_counted():
    e, c, f, s, k = 4, 8, 5, 32, 2
    x, w1, w2 = _x((s, c)), _x((e, c, 2 * f), 1), _x((e, f, c), 2)
    ids = jnp.zeros((s, k), jnp.int32).at[:, 1].set(1)  # everything to experts 0 and 1
    y, dropped = capacity_dispatch(x, ids, jnp.full((s, k), 0.5), w1, w2, capacity=10)
    assert int(dropped) == 2 * (s - 10)
    assert float(jnp.abs(y[10:]).max()) == 0.0 and float(jnp.abs(y[:10]).max()) > 0


def test_moe_module_both_dispatches_match():
    outs = []
    for dispatch in ("capacity", "ragged"):
        moe = MoE(16, 8, 4, 1, 2, capacity_factor=4.0, dispatch=dispatch, rngs=nnx.Rngs(0))
        y, stats = moe(_x((2, 6, 16)))
        outs.append(y)
        assert y.shape == (2, 6, 16) and float(stats["load"].sum()) == 2 * 6 * 2
        assert isinstance(moe.router_bias, RouterBias)
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-5)


def test_moe_decoder_router_stats_and_bias_outside_the_gradient():
    model = Decoder(MOE_CFG, rngs=nnx.Rngs(0))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 12)), jnp.int32)
    out = model.forward(tokens)
    assert out.logits.shape == (2, 12, 256) and out.maps.res.shape == (6, 2, 12, 4, 4)
    assert out.router["load"].shape == (2, 8)  # 3 blocks: 1 dense + 2 MoE
    np.testing.assert_allclose(out.router["load"].sum(-1), 2 * 12 * 2)
    grads = nnx.grad(lambda m: m(tokens)[0].mean())(model)
    assert "router_bias" not in str(jax.tree_util.tree_structure(grads))
    before = model.moe_blocks.ffn.router_bias[...]
    model.balance_routers(out.router["load"])
    assert float(jnp.abs(model.moe_blocks.ffn.router_bias[...] - before).max()) == pytest.approx(
        MOE_CFG.router_bias_rate)


@pytest.mark.parametrize("bad, message", [
    (dict(n_active_experts=9), "n_active_experts=9 exceeds n_routed_experts=8"),
    (dict(n_dense_layers=4), "n_dense_layers=4"),
    (dict(attention="gqa"), "attention='gqa'"),
    (dict(moe_dispatch="megablocks"), "moe_dispatch='megablocks'"),
    (dict(qk_rope_dim=5), "qk_rope_dim=5 must be even"),
])
def test_bad_moe_config(bad, message):
    with pytest.raises(ConfigError, match=message):
        dataclasses.replace(MOE_CFG, **bad)


def test_multi_token_prediction_head():
    cfg = dataclasses.replace(MOE_CFG, mtp_depth=1, mtp_weight=0.3)
    model = Decoder(cfg, rngs=nnx.Rngs(0))
    tokens = jnp.asarray(np.random.default_rng(1).integers(0, 256, (2, 12)), jnp.int32)
    out = model.forward(tokens)
    assert out.mtp_logits.shape == (2, 12, 256)
    # causal: position t may see tokens up to t+1 (the embedding of the next token), no further
    later = tokens.at[:, 8:].set(3)
    np.testing.assert_allclose(model.forward(later).mtp_logits[:, :7], out.mtp_logits[:, :7],
                               atol=1e-5)
    from mhc import train_step
    targets = jnp.roll(tokens, -1, 1)
    objective, (_, losses) = train_step._loss_fn(model, {"inputs": tokens, "targets": targets})
    assert float(objective) == pytest.approx(float(losses["loss"] + 0.3 * losses["mtp_loss"]),
                                             rel=1e-6)
    assert Decoder(MOE_CFG, rngs=nnx.Rngs(0)).forward(tokens).mtp_logits is None
