"""Small-scale proxy for Figs. 2, 3 and 5: HC vs mHC vs the residual across a 215x LR range.

The paper (arXiv 2512.24880) shows HC's instability in one 27B run (loss surge at step ~12k,
composite Amax gain near 3000) and mHC's stability in another. At CPU scale a single run shows
neither (Figs. 2/3/5 here), so this follows Wortsman et al. 2023: raise the learning rate until
small models become unstable, and compare kinds by their loss-vs-LR curves at 6 and 30 blocks
(the paper's 60 sites), clipping off. It reads `experiments/lr_sensitivity.py`'s compact run
records (it trains nothing unless --smoke) and judges each claim per seed under the verdict rule.

    python -m paper_repro.lr_proxy                 # after python -m experiments.lr_sensitivity
    python -m paper_repro.lr_proxy --smoke         # seconds: trains the study's smoke grid
"""
from __future__ import annotations

import argparse
import math
import os
import sys

from experiments import lr_sensitivity
from experiments.common import RECORDS
from paper_repro import common

STUDY = os.path.join(common.REPO, "experiments", "results", "lr_sensitivity")
PAPER_COMPOSITE_MAX = 1.6


SMOKE_KINDS = ("residual", "hc", "mhc")


def per_seed(records_dir: str) -> tuple[dict, list[dict]]:
    """({(kind, depth, lr, seed): run metrics}, the records) of the study's grid and of its
    `--smoke` grid, as far as they are recorded in `records_dir`."""
    ls = lr_sensitivity
    jobs = (ls.plan(tuple(ls.KINDS), ls.DEPTHS, ls.LRS, ls.SEEDS, runs_root="")
            + ls.plan(tuple(ls.KINDS), *ls.SMOKE_GRID, smoke=True, runs_root=""))
    metrics, records, _ = ls.load(records_dir, jobs)
    return metrics, records


def by_seed(metrics: dict, kind: str, depth: int) -> dict[int, dict[float, dict]]:
    """{seed: {lr: metrics}} for the seeds whose whole LR curve is there."""
    seeds: dict[int, dict] = {}
    for (k, d, lr, s), m in metrics.items():
        if (k, d) == (kind, depth):
            seeds.setdefault(s, {})[lr] = m
    grid = {lr for _, _, lr, _ in metrics}  # every LR any run used: the study's grid
    return {s: c for s, c in seeds.items() if set(c) == grid}


def paired(metrics, a: str, b: str, depth: int, fn) -> list[float]:
    """fn(curve of a) - fn(curve of b) per seed that both have complete."""
    ca, cb = by_seed(metrics, a, depth), by_seed(metrics, b, depth)
    return [fn(ca[s]) - fn(cb[s]) for s in sorted(set(ca) & set(cb))]


def _stable(curve) -> float:
    return math.log10(lr_sensitivity.largest_stable({lr: [m] for lr, m in curve.items()}))


def _best(curve) -> float:
    return min((m["eval_loss"] for m in curve.values() if not m["diverged"]), default=math.nan)


def _peak(key):
    return lambda curve: max(m[key] for m in curve.values())


