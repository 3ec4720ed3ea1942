"""The LR-sensitivity grid of issue 25: the surge criterion beside divergence, the two controls
(identity-HC, HC with only H_res learned), the grid extended upward with every old point and
committed record kept, and five seeds at 30 blocks."""
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mhc import connections, results
from study import lr_grid as lrs
from study import runs

RECORDS = os.path.join(lrs.STUDY, runs.RECORDS)


def _record(losses, final_eval, nonfinite=0, stride=1):
    """A compact record whose training losses are logged every `stride` steps from step 1."""
    rows = [{"step": 1 + i * stride, "loss": v, "grad_norm": 1.0, "amax_fwd_max": 1.0,
             "amax_bwd_max": 1.0, "layer_amax_fwd_max": 1.0, "layer_amax_bwd_max": 1.0,
             "ds_col_err_max": 0.0} for i, v in enumerate(losses)]
    rows[-1]["eval_loss"] = final_eval
    return {"rows": rows, "events": {"loss_spike": 0, "nonfinite": nonfinite}}


# ------------------------------------------------------------------------------ the surge rule
def test_smoothed_min_is_the_least_10_step_mean():
    losses = [5.0 - 0.1 * i for i in range(30)] + [4.0] * 10  # falls to 2.1 at step 30
    rows = _record(losses, 4.0)["rows"]
    windows = [np.mean(losses[i:i + 10]) for i in range(len(losses) - 9)]
    assert lrs.smoothed_min(rows) == pytest.approx(min(windows))
    assert lrs.smoothed_min(rows) == pytest.approx(np.mean(losses[20:30]))  # steps 21..30
    assert math.isnan(lrs.smoothed_min(rows[:9]))  # no full window yet
    # rows every 10 steps: a window (s - 10, s] holds one row; the first row starts none
    sparse = _record([5.0, 3.0, 2.0, 2.5], 2.5, stride=10)["rows"]
    assert lrs.smoothed_min(sparse) == 2.0
    # a window with a non-finite loss is skipped, not taken as the minimum
    with_nan = _record([3.0] * 10 + [float("nan")] + [2.0] * 10, 2.0)["rows"]
    assert lrs.smoothed_min(with_nan) == 2.0


def test_a_surge_is_unstable_but_not_diverged():
    """HC-30's pattern: learns to ~2.5, jumps and settles near 4 (final eval 3.96)."""
    surge = lrs.run_metrics(_record([5.56] + [2.5] * 60 + [4.0] * 89, 3.96))
    assert not surge["diverged"] and surge["surged"] and surge["unstable"]
    assert surge["smoothed_min"] == pytest.approx(2.5)


def test_noise_and_a_single_dip_are_not_a_surge():
    rng = np.random.default_rng(0)
    noisy = list(np.linspace(5.5, 2.5, 80) + 0.1 * rng.standard_normal(80)) + [2.5] * 70
    steady = lrs.run_metrics(_record(noisy, 2.6))
    assert not (steady["surged"] or steady["diverged"] or steady["unstable"])
    # one step at 1.0 among 2.5s: the raw minimum + 0.25 would flag an eval of 2.55, the
    # 10-step mean (2.35) does not
    dip = lrs.run_metrics(_record([5.5] + [2.5] * 50 + [1.0] + [2.5] * 50, 2.55))
    assert dip["smoothed_min"] == pytest.approx(2.35) and not dip["surged"]
    # the threshold is strict: exactly SURGE above is still stable
    edge = lrs.run_metrics(_record([5.5] + [2.0] * 20, 2.0 + lrs.SURGE))
    assert not edge["surged"]
    assert lrs.run_metrics(_record([5.5] + [2.0] * 20, 2.0 + lrs.SURGE + 1e-6))["surged"]


