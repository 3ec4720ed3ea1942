"""Paper recipes match Table 5 (arXiv 2512.24880), counted from abstract shapes."""
import dataclasses

import pytest

from mhc import recipes

TABLE5 = {  # layers, width, routed experts, expert width, heads, batch, steps, lr
    "3b": (12, 1280, 64, 896, 16, 320, 30_000, 8.6e-4),
    "9b": (18, 1920, 64, 1280, 24, 512, 50_000, 5.9e-4),
    "27b": (30, 2560, 72, 1536, 32, 1280, 50_000, 4.0e-4),
    "3b-1t": (12, 1280, 64, 896, 16, 2560, 100_000, 9.0e-4),
}


@pytest.mark.parametrize("name", list(TABLE5))
def test_recipe_matches_table5(name):
    cfg = recipes.get(name)
    m, t = cfg.model, cfg.train
    assert (m.n_layers, m.d_model, m.n_routed_experts, m.expert_ff, m.n_heads, t.batch_size,
            t.steps, t.lr) == TABLE5[name]
    assert (m.vocab_size, t.seq_len, m.kv_lora_rank, m.qk_rope_dim, m.n_active_experts,
            m.n_shared_experts, m.n_dense_layers) == (129280, 4096, 512, 64, 6, 2, 1)
    assert (m.residual, m.n_streams, m.sinkhorn_iters, m.alpha_init) == ("mhc", 4, 20, 0.01)
    assert (t.warmup_steps, t.weight_decay, t.b1, t.b2) == (2000, 0.1, 0.9, 0.95)


@pytest.mark.parametrize("name", ["3b", "9b", "27b"])
def test_parameter_counts_within_2_percent_of_table5(name):
    cfg = recipes.get(name)
    want_active, want_total = recipes.PAPER_TABLE5[name]
    baseline = dataclasses.replace(cfg.model, residual="residual")
    active, total = recipes.count_params(baseline)
    assert abs(active / want_active - 1) < 0.02, (active, want_active)
    assert abs(total / want_total - 1) < 0.02, (total, want_total)
    mhc_active, mhc_total = recipes.count_params(cfg)  # mHC adds its small coefficient heads
    assert 0 < mhc_total - total < 0.005 * total


def test_ladder_is_the_same_family():
    for name in ("moe-xs", "moe-s", "moe-m"):
        m = recipes.get(name).model
        assert (m.attention, m.ffn, m.n_dense_layers) == ("mla", "moe", 1)
    sizes = [recipes.count_params(recipes.get(n))[1] for n in ("moe-xs", "moe-s", "moe-m")]
    assert sizes == sorted(sizes)


def test_parameter_count_builds_the_abstract_model_once_per_config():
    cfg = recipes.get("tiny")
    first = recipes.count_params(cfg)
    misses = recipes._count_params.cache_info().misses
    assert recipes.count_params(cfg) == first == recipes.count_params(cfg.model)
    assert recipes._count_params.cache_info().misses == misses  # no second abstract model
