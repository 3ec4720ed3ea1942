"""Small-scale proxy for Figs. 2, 3 and 5: HC vs mHC vs the residual across a 215x LR range.

The paper (arXiv 2512.24880) shows HC's instability in one 27B run (loss surge at step ~12k,
composite Amax gain near 3000) and mHC's stability in another. At CPU scale a single run shows
neither (Figs. 2/3/5 here), so this follows Wortsman et al. 2023: raise the learning rate until
small models become unstable, and compare kinds by their loss-vs-LR curves at 6 and 30 blocks
(the paper's 60 sites), clipping off. It reads `experiments/lr_sensitivity.py`'s compact run
records (`study.lr_grid`; it trains nothing unless --smoke) and judges each claim per seed under
the verdict rule.

    python -m paper_repro.lr_proxy                 # after python -m experiments.lr_sensitivity
    python -m paper_repro.lr_proxy --smoke         # seconds: trains the study's smoke grid
"""
from __future__ import annotations

import math
import os
import sys

from study import REPO, flags, lr_grid
from study.report import RESULTS, publish
from study.runs import RECORDS
from study.verdict import Row, seeded_verdict

# what the paper shows and the runtime on 2 CPU cores: the paper_repro page lists every
# script that declares them (paper_repro/collect.py)
TITLE = "Small-scale proxy for Figs. 2/3/5: LR sensitivity"
RUNTIME = "seconds after experiments/lr_sensitivity.py (about 6 h)"

PAPER_COMPOSITE_MAX = 1.6
PAPER_PEAK = 3000  # HC's composite Amax gain, 27B, 60 sites (Fig. 3b)


SMOKE_KINDS = ("residual", "hc", "mhc")
FLAGS = (flags.flag("--study", default=lr_grid.STUDY, help="the LR-sensitivity study's --out"),
         "out", flags.flag("smoke", help="train the study's smoke grid first"))


def per_seed(records_dir: str) -> tuple[dict, list[dict]]:
    """({(kind, depth, lr, seed): run metrics}, the records) of the study's grid and of its
    `--smoke` grid, as far as they are recorded in `records_dir`."""
    ls = lr_grid
    jobs = (ls.plan(tuple(ls.KINDS), ls.DEPTHS, ls.LRS, ls.default_seeds(ls.DEPTHS), runs_root="")
            + ls.plan(tuple(ls.KINDS), *ls.SMOKE_GRID, smoke=True, runs_root=""))
    metrics, records, _ = ls.load(records_dir, jobs)
    return metrics, records


def by_seed(metrics: dict, kind: str, depth: int) -> dict[int, dict[float, dict]]:
    """{seed: {lr: metrics}} for the seeds whose whole LR curve at `depth` is there (the grid
    of a depth: every LR any kind used at it)."""
    seeds: dict[int, dict] = {}
    for (k, d, lr, s), m in metrics.items():
        if (k, d) == (kind, depth):
            seeds.setdefault(s, {})[lr] = m
    grid = {lr for _, d, lr, _ in metrics if d == depth}
    return {s: c for s, c in seeds.items() if set(c) == grid}


def paired(metrics, a: str, b: str, depth: int, fn) -> list[float]:
    """fn(curve of a) - fn(curve of b) per seed that both have complete."""
    ca, cb = by_seed(metrics, a, depth), by_seed(metrics, b, depth)
    return [fn(ca[s]) - fn(cb[s]) for s in sorted(set(ca) & set(cb))]


def _stable(curve) -> float:
    return math.log10(lr_grid.largest_stable({lr: [m] for lr, m in curve.items()}))


def _best(curve) -> float:
    return min((m["eval_loss"] for m in curve.values() if not m["diverged"]), default=math.nan)


SINKHORN_CONVERGED = 0.1  # largest column-sum error of H_res for mHC's map to count as DS


def _peak(key, keep):
    """The largest `key` over the LRs of a curve whose run `keep`s (never a diverged run: a dead
    run's gains, up to 1e29, measure nothing)."""
    return lambda curve: max((m[key] for m in curve.values() if keep(m)), default=math.nan)


def _at_best_lr(key):
    """`key` of the run at the curve's best eval loss (non-diverged runs)."""
    def fn(curve):
        live = [m for m in curve.values() if not m["diverged"]]
        return min(live, key=lambda m: m["eval_loss"])[key] if live else math.nan
    return fn


def _fmt(values) -> str:
    return ", ".join(f"{x:+.4g}" for x in values) or "no complete seed"