def test_largest_stable_stops_at_a_surge_and_counts_both():
    ok = lrs.run_metrics(_record([5.5] + [2.0] * 20, 2.1))
    surge = lrs.run_metrics(_record([5.5] + [2.0] * 20, 3.0))
    dead = lrs.run_metrics(_record([5.5] + [2.0] * 20, 5.5))
    assert dead["diverged"] and dead["surged"]  # a diverged run that learned first also surged
    by_lr = {1e-3: [ok, ok], 1e-2: [ok, surge], 1e-1: [ok, ok], 1.0: [dead, dead]}
    assert lrs.largest_stable(by_lr) == 1e-3
    metrics = {("hc", 30, lr, s): m for lr, ms in by_lr.items() for s, m in enumerate(ms)}
    summary = lrs.summarize(metrics)[("hc", 30)]
    assert (summary["diverged"], summary["surged"], summary["unstable"]) == (2, 3, 3)
    assert summary["largest_stable_lr"] == 1e-3
    assert "| 2/8 | 3 (3) |" in lrs.table({("hc", 30): summary})[2]


def test_a_depth_is_judged_on_its_own_grid():
    """The grid's top LRs exist only at 30 blocks: a 6-block seed with the whole 6-block grid
    is complete (the LR proxy and the study both), not dropped for the LRs run elsewhere."""
    from paper_repro import lr_proxy
    ok = lrs.run_metrics(_record([5.5] + [2.0] * 20, 2.1))
    metrics = {(k, d, lr, s): ok for k in ("hc", "mhc") for s in (0, 1, 2)
               for d, grid in ((6, (1e-3, 1e-2)), (30, (1e-3, 1e-2, 1e-1))) for lr in grid}
    summary = lrs.summarize(metrics)
    assert summary[("hc", 6)]["seeds_complete"] == [0, 1, 2] and summary[("hc", 6)]["lrs"] == [
        1e-3, 1e-2]
    assert set(lr_proxy.by_seed(metrics, "hc", 6)) == {0, 1, 2}
    assert len(lr_proxy.paired(metrics, "mhc", "hc", 6, lr_proxy._stable)) == 3


def test_hc_growth_with_depth_is_read_at_each_depths_best_lr():
    """The growth row compares HC's composite gain at each depth's best LR: a high-LR run that
    neither diverges nor surges but blows the gain up (the shallow grid is stable far higher)
    must not decide it."""
    from paper_repro import lr_proxy
    metrics = {}
    for depth, grid in ((6, (1e-3, 1e-2, 1.0)), (30, (1e-3, 1e-2, 1.0))):
        for s in (0, 1, 2):
            for lr in grid:
                m = dict(lrs.run_metrics(_record([5.5] + [2.0] * 20, 2.1)))
                best = lr == 1e-2
                # at 6 blocks: gain 10 at the best LR, 1e13 at LR 1; at 30: 1e3 (s + 1) at best
                gain = {6: 1e13 if lr == 1.0 else 10.0, 30: 1e3 * (s + 1) if best else 50.0}
                m.update(eval_loss=2.0 if best else 2.2, composite_fwd_max=gain[depth])
                for kind in ("hc", "mhc", "residual"):
                    metrics[(kind, depth, lr, s)] = m
    row = next(r for r in lr_proxy.rows_for(metrics) if "grows with depth" in r.quantity)
    want = [np.log10(1e3 * (s + 1) / 10.0) for s in (0, 1, 2)]  # +2, +2.30, +2.48
    assert row.ours.endswith("log10 growth " + ", ".join(f"{w:+.4g}" for w in want))
    assert row.agrees.startswith("yes")


def _committed(name):
    return lrs.run_metrics(results.read_json(os.path.join(RECORDS, f"{name}.json")))


@pytest.mark.skipif(not results.exists(os.path.join(RECORDS, "hc-L30-lr0.01-s1.json")),
                    reason="the committed LR-sensitivity records are not in this checkout")
