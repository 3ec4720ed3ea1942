"""The one verdict rule of paper_repro (study/verdict.py: seeded_verdict, exact_verdict,
all_of), the callers that apply a tolerance, and the top-level README's reproduced table, which
must equal what paper_repro/collect.py generates from the committed results."""
import math
import os

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from paper_repro import collect, fig6_scaling, table1_hc_ablation, table3_recompute
from study import report, scaling, verdict
from study.verdict import all_of, exact_verdict, seeded_verdict


def word(cell):
    return verdict.verdict_word(cell)


# ------------------------------------------------------------------------- seeded_verdict
def _two_sided_p(t, df):
    """Student t two-sided p from closed forms (independent of scipy): df 1 is Cauchy,
    df 2 has CDF 1/2 + t / (2 sqrt(2 + t^2)), df 4 has a cubic closed form."""
    a = abs(t)
    if df == 1:
        return 1 - 2 / math.pi * math.atan(a)
    if df == 2:
        return 1 - a / math.sqrt(2 + a * a)
    if df == 4:
        x = a / math.sqrt(4 + a * a)
        return 1 - x * (3 - x * x) / 2
    raise ValueError(df)


def test_paired_t_matches_the_closed_form_student_t():
    for values in ([1.0, 2.0, 3.0], [0.3, -0.1], [-0.02, -0.018, -0.022, -0.03, -0.011],
                   [5.0, 5.5, 4.0, 7.0, 0.5]):
        n = len(values)
        mean = sum(values) / n
        sd = math.sqrt(sum((x - mean) ** 2 for x in values) / (n - 1))
        t, df, p = verdict.paired_t(values)
        assert t == pytest.approx(mean / (sd / math.sqrt(n)), rel=1e-12) and df == n - 1
        assert p == pytest.approx(_two_sided_p(t, df), rel=1e-9)
    # values 1, 2, 3: t = 2 sqrt(3) on 2 df, p = 1 - 2 sqrt(3) / sqrt(14) = 0.074
    assert verdict.paired_t([1, 2, 3])[2] == pytest.approx(1 - 2 * math.sqrt(3) / math.sqrt(14))


def test_p_below_005_says_yes_or_no_by_the_sign_of_the_mean():
    assert seeded_verdict([-0.02, -0.018, -0.022], -1) == \
        "yes (t = -17.32, df = 2, p = 0.0033, n = 3)"
    assert seeded_verdict([0.02, 0.018, 0.022], -1) == "no (t = +17.32, df = 2, p = 0.0033, n = 3)"
    assert seeded_verdict([0.02, 0.018, 0.022], +1).startswith("yes (t = +17.32")
    # one seed of the other sign does not veto a clear paired difference
    assert seeded_verdict([0.5, 0.6, 0.55, 0.45, -0.01, 0.52], +1).startswith("yes (")


def test_too_few_seeds_are_inconclusive_whatever_the_size():
    assert seeded_verdict([], -1) == "inconclusive (0 seeds; needs >= 3)"
    assert seeded_verdict([-5.0], -1) == "inconclusive (1 seed; needs >= 3)"
    assert seeded_verdict([-5.0, -4.0], -1) == "inconclusive (2 seeds; needs >= 3)"
    assert seeded_verdict([-0.02, -0.018, -0.022, -0.021], -1, headline=True) == \
        "inconclusive (4 seeds; needs >= 5 for a headline claim)"
    assert word(seeded_verdict([-0.02, -0.018, -0.022, -0.021, -0.019], -1, headline=True)) == "yes"


def test_no_spread_and_non_finite_values_are_inconclusive():
    assert seeded_verdict([0.0, 0.0, 0.0], +1) == "inconclusive (3 seeds, no difference on any seed)"
    # quantised values (equal grid-LR differences): no spread, so no test, not mean/SE = inf
    assert seeded_verdict([1.0, 1.0, 1.0, 1.0], +1) == \
        "inconclusive (4 seeds, all +1: sd = 0, no spread to test)"
    assert seeded_verdict([-1.0, -1.0, math.nan], -1) == "inconclusive (1 of 3 seeds not finite)"
    assert seeded_verdict([-1.0, -math.inf, -2.0, -1.0], -1) == \
        "inconclusive (1 of 4 seeds not finite)"


