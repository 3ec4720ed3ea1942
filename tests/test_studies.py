"""The ablation and scaling studies and the Table 1 / Fig. 6 scripts: the runs they plan (configs
are built and validated, nothing trained), their summary arithmetic, and --smoke end to end."""
import json
import os
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from experiments import ablations as ablations_study
from experiments import scaling as scaling_study
from mhc import results
from paper_repro import fig6_scaling, table1_hc_ablation
from study import ablations, scaling
from study import runs as store


# ------------------------------------------------------------------------------ planned runs
def test_ablation_plan_covers_every_axis_with_a_shared_default(tmp_path):
    jobs = ablations.plan(list(ablations.AXES), (0,), store.MICRO_OVERRIDES, runs_root=tmp_path)
    by_axis = {}
    for axis, label, _, cfg, run_dir in jobs:
        by_axis.setdefault(axis, {})[label] = (cfg.model, run_dir)
    m = {axis: {label: v[0] for label, v in d.items()} for axis, d in by_axis.items()}
    assert [c.sinkhorn_iters for k, c in m["sinkhorn_iters"].items() if k != "residual"] == \
        [1, 3, 5, 10, 20, 40]
    assert [c.n_streams for k, c in m["n_streams"].items() if k != "residual"] == [1, 2, 4, 8]
    assert m["res_init"]["uniform"].res_init == "uniform"
    assert m["manifold"]["mhc_lite"].residual == "mhc_lite"
    assert {m["manifold"][k].manifold for k in ("sinkhorn", "orthostochastic", "unconstrained")} \
        == {"sinkhorn", "orthostochastic", "unconstrained"}
    assert m["dynamic"]["static"].dynamic is False
    assert m["sinkhorn_convention"]["deepseek_v4"].sinkhorn_convention == "deepseek_v4"
    # every axis has the residual reference first and trains the mHC default point in one place;
    # the h_res_regime axis compares regimes without the study's, and its soft-2 point is it
    defaults = {by_axis[axis][ablations.AXES[axis][1]][1] for axis in by_axis
                if axis != "h_res_regime"} | {by_axis["h_res_regime"]["soft-2"][1]}
    assert m["sinkhorn_iters"]["20"].res_offdiag_logit == -2.0
    assert m["h_res_regime"]["identity"].res_offdiag_logit != -2.0
    residuals = {by_axis[axis]["residual"][1] for axis in by_axis}
    assert len(defaults) == 1 and len(residuals) == 1
    assert all(next(iter(d)) == "residual" for d in by_axis.values())
    assert len({run_dir for *_, run_dir in jobs}) == 2 + sum(
        len(points) - 1 for _, _, points in ablations.AXES.values())


def test_run_dir_is_a_function_of_the_config():
    a = store.make_config("tiny", [*store.MICRO_OVERRIDES, "residual=mhc", "seed=1"])
    b = store.make_config("tiny", [*store.MICRO_OVERRIDES, "dynamic=true", "seed=1"])
    c = store.make_config("tiny", [*store.MICRO_OVERRIDES, "sinkhorn_iters=5", "seed=1"])
    assert store.run_dir_for(a) == store.run_dir_for(b) != store.run_dir_for(c)


def test_bad_axis_and_seeds_are_named():
    with pytest.raises(SystemExit, match="bogus"):
        ablations_study.main(["--axis", "bogus", "--dry-run"])
    with pytest.raises(SystemExit, match="x,1"):
        ablations_study.main(["--seeds", "x,1", "--dry-run"])