def test_the_surge_rule_on_the_committed_hc_runs():
    """Issue 25: HC-30 seed 1 at LR 0.01 surged and counted as stable; with the surge rule HC-30's
    per-seed largest stable LR is 0.0464 / 0.00464 / 0.0464 (divergence alone: 0.0464 / 0.01 /
    0.0464)."""
    run = _committed("hc-L30-lr0.01-s1")
    assert run["surged"] and not run["diverged"]
    assert run["eval_loss"] == pytest.approx(3.9559) and run["smoothed_min"] < 2.6
    old = lrs.LRS[:8]
    per_seed, diverged_only = [], []
    for seed in range(3):
        curve = {lr: [_committed(lrs.run_name("hc", 30, lr, seed))] for lr in old}
        per_seed.append(lrs.largest_stable(curve))
        diverged_only.append(lrs.largest_stable(
            {lr: [{**m, "unstable": m["diverged"]} for m in ms] for lr, ms in curve.items()}))
    assert per_seed == [0.0464, 0.00464, 0.0464]
    assert diverged_only == [0.0464, 0.01, 0.0464]  # seed 1 diverges at 0.0215 (eval 9.67)


# --------------------------------------------------------------------------- grid and reuse
def test_grid_extends_upward_and_keeps_every_old_point():
    old = (0.001, 0.00215, 0.00464, 0.01, 0.0215, 0.0464, 0.1, 0.215)  # the committed grid
    assert lrs.LRS[:8] == old and lrs.LRS[8:] == (0.464, 1.0)
    assert [lrs.run_name("mhc", 30, lr, 0) for lr in lrs.LRS[7:]] == [
        "mhc-L30-lr0.215-s0", "mhc-L30-lr0.464-s0", "mhc-L30-lr1-s0"]
    assert lrs.SEEDS_AT[30] == (0, 1, 2, 3, 4) and lrs.SEEDS[:3] == (0, 1, 2)
    jobs = lrs.plan(["residual"], (6, 30), old[:1], {6: (0,), 30: (0, 3, 4)}, runs_root="r")
    assert [(d, s) for _, _, d, _, s, *_ in jobs] == [(6, 0), (30, 0), (30, 3), (30, 4)]


def test_the_default_plan_gives_five_seeds_to_the_headline_kinds_at_30_blocks():
    seeds = lrs.default_seeds(lrs.DEPTHS)
    jobs = lrs.plan(tuple(lrs.KINDS), lrs.DEPTHS, lrs.LRS, seeds, runs_root="r")
    per = {}
    for _, kind, depth, _, seed, *_ in jobs:
        per.setdefault((kind, depth), set()).add(seed)
    for kind in lrs.KINDS:
        assert per[(kind, 6)] == {0, 1, 2}
        assert per[(kind, 30)] == ({0, 1, 2, 3, 4} if kind in lrs.HEADLINE_KINDS else {0, 1, 2})
    assert {"mhc_lite", "unconstrained"} == set(lrs.KINDS) - set(lrs.HEADLINE_KINDS)
    assert len(jobs) == 10 * (7 * 3 + 5 * 5 + 2 * 3) == 520
    # seed by seed within a depth, the kinds with fewer seeds simply stop earlier
    assert [s for _, k, d, _, s, *_ in jobs if d == 30 and k == "mhc_lite"][-1] == 2
    assert lrs.seeds_text(seeds) == ("6 blocks: 0,1,2; 30 blocks: 0,1,2,3,4 (mhc_lite: 0,1,2)"
                                     " (unconstrained: 0,1,2)")


@pytest.mark.skipif(not os.path.isdir(RECORDS), reason="no committed LR-sensitivity records")
def test_every_committed_record_is_reused_by_the_extended_plan():
    """Reuse compares a record's overrides with the plan's: the plan must hold exactly what every
    committed record ran (the old grid's, the controls' and the depth law's bisection runs on the
    extended grid alike; KEEP keys change none)."""
    jobs = lrs.plan(tuple(lrs.KINDS), (6, 12, 30, 60), lrs.GRID, tuple(range(5)), runs_root="r")
    names = {name: overrides for name, _, _, _, _, overrides, *_ in jobs}
    on_disk = {f.removesuffix(results.SUFFIX).removesuffix(".json") for f in os.listdir(RECORDS)}
    assert on_disk and on_disk <= set(names)
    for name in sorted(on_disk):
        assert runs.recorded(os.path.join(RECORDS, f"{name}.json"), names[name]), name


