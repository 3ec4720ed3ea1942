"""Training pieces: the paper's schedule, the weight-decay mask, a short run whose loss falls,
checkpoint round trip, and config overrides."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mhc import checkpoint, recipes, train, train_step
from mhc.config import (Config, ConfigError, ModelConfig, TrainConfig, apply_overrides,
                        config_from_dict)
from mhc.metrics import read_jsonl
from mhc.model import Decoder

SMALL = ["n_layers=2", "d_model=32", "n_heads=2", "d_ff=64", "seq_len=32", "batch_size=8",
         "eval_every=10", "eval_batches=2", "log_every=10", "wandb=disabled"]


def test_schedule_warmup_then_paper_step_decay():
    cfg = Config(train=TrainConfig(steps=100, lr=1.0, warmup_steps=10))
    s = train_step.lr_schedule(cfg)
    assert float(s(0)) == 0.0 and float(s(5)) == pytest.approx(0.5)
    assert float(s(10)) == pytest.approx(1.0) and float(s(79)) == pytest.approx(1.0)
    assert float(s(80)) == pytest.approx(0.316) and float(s(89)) == pytest.approx(0.316)
    assert float(s(90)) == pytest.approx(0.1) and float(s(99)) == pytest.approx(0.1)


def test_weight_decay_only_on_matrices():
    model = Decoder(ModelConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64, residual="hc"),
                    rngs=nnx.Rngs(0))
    mask = train_step._decay_mask(nnx.state(model, nnx.Param))
    flat = {"/".join(str(getattr(k, "key", k)) for k in path): v
            for path, v in jax.tree_util.tree_leaves_with_path(mask)}
    assert any(v for k, v in flat.items() if "kernel" in k)
    for name in ("b_res", "b_pre", "b_post", "alpha", "norm_weight", "scale"):
        assert all(not v for k, v in flat.items() if k.split("/")[-1] == name or
                   f"/{name}/" in k + "/"), name


def test_short_run_loss_falls_and_writes_everything(tmp_path):
    cfg = apply_overrides(recipes.get("tiny"), [*SMALL, "steps=30", "lr=1e-2", "residual=mhc"])
    result = train.run(cfg, str(tmp_path), verbose=False)
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert len(rows) == 30 and [r["step"] for r in rows] == list(range(1, 31))
    assert result.final_loss < result.first_loss - 1.0  # ln(256) = 5.5 -> below 4.5
    for key in ("loss", "grad_norm", "lr", "tokens_per_s", "mfu", "amax_fwd", "amax_bwd",
                "layer_amax_fwd_max", "h_pre_mean", "h_post_mean", "h_res_diag_mean",
                "res_mz_gain_max", "composite_mz_gain", "stream_diversity"):
        assert all(np.isfinite(r[key]) for r in rows), key
    assert rows[-1]["tokens"] == 30 * 8 * 32 and 0 < rows[-1]["mfu"] < 1
    assert abs(rows[-1]["amax_fwd"] - 1.0) < 1e-4  # mHC: rows of every H_res sum to 1
    assert "eval_loss" in rows[9] and len(rows[9]["layers"]["composite_fwd"]) == 4
    assert len(rows[9]["layers"]["mz_gain"]) == len(rows[9]["layers"]["composite_mz_gain"]) == 4
    assert json.load(open(tmp_path / "config.json"))["model"]["residual"] == "mhc"
    # the final checkpoint restores into a fresh model with identical outputs
    fresh = Decoder(cfg.model, rngs=nnx.Rngs(123))
    restored = checkpoint.restore(str(tmp_path), fresh)
    assert restored.step == 30 and config_from_dict(restored.config) == cfg
    assert restored.data == {"next_index": 30} and restored.meta["step"] == 30
    trained = Decoder(cfg.model, rngs=nnx.Rngs(123))
    checkpoint.restore(str(tmp_path), trained)
    tokens = jnp.zeros((1, 8), jnp.int32)
    np.testing.assert_array_equal(fresh(tokens)[0], trained(tokens)[0])
    assert not np.allclose(fresh(tokens)[0], Decoder(cfg.model, rngs=nnx.Rngs(123))(tokens)[0])


def test_restore_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        checkpoint.restore(str(tmp_path), Decoder(ModelConfig(n_layers=1), rngs=nnx.Rngs(0)))


def test_overrides():
    cfg = apply_overrides(recipes.get("tiny"), ["lr=1e-3", "model.n_layers=6", "dynamic=false",
                                                "train.seed=3"])
    assert cfg.train.lr == 1e-3 and cfg.model.n_layers == 6 and cfg.model.dynamic is False
    assert cfg.train.seed == 3
    with pytest.raises(ConfigError, match="unknown config key 'lrate'"):
        apply_overrides(cfg, ["lrate=1"])
    # the connection options by their own section, the same fields as the flat names
    via_section = apply_overrides(cfg, ["connection.sinkhorn_iters=10", "connection.n_streams=2"])
    assert via_section == apply_overrides(cfg, ["sinkhorn_iters=10", "n_streams=2"])
    assert via_section.model.connection_spec().sinkhorn_iters == 10
    with pytest.raises(ConfigError, match="unknown connection option 'connection.lr'"):
        apply_overrides(cfg, ["connection.lr=1"])
    with pytest.raises(ConfigError, match="lr='fast'; expected float"):
        apply_overrides(cfg, ["lr=fast"])
    with pytest.raises(ConfigError, match="not key=value"):
        apply_overrides(cfg, ["lr"])
    with pytest.raises(ConfigError, match="seq_len=1024 exceeds max_seq_len=512"):
        apply_overrides(cfg, ["seq_len=1024"])
    with pytest.raises(ConfigError, match="unknown recipe 'huge'"):
        recipes.get("huge")
    assert apply_overrides(cfg, ["debug_nan_steps=3,5"]).train.debug_nan_steps == (3, 5)
    with pytest.raises(ConfigError, match="debug_nan_steps='x'; expected comma-separated"):
        apply_overrides(cfg, ["debug_nan_steps=x"])
    for bad, message in (("keep_last=0", "keep_last=0; must be an integer >= 1"),
                         ("checkpoint_every=-1", "checkpoint_every=-1; must be an integer >= 0"),
                         ("token_dtype=int8", "token_dtype='int8'; allowed: auto, uint16"),
                         ("spike_window=1", "spike_window=1; must be an integer >= 2"),
                         ("peak_flops=-1", "peak_flops=-1.0; must be >= 0")):
        with pytest.raises(ConfigError, match=message):
            apply_overrides(cfg, [bad])


def test_saved_config_round_trips():
    cfg = apply_overrides(recipes.get("tiny"), ["debug_nan_steps=2", "residual=hc", "lr=1e-3"])
    assert config_from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ConfigError, match="unknown train key"):
        config_from_dict({"train": {"lrate": 1}})


def test_flops_per_token_and_peak():
    cfg = recipes.get("tiny")
    m = cfg.model
    active, _ = recipes.count_params(cfg)
    head_dim = m.d_model // m.n_heads  # 6 N_active + causal attention (3 L H T (d_qk + d_v))
    assert train_step.flops_per_token(cfg) == 6 * active + 3 * m.n_layers * m.n_heads * 128 * 2 * head_dim
    assert train_step.peak_flops() == (os.cpu_count() or 1) * 96e9  # the stated CPU assumption
    assert train_step.peak_flops(1e12) == 1e12  # one CPU process = one device


def test_count_params_matches_the_real_model():
    cfg = apply_overrides(recipes.get("tiny"), ["residual=hc"])
    model = Decoder(cfg.model, rngs=nnx.Rngs(0))
    real = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    # dense: every parameter is active except the input-embedding lookup
    assert recipes.count_params(cfg) == (real - 256 * cfg.model.d_model, real)


@pytest.mark.parametrize("ffn", ["dense", "moe"])
def test_microbatches_accumulate_the_same_gradients(ffn):
    model_cfg = ModelConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64, ffn=ffn,
                            n_routed_experts=4, n_active_experts=2, expert_ff=16,
                            capacity_factor=8.0)
    tokens = np.random.default_rng(0).integers(0, 256, (4, 17))
    batch = {"inputs": jnp.asarray(tokens[:, :-1], jnp.int32),
             "targets": jnp.asarray(tokens[:, 1:], jnp.int32)}
    results = []
    for m in (1, 2):
        model = Decoder(model_cfg, rngs=nnx.Rngs(0))
        losses, out, grads = train_step._loss_and_grads(model, batch, m)
        results.append((float(losses["loss"]),
                         jnp.concatenate([g.ravel() for g in jax.tree.leaves(grads)]), out.router))
    assert results[0][0] == pytest.approx(results[1][0], abs=1e-5)
    np.testing.assert_allclose(results[0][1], results[1][1], atol=1e-6)
    if ffn == "moe":
        np.testing.assert_array_equal(results[0][2]["load"], results[1][2]["load"])
