"""Does H_res learn? The movement diagnostics (golden NumPy formulation), the options that let it
move (soft identity, range-capped Sinkhorn, connection learning-rate multiplier, symmetry-broken
expansion), and a short training run in which it moves for a movable init and stays for the
hard identity."""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mhc import connections, diagnostics, manifolds, rundir, train, train_step
from mhc.config import Config, ConfigError, ModelConfig, TrainConfig, apply_overrides
from mhc.metrics import read_jsonl
from mhc.model import Decoder

jit_step = nnx.jit(train_step.train_step_body)  # one device, state not donated


def _numpy_learning(res, res0):
    """Independent formulation of `diagnostics.res_learning` over all leading (token) axes."""
    res = np.asarray(res, np.float64).reshape(-1, *res.shape[-2:])
    n = res.shape[-1]
    offdiag = 1 - np.mean([np.trace(h) / n for h in res])
    dist = np.mean([np.linalg.norm(h - res0) for h in res])
    ent = []
    for h in res:
        for row in np.abs(h):
            p = row / row.sum()
            ent.append(-sum(x * np.log(x) for x in p if x > 0))
    spread = np.mean(res.std(axis=0))
    return offdiag, dist, np.mean(ent), spread


def test_res_learning_matches_numpy():
    key = jax.random.key(0)
    res = manifolds.sinkhorn(jax.random.normal(key, (3, 5, 4, 4)), 30)  # [L, T, N, N]
    res0 = np.asarray(manifolds.sinkhorn(jnp.where(jnp.eye(4, dtype=bool), 0.0, -2.0), 30))
    got = diagnostics.res_learning(res, res0, token_axes=(1,))
    for layer in range(3):
        want = _numpy_learning(np.asarray(res[layer]), res0)
        for name, value in zip(("offdiag", "dist_init", "entropy", "token_std"), want):
            np.testing.assert_allclose(got[name][layer], value, rtol=1e-5, atol=1e-6)


def test_res_learning_extremes():
    eye = jnp.broadcast_to(jnp.eye(4), (6, 4, 4))
    stats = diagnostics.res_learning(eye, token_axes=(0,))
    assert float(stats["offdiag"]) == 0 and float(stats["dist_init"]) == 0
    assert float(stats["entropy"]) == 0 and float(stats["token_std"]) == 0
    uniform = diagnostics.res_learning(jnp.full((6, 4, 4), 0.25), token_axes=(0,))
    assert float(uniform["offdiag"]) == pytest.approx(0.75)
    assert float(uniform["entropy"]) == pytest.approx(np.log(4), rel=1e-6)
    assert float(uniform["dist_init"]) == pytest.approx(np.linalg.norm(np.full((4, 4), .25)
                                                                       - np.eye(4)), rel=1e-6)


def test_soft_identity_init():
    spec = connections.ConnectionSpec(width=8, res_offdiag_logit=-2.0)
    h0 = connections.initial_res(spec)
    # symmetric logits 0 / -2: one scaling makes every row and column sum to 1 + 3 e^-2
    np.testing.assert_allclose(np.diag(h0), 1 / (1 + 3 * np.exp(-2)), rtol=1e-5)
    hard = connections.initial_res(connections.ConnectionSpec(width=8))
    np.testing.assert_allclose(np.diag(hard), 1 / (1 + 3 * np.exp(-8)), rtol=1e-5)
    with pytest.raises(ValueError, match="res_offdiag_logit=-2.0 has no meaning"):
        connections.ConnectionSpec(width=8, manifold="orthostochastic", res_offdiag_logit=-2.0)
    with pytest.raises(ValueError, match="kind 'hc'"):
        connections.ConnectionSpec(width=8, kind="hc", res_offdiag_logit=-2.0)


