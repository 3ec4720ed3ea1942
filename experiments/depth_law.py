"""Depth law of stability: each kind's largest stable LR at 6, 12, 30 and 60 blocks, found by
bisection on the LR grid, and how it moves with depth.

The LR-sensitivity study (`experiments.lr_sensitivity`; its grid: `study.lr_grid`) sweeps every
grid point at 6 and 30 blocks. Sweeping 12 and 60 blocks as well would cost ~4x more, so here each
(kind, depth, seed) looks for its stability edge by bisection over the same grid: stability is
taken to be monotone in the LR (stable up to an edge, unstable above it; the swept depths check
this assumption, see `monotone_violations`), so ceil(log2(len(grid) + 1)) = 4 runs find the edge
of the 13-point grid. The grid is the LR-sensitivity grid (0.001 to 1.0) extended upward by
`ABOVE` (2.15, 4.64, 10): at 30 blocks the residual, mHC and identity-HC are stable at 1.0 on
every seed, so the sweep's grid cannot place their edge (it is censored there). Runs have the
lr_sensitivity study's names, configs and compact records (the same records folder), so every
swept run is reused and every bisection run extends the sweep.

Per (kind, depth): the per-seed edges; per kind: the least-squares slope of log10(edge) against
log10(depth) over all seeds and depths, with its standard error and the edge it extrapolates to
at the paper's depth (30 blocks, 60 sites: measured here, so the fit is a summary of the trend,
not an extrapolation). An edge at the grid's top is a lower bound and one below the grid's
bottom an upper bound: those seeds are reported and left out of the fit.

Verdicts (`study.verdict.RULE`): each seed with finite edges at two or more depths has its own
slope; "the edge falls with depth" is a t-test of those slopes against 0, and "HC's edge falls
faster than kind K's" a paired t-test of the slope differences, seed by seed. The figure
(`depth_law.png`) draws every per-seed edge against depth, log-log, with each kind's fit.

    python -m experiments.depth_law                          # 4 kinds x 4 depths x 5 seeds
    python -m experiments.depth_law --depths 12 --seeds 0    # one depth, one seed
    python -m experiments.depth_law --only-finished          # tabulate, train nothing
    python -m experiments.depth_law --smoke --out /tmp/dl    # seconds: wiring check
"""
from __future__ import annotations

import math
import os
import sys

import numpy as np

from study import flags, lr_grid, plots
from study.lr_grid import GRID, bisect_edge, seed_edges  # noqa: F401  (read as depth_law.*)
from study.report import provenance, write_report
from study.runs import RECORDS, enable_compile_cache, runs_root
from study.verdict import RULE, seeded_verdict, values_cell

KINDS = ("residual", "hc", "mhc", "identity_hc")
DEPTHS = (6, 12, 30, 60)
SEEDS = (0, 1, 2, 3, 4)
PAPER_DEPTH = 30  # blocks (60 sites)
FLAGS = (flags.kinds(lr_grid.KINDS, default=",".join(KINDS)),
         flags.flag("depths", default=",".join(map(str, DEPTHS)), help=None),
         flags.flag("seeds", default=",".join(map(str, SEEDS)), help=None),
         flags.flag("out", help="the LR-sensitivity study's folder: its records are shared"),
         flags.flag("runs", help="where runs train (default runs/lr_sensitivity)"),
         flags.flag("only-finished", help="train nothing"),
         flags.flag("smoke", help="tiny models, 4 steps: wiring check"))


def monotone_violations(curve: dict[float, dict]) -> list[float]:
    """The LRs of a swept curve {lr: run metrics} that are stable above an unstable LR: where
    bisection's assumption fails (it then finds one of the edges, not necessarily the lowest)."""
    out, seen_unstable = [], False
    for lr in sorted(curve):
        if curve[lr]["unstable"]:
            seen_unstable = True
        elif seen_unstable:
            out.append(lr)
    return out


def edge_fit(edges: dict[int, list[float]]) -> dict:
    """Least squares log10(edge) = a + b log10(depth) over every (depth, seed) with a finite
    interior edge; b's standard error; the fitted edge at PAPER_DEPTH. NaN with < 3 points or a
    single depth."""
    pts = [(math.log10(d), math.log10(e)) for d, es in edges.items() for e in es
           if math.isfinite(e)]
    if len(pts) < 3 or len({x for x, _ in pts}) < 2:
        return {"slope": math.nan, "slope_se": math.nan, "at_paper_depth": math.nan,
                "points": len(pts)}
    x, y = np.array(pts).T
    (b, a), cov = np.polyfit(x, y, 1, cov="unscaled")
    resid = y - (a + b * x)
    sigma2 = float(resid @ resid) / (len(x) - 2)
    return {"slope": float(b), "slope_se": float(math.sqrt(cov[0, 0] * sigma2)),
            "at_paper_depth": float(10 ** (a + b * math.log10(PAPER_DEPTH))), "points": len(pts)}


