"""Every study and benchmark script runs end to end in its --smoke mode and writes its
figure and tables (no timing is asserted)."""
import importlib.util
import json
import os
import shutil

import pytest

from mhc import results

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(relative_path):
    spec = importlib.util.spec_from_file_location("script", os.path.join(REPO, relative_path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # a whole script or several processes: left out of the oldest-stack CI run
def test_stability_smoke(tmp_path, capsys):
    stability = _load("experiments/stability.py")
    assert stability.main(["--smoke", "--out", str(tmp_path), "--seeds", "0,1"]) == 0
    for name in ("stability.png", "summary.md", "summary.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    for kind in ("residual", "hc", "mhc"):
        for seed in (0, 1):
            assert results.exists(tmp_path / f"{kind}-s{seed}" / "metrics.jsonl")
    summary = json.loads((tmp_path / "summary.json").read_text())["summary"]
    assert set(summary) == {"residual", "hc", "mhc"}
    assert summary["mhc"]["seeds"] == [0, 1]
    mean, std = summary["mhc"]["final_composite_fwd"]  # mean and std over the seeds
    assert abs(mean - 1.0) < 1e-4 and std < 1e-4
    per_seed = summary["hc"]["per_seed"]
    assert per_seed["0"]["final_loss"] != per_seed["1"]["final_loss"]  # seeds differ
    assert summary["hc"]["final_loss"][0] == pytest.approx(
        (per_seed["0"]["final_loss"] + per_seed["1"]["final_loss"]) / 2)
    table = (tmp_path / "summary.md").read_text()
    assert "| hc |" in table and "3000" in table  # the paper's number stands beside ours
    assert "| mhc |" in capsys.readouterr().out
    # --no-train summarises the committed form of the runs (no checkpoints) without training
    for ckpt in tmp_path.glob("*-s*/checkpoints"):
        shutil.rmtree(ckpt)
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*-s*/metrics.jsonl")}
    assert stability.main(["--smoke", "--out", str(tmp_path), "--seeds", "0,1", "--no-train"]) == 0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # no run was retrained
    assert json.loads((tmp_path / "summary.json").read_text())["summary"] == summary
    assert "-m experiments.stability" in (tmp_path / "summary.json").read_text()
    with pytest.raises(SystemExit, match="hc-s2 holds no finished run"):
        stability.main(["--smoke", "--out", str(tmp_path), "--seeds", "2", "--kinds", "hc",
                        "--no-train"])
    assert not (tmp_path / "hc-s2").exists()


@pytest.mark.parametrize("args,match", [(["--seeds", "0,x"], "--seeds '0,x': expected"),
                                        (["--seeds", "-1"], "non-negative"),
                                        (["--kinds", "hc,foo"], "--kinds 'hc,foo': expected")])
def test_stability_bad_arguments_exit_in_one_line(tmp_path, args, match):
    stability = _load("experiments/stability.py")
    with pytest.raises(SystemExit, match=match):
        stability.main(["--smoke", "--out", str(tmp_path), *args])
    assert not any(tmp_path.iterdir())  # nothing trained or written


@pytest.mark.slow  # a whole script or several processes: left out of the oldest-stack CI run
def test_aot_plans_smoke(tmp_path):
    out = tmp_path / "plans.md"
    assert _load("benchmarks/aot_plans.py").main(["--smoke", "--out", str(out)]) == 0
    text = out.read_text()
    assert "| 3b | cpu | fsdp=4,expert=2 |" in text and "GiB" in text
    assert "XLA:CPU" in text and len(list((tmp_path / "raw").glob("*.json"))) == 1


@pytest.mark.slow  # a whole script or several processes: left out of the oldest-stack CI run
def test_step_time_smoke(tmp_path):
    out = tmp_path / "step_time.md"
    assert _load("benchmarks/step_time.py").main(["--smoke", "--out", str(out)]) == 0
    text = out.read_text()
    for kind in ("residual", "hc", "mhc", "mhc_lite"):
        assert f"| smoke | {kind} |" in text
    assert "Compile time of the mHC step (smoke): 2 layers" in text and ", 4 layers " in text


def test_paper_repro_stability_figures_smoke(tmp_path):
    """Figs. 2, 3, 5, 7 and 8 share one set of smoke runs (trained by the first, reused after;
    --no-train reads them and would exit rather than train) and each writes its PNG and a
    paper-vs-ours table."""
    with pytest.raises(SystemExit, match="--no-train: .* holds no finished run"):
        _load("paper_repro/fig3_hc_amax.py").main(["--smoke", "--no-train", "--out",
                                                   str(tmp_path / "none")])
    for name, extra in (("fig2_hc_instability", []), ("fig5_mhc_stability", []),
                        ("fig3_hc_amax", ["--no-train"]), ("fig7_mhc_amax", ["--no-train"]),
                        ("fig8_heatmaps", ["--no-train"])):
        assert _load(f"paper_repro/{name}.py").main(["--smoke", "--out", str(tmp_path),
                                                     *extra]) == 0
        assert (tmp_path / f"{name}.png").stat().st_size > 0, name
        table = (tmp_path / f"{name}.md").read_text()
        assert "| quantity | paper says | we measure | agrees? |" in table, name
        csv_head = (tmp_path / f"{name}.csv").read_text().splitlines()[0]
        assert csv_head == "quantity,paper,ours,agrees", name
    # mHC's forward gain is exact at every depth, whatever the scale or seed (deterministic);
    # a bound seen in one run is inconclusive
    fig7 = (tmp_path / "fig7_mhc_amax.md").read_text()
    assert ("| composite forward gain (max over steps and seeds) | about 1 | 1.000000 | yes "
            "(deterministic; ") in fig7
    assert "| inconclusive (1 seed; needs >= 3) |" in fig7 and "Runs read: 1, trained at commits: " in fig7
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert runs == ["hc-s0", "mhc-s0", "residual-s0"]
    # Fig. 8 redraws from its committed maps file once the checkpoints are gone, to the same table
    fig8 = (tmp_path / "fig8_heatmaps.md").read_text()
    assert sorted(json.loads((tmp_path / "fig8_maps.json").read_text())) == ["hc-s0", "mhc-s0"]
    for ckpt in (tmp_path / "runs").glob("*/checkpoints"):
        shutil.rmtree(ckpt)
    redraw = ["--smoke", "--out", str(tmp_path), "--no-train"]
    assert _load("paper_repro/fig8_heatmaps.py").main(redraw) == 0
    table = lambda text: text[text.index("| quantity |"):text.index("Verdict rule")]
    assert table((tmp_path / "fig8_heatmaps.md").read_text()) == table(fig8)
    (tmp_path / "fig8_maps.json").unlink()
    with pytest.raises(SystemExit, match="hc-s0 has no checkpoints and fig8_maps.json holds no"):
        _load("paper_repro/fig8_heatmaps.py").main(redraw)
    # the README is generated from these tables: one index row per item, missing ones marked
    readme = tmp_path / "README.md"
    collect = _load("paper_repro/collect.py")
    assert collect.main(["--results", str(tmp_path), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "![Fig. 8: H_res heatmaps" in text
    assert "| 2 yes, 2 inconclusive |" in text  # Fig. 7: 2 by construction, 2 from one seed
    assert text.count(collect.RULE) == 1  # the rule once, not once per table
    assert "| Table 5: configurations and parameter counts |" in text


def test_a_paper_figure_is_listed_from_its_own_file(tmp_path):
    """collect lists every script that declares TITLE and RUNTIME, in file order: adding a figure
    touches no other file."""
    collect = _load("paper_repro/collect.py")
    names = [name for name, *_ in collect.entries()]
    assert names[:2] == ["fig2_hc_instability", "fig3_hc_amax"] and "lr_proxy" in names
    assert {"table1_hc_ablation", "table5_configs"} <= set(names)
    assert "collect" not in names and "__init__" not in names
    (tmp_path / "fig9_new.py").write_text('"""A new figure."""\nTITLE = "Fig. 9: new"\n'
                                          'RUNTIME = "seconds"\n')
    (tmp_path / "helper.py").write_text('TITLE = "no runtime: not a figure"\n')
    assert collect.entries(str(tmp_path)) == [("fig9_new", "Fig. 9: new", "seconds")]


def test_sinkhorn_memory_smoke(tmp_path):
    out = tmp_path / "sinkhorn_memory.md"
    assert _load("benchmarks/sinkhorn_memory.py").main(["--smoke", "--out", str(out)]) == 0
    assert out.stat().st_size > 0


def test_mhc_layer_smoke(tmp_path):
    out = tmp_path / "mhc_layer.md"
    assert _load("benchmarks/mhc_layer.py").main(["--smoke", "--out", str(out)]) == 0
    assert out.stat().st_size > 0