def test_range_cap_rescales_per_matrix_and_is_differentiable():
    z = jax.random.normal(jax.random.key(1), (5, 16)) * jnp.arange(1, 6)[:, None] * 3
    capped = manifolds.range_cap(z, 2.0)
    r_before = np.ptp(np.asarray(z), -1)
    r_after = np.ptp(np.asarray(capped), -1)
    np.testing.assert_allclose(r_after, np.minimum(r_before, 2.0), rtol=1e-5)
    # rescaled, not clamped: the ratios between logits are kept
    np.testing.assert_allclose(np.asarray(capped) * r_before[:, None] / r_after[:, None],
                               np.asarray(z), rtol=1e-4, atol=1e-5)
    small = 0.1 * z[:1] / np.ptp(np.asarray(z[:1]))
    np.testing.assert_allclose(manifolds.range_cap(small, 2.0), small)  # inside the cap: no-op
    g = jax.grad(lambda x: jnp.sum(manifolds.range_cap(x, 2.0) ** 2))(z)
    assert np.isfinite(np.asarray(g)).all() and np.abs(np.asarray(g)).max() > 0
    # the -8 identity's logits are brought back to a range Sinkhorn resolves in 20 iterations
    ident = jnp.asarray(manifolds.get("sinkhorn").init_logits(4, "identity"))
    h = manifolds.get("sinkhorn").project(ident, 4, sinkhorn_range_cap=2.0)
    assert 0.5 < float(jnp.diagonal(h).mean()) < 0.9
    with pytest.raises(ValueError, match="sinkhorn_range_cap=0"):
        connections.ConnectionSpec(width=8, sinkhorn_range_cap=0)
    with pytest.raises(ValueError, match="manifold='sinkhorn'"):
        connections.ConnectionSpec(width=8, kind="mhc_lite", sinkhorn_range_cap=2.0)


def test_optional_float_override():
    cfg = apply_overrides(Config(), ["sinkhorn_range_cap=2"])
    assert cfg.model.sinkhorn_range_cap == 2.0
    assert apply_overrides(cfg, ["sinkhorn_range_cap=none"]).model.sinkhorn_range_cap is None
    with pytest.raises(ConfigError, match="expected a number or none"):
        apply_overrides(cfg, ["sinkhorn_range_cap=wide"])
    with pytest.raises(ConfigError, match="connection_lr_mult"):
        apply_overrides(cfg, ["connection_lr_mult=0"])


def _one_update(mult: float):
    cfg = Config(ModelConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64),
                 TrainConfig(lr=1e-2, warmup_steps=0, grad_clip=0.0, connection_lr_mult=mult))
    model = Decoder(cfg.model, rngs=nnx.Rngs(0))
    before = jax.tree.map(np.asarray, nnx.state(model, nnx.Param))
    opt = train_step.make_optimizer(model, cfg)
    tokens = jax.random.randint(jax.random.key(0), (2, 17), 0, 256)
    jit_step(model, opt, {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]})
    after = nnx.state(model, nnx.Param)
    return jax.tree_util.tree_map_with_path(
        lambda path, a, b: (jax.tree_util.keystr(path), np.asarray(a) - b), after, before)


@pytest.mark.slow  # a whole multi-step or sharded run
def test_connection_lr_mult_scales_only_connection_updates():
    base = dict(jax.tree.leaves(_one_update(1.0), is_leaf=lambda x: isinstance(x, tuple)))
    scaled = dict(jax.tree.leaves(_one_update(10.0), is_leaf=lambda x: isinstance(x, tuple)))
    moved_conn = moved_other = 0
    for name, delta in base.items():
        if not np.abs(delta).max():
            continue
        if any(m in name for m in train_step.CONNECTION_PARAMS):
            np.testing.assert_allclose(scaled[name], 10 * delta, rtol=1e-4, atol=1e-5)  # fp32 at |8|
            moved_conn += 1
        else:
            np.testing.assert_allclose(scaled[name], delta, rtol=1e-4, atol=1e-5)
            moved_other += 1
    assert moved_conn and moved_other


def test_stream_offset_breaks_the_copy_symmetry():
    cfg = ModelConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64, max_seq_len=32,
                      res_init="uniform", stream_offset_std=0.02)
    model = Decoder(cfg, rngs=nnx.Rngs(0))
    streams = model._expand(jnp.ones((1, 3, 32)))
    assert float(jnp.abs(streams[..., 0, :] - streams[..., 1, :]).max()) > 1e-3
    plain = Decoder(dataclasses.replace(cfg, stream_offset_std=0.0), rngs=nnx.Rngs(0))
    copies = plain._expand(jnp.ones((1, 3, 32)))
    assert float(jnp.abs(copies[..., 0, :] - copies[..., 1, :]).max()) == 0