def rows_for(metrics: dict) -> list[common.Row]:
    depths = sorted({d for _, d, _, _ in metrics})
    deep, shallow = max(depths), min(depths)
    fmt = lambda v: ", ".join(f"{x:+.4g}" for x in v) or "no complete seed"  # noqa: E731
    sens = lr_sensitivity.sensitivity
    peak = _peak("composite_fwd_max")
    hc_d, hc_s = by_seed(metrics, "hc", deep), by_seed(metrics, "hc", shallow)
    hc_deep = [peak(c) for c in hc_d.values()]
    # in log10: the peaks span orders of magnitude, and growth over depth is multiplicative
    hc_growth = ([math.log10(peak(hc_d[s]) / peak(hc_s[s])) for s in sorted(set(hc_d) & set(hc_s))]
                 if deep != shallow else [])
    mhc_bound = [PAPER_COMPOSITE_MAX - _peak("composite_bwd_max")(c)
                 for c in by_seed(metrics, "mhc", deep).values()]
    rows = [
        common.Row(f"HC's composite Amax gain grows with depth (max over the LR grid; log10 of "
                   f"{deep} blocks over {shallow} blocks, per seed)", "composite gain near 3000 at "
                   "60 sites (Fig. 3)", f"{deep} blocks: {fmt(hc_deep)}; log10 growth "
                   f"{fmt(hc_growth)}",
                   common.seeded_verdict(hc_growth, +1)),
        common.Row(f"mHC's composite backward gain stays at most {PAPER_COMPOSITE_MAX} at every LR "
                   f"({deep} blocks; bound minus peak, per seed)", f"at most about "
                   f"{PAPER_COMPOSITE_MAX} (Fig. 7)", fmt(mhc_bound),
                   common.seeded_verdict(mhc_bound, +1)),
    ]
    lrs = {lr for _, _, lr, _ in metrics}
    for depth in depths:
        s_gap = paired(metrics, "hc", "mhc", depth, sens)
        lr_gap = paired(metrics, "mhc", "hc", depth, _stable)
        loss_gap = paired(metrics, "mhc", "residual", depth, _best)
        hc_gap = paired(metrics, "mhc", "hc", depth, _best)
        rows += [
            common.Row(f"{depth} blocks: LR sensitivity HC minus mHC (per seed; positive = mHC "
                       "less sensitive)", "HC unstable, mHC stable (Figs. 2, 5)", fmt(s_gap),
                       common.seeded_verdict(s_gap, +1)),
            common.Row(f"{depth} blocks: log10 largest stable LR, mHC minus HC (per seed; "
                       f"a kind stable at the grid's top, {max(lrs):g}, counts as that: a lower "
                       "bound)",
                       "mHC trains where HC surges (Figs. 2, 5)", fmt(lr_gap),
                       common.seeded_verdict(lr_gap, +1)),
            common.Row(f"{depth} blocks: best eval loss over the grid, mHC minus residual "
                       "(per seed)", "mHC below the baseline (Fig. 5: -0.021)", fmt(loss_gap),
                       common.seeded_verdict(loss_gap, -1)),
            common.Row(f"{depth} blocks: best eval loss over the grid, mHC minus HC (per seed; "
                       "each kind at its own best LR)", "mHC below HC (Fig. 5, Table 4)",
                       fmt(hc_gap), common.seeded_verdict(hc_gap, -1)),
        ]
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--study", default=STUDY, help="the LR-sensitivity study's --out")
    p.add_argument("--out", default=common.RESULTS)
    p.add_argument("--smoke", action="store_true", help="train the study's smoke grid first")
    args = p.parse_args(argv)
    if args.smoke:
        args.study = os.path.join(args.out, "lr_sensitivity")
        lr_sensitivity.main(["--smoke", "--kinds", ",".join(SMOKE_KINDS), "--out", args.study])
    records_dir = os.path.join(args.study, RECORDS)
    metrics, records = per_seed(records_dir)
    if not metrics:
        raise SystemExit(f"no LR-sensitivity records in {records_dir}; run "
                         "python -m experiments.lr_sensitivity first")
    notes = (f"Reads {len(metrics)} runs of `{os.path.relpath(args.study, common.REPO)}` "
             f": kinds {sorted({k for k, *_ in metrics})}, "
             f"blocks {sorted({d for _, d, *_ in metrics})}, LRs "
             f"{sorted({lr for _, _, lr, _ in metrics})}, "
             f"seeds {sorted({s for *_, s in metrics})}; clipping off. Its figure: "
             "`experiments/results/lr_sensitivity/lr_sensitivity.png`. Per-seed values are "
             "paired by seed (the same seed gives every kind the same data order).")
    text = common.write("lr_proxy", "Small-scale proxy for Figs. 2/3/5: LR sensitivity",
                        rows_for(metrics), args.out, common.command_line("lr_proxy.py", argv),
                        notes, records=records)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
