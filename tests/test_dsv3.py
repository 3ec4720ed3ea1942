"""DeepSeek-V3's pieces (arXiv 2412.19437) and its recipes: low-rank MLA queries and
group-limited routing against independent NumPy formulations of the paper's equations, their
bad values, an MoE multi-token-prediction block, and the `dsv3-671b` / `dsv3-mini` recipes with
their parameter counts."""
import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mhc import recipes, train
from mhc.config import ConfigError, apply_overrides
from mhc.model import Decoder
from mhc.model.attention import MultiHeadLatentAttention
from mhc.model.moe import MoE
from mhc.model.routing import route

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------ MLA with low-rank queries
def _rms_norm(x, scale, eps):
    return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * scale


def _rope(x_TxHxK, theta):
    """RoPE rotating channel i with channel i + K/2 (the pairing mhc uses: the paper's RoPE with
    its channels permuted) by angle t·theta^(-i/(K/2))."""
    t, half = x_TxHxK.shape[0], x_TxHxK.shape[-1] // 2
    angle = np.arange(t)[:, None] * theta ** (-np.arange(half) / half)  # [T, K/2]
    cos, sin = np.cos(angle)[:, None], np.sin(angle)[:, None]
    a, b = x_TxHxK[..., :half], x_TxHxK[..., half:]
    return np.concatenate([a * cos - b * sin, a * sin + b * cos], -1)


def _mla_numpy(x_TxC, w, *, heads, q_rank, kv_rank, nope, rope_dim, v_dim, eps, theta):
    """DeepSeek-V2/V3 MLA for one sequence, from the papers' equations (V3 Eqs. 1-11):
    c_Q = W_DQ h, [q_C; q_R] = W_UQ RMSNorm(c_Q), q_R <- RoPE(q_R); [c_KV; k_R] = [W_DKV; W_KR] h,
    [k_C; v] = W_UKV RMSNorm(c_KV), k_R <- RoPE(k_R) shared by the heads;
    o_h = softmax_causal(q_h·k_h / sqrt(nope + rope)) v_h; u = W_O [o_1; ...; o_H]."""
    t = x_TxC.shape[0]
    c_q = _rms_norm(x_TxC @ w["q_down"], w["q_norm"], eps)  # [T, q_rank]
    q = (c_q @ w["q_up"]).reshape(t, heads, nope + rope_dim)
    q = np.concatenate([q[..., :nope], _rope(q[..., nope:], theta)], -1)
    kv_in = x_TxC @ w["kv_down"]  # [T, kv_rank + rope]
    c_kv = _rms_norm(kv_in[:, :kv_rank], w["kv_norm"], eps)
    k_r = _rope(kv_in[:, None, kv_rank:], theta)  # [T, 1, rope]
    kv = (c_kv @ w["kv_up"]).reshape(t, heads, nope + v_dim)
    k = np.concatenate([kv[..., :nope], np.broadcast_to(k_r, (t, heads, rope_dim))], -1)
    v = kv[..., nope:]
    logits = np.einsum("qhk,shk->hqs", q, k) / np.sqrt(nope + rope_dim)
    logits = np.where(np.tril(np.ones((t, t), bool)), logits, -np.inf)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    o = np.einsum("hqs,shj->qhj", p, v).reshape(t, heads * v_dim)
    return o @ w["out"]


