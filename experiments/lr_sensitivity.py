"""LR sensitivity of residual / HC / mHC / mHC-lite / unconstrained mixing and two controls.

The small-scale proxy of Wortsman et al. 2023 (*Small-scale proxies for large-scale Transformer
training instabilities*, arXiv 2309.14322): large-scale instabilities show up in small models
at high learning rates, so architectures are compared by the final loss over a wide LR range,
not by one run. Per run: final eval loss, divergence, loss spikes, max grad norm (clipping is
off, so it is the raw norm), max composite and single-site Amax gain forward and backward over
every step, and H_res's movement. Per kind and depth:

  LR sensitivity = E_η[ min(ℓ(η), ℓ₀) − ℓ* ]      (Wortsman et al., Sec. 3.1)

with ℓ(η) the final eval loss at learning rate η, ℓ₀ the loss at initialisation (the first
step's), ℓ* = min_η ℓ(η), and E over the geometric LR grid (equal weight per point, i.e.
log-uniform). Diverged runs therefore count as ℓ₀. It is computed per seed; the table gives
mean ± std over seeds. The largest stable LR is the largest grid point at or below which no
seed is unstable: diverged or surged. A run diverges when a step is non-finite, or when its
final eval loss or its final training loss (mean of the last 10 % of steps) is not at least
LEARNED nats below ℓ₀: a run that ends at ℓ₀ ≈ ln 256, the uniform prediction, has lost
everything it learned (HC at 30 blocks and LR ≥ 0.1 ends at 5.545 = ln 256, a hair below
ℓ₀ = 5.56, and is not a stable run). A run surges when its final eval loss is more than SURGE
nats above its smallest 10-step-smoothed training loss (`smoothed_min`): the least mean training
loss over the steps (s - 10, s] of a window ending at a logged step s, for the windows that
start at or after the first step. The metrics rows are logged every step (`log_every` sets only
the per-site arrays and the console), so this is the rolling mean of 10 consecutive rows; were
a record logged every 10 steps, a window would hold one row (no smoothing). HC at 30 blocks, LR
0.01, seed 1 reaches 2.44 at step 53 and ends at 3.96: not diverged (it kept 1.6 nats) but not
stable either. Divergence and surges are counted apart; both are read from the records (a new
criterion retrains nothing).

Kinds beside the paper's: `identity_hc` (H_res ≡ I exactly, the `identity` manifold, with mHC's
learned H_pre / H_post) and `hc_res_only` (HC with only H_res learned, H_pre = 1/N and H_post = 1
fixed, Table 1's first row): the controls of which part buys the stability and which the loss.

Runs train in `--runs` (default runs/lr_sensitivity, not committed; interrupted runs resume
from their last checkpoint, finished ones are reused); each finished run is also written,
compacted, to OUT/records/<kind>-L<depth>-lr<lr>-s<seed>.json.xz (its config, provenance, events
and the per-step metrics the tables use), and the tables are computed from those files alone.

    python -m experiments.lr_sensitivity                     # the full grid (520 runs)
    python -m experiments.lr_sensitivity --depths 6 --seeds 0
    python -m experiments.lr_sensitivity --only-finished     # tabulate what exists, train nothing
    python -m experiments.lr_sensitivity --smoke --out /tmp/lrs
"""
from __future__ import annotations

import os
import sys

import numpy as np

from study import flags, plots
from study.lr_grid import (BASE, DEPTHS, HEADLINE_KINDS, KINDS, LEARNED, LRS, RUNS, SEEDS,
                           SEEDS_AT, SMOKE_GRID, SMOOTH, STEPS, STUDY, SURGE, default_seeds, load,
                           plan, record_all, run_name, seeds_text, summarize, table)
from study.report import provenance, runs_commits, write_summary
from study.runs import RECORDS, regime_overrides, runs_root

AT = (", ".join(f"{d} blocks: {','.join(map(str, s))}" for d, s in SEEDS_AT.items())
      + f" for {', '.join(HEADLINE_KINDS)}")
FLAGS = (flags.kinds(KINDS, help=f"comma list of: {', '.join(KINDS)}"),
         flags.flag("depths", default=",".join(map(str, DEPTHS))),
         flags.flag("--lrs", default=",".join(map(str, LRS)), type=flags.numbers("lrs"),
                    help="the LR grid"),
         flags.flag("seeds", help=f"comma list (default {','.join(map(str, SEEDS))}; {AT})"),
         "out", flags.flag("runs", help="where runs train (default: runs/lr_sensitivity; with "
                                        "--smoke: OUT/trained)"),
         "smoke",
         flags.flag("only-finished", help="train nothing; tabulate the compact records in "
                                          "OUT/records"),
         flags.flag("overrides", help="applied to every run"))


