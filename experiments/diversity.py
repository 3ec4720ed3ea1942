"""Stream diversity: how much of the streams' mean-zero part survives each site and the
composite, per kind of H_res and init, and whether the model learns without collapsing.

A doubly stochastic H_res fixes the all-ones direction, so what it does to the streams'
differences is its gain on the subspace orthogonal to 1 (`mhc.diagnostics.mean_zero_gain`: 1 for a
permutation, 0 for J/n). With the soft-identity init of the CPU studies (off-diagonal logit -2)
one H_res has mean-zero gain 0.615, so a 24-site composite starts at 0.615^24 ~ 9e-6: the
streams are averaged into one from step 0. The hard identity (logit -8, the library's default)
starts at 0.9987. Each run logs, every `log_every` steps: `res_mz_gain_max` (the worst single
site), `composite_mz_gain` (the full-depth composite) and `stream_diversity` (the variance
across streams relative to the mean stream's square, at the last site).

Kinds and inits (the LR-sensitivity study's base config at 12 blocks = 24 sites, one LR):
  mhc_soft     mHC, soft identity (logit -2: the CPU studies' regime)
  mhc_hard     mHC, hard identity (logit -8: the default)
  kromhc       KromHC from Sinkhorn's soft-identity diagonal (arXiv 2601.21579)
  shc          sHC from Sinkhorn's soft-identity start (arXiv 2603.20896)
  identity_hc  H_res = I, learned H_pre / H_post (the control: no mixing, nothing collapses)
  hc           Hyper-Connections, unconstrained H_res from I
Per kind: the composite's and the worst site's mean-zero gain at the start and the end, the
streams' diversity at the start and the end, the final eval loss; paired by seed against
mhc_soft (the verdict rule of `study.verdict`): does the kind keep more of the mean-zero
part (log10 composite gain at the end), and does it reach a lower eval loss? Writes
`experiments/results/diversity/`.

    python -m experiments.diversity                   # 5 seeds; finished runs are reused
    python -m experiments.diversity --only-finished   # tabulate the records, train nothing
    python -m experiments.diversity --smoke --out /tmp/diversity
"""
from __future__ import annotations

import math
import os
import sys

from study import REPO, flags, lr_grid, plots
from study.metrics import mean_spread
from study.report import provenance, runs_commits, write_summary
from study.runs import RECORDS, SMOKE_OVERRIDES, make_config, regime_overrides, runs_root
from study.verdict import RULE, seeded_verdict, values_cell

MHC = ("residual=mhc",)
# label -> overrides; `regime` True: started from the studies' soft identity (translated per
# manifold by `study.runs.regime_overrides`)
KINDS = {"mhc_soft": (MHC, True), "mhc_hard": (MHC, False),
         "kromhc": ((*MHC, "manifold=kromhc"), True),
         "shc": ((*MHC, "manifold=spectral_sphere"), True),
         "identity_hc": ((*MHC, "manifold=identity"), False), "hc": (("residual=hc",), False)}
REFERENCE = "mhc_soft"
DEPTH = 12  # blocks: 24 sites, the composite the audit measured
LR = 0.00215  # the best LR of HC, identity-HC and the residual at 30 blocks (LR-sensitivity study)
SEEDS = (0, 1, 2, 3, 4)
COLLAPSED = 1e-2  # a composite mean-zero gain below this has averaged the streams into one
KEYS = ("res_mz_gain_max", "composite_mz_gain", "stream_diversity")
FLAGS = (flags.kinds(KINDS, help=f"comma list of: {', '.join(KINDS)}"),
         flags.flag("seeds", default=",".join(map(str, SEEDS)), help=None), "out",
         flags.flag("runs", help="where runs train (default runs/diversity)"),
         flags.flag("only-finished", help="train nothing"),
         flags.flag("smoke", help="tiny models, 4 steps: wiring check"))


def plan(kinds, seeds, smoke=False, runs_root=None) -> list[tuple]:
    """[(name, kind, seed, overrides, cfg, run_dir)]: seed by seed, every kind."""
    base = [*lr_grid.BASE, *(SMOKE_OVERRIDES if smoke else ()), f"n_layers={DEPTH}",
            f"lr={LR}"]
    if smoke:
        base.append("n_layers=2")
    jobs = []
    for seed in seeds:
        for kind in kinds:
            kind_ov, soft = KINDS[kind]
            ov = [*base, *kind_ov, *(regime_overrides(kind_ov) if soft else ()),
                  f"seed={seed}"]
            name = f"{kind}-s{seed}"
            jobs.append((name, kind, seed, ov, make_config("tiny", ov),
                         os.path.join(runs_root, name)))
    return jobs


def run_metrics(record: dict) -> dict:
    """Start and end of each diversity key, the final eval loss and the stability verdict of
    the LR-sensitivity study, from a compact record."""
    rows, grid_metrics = record["rows"], lr_grid.run_metrics(record)
    out = {"eval_loss": grid_metrics["eval_loss"], "unstable": grid_metrics["unstable"],
           "offdiag_start": rows[0].get("h_res_offdiag", math.nan),
           "offdiag_end": rows[-1].get("h_res_offdiag", math.nan)}
    for key in KEYS:
        logged = [r[key] for r in rows if key in r]
        out[f"{key}_start"] = logged[0] if logged else math.nan
        out[f"{key}_end"] = logged[-1] if logged else math.nan
    return out