# (row label, kind a, kind b, fn, claimed sign of fn(a) - fn(b), the question it answers): the
# controls separate what the constrained H_res buys from what learned H_pre / H_post buy
CONTROLS = (
    ("log10 largest stable LR, mHC minus identity-HC (H_res = I, learned H_pre/H_post)",
     "mhc", "identity_hc", _stable, +1, "the constrained H_res adds stability over H_res = I"),
    ("best eval loss over the grid, mHC minus identity-HC", "mhc", "identity_hc", _best, -1,
     "the learned H_res lowers the loss below H_res = I"),
    ("log10 largest stable LR, HC with only H_res learned minus the residual",
     "hc_res_only", "residual", _stable, -1, "an unconstrained learned H_res alone costs stability"),
    ("log10 largest stable LR, HC minus HC with only H_res learned", "hc", "hc_res_only",
     _stable, -1, "learned H_pre / H_post add instability on top of H_res"),
)


def rows_for(metrics: dict) -> list[Row]:
    depths = sorted({d for _, d, _, _ in metrics})
    deep, shallow = max(depths), min(depths)
    sens = lr_grid.sensitivity
    hc_d, hc_s = by_seed(metrics, "hc", deep), by_seed(metrics, "hc", shallow)
    at_best = _at_best_lr("composite_fwd_max")
    # growth at each depth's best LR, not the grid's maximum: HC's gain rises with the LR by
    # orders of magnitude even in runs that neither diverge nor surge (6e13 at 6 blocks, LR 1),
    # and the shallow grid is stable to a far higher LR, so a maximum compares LR ranges, not
    # depths. In log10: the gains span orders of magnitude, and growth over depth multiplies.
    hc_at_best, hc_shallow = ({s: at_best(c) for s, c in d.items()} for d in (hc_d, hc_s))
    hc_growth = ([math.log10(hc_at_best[s] / hc_shallow[s])
                  for s in sorted(set(hc_at_best) & set(hc_shallow))] if deep != shallow else [])
    converged = lambda m: not m["diverged"] and m["ds_col_err_max"] <= SINKHORN_CONVERGED  # noqa
    mhc_d = by_seed(metrics, "mhc", deep)
    mhc_bound = [PAPER_COMPOSITE_MAX - _peak("composite_bwd_max", converged)(c)
                 for c in mhc_d.values()]
    excluded = sum(not converged(m) for c in mhc_d.values() for m in c.values())
    rows = [
        Row(f"{deep} blocks: HC's largest composite Amax gain, forward, at each seed's "
                   f"best LR (claim: within 10x of the paper's, log10(gain / {PAPER_PEAK / 10:g})"
                   " > 0)", f"peaks near {PAPER_PEAK:g} at 60 sites (Fig. 3)",
                   ", ".join(f"{g:.3g}" for g in hc_at_best.values()) or "no complete seed",
                   seeded_verdict([math.log10(g * 10 / PAPER_PEAK) for g in hc_at_best.values()],
                                         +1, headline=deep == 30)),
        Row(f"HC's composite Amax gain grows with depth (at each seed's best LR at each depth; "
                   f"log10 of {deep} blocks over {shallow} blocks, per seed)",
                   "composite gain near 3000 at 60 sites (Fig. 3)",
                   f"{shallow} blocks: {_fmt(hc_shallow.values())}; log10 growth "
                   f"{_fmt(hc_growth)}", seeded_verdict(hc_growth, +1)),
        Row(f"mHC's composite backward gain stays at most {PAPER_COMPOSITE_MAX} at every LR "
                   f"where Sinkhorn converged (column error <= {SINKHORN_CONVERGED:g}; {excluded} "
                   f"runs excluded) ({deep} blocks; bound minus peak, per seed)",
                   f"at most about {PAPER_COMPOSITE_MAX} (Fig. 7)", _fmt(mhc_bound),
                   seeded_verdict(mhc_bound, +1)),
    ]
    for depth in depths:
        headline = depth == 30
        top = max(lr for _, d, lr, _ in metrics if d == depth)
        s_gap = paired(metrics, "hc", "mhc", depth, sens)
        lr_gap = paired(metrics, "mhc", "hc", depth, _stable)
        loss_gap = paired(metrics, "mhc", "residual", depth, _best)
        hc_gap = paired(metrics, "mhc", "hc", depth, _best)
        rows += [
            Row(f"{depth} blocks: LR sensitivity HC minus mHC (per seed; positive = mHC "
                       "less sensitive)", "HC unstable, mHC stable (Figs. 2, 5)", _fmt(s_gap),
                       seeded_verdict(s_gap, +1, headline)),
            Row(f"{depth} blocks: log10 largest stable LR (no divergence, no surge), mHC "
                       f"minus HC (per seed; a kind stable at the grid's top, {top:g}, counts as "
                       "that: a lower bound)",
                       "mHC trains where HC surges (Figs. 2, 5)", _fmt(lr_gap),
                       seeded_verdict(lr_gap, +1, headline)),
            Row(f"{depth} blocks: best eval loss over the grid, mHC minus residual "
                       "(per seed)", "mHC below the baseline (Fig. 5: -0.021)", _fmt(loss_gap),
                       seeded_verdict(loss_gap, -1, headline)),
            Row(f"{depth} blocks: best eval loss over the grid, mHC minus HC (per seed; "
                       "each kind at its own best LR)", "mHC below HC (Fig. 5, Table 4)",
                       _fmt(hc_gap), seeded_verdict(hc_gap, -1, headline)),
        ]
        for label, a, b, fn, sign, question in CONTROLS:
            gap = paired(metrics, a, b, depth, fn)
            if gap:
                rows.append(Row(f"{depth} blocks, control: {label} (per seed)",
                                       f"not in the paper; asks whether {question}", _fmt(gap),
                                       seeded_verdict(gap, sign, headline)))
    return rows