def test_low_rank_query_mla_matches_the_papers_equations():
    dims = dict(heads=2, q_rank=6, kv_rank=5, nope=4, rope_dim=4, v_dim=3)
    c, eps, theta = 16, 1e-6, 10000.0
    mla = MultiHeadLatentAttention(c, dims["heads"], kv_rank=dims["kv_rank"],
                                   q_rank=dims["q_rank"], nope_dim=dims["nope"],
                                   rope_dim=dims["rope_dim"], v_dim=dims["v_dim"],
                                   norm_eps=eps, rope_theta=theta, init_std=0.3,
                                   rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    for norm in (mla.q_norm, mla.kv_norm):  # norm weights away from 1: the test sees them
        norm.scale[...] = jnp.asarray(rng.uniform(0.5, 1.5, norm.scale.shape), jnp.float32)
    w = {name: np.asarray(getattr(mla, name).kernel[...], np.float64)
         for name in ("q_down", "q_up", "kv_down", "kv_up", "out")}
    w["q_norm"] = np.asarray(mla.q_norm.scale[...], np.float64)
    w["kv_norm"] = np.asarray(mla.kv_norm.scale[...], np.float64)
    x = rng.normal(size=(2, 7, c)).astype(np.float32)
    y = np.asarray(mla(jnp.asarray(x)))
    for b in range(2):
        want = _mla_numpy(x[b].astype(np.float64), w, **dims, eps=eps, theta=theta)
        np.testing.assert_allclose(y[b], want, rtol=1e-4, atol=1e-5)
    assert mla.q_down.kernel.shape == (c, 6) and mla.q_up.kernel.shape == (6, 2 * 8)


def test_q_lora_rank_parameter_count():
    """Low-rank queries replace W_Q [C, H(nope + rope)] by W_DQ [C, r], a norm weight [r] and
    W_UQ [r, H(nope + rope)] in every block (and the MTP block)."""
    base = recipes.get("dsv3-mini").model
    full = dataclasses.replace(base, q_lora_rank=0)
    c, h, qk, r = base.d_model, base.n_heads, base.qk_nope_dim + base.qk_rope_dim, 24
    blocks = base.n_layers + base.mtp_depth
    delta = blocks * (c * r + r + r * h * qk - c * h * qk)
    assert recipes.count_params(base)[1] - recipes.count_params(full)[1] == delta
    assert recipes.count_params(base)[0] - recipes.count_params(full)[0] == delta


# -------------------------------------------------------------------- group-limited routing
def _route_numpy(x, router, bias, k, scale, groups, topk_groups):
    """DeepSeek-V3's node-limited top-k, token by token: s = sigmoid(x·W); a group's score is the
    sum of its 2 largest s + b; keep the topk_groups best groups; the k largest s + b among
    their experts; gates s_i / sum(s_selected) x scale."""
    s = 1.0 / (1.0 + np.exp(-(x.astype(np.float64) @ router.astype(np.float64))))
    choice = s + bias
    per = s.shape[-1] // groups
    ids, gates = [], []
    for row, srow in zip(choice, s):
        group_score = [np.sort(row[g * per:(g + 1) * per])[-2:].sum() for g in range(groups)]
        kept = np.argsort(group_score)[::-1][:topk_groups]
        candidates = [e for g in kept for e in range(g * per, (g + 1) * per)]
        chosen = sorted(candidates, key=lambda e: -row[e])[:k]
        ids.append(sorted(chosen))
        gates.append({e: srow[e] / srow[chosen].sum() * scale for e in chosen})
    return ids, gates


@pytest.mark.parametrize("e, k, groups, topk_groups",
                         [(16, 4, 4, 2), (32, 3, 8, 1), (12, 6, 3, 2), (16, 8, 8, 4)])
def test_group_limited_routing_matches_a_numpy_reference(e, k, groups, topk_groups):
    rng = np.random.default_rng(e + k)
    x, router = rng.normal(size=(64, 8)), rng.normal(size=(8, e))
    bias = rng.normal(scale=0.1, size=e)
    ids, w = route(jnp.asarray(x, jnp.float32), jnp.asarray(router, jnp.float32),
                   jnp.asarray(bias, jnp.float32), k, 2.5, groups, topk_groups)
    ids, w = np.asarray(ids), np.asarray(w)
    want_ids, want_gates = _route_numpy(x, router, bias, k, 2.5, groups, topk_groups)
    for t in range(len(x)):
        assert sorted(ids[t]) == want_ids[t], t
        np.testing.assert_allclose([w[t][list(ids[t]).index(i)] for i in want_ids[t]],
                                   [want_gates[t][i] for i in want_ids[t]], rtol=1e-5)
        assert len({int(i) // (e // groups) for i in ids[t]}) <= topk_groups
    np.testing.assert_allclose(w.sum(-1), 2.5, rtol=1e-5)


def test_keeping_every_group_is_plain_top_k():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(32, 8)), jnp.float32)
    router = jnp.asarray(rng.normal(size=(8, 16)), jnp.float32)
    bias = jnp.asarray(rng.normal(scale=0.1, size=16), jnp.float32)
    plain = route(x, router, bias, 4)
    for a, b in zip(plain, route(x, router, bias, 4, 1.0, 4, 4)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bad, message", [
    (dict(router_groups=3), r"router_groups=3 does not split n_routed_experts=16 into equal "
                            r"groups of >= 2 experts; allowed: 1, 2, 4, 8"),
    (dict(router_groups=16), r"router_groups=16 .* allowed: 1, 2, 4, 8"),
    (dict(router_topk_groups=5), r"router_topk_groups=5; must be in \[1, router_groups=4\]"),
    (dict(router_topk_groups=1, n_active_experts=5),
     r"n_active_experts=5 exceeds the 4 experts of the kept groups .*allowed: n_active_experts "
     r"<= 4"),
    (dict(router_groups=0), r"router_groups=0; must be an integer >= 1"),
    (dict(router_groups=1, router_topk_groups=2), r"router_topk_groups=2 with router_groups=1; "
                                                  r"allowed: 1"),
    (dict(mtp_ffn="moe", ffn="dense"), r"mtp_ffn='moe' needs ffn='moe'"),
])
def test_bad_group_routing_values_are_one_clear_line(bad, message):
    with pytest.raises(ConfigError, match=message) as info:
        dataclasses.replace(recipes.get("dsv3-mini").model, **bad)
    assert "\n" not in str(info.value)


def test_moe_module_rejects_bad_groups():
    with pytest.raises(ValueError, match="router_topk_groups=3; must be in \\[1, router_groups=2"):
        MoE(16, 8, 8, 1, 2, groups=2, topk_groups=3, rngs=nnx.Rngs(0))