# ------------------------------------------------------------------------------ the controls
def _spec(kind):
    cfg = runs.make_config("tiny", [*lrs.KINDS[kind], *runs.regime_overrides(lrs.KINDS[kind])])
    return cfg.model.connection_spec()


def _maps_and_grads(spec):
    params = connections.init_params(spec, 1)
    params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(jax.random.key(0), p.shape),
                          params)
    x = jax.random.normal(jax.random.key(1), (3, spec.n_streams, spec.width))
    probe = jax.random.normal(jax.random.key(2), (3, spec.n_streams, spec.n_streams))

    def part(name):
        def f(p):
            m = connections.compute_maps(p, x, spec)
            return jnp.sum(getattr(m, name) * (probe if name == "res" else probe[..., 0]))
        return sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(jax.grad(f)(params)))

    return connections.compute_maps(params, x, spec), {n: part(n) for n in ("pre", "post", "res")}


def test_identity_hc_has_exactly_the_identity_and_learns_pre_post():
    spec = _spec("identity_hc")
    assert spec.kind == "mhc" and spec.manifold == "identity"
    assert spec.learned_maps == ("pre", "post", "res")
    maps, grads = _maps_and_grads(spec)
    assert np.array_equal(np.asarray(maps.res), np.broadcast_to(np.eye(4), maps.res.shape))
    assert grads["res"] == 0 and grads["pre"] > 0 and grads["post"] > 0


def test_hc_res_only_learns_h_res_alone():
    spec = _spec("hc_res_only")
    assert spec.kind == "hc" and spec.learned_maps == ("res",)
    maps, grads = _maps_and_grads(spec)
    assert np.array_equal(np.asarray(maps.pre), np.full(maps.pre.shape, 0.25, np.float32))
    assert np.array_equal(np.asarray(maps.post), np.ones(maps.post.shape, np.float32))
    assert grads["res"] > 0 and grads["pre"] == 0 and grads["post"] == 0
    assert runs.regime_overrides(lrs.KINDS["hc_res_only"]) == ()  # HC takes no logit
    assert runs.regime_overrides(lrs.KINDS["identity_hc"]) == ()  # nor does H_res = I


def test_unknown_kind_is_one_clear_line():
    from experiments import lr_sensitivity
    with pytest.raises(SystemExit, match="--kinds 'nope': expected a comma list of .*identity_hc"
                                         ".*unknown: nope"):
        lr_sensitivity.main(["--kinds", "nope", "--only-finished"])


# ------------------------------------------------------------------ the depth law (bisection)
def test_bisection_finds_every_edge_in_log2_runs():
    from experiments.depth_law import bisect_edge
    for n in (1, 3, 10):
        for edge in range(-1, n):
            found, asked = bisect_edge(n, lambda i: i <= edge)
            assert found == edge
            assert len(asked) <= math.ceil(math.log2(n + 1)) and len(set(asked)) == len(asked)


def test_monotone_violations_and_the_edge_fit():
    from experiments import depth_law
    ok, bad = {"unstable": False}, {"unstable": True}
    assert depth_law.monotone_violations({1e-3: ok, 1e-2: bad, 1e-1: ok, 1.0: bad}) == [1e-1]
    assert depth_law.monotone_violations({1e-3: ok, 1e-2: ok, 1e-1: bad}) == []
    # edge = 0.3 * depth^-0.5 exactly, plus end-of-grid seeds the fit must ignore
    edges = {d: [0.3 * d ** -0.5] * 3 + [math.inf] for d in (6, 12, 30, 60)}
    fit = depth_law.edge_fit(edges)
    assert fit["slope"] == pytest.approx(-0.5) and fit["slope_se"] == pytest.approx(0, abs=1e-9)
    assert fit["at_paper_depth"] == pytest.approx(0.3 * 30 ** -0.5) and fit["points"] == 12
    assert math.isnan(depth_law.edge_fit({6: [0.1, 0.2]})["slope"])