def test_a_mean_within_the_t_critical_value_is_inconclusive():
    # values a - sqrt(3), a, a + sqrt(3): sd sqrt(3), SE 1, so t = a on 2 df; t_0.975,2 = 4.303
    spread = math.sqrt(3)
    assert word(seeded_verdict([4.29 - spread, 4.29, 4.29 + spread], +1)) == "inconclusive"
    assert word(seeded_verdict([4.32 - spread, 4.32, 4.32 + spread], +1)) == "yes"
    # the audited Fig. 5 case: mean/SE 2.17 on 3 seeds is p = 0.16, not a verdict
    assert seeded_verdict([2.17 - spread, 2.17, 2.17 + spread], +1) == \
        "inconclusive (t = +2.17, df = 2, p = 0.16, n = 3)"


def test_the_rule_on_synthetic_samples_with_known_answers():
    """Under no effect the rule says yes or no about 5 % of the time (two-sided, not the old
    rule's 9 % one-sided); under a large effect it says yes, never no."""
    rng = np.random.default_rng(0)
    trials = 4000
    for n in (3, 5):
        null = [word(seeded_verdict(rng.normal(0, 1, n), +1)) for _ in range(trials)]
        rate = sum(w != "inconclusive" for w in null) / trials
        assert abs(rate - 0.05) < 4 * math.sqrt(0.05 * 0.95 / trials), (n, rate)
        assert abs(null.count("yes") - null.count("no")) < 4 * math.sqrt(trials * 0.05)
    strong = [word(seeded_verdict(rng.normal(-3, 1, 5), -1)) for _ in range(500)]
    assert strong.count("no") == 0 and strong.count("yes") > 0.95 * 500


def test_seeded_verdict_properties_over_random_samples():
    """Scaling by a positive number keeps the verdict; flipping the sign of the data (or the
    claim) swaps yes and no; "yes" always means p < 0.05 with the claimed sign."""
    rng = np.random.default_rng(0)
    for _ in range(500):
        n = int(rng.integers(1, 7))
        v = rng.normal(rng.normal(0, 2), rng.uniform(0.1, 2), n)
        sign = int(rng.choice([-1, 1]))
        got = seeded_verdict(v, sign)
        assert seeded_verdict(3.7 * v, sign) == got
        swapped = {"yes": "no", "no": "yes", "inconclusive": "inconclusive"}
        assert word(seeded_verdict(v, -sign)) == swapped[word(got)]
        assert word(seeded_verdict(-v, sign)) == swapped[word(got)]
        if word(got) == "yes":
            assert n >= 3 and np.sign(v.mean()) == sign and verdict.paired_t(v)[2] < 0.05


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
    yes, no = "yes (t = +5.00, df = 2, p = 0.038, n = 3)", "no (t = -9.00, df = 2, p = 0.012, n = 3)"
    assert all_of({"a": yes, "b": "yes (t = +6.00, df = 4, p = 0.0039, n = 5)"}) == \
        "yes (a: t = +5.00, df = 2, p = 0.038, n = 3; b: t = +6.00, df = 4, p = 0.0039, n = 5)"
    assert all_of({"a": yes, "b": yes}) == yes
    assert all_of({"a": yes, "b": no}) == "no (b: t = -9.00, df = 2, p = 0.012, n = 3)"
    assert all_of({"a": yes, "b": "inconclusive (2 seeds)"}) == "inconclusive (b: 2 seeds)"
    assert all_of({"a": "inconclusive (1 seed)", "b": "inconclusive (1 seed)"}) == \
        "inconclusive (1 seed)"


def test_verdict_cells_outside_the_rule_are_refused(tmp_path):
    for cell in ("partly", "within noise", "mechanism yes", ""):
        with pytest.raises(ValueError, match="must start with"):
            verdict.verdict_word(cell)
    with pytest.raises(ValueError, match="partly"):
        report.write("t", "T", [verdict.Row("q", "p", "o", "partly: above 1")], str(tmp_path),
                     "python x")


