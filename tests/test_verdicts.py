"""The one verdict rule of paper_repro (paper_repro/common.py: seeded_verdict, exact_verdict,
all_of), the callers that apply a tolerance, and the top-level README's reproduced table, which
must equal what paper_repro/collect.py generates from the committed results."""
import math
import os

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from experiments import scaling
from paper_repro import (collect, common, fig6_scaling, table1_hc_ablation,
                         table3_recompute)
from paper_repro.common import all_of, exact_verdict, seeded_verdict


def word(cell):
    return common.verdict_word(cell)


# ------------------------------------------------------------------------- seeded_verdict
def test_three_same_sign_seeds_with_a_large_mean_say_yes_and_the_opposite_no():
    assert seeded_verdict([-0.02, -0.018, -0.022], -1) == "yes (3/3 seeds, mean/SE 17.3)"
    assert seeded_verdict([0.02, 0.018, 0.022], -1) == "no (3/3 seeds opposite, mean/SE 17.3)"
    assert seeded_verdict([0.02, 0.018, 0.022], +1).startswith("yes (3/3 seeds")
    assert seeded_verdict([1.0, 1.0, 1.0, 1.0], +1) == "yes (4/4 seeds, mean/SE inf)"


def test_fewer_than_three_seeds_are_inconclusive_whatever_the_size():
    assert seeded_verdict([], -1) == "inconclusive (0 seeds)"
    assert seeded_verdict([-5.0], -1) == "inconclusive (1 seed)"
    assert seeded_verdict([-5.0, -4.0], -1) == "inconclusive (2 seeds)"
    assert seeded_verdict([-0.026, 0.012], -1) == "inconclusive (2 seeds, signs mixed)"


def test_mixed_signs_zero_and_nan_are_inconclusive():
    assert seeded_verdict([-0.0235, -0.0038, 0.0062], -1) == \
        "inconclusive (3 seeds, signs mixed: 2/3 as claimed)"
    assert seeded_verdict([-1.0, -1.0, 0.0], -1) == \
        "inconclusive (3 seeds, signs mixed: 2/3 as claimed, 1 tied)"
    # exact ties everywhere are no difference, not mixed signs
    assert seeded_verdict([0.0, 0.0, 0.0], +1) == "inconclusive (3 seeds, no difference on any seed)"
    assert word(seeded_verdict([-1.0, -1.0, math.nan], -1)) == "inconclusive"


def test_a_mean_within_two_standard_errors_is_inconclusive():
    # values a - sqrt(3), a, a + sqrt(3): sd sqrt(3), SE 1, so mean/SE = a
    spread = math.sqrt(3)
    assert seeded_verdict([1.99 - spread, 1.99, 1.99 + spread], +1) == \
        "inconclusive (3/3 seeds, mean/SE 2.0 <= 2)"
    assert seeded_verdict([2.01 - spread, 2.01, 2.01 + spread], +1) == \
        "yes (3/3 seeds, mean/SE 2.0)"
    assert word(seeded_verdict([-(1.99 - spread), -1.99, -(1.99 + spread)], +1)) == "inconclusive"


def test_seeded_verdict_properties_over_random_samples():
    """Scaling by a positive number keeps the verdict, flipping the sign of the data (or the
    claim) swaps yes and no, and "yes" always means >= 3 seeds of one sign with |t| > 2."""
    rng = np.random.default_rng(0)
    for _ in range(500):
        n = int(rng.integers(1, 7))
        v = rng.normal(rng.normal(0, 2), rng.uniform(0.1, 2), n)
        sign = int(rng.choice([-1, 1]))
        got = seeded_verdict(v, sign)
        assert seeded_verdict(3.7 * v, sign) == got
        assert seeded_verdict(v, -sign) == seeded_verdict(-v, sign)
        swapped = {"yes": "no", "no": "yes", "inconclusive": "inconclusive"}
        assert word(seeded_verdict(-v, sign)) == swapped[word(got)]
        if word(got) == "yes":
            t = abs(v.mean()) / (v.std(ddof=1) / math.sqrt(n))
            assert n >= 3 and np.all(np.sign(v) == sign) and t > 2