def plot(summary: dict, metrics: dict, path: str) -> None:
    depths = sorted({d for _, d in summary})
    fig, axes = plots.pyplot().subplots(2, len(depths), figsize=(6 * len(depths), 8),
                                        squeeze=False)
    for j, depth in enumerate(depths):
        top, bottom = axes[0, j], axes[1, j]
        for kind in [k for k in KINDS if (k, depth) in summary]:
            s = summary[(kind, depth)]
            lrs = np.array(s["lrs"])
            mean = np.array([s["curve"][lr][0] for lr in s["lrs"]])
            std = np.array([s["curve"][lr][1] for lr in s["lrs"]])
            line, = top.plot(lrs, mean, "o-", label=kind, ms=4)
            top.fill_between(lrs, mean - std, mean + std, color=line.get_color(), alpha=0.2)
            div = [lr for (k, d, lr, _), m in metrics.items() if (k, d) == (kind, depth)
                   and m["diverged"]]
            top.plot(div, [top.get_ylim()[1]] * len(div) if div else [], "x",
                     color=line.get_color())
            gain = [max(m["composite_fwd_max"] for (k, d, lr2, _), m in metrics.items()
                        if (k, d, lr2) == (kind, depth, lr)) for lr in s["lrs"]]
            bottom.plot(lrs, gain, "o-", color=line.get_color(), label=kind, ms=4)
        top.set(xscale="log", title=f"{depth} blocks ({2 * depth} sites): final eval loss",
                xlabel="learning rate", ylabel="eval loss (mean ± std; x = a diverged seed)")
        bottom.set(xscale="log", yscale="log", xlabel="learning rate",
                   ylabel="max composite Amax gain (fwd, all steps)")
        bottom.axhline(1, color="k", lw=0.6)
        plots.style((top, bottom), 7, which="both")
    fig.suptitle("LR sensitivity (clipping off; Wortsman et al. 2023 small-scale proxy)")
    plots.savefig(fig, path)


def report(out: str, metrics: dict, read: list[dict], missing: list[str], lrs, seeds) -> None:
    """The figure, summary.json and summary.md of the runs' metrics ({(kind, depth, lr, seed):
    run metrics}; `read`: their records, `missing`: the planned runs with none)."""
    summary = summarize(metrics)
    plot(summary, metrics, os.path.join(out, "lr_sensitivity.png"))
    meta = {**provenance(), "runs": len(metrics), "missing": missing,
            "runs_commits": runs_commits(records=read), "base": list(BASE),
            "regime": list(regime_overrides(KINDS["mhc"]))}
    lines = ["# LR sensitivity (Wortsman et al. 2023 small-scale proxy)", "",
             f"{meta['date']}, commit {meta['commit']}, {meta['device']}. {len(metrics)} runs, "
             f"trained at commits {meta['runs_commits']}. Grid: LR {', '.join(map(str, lrs))}; "
             f"seeds {seeds_text(seeds)}; {STEPS} steps; clipping off. Base: `{' '.join(BASE)}`; "
             f"connection regime `{' '.join(meta['regime']) or 'none'}`.", "",
             "LR sensitivity = mean over the grid of min(final eval loss, initial loss) minus "
             "the best, per seed (a diverged run counts as the initial loss); largest stable LR"
             " = largest grid LR at or below which no seed is unstable: diverged (non-finite, or "
             f"ending less than {LEARNED} nat below the initial loss) or surged (final eval loss "
             f"more than {SURGE} nat above the smallest {SMOOTH}-step mean training loss).", "",
             *table(summary)]
    if missing:
        lines += ["", f"Not finished yet ({len(missing)}): " + ", ".join(missing) + "."]
    # per run: `lr_grid.run_metrics` of each record (not stored again: 400+ runs outgrow a plain
    # committed summary)
    write_summary(out, meta, {"summary": {f"{k}-L{d}": v for (k, d), v in summary.items()}},
                  lines)


def main(argv=None) -> int:
    args = flags.parser(__doc__, *FLAGS, out=STUDY).parse_args(argv)
    depths, lrs = args.depths, args.lrs
    seeds = args.seeds or default_seeds(depths)
    if args.smoke:
        depths, lrs, seeds = SMOKE_GRID
    records_dir = os.path.join(args.out, RECORDS)
    os.makedirs(records_dir, exist_ok=True)
    jobs = plan(args.kinds, depths, lrs, seeds, args.overrides, args.smoke,
                runs_root(args.runs, args.out, args.smoke, RUNS))
    if not args.only_finished:
        record_all(jobs, records_dir, verbose=not args.smoke)
    metrics, read, missing = load(records_dir, jobs)
    if not metrics:
        raise SystemExit(f"no finished runs in {records_dir}; run without --only-finished")
    report(args.out, metrics, read, missing, lrs, seeds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