def test_write_names_the_runs_read_and_prints_the_rule(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    text = report.write("t", "T", [verdict.Row("q", "p", "o", "n/a")], str(tmp_path / "out"),
                        "python x", run_dirs=[str(run)])
    assert "Runs read: 1, trained at commits: unrecorded (1)." in text
    assert verdict.RULE in text.splitlines()


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
    clear = _per_seed({"res": [-0.020, -0.021, -0.019], "pre": [-0.024, -0.026, -0.023],
                       "full": [-0.030, -0.033, -0.029]})
    assert [word(r.agrees) for r in table1_hc_ablation.rows_from(clear)] == ["yes"] * 5
    worse = _per_seed({"res": [0.05, 0.051, 0.049], "pre": [0.04, 0.041, 0.039],
                       "full": [0.03, 0.031, 0.029]})
    assert [word(r.agrees) for r in table1_hc_ablation.rows_from(worse)][:3] == ["no"] * 3
    # the audited case: two seeds of opposite sign under a 74 % share of the mean gaps
    two = _per_seed({"res": [-0.026, 0.012], "pre": [-0.007, -0.015], "full": [-0.014, -0.005]})
    rows = table1_hc_ablation.rows_from(two)
    assert rows[0].agrees == "inconclusive (2 seeds; needs >= 3)"
    assert {word(r.agrees) for r in rows} == {"inconclusive"}
    assert rows[-1].ours.startswith("74 %")


# ------------------------------------------------------------------- Fig. 6 on the rule
def test_fig6_judges_every_rung_and_every_eval_point():
    def rung(gaps):
        return {"gap": float(np.mean(gaps)), "gap_std": float(np.std(gaps, ddof=1)),
                "compute_flops": 1e11, "relative_pct": 100.0}
    gaps = {"xs": [0.020, 0.011, 0.021], "s": [-0.008, -0.015, -0.024],
            "m": [-0.024, -0.004, 0.006]}
    # every seed ends below the residual; two are above it in the first half
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
    assert verdicts[0] == "no (t = +5.45, df = 2, p = 0.032, n = 3)"  # the smallest rung: worse
    assert verdicts[1] == "inconclusive (t = -3.38, df = 2, p = 0.077, n = 3)"
    assert verdicts[2] == "inconclusive (t = -0.83, df = 2, p = 0.49, n = 3)"
    assert verdicts[3] == "no (xs: t = +5.45, df = 2, p = 0.032, n = 3)"  # not at every rung
    assert verdicts[4].startswith("yes (t = ")  # the end of the long runs
    # pre-registered: the mean eval gap over the second half (steps 150, 200) of each seed
    assert "-0.0050, -0.0095, -0.0075" in rows[5].ours
    assert verdicts[5].startswith("yes (t = -5.")
    assert "mean gap < 0 at 3 of 4 points (>= 0 at steps 150)" in rows[5].ours


# ------------------------------------------------------------ the top-level README's table
def test_readme_reproduced_table_is_what_collect_generates():
    """Fails when a results table changed and `python -m paper_repro.collect` was not rerun
    (or when the README's generated region was edited by hand)."""
    with open(os.path.join(REPO, "README.md")) as f:
        readme = f.read()
    assert collect.region(readme) == collect.region_text(report.RESULTS)


def test_write_region_replaces_only_the_region(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    top = tmp_path / "README.md"
    top.write_text(f"intro\n{collect.REGION_START}\nhand-typed\n{collect.REGION_END}\nrest\n")
    collect.write_region(str(top), str(results))
    text = top.read_text()
    assert text.startswith("intro\n") and text.endswith(f"{collect.REGION_END}\nrest\n")
    assert "hand-typed" not in text and "not run yet: `python -m paper_repro.fig8_heatmaps`" in text
    report.write("fig8_heatmaps", "Fig. 8", [verdict.Row("renamed quantity", "p", "o", "n/a")],
                 str(results), "python x")
    with pytest.raises(ValueError, match="0 rows start with"):
        collect.write_region(str(top), str(results))
    top.write_text("no markers\n")
    with pytest.raises(ValueError, match="expected one"):
        collect.write_region(str(top), str(results))


# ---------------------------------------------------------- claims judged at their own scale
def test_growth_fits_tell_geometric_from_linear_growth():
    from paper_repro import fig3_hc_amax
    sites = np.arange(1, 25)
    geometric = fig3_hc_amax.growth_fits(1.3 ** sites)
    assert geometric["geometric"] == pytest.approx(0, abs=1e-9)
    assert geometric["rate_per_site"] == pytest.approx(1.3) and geometric["log_rmse_gap"] > 0.1
    linear = fig3_hc_amax.growth_fits(1 + 0.5 * sites)
    assert linear["linear"] == pytest.approx(0, abs=1e-9) and linear["log_rmse_gap"] < -0.05