def log10(x: float) -> float:
    return math.log10(x) if x > 0 else -math.inf


def table(metrics: dict, kinds, seeds) -> list[str]:
    """One row per kind: mean ± sd over seeds, collapsed runs, verdicts against REFERENCE."""
    ref = {s: metrics[(REFERENCE, s)] for s in seeds if (REFERENCE, s) in metrics}
    lines = ["| kind | seeds | composite mz gain start | composite mz gain end | worst site mz "
             "gain end | stream diversity start | stream diversity end | collapsed (end < "
             f"{COLLAPSED:g}) | H_res off-diagonal mass start → end | eval loss | keeps more than {REFERENCE}? (log10 composite end) "
             f"| eval loss below {REFERENCE}? |", "|---|" + "---|" * 11]
    for kind in kinds:
        runs = {s: metrics[(kind, s)] for s in seeds if (kind, s) in metrics}
        if not runs:
            continue
        col = lambda key, fmt=".3g": "{:{f}} ± {:{f}}".format(  # noqa: E731
            *mean_spread(m[key] for m in runs.values()), f=fmt)
        paired = [s for s in runs if s in ref]
        if kind == REFERENCE:
            keeps = below = "(reference)"
        else:
            gaps = [log10(runs[s]["composite_mz_gain_end"])
                    - log10(ref[s]["composite_mz_gain_end"]) for s in paired]
            keeps = f"{values_cell(gaps, '+.2f')}: {seeded_verdict(gaps, +1)}"
            gaps = [runs[s]["eval_loss"] - ref[s]["eval_loss"] for s in paired]
            below = f"{values_cell(gaps)}: {seeded_verdict(gaps, -1)}"
        collapsed = sum(m["composite_mz_gain_end"] < COLLAPSED for m in runs.values())
        lines.append(f"| {kind} | {len(runs)} | {col('composite_mz_gain_start')} | "
                     f"{col('composite_mz_gain_end')} | {col('res_mz_gain_max_end')} | "
                     f"{col('stream_diversity_start')} | {col('stream_diversity_end')} | "
                     f"{collapsed}/{len(runs)} | {col('offdiag_start')} → {col('offdiag_end')} | "
                     f"{col('eval_loss', '.4f')} | {keeps} | {below} |")
    return lines


def plot(records: dict, path: str) -> None:
    """Composite mean-zero gain and stream diversity over training, mean over seeds per kind."""
    fig, axes = plots.pyplot().subplots(1, 2, figsize=(11, 4))
    for ax, key in zip(axes, ("composite_mz_gain", "stream_diversity")):
        for kind, (steps, mean) in plots.seed_means(records, key).items():
            ax.plot(steps, mean, marker="o", ms=3, label=kind)
    for ax, key in zip(axes, ("24-site composite mean-zero gain", "stream diversity")):
        ax.set(xlabel="step", ylabel=key, yscale="log", title=key)
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7)
    plots.savefig(fig, path)


def report(out: str, jobs, records: dict, kinds, seeds) -> None:
    """The figure, summary.json and summary.md of {(kind, seed): compact record}."""
    metrics = {key: run_metrics(r) for key, r in records.items()}
    plot(records, os.path.join(out, "diversity.png"))
    meta = provenance()
    lines = ["# Stream diversity: does the streams' mean-zero part survive depth?", "",
             f"{meta['date']}, commit {meta['commit']}, {meta['device']}, jax {meta['jax']}. "
             f"{len(records)} runs, trained at commits "
             f"{runs_commits(records=records.values())}. {DEPTH} blocks ({2 * DEPTH} "
             f"sites), LR {LR}, base `{' '.join(lr_grid.BASE)}`. Mean-zero gain: the largest "
             "singular value of H_res (or of the composite) on the subspace orthogonal to the "
             "all-ones vector (1: a permutation, 0: J/n); start = the first logged step."
             "", "", *table(metrics, kinds, seeds), "", RULE]
    missing = [name for name, kind, seed, *_ in jobs if (kind, seed) not in records]
    write_summary(out, meta, {"per_run": {f"{k}-s{s}": m for (k, s), m in metrics.items()}},
                  lines, missing)


def main(argv=None) -> int:
    args = flags.parser(__doc__, *FLAGS,
                        out=os.path.join(REPO, "experiments", "results", "diversity")
                        ).parse_args(argv)
    root = runs_root(args.runs, args.out, args.smoke, os.path.join(REPO, "runs", "diversity"))
    records_dir = os.path.join(args.out, RECORDS)
    jobs = plan(args.kinds, args.seeds, args.smoke, root)
    records = lr_grid.plan_records(jobs, records_dir, train=not args.only_finished,
                                   verbose=not args.smoke)
    report(args.out, jobs, records, args.kinds, args.seeds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