SHORT = ["n_layers=2", "d_model=32", "n_heads=2", "d_ff=64", "seq_len=32", "batch_size=8",
         "steps=25", "warmup_steps=2", "eval_every=25", "eval_batches=1", "log_every=5",
         "wandb=disabled", "checkpoint=false", "residual=mhc"]


@pytest.mark.slow
def test_h_res_moves_for_a_movable_init_and_stays_for_the_hard_identity(tmp_path):
    from mhc import recipes
    runs = {}
    for name, extra in (("hard", []), ("movable", ["res_offdiag_logit=-2",
                                                   "connection_lr_mult=10"])):
        cfg = apply_overrides(recipes.get("tiny"), SHORT + extra)
        train.run(cfg, str(tmp_path / name), verbose=False)
        runs[name] = read_jsonl(tmp_path / name / "metrics.jsonl")
    moved = {k: rows[-1]["h_res_dist_init"] for k, rows in runs.items()}
    assert moved["hard"] < 1e-3, moved
    assert moved["movable"] > 0.05, moved
    hard_offdiag = [r["h_res_offdiag"] for r in runs["hard"]]
    assert max(hard_offdiag) - min(hard_offdiag) < 1e-3
    # per-site arrays at the logged interval, one entry per site
    logged = [r for r in runs["movable"] if "layers" in r]
    assert [r["step"] for r in logged] == [5, 10, 15, 20, 25]
    assert len(logged[-1]["layers"]["res_offdiag"]) == 4
    # provenance of the run directory
    prov = rundir.read_provenance(str(tmp_path / "movable"))
    assert len(prov) == 1 and {"commit", "dirty", "date", "command", "machine"} <= set(prov[0])
    assert json.loads((tmp_path / "movable" / "provenance.json").read_text())[0]["resume"] is False


def test_lite_logit_matches_sinkhorns_soft_identity():
    for logit in (-1.0, -2.0, -4.0):
        sk = connections.initial_res(connections.ConnectionSpec(width=8, res_offdiag_logit=logit))
        lite_logit = manifolds.lite_logit_matching_sinkhorn(4, logit)
        lite = connections.initial_res(connections.ConnectionSpec(
            width=8, kind="mhc_lite", res_offdiag_logit=lite_logit))
        np.testing.assert_allclose(lite, sk, atol=1e-6)


def test_choose_regime_rule():
    from study.ablations import choose_regime
    row = lambda loss, dist, err: {"eval_loss": loss, "dist_init_end": dist,  # noqa: E731
                                   "ds_col_err_max": err}
    summary = {"residual": row(1.0, 0.0, 0.0), "frozen": row(1.9, 0.001, 0.0),
               "moves": row(2.1, 0.3, 0.01), "off-manifold": row(2.0, 0.9, 0.9),
               "moves-better": row(2.05, 0.2, 0.05)}
    assert choose_regime(summary)[0] == "moves-better"
    assert choose_regime({"residual": row(1.0, 0, 0), "frozen": row(1.9, 0.001, 0)})[0] is None


def test_dirty_means_code_changed_not_results(tmp_path, monkeypatch):
    """A study rewriting its own summary (a results folder, a generated README) leaves the tree
    clean for the next run; any other tracked change makes it dirty."""
    import subprocess

    from mhc import rundir

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)
    (tmp_path / "experiments" / "results").mkdir(parents=True)
    (tmp_path / "experiments" / "results" / "summary.md").write_text("a\n")
    (tmp_path / "README.md").write_text("a\n")
    (tmp_path / "code.py").write_text("a = 1\n")
    git("init", "-q")
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    monkeypatch.setattr(rundir, "_SOURCE", str(tmp_path))
    assert rundir.source_version()["dirty"] is False
    (tmp_path / "experiments" / "results" / "summary.md").write_text("b\n")
    (tmp_path / "README.md").write_text("b\n")
    (tmp_path / "untracked.py").write_text("x = 1\n")
    assert rundir.source_version()["dirty"] is False
    (tmp_path / "code.py").write_text("a = 2\n")
    assert rundir.source_version()["dirty"] is True