EDGE_KINDS = ("residual", "hc", "mhc", "identity_hc")  # the depth law's kinds
# (kind a, kind b, claimed sign of log10 edge(a) - edge(b), what the paper or the control says)
EDGE_PAIRS = (("mhc", "hc", +1, "mHC trains where HC surges (Figs. 2, 5)"),
              ("mhc", "identity_hc", +1, "not in the paper; asks whether the constrained H_res "
                                         "adds stability over H_res = I"))


def edge_rows(records_dir: str) -> list[Row]:
    """The largest stable LR on the extended grid (`lr_grid.GRID`, up to 10), found by the depth
    law's bisection (experiments/depth_law.py), per seed, at each sweep depth where it is
    complete: the sweep's own grid ends where the residual, mHC and identity-HC are still
    stable at 30 blocks, so its rows above give a lower bound only."""
    ls, rows = lr_grid, []
    for depth in ls.DEPTHS:
        seeds = ls.SEEDS_AT.get(depth, ls.SEEDS)
        metrics, _, _ = ls.load(records_dir, ls.plan(EDGE_KINDS, (depth,), ls.GRID, seeds,
                                                     runs_root=""))
        edges = {k: ls.seed_edges(metrics, k, depth, ls.GRID) for k in EDGE_KINDS}
        if not all(len(edges[k]) == len(seeds) for k in EDGE_KINDS):
            continue  # the bisection at this depth is unfinished
        top = f"> {ls.GRID[-1]:g}"
        cells = "; ".join(f"{k}: " + ", ".join(top if e == math.inf else f"{e:g}"
                                               for e in edges[k].values()) for k in EDGE_KINDS)
        rows.append(Row(f"{depth} blocks: largest stable LR per seed on the grid extended to "
                        f"{ls.GRID[-1]:g} (bisection; '{top}': stable at the top)",
                        "no number (Figs. 2, 5: HC surges, mHC does not)", cells, "n/a"))
        for a, b, sign, claim in EDGE_PAIRS:
            gap = [math.log10(edges[a][s]) - math.log10(edges[b][s]) for s in seeds]
            rows.append(Row(f"{depth} blocks, extended grid: log10 largest stable LR, {a} minus "
                            f"{b} (per seed; an edge beyond the top is not finite: inconclusive)",
                            claim, _fmt(gap), seeded_verdict(gap, sign, depth == 30)))
    return rows


def train_smoke(study: str) -> None:
    """--smoke: the records of the study's smoke grid (`SMOKE_KINDS`), trained into `study`."""
    jobs = lr_grid.plan(SMOKE_KINDS, *lr_grid.SMOKE_GRID, smoke=True,
                        runs_root=os.path.join(study, "trained"))
    records_dir = os.path.join(study, RECORDS)
    os.makedirs(records_dir, exist_ok=True)
    lr_grid.record_all(jobs, records_dir, verbose=False)


def main(argv=None) -> int:
    args = flags.parser(__doc__, *FLAGS, out=RESULTS).parse_args(argv)
    if args.smoke:
        args.study = os.path.join(args.out, "lr_sensitivity")
        train_smoke(args.study)
    records_dir = os.path.join(args.study, RECORDS)
    metrics, records = per_seed(records_dir)
    if not metrics:
        raise SystemExit(f"no LR-sensitivity records in {records_dir}; run "
                         "python -m experiments.lr_sensitivity first")
    notes = (f"Reads {len(metrics)} runs of `{os.path.relpath(args.study, REPO)}` "
             f": kinds {sorted({k for k, *_ in metrics})}, "
             f"blocks {sorted({d for _, d, *_ in metrics})}, LRs "
             f"{sorted({lr for _, _, lr, _ in metrics})}, "
             f"seeds {sorted({s for *_, s in metrics})}; clipping off. Its figure: "
             "`experiments/results/lr_sensitivity/lr_sensitivity.png`. Per-seed values are "
             "paired by seed (the same seed gives every kind the same data order).")
    return publish("lr_proxy", "Small-scale proxy for Figs. 2/3/5: LR sensitivity",
                   rows_for(metrics) + edge_rows(records_dir), args.out, argv, notes,
                   records=records)


if __name__ == "__main__":
    sys.exit(main())