def test_table1_paper_scale_builds_the_27b_variants(capsys):
    assert table1_hc_ablation.main(["--scale", "paper", "--mesh", "fsdp=64,expert=8",
                                    "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and all("d_model 2560 L 30" in x and "fsdp=64,expert=8" in x
                                   for x in lines)
    assert " residual learned_maps=-" in lines[0]
    assert [x.split("learned_maps=")[1].split()[0] for x in lines[1:]] == \
        ["res", "res,pre", "pre,post,res"]


def test_fig6_paper_scale_builds_the_ladder_and_the_1t_pair(capsys):
    assert fig6_scaling.main(["--scale", "paper", "--mesh", "fsdp=64,expert=8", "--dry-run"]) == 0
    out = capsys.readouterr().out
    for name, width in (("3b", 1280), ("9b", 1920), ("27b", 2560)):
        for kind in ("residual", "mhc"):
            assert f"(a) {name:5s} {kind:8s} seed 0 d_model {width}" in out
    assert "(b) 3b-1t residual seed 0 steps 100000 batch 2560" in out
    assert "(b) 3b-1t mhc      seed 0 steps 100000" in out


def test_micro_ladder_keeps_the_shape_family(tmp_path):
    points = scaling.micro_points()
    cfgs = [store.make_config(r, ov).model for r, ov in points.values()]
    assert len(cfgs) >= 3
    assert {c.d_model / c.n_layers for c in cfgs} == {16.0}
    assert {c.d_model // c.n_heads for c in cfgs} == {16}
    computes = [scaling.compute(store.make_config(r, ov)) for r, ov in points.values()]
    assert computes == sorted(computes) and computes[0] > 0
    # mHC in the study regime (H_res can learn), the residual untouched, the paper as it is
    jobs = scaling.ladder_plan(points, (0,), tmp_path)
    assert {kind: cfg.model.res_offdiag_logit for _, kind, _, cfg, _ in jobs}["mhc"] == -2.0
    paper = scaling.kind_config("3b", [], "mhc", 0, regime=())
    assert paper.model.res_offdiag_logit == store.make_config("3b", []).model.res_offdiag_logit


# ---------------------------------------------------------------------------- summary arithmetic
def test_summarize_pairs_the_gap_by_seed():
    def m(loss):
        return {"eval_loss": loss, "tail_loss": loss, "amax_fwd_max": 1.0, "amax_bwd_max": 1.2,
                "ds_col_err_max": 0.1}
    per_seed = {"residual": {0: m(2.0), 1: m(3.0)}, "mhc": {0: m(1.9), 1: m(2.95), 2: m(9.0)}}
    s = ablations.summarize(per_seed)
    assert s["residual"]["gap"] == 0.0 and s["residual"]["gap_std"] == 0.0
    assert s["mhc"]["gap"] == pytest.approx(-0.075)           # seed 2 has no partner
    assert s["mhc"]["gap_std"] == pytest.approx(np.std([-0.1, -0.05], ddof=1))
    assert s["mhc"]["eval_loss"] == pytest.approx(np.mean([1.9, 2.95, 9.0]))


def test_token_gap_and_moving_average():
    res = [{"step": s, "loss": 3.0 - 0.1 * s} for s in range(1, 7)]
    mhc = [{"step": s, "loss": 3.0 - 0.1 * s - 0.01 * s} for s in range(1, 7)]
    res[-1]["eval_loss"], mhc[-1]["eval_loss"] = 2.5, 2.45
    g = scaling.token_gap(res, mhc, window=2)
    assert g["gap"] == pytest.approx([-0.01 * s for s in range(1, 7)])
    assert g["gap_smooth"] == pytest.approx([-0.01, -0.015, -0.025, -0.035, -0.045, -0.055])
    assert g["eval_steps"] == [6] and g["eval_gap"] == pytest.approx([-0.05])
    assert g["eval_relative_pct"] == pytest.approx([98.0])


# ----------------------------------------------------------------------------------- end to end
@pytest.mark.slow  # a whole script or several processes: left out of the oldest-stack CI run
def test_ablations_and_table1_smoke(tmp_path):
    runs = str(tmp_path / "runs")
    assert ablations_study.main(["--smoke", "--axis", "manifold", "--out",
                                 str(tmp_path / "abl"), "--runs", runs]) == 0
    summary = json.loads((tmp_path / "abl" / "summary.json").read_text())["summary"]["manifold"]
    assert list(summary) == ["residual", "sinkhorn", "mhc_lite"]
    assert summary["residual"]["gap"] == 0.0
    assert summary["mhc_lite"]["ds_col_err_max"] < 1e-4  # exactly doubly stochastic
    assert abs(summary["sinkhorn"]["amax_fwd_max"] - 1.0) < 1e-3
    assert (tmp_path / "abl" / "ablations.png").stat().st_size > 0
    assert "| residual | 1 |" in (tmp_path / "abl" / "summary.md").read_text()
    # --only-finished tabulates what exists (the shared default point) and names what is missing
    assert ablations_study.main(["--smoke", "--axis", "manifold,dynamic", "--only-finished",
                                 "--out", str(tmp_path / "abl2"), "--runs", runs]) == 0
    assert len(os.listdir(runs)) == 3
    md = (tmp_path / "abl2" / "summary.md").read_text()
    assert "**dynamic** (default)" in md and "Not run yet" in md and "dynamic=static seed 0" in md

    t1 = tmp_path / "t1"
    assert table1_hc_ablation.main(["--smoke", "--out", str(t1), "--runs", runs]) == 0
    md = (t1 / "table1_hc_ablation.md").read_text()
    assert "| loss gap, H_res learned | -0.022 |" in md and "| paper says |" in md
    assert (t1 / "table1_hc_ablation.png").stat().st_size > 0
    assert (t1 / "table1_hc_ablation.csv").read_text().startswith("quantity,paper,ours,agrees")
    # the residual baseline was trained once for both studies
    assert len([d for d in os.listdir(runs) if d.startswith("residual-")]) == 1


@pytest.mark.slow  # a whole script or several processes: left out of the oldest-stack CI run
def test_scaling_and_fig6_smoke(tmp_path):
    runs = str(tmp_path / "runs")
    assert scaling_study.main(["--smoke", "--out", str(tmp_path / "sc"), "--runs", runs]) == 0
    data = json.loads((tmp_path / "sc" / "summary.json").read_text())
    assert list(data["ladder"]) == list(scaling.SMOKE_LADDER)
    assert data["ladder"]["xs"]["compute_flops"] < data["ladder"]["s"]["compute_flops"]
    assert len(data["tokens"]["gap"]) == len(data["tokens"]["gap_smooth"]) > 0
    assert (tmp_path / "sc" / "scaling.png").stat().st_size > 0
    trained = sorted(os.listdir(runs))
    assert len(trained) == 4  # 2 rungs x (residual, mHC); the token pair reuses rung "s"
    f6 = tmp_path / "f6"
    assert fig6_scaling.main(["--smoke", "--out", str(f6), "--runs", runs]) == 0
    assert sorted(os.listdir(runs)) == trained  # every run reused from the study
    md = (f6 / "fig6_scaling.md").read_text()
    assert "(a) gap at xs" in md and "-0.015 ... -0.025" in md and "(b) gap at the end" in md
    assert (f6 / "fig6_scaling.png").stat().st_size > 0


# ------------------------------------------------------------------- LR sensitivity, long run
def _record(losses, evals=None, nonfinite=0):
    rows = [{"step": i + 1, "loss": v, "grad_norm": 1.0, "amax_fwd_max": 1.0} for i, v in
            enumerate(losses)]
    rows[-1]["eval_loss"] = losses[-1] if evals is None else evals
    return {"rows": rows, "events": {"loss_spike": 0, "nonfinite": nonfinite}}


def test_committed_records_are_not_gitignored():
    """A study's compact records are its committed results: an ignore rule that swallows them
    loses the study on the next fresh checkout (a `runs/` rule once did)."""
    import shutil
    import subprocess
    if shutil.which("git") is None or not os.path.isdir(os.path.join(REPO, ".git")):
        pytest.skip("not a git checkout")
    for study in ("lr_sensitivity", "long_run", "h_res_regime", "ablations_stress"):
        for sub in (store.RECORDS, "trained"):
            for path in (f"experiments/results/{study}/{sub}/x-s0.json",
                         f"experiments/results/{study}/{sub}/x-s0.json.xz"):
                ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO).returncode
                assert ignored == 1, f"{path} is gitignored"


def test_lr_sensitivity_arithmetic():
    from study import lr_grid as lrs
    ok = lrs.run_metrics(_record([5.5, 3.0, 2.0]))
    assert not ok["diverged"] and ok["initial_loss"] == 5.5 and ok["eval_loss"] == 2.0
    assert lrs.run_metrics(_record([5.5, 6.0, 7.0]))["diverged"]  # ends above the start
    assert lrs.run_metrics(_record([5.5, 3.0, 2.0], nonfinite=1))["diverged"]
    assert lrs.run_metrics(_record([5.5, 3.0, float("nan")]))["diverged"]
    # back at the uniform prediction (just under the start) or an eval loss that blew up
    assert lrs.run_metrics(_record([5.56, 3.0, 5.545]))["diverged"]
    assert lrs.run_metrics(_record([5.5, 3.0, 2.6], evals=9.7))["diverged"]
    assert not lrs.run_metrics(_record([5.5, 3.0, 5.3]))["diverged"]  # learned a little
    # Wortsman et al.: mean over the grid of min(loss, initial) - best; a diverged run = initial
    curve = {1e-3: ok, 1e-2: lrs.run_metrics(_record([5.5, 2.5, 1.5])),
             1e-1: lrs.run_metrics(_record([5.5, 9.0, 9.0]))}
    assert lrs.sensitivity(curve) == pytest.approx((2.0 + 1.5 + 5.5) / 3 - 1.5)
    assert lrs.largest_stable({k: [v] for k, v in curve.items()}) == 1e-2
    assert np.isnan(lrs.largest_stable({1e-3: [curve[1e-1]], 1e-2: [ok]}))
    grid = lrs.LRS
    assert len(grid) >= 6 and grid[-1] / grid[0] >= 30
    assert all(b / a == pytest.approx(grid[1] / grid[0], rel=0.01) for a, b in zip(grid, grid[1:]))
    assert 30 in lrs.DEPTHS and "grad_clip=0" in lrs.BASE


def test_regime_overrides_apply_only_where_they_mean_something():
    assert store.regime_overrides(("residual=residual",)) == ()
    assert store.regime_overrides(("residual=hc",), store.STRESS_REGIME) == (
        "connection_lr_mult=10",)
    assert store.regime_overrides(("residual=mhc",)) == store.STUDY_REGIME
    lite = store.regime_overrides(("residual=mhc_lite",))
    assert lite[0].startswith("res_offdiag_logit=") and lite != store.STUDY_REGIME


@pytest.mark.slow  # a whole script or several processes: left out of the oldest-stack CI run
def test_lr_sensitivity_and_long_run_smoke(tmp_path):
    from experiments import long_run, lr_sensitivity
    out = tmp_path / "lrs"
    assert lr_sensitivity.main(["--smoke", "--kinds", "residual,mhc", "--out", str(out)]) == 0
    data = json.loads((out / "summary.json").read_text())
    assert set(data["summary"]) == {"residual-L1", "mhc-L1"}
    assert len(os.listdir(out / "records")) == 4  # 2 kinds x 2 learning rates, compact records
    record = results.read_json(next((out / "records").iterdir()))  # stored compressed
    assert record["provenance"][0]["commit"] and record["rows"][0]["step"] == 1
    assert not any(os.path.isdir(os.path.join(out, "trained", d, "checkpoints"))
                   for d in os.listdir(out / "trained"))  # deleted once finished
    assert "LR sensitivity" in (out / "summary.md").read_text()
    # a second call reuses every run (nothing trains: the records are rewritten as they were)
    before = {p.name: p.read_bytes() for p in (out / "records").iterdir()}
    assert lr_sensitivity.main(["--smoke", "--kinds", "residual,mhc", "--out", str(out)]) == 0
    assert {p.name: p.read_bytes() for p in (out / "records").iterdir()} == before
    from paper_repro import lr_proxy  # the paper_repro row reads the same records
    assert lr_proxy.main(["--study", str(out), "--out", str(tmp_path / "proxy")]) == 0
    proxy = (tmp_path / "proxy" / "lr_proxy.md").read_text()
    assert "1 blocks: best eval loss over the grid, mHC minus residual" in proxy
    assert "| inconclusive (1 seed; needs >= 3) |" in proxy
    lo = tmp_path / "long"
    assert long_run.main(["--smoke", "--lr", "0.01", "--out", str(lo)]) == 0
    summary = json.loads((lo / "summary.json").read_text())["summary"]
    assert set(summary) == {"hc", "mhc"} and summary["mhc"]["amax_fwd_max"] == pytest.approx(1.0)
    assert (lo / "long_run.png").stat().st_size > 0


def test_variants_plan_regimes_and_smoke(tmp_path):
    """Every successor is planned on the micro config in the study regime where its
    parametrisation has an off-diagonal logit (KromHC's translated to Sinkhorn's starting
    diagonal, go-mHC without one); the smoke run writes the table, the figure and the costs."""
    from mhc import manifolds
    from experiments import variants
    jobs = variants.plan((0, 1), store.MICRO_OVERRIDES, runs_root=str(tmp_path))
    labels = {label for label, *_ in jobs}
    assert labels == {v[0] for v in variants.VARIANTS} | {v[0] for v in variants.WIDE}
    assert len(jobs) == 2 * len(labels)
    by_label = {label: cfg.model for label, seed, cfg, _ in jobs if seed == 0}
    assert by_label["kromhc"].res_offdiag_logit == pytest.approx(
        manifolds.kromhc_logit_matching_sinkhorn(4, -2.0), abs=1e-5)
    assert by_label["go_mhc"].res_offdiag_logit == -2.0
    assert by_label["go_mhc zero init"].res_offdiag_logit == manifolds.OFF_DIAGONAL_LOGIT
    assert by_label["shc"].res_offdiag_logit == -2.0 and by_label["mhc"].res_offdiag_logit == -2
    assert by_label["single_pass"].single_pass and by_label["kromhc n=16"].n_streams == 16
    assert by_label["hc"].residual == "hc"
    out = tmp_path / "variants"
    assert variants.main(["--smoke", "--out", str(out)]) == 0
    text = (out / "summary.md").read_text()
    for label in ("residual", "mhc", "shc", "single_pass"):
        assert f"| {label} |" in text
    assert (out / "variants.png").stat().st_size > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["costs"]["mhc"]["params"] > summary["costs"]["shc"]["params"] > 0
    assert summary["costs"]["residual"]["params"] == 0


def test_variants_summary_pairs_by_seed_and_flags_a_frozen_h_res():
    from experiments import variants
    run = {"eval_loss": 2.0, "tail_loss": 2.0, "amax_fwd_max": 1.0, "amax_bwd_max": 1.0,
           "ds_col_err_max": 0.0, "offdiag_start": 0.3, "offdiag_end": 0.3,
           "offdiag_end_max": 0.3, "dist_init_end": 0.5, "entropy_end": 0.1,
           "token_std_end": 0.0}
    per_seed = {"residual": {0: {**run, "dist_init_end": 0.0}, 1: {**run, "eval_loss": 2.1}},
                "mhc": {0: {**run, "eval_loss": 1.9}, 1: {**run, "eval_loss": 2.05}},
                "go_mhc": {0: {**run, "dist_init_end": 0.0, "ds_neg_mass_max": 0.0},
                           1: {**run, "dist_init_end": 0.0}}}
    s = variants.summarize(per_seed)
    assert s["mhc"]["gaps_vs_residual"] == pytest.approx([-0.1, -0.05])
    assert s["go_mhc"]["gaps_vs_mhc"] == pytest.approx([0.1, -0.05])
    assert s["go_mhc"]["ds_neg_mass_max"] == 0.0 and np.isnan(s["mhc"]["ds_neg_mass_max"])
    assert variants.learns("mhc", s["mhc"]) == "yes"
    assert variants.learns("go_mhc", s["go_mhc"]) == "**no**"
    assert "go_mhc" in " ".join(variants.frozen_note(s))


def test_diversity_plan_starts_each_kind_where_the_docstring_says_and_tables_by_seed():
    from experiments import diversity
    jobs = {kind: cfg for _, kind, seed, _, cfg, _ in diversity.plan(list(diversity.KINDS), (0,),
                                                                      runs_root="/unused")}
    assert jobs["mhc_soft"].model.connection_spec().res_offdiag_logit == -2.0
    assert jobs["mhc_hard"].model.connection_spec().res_offdiag_logit == -8.0
    assert jobs["identity_hc"].model.connection_spec().res_manifold.name == "identity"
    assert {cfg.model.n_layers for cfg in jobs.values()} == {diversity.DEPTH}

    def record(composite, loss):  # a compact record: two logged rows and a final eval
        rows = [{"step": 1, "loss": 5.5, "composite_mz_gain": composite[0],
                 "res_mz_gain_max": 0.6, "stream_diversity": 0.001},
                {"step": 150, "loss": 2.0, "eval_loss": loss, "composite_mz_gain": composite[1],
                 "res_mz_gain_max": 0.7, "stream_diversity": 0.01}]
        return {"rows": rows, "events": {"nonfinite": 0, "loss_spike": 0}}
    metrics = {}
    for s, (soft, hard) in enumerate(((1e-5, 0.9), (2e-5, 0.95), (1e-5, 0.97))):
        metrics[("mhc_soft", s)] = diversity.run_metrics(record((1e-5, soft), 2.30 + s / 100))
        metrics[("mhc_hard", s)] = diversity.run_metrics(record((0.99, hard), 2.20 + s / 99))
    m = metrics[("mhc_hard", 0)]
    assert (m["composite_mz_gain_start"], m["composite_mz_gain_end"]) == (0.99, 0.9)
    assert m["eval_loss"] == 2.20 and not m["unstable"]
    rows = {line.split(" | ")[0]: line for line in
            diversity.table(metrics, ["mhc_soft", "mhc_hard"], (0, 1, 2))[2:]}
    assert "3/3" in rows["| mhc_soft"] and "0/3" in rows["| mhc_hard"]  # collapsed below 1e-2
    hard = rows["| mhc_hard"].split(" | ")
    assert hard[-2].endswith(")") and ": yes (" in hard[-2]  # keeps ~10^4.7 times more
    assert ": yes (" in hard[-1]  # lower eval loss on every seed, with spread