def test_sign_must_be_plus_or_minus_one():
    with pytest.raises(ValueError, match="sign=0"):
        seeded_verdict([1.0, 2.0, 3.0], 0)


# --------------------------------------------------------------- exact_verdict and all_of
def test_exact_verdict_is_marked_deterministic_and_states_its_tolerance():
    assert exact_verdict(True, "tolerance 1%") == "yes (deterministic; tolerance 1%)"
    assert exact_verdict(False, "tolerance 1%") == "no (deterministic; tolerance 1%)"


def test_table3_fit_verdict_honours_its_tolerance():
    def cur(b, c):
        return {"fit": (0.0, b, c), "fit_expected": (100.0, 200.0)}
    tol = table3_recompute.FIT_TOLERANCE
    assert word(table3_recompute.fit_verdict(cur(100 * (1 + tol - 0.01), 200.0))) == "yes"
    assert word(table3_recompute.fit_verdict(cur(100 * (1 + tol + 0.01), 200.0))) == "no"
    assert word(table3_recompute.fit_verdict(cur(100.0, 200 * (1 - tol - 0.01)))) == "no"


def test_all_of_needs_every_part():
    yes, no = "yes (3/3 seeds, mean/SE 5.0)", "no (3/3 seeds opposite, mean/SE 4.0)"
    assert all_of({"a": yes, "b": "yes (4/4 seeds, mean/SE 3.0)"}) == \
        "yes (a: 3/3 seeds, mean/SE 5.0; b: 4/4 seeds, mean/SE 3.0)"
    assert all_of({"a": yes, "b": yes}) == yes
    assert all_of({"a": yes, "b": no}) == "no (b: 3/3 seeds opposite, mean/SE 4.0)"
    assert all_of({"a": yes, "b": "inconclusive (2 seeds)"}) == "inconclusive (b: 2 seeds)"
    assert all_of({"a": "inconclusive (1 seed)", "b": "inconclusive (1 seed)"}) == \
        "inconclusive (1 seed)"


def test_verdict_cells_outside_the_rule_are_refused(tmp_path):
    for cell in ("partly", "within noise", "mechanism yes", ""):
        with pytest.raises(ValueError, match="must start with"):
            common.verdict_word(cell)
    with pytest.raises(ValueError, match="partly"):
        common.write("t", "T", [common.Row("q", "p", "o", "partly: above 1")], str(tmp_path),
                     "python x")