# ---------------------------------------------------------------------------- the recipes
def _published_v3_count(mtp: bool) -> int:
    """DeepSeek-V3's parameters from its published config, by hand: the main model, plus with
    `mtp` its MTP module without the embedding and head it shares (projection 2C x C, two
    norms and one MoE block)."""
    c, v, h, heads = 7168, 129280, 18432, 128
    attn = (c * 1536 + 1536 + 1536 * heads * 192          # W_DQ, its norm, W_UQ
            + c * (512 + 64) + 512 + 512 * heads * 256    # W_DKV + W_KR, its norm, W_UKV
            + heads * 128 * c)                            # W_O
    expert = 3 * c * 2048
    dense = attn + 3 * c * h + 2 * c
    moe = attn + 256 * expert + expert + c * 256 + 2 * c  # routed, shared, router, norms
    main = 3 * dense + 58 * moe + 2 * v * c + c           # embedding, head, final norm
    return main + (2 * c * c + 2 * c + moe if mtp else 0)


def test_dsv3_671b_is_the_published_shape():
    m = recipes.get("dsv3-671b").model
    assert (m.d_model, m.d_ff, m.expert_ff, m.n_layers, m.n_dense_layers, m.n_heads) == (
        7168, 18432, 2048, 61, 3, 128)
    assert (m.q_lora_rank, m.kv_lora_rank, m.qk_rope_dim, m.qk_nope_dim, m.v_head_dim) == (
        1536, 512, 64, 128, 128)
    assert (m.n_shared_experts, m.n_routed_experts, m.n_active_experts, m.router_groups,
            m.router_topk_groups, m.routed_scale) == (1, 256, 8, 8, 4, 2.5)
    assert (m.vocab_size, m.mtp_depth, m.mtp_ffn, m.attention, m.ffn) == (
        129280, 1, "moe", "mla", "moe")


@pytest.mark.parametrize("residual", ["residual", "mhc"])
def test_dsv3_671b_parameter_counts(residual):
    cfg = apply_overrides(recipes.get("dsv3-671b"), [f"residual={residual}", "n_streams=4"])
    counts = recipes.param_counts(cfg)
    published = recipes.DSV3_COUNTS
    if residual == "residual":  # every Param by shape, as the formula from the config says
        assert counts.main_total == _published_v3_count(mtp=False)
        assert counts.total == _published_v3_count(mtp=True)
    else:  # mHC adds its coefficient heads at 2 x 62 sites (~0.01 %)
        assert 0 < counts.total - recipes.param_counts(
            dataclasses.replace(cfg.model, residual="residual")).total < 1e-3 * counts.total
    assert abs(counts.main_total / published["total"] - 1) < 0.01, counts
    assert abs(counts.released_total / published["released"] - 1) < 0.01, counts
    # 37B is printed to 2 significant figures and V3 does not say what it counts: the main
    # model's active count (no embedding lookup, 8 of 256 routed experts) agrees to that
    # precision (residual 36.63B, mHC 36.71B)
    assert round(counts.main_active / 1e9) == round(published["active"] / 1e9), counts


@pytest.mark.slow  # ~15 s of CPU: compiles the training step
def test_dsv3_mini_has_the_shape_rules_and_trains(tmp_path):
    cfg = apply_overrides(recipes.get("dsv3-mini"), [
        "steps=3", "batch_size=4", "seq_len=32", "eval_every=3", "eval_batches=1",
        "wandb=disabled", "checkpoint=false", "log_every=1"])
    m = cfg.model
    assert 0 < m.n_dense_layers < m.n_layers and 0 < m.q_lora_rank < m.d_model
    assert m.router_groups > m.router_topk_groups > 1 and m.n_shared_experts >= 1
    assert (m.mtp_depth, m.mtp_ffn, m.residual, m.n_streams) == (1, "moe", "mhc", 4)
    result = train.run(cfg, str(tmp_path), verbose=False)
    assert np.isfinite(result.final_loss)


def test_moe_mtp_block_is_routed_and_balanced():
    cfg = dataclasses.replace(recipes.get("dsv3-mini").model, n_layers=1, n_dense_layers=0,
                              residual="residual")
    model = Decoder(cfg, rngs=nnx.Rngs(0))
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 12)), jnp.int32)
    out = nnx.jit(Decoder.forward)(model, tokens)
    assert out.router["load"].shape == (2, 16)  # the MoE block, then the MTP block
    np.testing.assert_allclose(out.router["load"].sum(-1), 2 * 12 * 4)
    before = model.mtp_block.ffn.router_bias[...]
    model.balance_routers(out.router["load"])
    moved = jnp.abs(model.mtp_block.ffn.router_bias[...] - before)
    assert float(moved.max()) == pytest.approx(cfg.router_bias_rate)
    active, total = recipes.count_params(cfg)
    real = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert total == real and active < total


def test_readme_parameter_counts_are_the_generated_table():
    """The README's DeepSeek-V3 count table is `python -m benchmarks.param_counts`'s output, so a
    change to the model's shapes that moves a count fails here until the table is regenerated."""
    from study.report import region

    from test_scripts import _load

    counts = _load("benchmarks/param_counts.py")
    with open(os.path.join(REPO, "README.md")) as f:
        assert region(f.read(), counts.REGION) == counts.region_text()