def seed_slopes(edges: dict, kind: str, depths) -> dict[int, float]:
    """{seed: least-squares slope of log10(edge) on log10(depth)} of `kind` ({(kind, depth):
    {seed: edge}}), for the seeds with finite edges at two or more depths."""
    points: dict[int, list] = {}
    for depth in depths:
        for seed, edge in edges.get((kind, depth), {}).items():
            if math.isfinite(edge):
                points.setdefault(seed, []).append((math.log10(depth), math.log10(edge)))
    def slope(p):  # least squares; y measured from its first point, so equal edges give 0.0
        x, y = np.array(p).T
        return float(((x - x.mean()) * (y - y[0])).sum() / ((x - x.mean()) ** 2).sum())
    return {seed: slope(p) for seed, p in sorted(points.items()) if len({x for x, _ in p}) >= 2}


def verdict_lines(edges: dict, kinds, depths) -> list[str]:
    """The depth trend judged under the rule: per kind, do its per-seed slopes fall below 0; per
    kind beside HC, are HC's slopes below that kind's, paired by seed."""
    slopes = {kind: seed_slopes(edges, kind, depths) for kind in kinds}
    lines = ["| claim | per seed | verdict |", "|---|---|---|"]
    for kind in kinds:
        v = list(slopes[kind].values())
        lines.append(f"| {kind}: the edge falls with depth (per-seed slope of log10 edge on "
                     f"log10 depth < 0) | {values_cell(v, '+.2f')} | {seeded_verdict(v, -1)} |")
    for kind in (k for k in kinds if k != "hc" and "hc" in kinds):
        common = [s for s in slopes["hc"] if s in slopes[kind]]
        v = [slopes["hc"][s] - slopes[kind][s] for s in common]
        lines.append(f"| HC's edge falls faster than {kind}'s (HC's slope minus {kind}'s, "
                     f"paired by seed) | {values_cell(v, '+.2f')} | {seeded_verdict(v, -1)} |")
    return [*lines, "", RULE]


def plot(edges: dict, kinds, depths, grid, path: str) -> None:
    """Every per-seed edge against depth (log-log; an edge stable at the grid's top drawn as ^ at
    the top, one below its bottom as v at the bottom) and each kind's least-squares fit."""
    fig, ax = plots.pyplot().subplots(figsize=(6.5, 4.5))
    for i, kind in enumerate(kinds):
        color, shift = f"C{i}", 1 + 0.04 * (i - (len(kinds) - 1) / 2)  # kinds side by side
        for depth in depths:
            for j, edge in enumerate(edges.get((kind, depth), {}).values()):
                marker = "^" if edge == math.inf else "v" if edge == -math.inf else "o"
                y = grid[-1] if edge == math.inf else grid[0] if edge == -math.inf else edge
                ax.plot(depth * shift, y, marker, color=color, alpha=0.7, ms=5,
                        label=kind if depth == depths[0] and j == 0 else None)
        fit = edge_fit({d: list(edges.get((kind, d), {}).values()) for d in depths})
        if math.isfinite(fit["slope"]):
            xs = np.array([min(depths), max(depths)], float)
            ax.plot(xs, fit["at_paper_depth"] * (xs / PAPER_DEPTH) ** fit["slope"], "--",
                    color=color, lw=1, label=f"{kind} fit: slope {fit['slope']:+.2f} ± "
                                             f"{fit['slope_se']:.2f}")
    ax.set(xscale="log", yscale="log", xlabel="blocks", ylabel="largest stable LR",
           title="Depth law of stability (bisection on the LR grid)")
    ax.set_xticks(list(depths), [str(d) for d in depths])
    ax.set_xticks([], minor=True)  # the log axis's own minor labels (2 x 10^1) would clash
    plots.style([ax], fontsize=7, which="both")
    plots.savefig(fig, path)


def run(kinds, depths, seeds, grid, out: str, runs_root: str, smoke=False, train=True) -> dict:
    """Bisect every (kind, depth, seed), training what is missing; {(kind, depth): {seed: edge}}
    and the metrics read."""
    records_dir = os.path.join(out, RECORDS)
    os.makedirs(records_dir, exist_ok=True)
    if train:
        enable_compile_cache()
    metrics = {}
    for depth in depths:
        for seed in seeds:
            for kind in kinds:
                def stable(i, kind=kind, depth=depth, seed=seed):
                    job = lr_grid.plan((kind,), (depth,), (grid[i],), (seed,), smoke=smoke,
                                       runs_root=runs_root)[0]
                    if not lr_grid.record(job, records_dir, train=train, verbose=not smoke,
                                          label=f"{job[0]} (bisection)"):
                        return False
                    m, _, _ = lr_grid.load(records_dir, [job])
                    metrics.update(m)
                    return not m[(kind, depth, grid[i], seed)]["unstable"]
                bisect_edge(len(grid), stable)
    edges = {(k, d): seed_edges(metrics, k, d, grid) for k in kinds for d in depths}
    # the swept curves (where the LR-sensitivity study ran every grid point): bisection's check
    swept, _, _ = lr_grid.load(records_dir, lr_grid.plan(kinds, depths, lr_grid.LRS, seeds,
                                                         smoke=smoke, runs_root=""))
    return {"edges": edges, "metrics": {**swept, **metrics}}