def test_seed_edges_reads_a_bisection_from_the_runs_there_are():
    from experiments import depth_law
    grid = (1e-3, 1e-2, 1e-1)
    ok, bad = {"unstable": False}, {"unstable": True}
    metrics = {("hc", 12, 1e-2, 0): ok, ("hc", 12, 1e-1, 0): bad,   # bisection asks 1, 2
               ("hc", 12, 1e-2, 1): bad, ("hc", 12, 1e-3, 1): bad,  # asks 1, 0: none stable
               ("hc", 12, 1e-2, 2): ok}                              # unfinished: left out
    assert depth_law.seed_edges(metrics, "hc", 12, grid) == {0: 1e-2, 1: -math.inf}


def test_depth_law_report_shows_a_non_monotone_curve_beside_the_bisection_edge():
    from experiments import depth_law
    from study import lr_grid
    grid = lr_grid.LRS
    ok, bad = {"unstable": False}, {"unstable": True}
    # swept: surges at grid[1], stable again over grid[2..6]: bisection (asks 4, 7, 5, 6) lands
    # on grid[6], the sweep's conservative edge is grid[0]
    metrics = {("hc", 30, lr, 0): ok if i == 0 or 2 <= i <= 6 else bad
               for i, lr in enumerate(grid)}
    edges = {("hc", 30): depth_law.seed_edges(metrics, "hc", 30, grid)}
    assert edges[("hc", 30)] == {0: grid[6]}
    lines = depth_law.report_lines({"edges": edges, "metrics": metrics}, ["hc"], [30], [0], grid)
    row = next(line for line in lines if line.startswith("| hc |"))
    assert f"{grid[6]:g} (swept: {grid[0]:g})" in row
    assert any(f"1 break it: hc-L30-s0 stable again at {list(grid[2:7])}" in line
               for line in lines)


def test_depth_law_judges_the_trend_seed_by_seed():
    from experiments import depth_law
    depths = (6, 12, 30)
    hc = {0: -2.0, 1: -2.5, 2: -1.5, 3: -2.2}  # seed 3 has one finite edge only: no slope
    edges = {("hc", d): {s: 0.5 * (d / 6) ** b for s, b in hc.items()} for d in depths}
    edges[("hc", 12)][3] = edges[("hc", 30)][3] = -math.inf
    edges.update({("mhc", d): {0: 2.15, 1: 2.15, 2: 2.15, 3: math.inf} for d in depths})
    assert depth_law.seed_slopes(edges, "hc", depths) == pytest.approx({0: -2, 1: -2.5, 2: -1.5})
    assert depth_law.seed_slopes(edges, "mhc", depths) == {0: 0.0, 1: 0.0, 2: 0.0}
    lines = depth_law.verdict_lines(edges, ["hc", "mhc"], depths)
    hc_row, mhc_row, faster = (next(x for x in lines if x.startswith(start)) for start in
                               ("| hc: the edge", "| mhc: the edge", "| HC's edge falls faster"))
    # slopes -2, -2.5, -1.5: mean -2, sd 0.5, t = -6.93, df 2, p = 0.020
    assert hc_row.endswith("| yes (t = -6.93, df = 2, p = 0.02, n = 3) |")
    assert "inconclusive (3 seeds, no difference on any seed)" in mhc_row  # flat on the grid
    assert faster.endswith("| yes (t = -6.93, df = 2, p = 0.02, n = 3) |")


@pytest.mark.slow
def test_depth_law_smoke(tmp_path):
    from experiments import depth_law
    assert depth_law.main(["--smoke", "--kinds", "residual,mhc", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "depth_law.md").read_text()
    assert "| residual |" in text and "| mhc |" in text and "1 blocks" in text
    assert (tmp_path / "depth_law.png").stat().st_size > 0 and "| claim | per seed |" in text
    # a second call trains nothing: every bisection step is a record now
    records = sorted(p.name for p in (tmp_path / "records").iterdir())
    assert depth_law.main(["--smoke", "--kinds", "residual,mhc", "--out", str(tmp_path),
                           "--only-finished"]) == 0
    assert sorted(p.name for p in (tmp_path / "records").iterdir()) == records