def test_write_names_the_runs_read_and_prints_the_rule(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    text = common.write("t", "T", [common.Row("q", "p", "o", "n/a")], str(tmp_path / "out"),
                        "python x", run_dirs=[str(run)])
    assert "Runs read: 1, trained at commits: unrecorded (1)." in text
    assert common.RULE in text.splitlines()


# ------------------------------------------------------------------- Table 1 on the rule
def _per_seed(gaps_by_label):
    """{label: {seed: {"eval_loss": ...}}} with the residual at 2.0 on every seed."""
    labels = [v[0] for v in table1_hc_ablation.VARIANTS]
    n = len(next(iter(gaps_by_label.values())))
    out = {labels[0]: {s: {"eval_loss": 2.0} for s in range(n)}}
    for label, gaps in zip(labels[1:], gaps_by_label.values()):
        out[label] = {s: {"eval_loss": 2.0 + g} for s, g in enumerate(gaps)}
    return out


def test_table1_verdicts_follow_the_rule():
    clear = _per_seed({"res": [-0.020, -0.021, -0.019], "pre": [-0.024, -0.025, -0.023],
                       "full": [-0.030, -0.031, -0.029]})
    assert [word(r.agrees) for r in table1_hc_ablation.rows_from(clear)] == ["yes"] * 5
    worse = _per_seed({"res": [0.05, 0.051, 0.049], "pre": [0.04, 0.041, 0.039],
                       "full": [0.03, 0.031, 0.029]})
    assert [word(r.agrees) for r in table1_hc_ablation.rows_from(worse)][:3] == ["no"] * 3
    # the audited case: two seeds of opposite sign under a 74 % share of the mean gaps
    two = _per_seed({"res": [-0.026, 0.012], "pre": [-0.007, -0.015], "full": [-0.014, -0.005]})
    rows = table1_hc_ablation.rows_from(two)
    assert rows[0].agrees == "inconclusive (2 seeds, signs mixed)"
    assert {word(r.agrees) for r in rows} == {"inconclusive"}
    assert rows[-1].ours.startswith("74 %")


# ------------------------------------------------------------------- Fig. 6 on the rule
def test_fig6_judges_every_rung_and_every_eval_point():
    def rung(gaps):
        return {"gap": float(np.mean(gaps)), "gap_std": float(np.std(gaps, ddof=1)),
                "compute_flops": 1e11, "relative_pct": 100.0}
    gaps = {"xs": [0.020, 0.011, 0.021], "s": [-0.008, -0.015, -0.024],
            "m": [-0.024, -0.004, 0.006]}
    # every seed ends below the residual, but two seeds are above it in between: not "persists"
    steps = [50, 100, 150, 200]
    by_seed = {0: [-0.005, 0.003, 0.004, -0.014], 1: [-0.010, -0.002, 0.001, -0.020],
               2: [-0.004, -0.006, -0.003, -0.012]}
    by_seed = {s: {"steps": steps, "gap": g, "gap_smooth": g, "eval_steps": steps,
                   "eval_gap": g, "eval_relative_pct": [100 + 10 * x for x in g], "window": 1}
               for s, g in by_seed.items()}
    tokens = scaling.mean_token_gap(by_seed)
    assert tokens["eval_gap"] == pytest.approx([-0.019 / 3, -0.005 / 3, 0.002 / 3, -0.046 / 3])
    assert tokens["eval_gap_std"][0] == pytest.approx(np.std([-0.005, -0.010, -0.004], ddof=1))
    rows = fig6_scaling.rows_from({k: rung(v) for k, v in gaps.items()}, tokens, gaps)
    verdicts = [r.agrees for r in rows]
    assert verdicts[0].startswith("no (3/3 seeds opposite")  # the smallest rung: mHC worse
    assert verdicts[1].startswith("yes (3/3 seeds")
    assert verdicts[2] == "inconclusive (3 seeds, signs mixed: 2/3 as claimed)"
    assert verdicts[3].startswith("no (xs: 3/3 seeds opposite")  # holds at every rung: no
    assert verdicts[4].startswith("yes (3/3 seeds")  # the end of the long runs
    assert verdicts[5] == "inconclusive (3 seeds, signs mixed: 1/3 as claimed)"
    assert "+0.0040, +0.0010, -0.0030" in rows[5].ours
    assert "mean gap < 0 at 3 of 4 points (>= 0 at steps 150)" in rows[5].ours


# ------------------------------------------------------------ the top-level README's table
def test_readme_reproduced_table_is_what_collect_generates():
    """Fails when a results table changed and `python -m paper_repro.collect` was not rerun
    (or when the README's generated region was edited by hand)."""
    with open(os.path.join(REPO, "README.md")) as f:
        readme = f.read()
    assert collect.region(readme) == collect.region_text(common.RESULTS)


def test_write_region_replaces_only_the_region(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    top = tmp_path / "README.md"
    top.write_text(f"intro\n{collect.REGION_START}\nhand-typed\n{collect.REGION_END}\nrest\n")
    collect.write_region(str(top), str(results))
    text = top.read_text()
    assert text.startswith("intro\n") and text.endswith(f"{collect.REGION_END}\nrest\n")
    assert "hand-typed" not in text and "not run yet: `python -m paper_repro.fig3_hc_amax`" in text
    common.write("fig3_hc_amax", "Fig. 3", [common.Row("renamed quantity", "p", "o", "n/a")],
                 str(results), "python x")
    with pytest.raises(ValueError, match="0 rows start with"):
        collect.write_region(str(top), str(results))
    top.write_text("no markers\n")
    with pytest.raises(ValueError, match="expected one"):
        collect.write_region(str(top), str(results))