def table(edges: dict, kinds, depths, grid, lowest=None) -> list[str]:
    """`lowest`: {(kind, depth, seed): the swept curve's largest stable LR} where the curve breaks
    monotonicity (bisection then found a higher edge): shown beside the bisection's edge."""
    lowest = lowest or {}
    fmt = lambda e: ("> top" if e == math.inf else "< bottom" if e == -math.inf  # noqa: E731
                     else f"{e:g}")
    lines = ["| kind | " + " | ".join(f"{d} blocks" for d in depths)
             + " | slope of log10 edge vs log10 depth (± SE) | fitted edge at 30 blocks |",
             "|---|" + "---|" * (len(depths) + 2)]
    for kind in kinds:
        by_depth = {d: list(edges[(kind, d)].values()) for d in depths}
        fit = edge_fit(by_depth)
        cells = [", ".join(fmt(e) + (f" (swept: {fmt(lowest[(kind, d, s)])})"
                                     if lowest.get((kind, d, s), e) != e else "")
                           for s, e in edges[(kind, d)].items()) or "–" for d in depths]
        lines.append(f"| {kind} | " + " | ".join(cells) + f" | {fit['slope']:+.2f} ± "
                     f"{fit['slope_se']:.2f} ({fit['points']} points) | "
                     f"{fit['at_paper_depth']:.3g} |")
    return lines


def report_lines(result: dict, kinds, depths, seeds, grid) -> list[str]:
    """The depth-law report: provenance, the per-seed edges with each kind's fit, and how many
    fully swept curves break bisection's assumption."""
    curves = {}
    for (k, d, lr, s), m in result["metrics"].items():
        curves.setdefault((k, d, s), {})[lr] = m
    swept = {key: c for key, c in curves.items() if set(c) >= set(lr_grid.LRS)}
    violations = {key: v for key, c in swept.items() if (v := monotone_violations(c))}
    lowest = {}
    for key in violations:  # the lowest edge of a non-monotone curve: stable up to it
        below = [lr for lr in sorted(swept[key]) if swept[key][lr]["unstable"]][0]
        lowest[key] = max((lr for lr in swept[key] if lr < below), default=-math.inf)
    meta = provenance()
    return ["# Depth law of stability: largest stable LR by bisection", "",
            f"{meta['date']}, commit {meta['commit']}, {meta['device']}, jax {meta['jax']}. "
            f"{len(result['metrics'])} runs read (the LR-sensitivity study's records); grid "
            f"{', '.join(map(str, grid))}; seeds {list(seeds)}. Stable: neither diverged nor "
            "surged (the LR-sensitivity study's criteria). Cells: per-seed largest stable LR "
            "('> top': stable at the grid's top, a lower bound; '< bottom': none stable; both "
            "are left out of the fit; '(swept: x)': the seed's swept curve is unstable below the "
            "bisection's edge and stable again above, x = its largest LR below the first "
            "unstable one).", "", *table(result["edges"], kinds, depths, grid, lowest), "",
            f"Bisection assumes stability is monotone in the LR. Of {len(swept)} curves swept "
            f"over the LR-sensitivity grid, {len(violations)} break it"
            + (": " + "; ".join(f"{k}-L{d}-s{s} stable again at {v}"
                                for (k, d, s), v in sorted(violations.items())) if violations
               else "") + ".", "", *verdict_lines(result["edges"], kinds, depths), "",
            "![depth law](depth_law.png)"]


def main(argv=None) -> int:
    args = flags.parser(__doc__, *FLAGS, out=lr_grid.STUDY).parse_args(argv)
    depths, seeds, grid = args.depths, args.seeds, GRID
    if args.smoke:
        depths, seeds, grid = (1, 2), (0,), lr_grid.LRS[:1]  # one run per (kind, depth)
    result = run(args.kinds, depths, seeds, grid, args.out,
                 runs_root(args.runs, args.out, args.smoke, lr_grid.RUNS), args.smoke,
                 train=not args.only_finished)
    lines = report_lines(result, args.kinds, depths, seeds, grid)
    plot(result["edges"], args.kinds, depths, grid, os.path.join(args.out, "depth_law.png"))
    write_report(os.path.join(args.out, "depth_law.md"), lines)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
