"""Ablations of mHC, one axis at a time, against the plain residual baseline, over several seeds.

Axes (the mHC default point is n = 4, Sinkhorn 20 iterations, paper convention, dynamic
coefficients, in the CPU studies' H_res regime `study.runs.STUDY_REGIME` (a soft identity that H_res
leaves within 200 steps; `--regime frozen` for the library's H_res ≈ I); it is trained once and
shared by every axis):
  sinkhorn_iters       1, 3, 5, 10, 20, 40
  n_streams            expansion rate n = 1, 2, 4, 8
  res_init             H_res initialisation: identity-like vs uniform (J/n)
  manifold             sinkhorn, mhc_lite, orthostochastic, unconstrained
  dynamic              static (biases only) vs dynamic coefficients
  sinkhorn_convention  paper (Eq. 9) vs deepseek_v4
  h_res_regime         what lets H_res learn within a CPU budget: the hard identity init (-8),
                       a soft identity (off-diagonal logit -2), uniform with the streams'
                       symmetry broken at expansion, range-capped Sinkhorn (cap 2), each with the
                       connection parameters' learning rate x1 and x10
Each axis's table has the residual baseline as its reference row. Per variant: final eval loss
(16 fixed held-out batches) mean ± std over seeds, the gap to the residual (paired by seed: the
same seed gives both the same data order), the max over training of the composite Amax gain
(forward / backward) and of the doubly-stochastic column error.

    python -m experiments.ablations --axis all                 # micro config, 3 seeds (CPU)
    python -m experiments.ablations --axis n_streams --seeds 0,1,2,3,4 steps=400
    python -m experiments.ablations --axis all --dry-run       # print the runs, train nothing
    python -m experiments.ablations --smoke --out /tmp/abl     # seconds: wiring check
"""
from __future__ import annotations

import os
import sys

import numpy as np

from study import REPO, flags, plots
from study.ablations import (AXES, DEFAULT_REGIME, DEFAULT_SEEDS, REGIMES, choose_regime, fmt,
                             plan, run_metrics, summarize)
from study.report import provenance, runs_line, write_summary
from study.runs import (MICRO_OVERRIDES, RUNS, SMOKE_OVERRIDES, STRESS_REGIME, STUDY_REGIME,
                        enable_compile_cache, finished, runs_root, train_or_reuse)

FLAGS = (flags.flag("--axis", default="all", help=f"all or a comma list of: {', '.join(AXES)}"),
         flags.flag("seeds", default=",".join(map(str, DEFAULT_SEEDS)), help=None),
         flags.flag("recipe", default="tiny", help="base recipe; the micro overrides apply on top"),
         flags.flag("out", help="default experiments/results/ablations, or ablations_<regime> "
                                "with --regime frozen|stress"),
         flags.flag("runs", help="run directories (default: the shared experiments/results/"
                                 "trained, one per config whatever the regime; with --smoke: "
                                 "<out>/trained)"),
         flags.flag("--regime", choices=tuple(REGIMES), default=DEFAULT_REGIME,
                    help="H_res regime added to every mHC variant: study (default: "
                    f"{' '.join(STUDY_REGIME)}, where H_res learns in 200 steps), frozen "
                    f"(the library defaults: H_res ≈ I stays put), stress "
                    f"({' '.join(STRESS_REGIME)})"),
         flags.flag("smoke", help="tiny model, 4 steps, 1 seed, 2 values"), "dry-run",
         "only-finished", "overrides")


def axis_names(spec: str) -> list[str]:
    names = list(AXES) if spec == "all" else [a.strip() for a in spec.split(",") if a.strip()]
    bad = [a for a in names if a not in AXES]
    if bad or not names:
        raise SystemExit(f"--axis {spec!r}: unknown axis {', '.join(bad) or '(none)'}; "
                         f"allowed: all, {', '.join(AXES)}")
    return names


def run_axes(axes, seeds, overrides, *, recipe="tiny", smoke=False, runs_root=RUNS,
             verbose=True, only_finished=False, missing=None, regime=DEFAULT_REGIME,
             read=None) -> dict:
    """Train (or reuse) every run of `axes`; returns {axis: {label: {seed: run metrics}}}.
    `only_finished`: train nothing, use the finished runs (the others go to `missing`);
    `read` collects the run directories the results come from."""
    results: dict = {}
    jobs = plan(axes, seeds, overrides, recipe, smoke, runs_root, regime)
    for i, (axis, label, seed, cfg, run_dir) in enumerate(jobs, 1):
        if only_finished and not finished(cfg, run_dir):
            if missing is not None:
                missing.append(f"{axis}={label} seed {seed}")
            continue
        rows = train_or_reuse(cfg, run_dir, verbose=verbose,
                                     label=f"[{i}/{len(jobs)}] {axis}={label} seed {seed}")
        results.setdefault(axis, {}).setdefault(label, {})[seed] = run_metrics(rows)
        if read is not None and run_dir not in read:
            read.append(run_dir)
    return results


def table(axis: str, summary: dict) -> list[str]:
    title, default, _ = AXES[axis]
    lines = [f"### {title} (`{axis}`; mHC default: {default})", "",
             "| variant | seeds | final eval loss | gap vs residual | tail train loss "
             "| max composite Amax fwd / bwd | max DS column error | H_res off-diagonal mass "
             "start → end | distance from init (end) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, s in summary.items():
        name = f"**{label}** (default)" if label == default else label
        n = len(s["seeds"])
        lines.append(
            f"| {name} | {n} | {fmt(s['eval_loss'], s['eval_loss_std'], n=n)} | "
            f"{fmt(s['gap'], s['gap_std'], n=n)} | {fmt(s['tail_loss'], s['tail_loss_std'], n=n)} | "
            f"{s['amax_fwd_max']:.3g} / {s['amax_bwd_max']:.3g} | {s['ds_col_err_max']:.2g} | "
            f"{s['offdiag_start']:.3f} → {fmt(s['offdiag_end'], s['offdiag_end_std'], n=n)} | "
            f"{fmt(s['dist_init_end'], s['dist_init_end_std'], n=n)} |")
    return lines


def plot(summaries: dict, path: str) -> None:
    k = len(summaries)
    fig, axes = plots.pyplot().subplots(2, k, figsize=(3.6 * k, 6.4), squeeze=False)
    for j, (axis, summary) in enumerate(summaries.items()):
        labels = [lab for lab in summary if lab != "residual"]
        x = np.arange(len(labels))
        gaps = [summary[lab]["gap"] for lab in labels]
        errs = [summary[lab]["gap_std"] for lab in labels]
        colors = ["tab:blue" if lab == AXES[axis][1] else "tab:cyan" for lab in labels]
        top, bottom = axes[0, j], axes[1, j]
        top.bar(x, gaps, yerr=errs, color=colors, capsize=3)
        top.axhline(0, color="tab:gray", lw=1)
        top.set(title=AXES[axis][0], xticks=x, ylabel="eval loss − residual" if j == 0 else None)
        top.set_xticklabels(labels, rotation=30, fontsize=8)
        bottom.bar(x - 0.2, [summary[lab]["amax_fwd_max"] for lab in labels], 0.4, label="fwd")
        bottom.bar(x + 0.2, [summary[lab]["amax_bwd_max"] for lab in labels], 0.4, label="bwd")
        bottom.axhline(1, color="tab:gray", lw=1)
        bottom.set(yscale="log", xticks=x, ylabel="max composite Amax gain" if j == 0 else None)
        bottom.set_xticklabels(labels, rotation=30, fontsize=8)
        bottom.legend(fontsize=7)
        for ax in (top, bottom):
            ax.grid(alpha=0.3, axis="y")
    fig.suptitle("mHC ablations: gap to the residual baseline (mean ± std over seeds) and "
                 "composite Amax gain", fontsize=10)
    plots.savefig(fig, path)


def print_plan(jobs) -> None:
    """--dry-run: one line per planned run."""
    for axis, label, seed, cfg, run_dir in jobs:
        print(f"{axis:20s} {label:16s} seed {seed}  {cfg.model.residual} "
              f"n={cfg.model.n_streams} {cfg.model.manifold} -> {os.path.relpath(run_dir)}")


def report(args, axes, seeds, overrides, results: dict, read, missing) -> None:
    """The figure, summary.json and summary.md of {axis: {label: {seed: run metrics}}}."""
    summaries = {axis: summarize(results[axis]) for axis in axes}
    os.makedirs(args.out, exist_ok=True)
    plot(summaries, os.path.join(args.out, "ablations.png"))
    meta = {**provenance(read), "recipe": args.recipe, "seeds": list(seeds),
            "regime": args.regime,
            "overrides": overrides, "axes": axes, "missing": missing}
    regime = ("each variant's own (the h_res_regime axis adds no regime)"
              if axes == ["h_res_regime"] else
              f"{args.regime}: `{' '.join(REGIMES[args.regime]) or 'defaults'}`")
    lines = [f"# mHC ablations ({args.recipe} + micro overrides, seeds {list(seeds)}, H_res "
             f"regime {regime})", "",
             f"{runs_line(meta, len(read))} Overrides: "
             f"`{' '.join(overrides)}`. Gap = eval loss − residual's, paired by seed "
             "(negative = mHC variant better); ± is the sample std over seeds.", ""]
    for axis in axes:
        lines += table(axis, summaries[axis]) + [""]
        if axis == "h_res_regime":
            choice, rule = choose_regime(summaries[axis])
            lines += [f"Study regime by the rule ({rule}): **{choice or 'none qualifies'}**.", ""]
    write_summary(args.out, meta, {"summary": summaries, "per_seed": results}, lines, missing)


def main(argv=None) -> int:
    args = flags.parser(__doc__, *FLAGS).parse_args(argv)
    axes, seeds = axis_names(args.axis), args.seeds
    overrides = [*MICRO_OVERRIDES, *args.overrides]
    if args.smoke:
        seeds = seeds[:1]
        overrides = [*MICRO_OVERRIDES, *SMOKE_OVERRIDES, *args.overrides]
    args.out = args.out or os.path.join(REPO, "experiments", "results", "ablations" + (
        "" if args.regime == DEFAULT_REGIME else f"_{args.regime}"))
    root = runs_root(args.runs, args.out, args.smoke)
    if args.dry_run:
        print_plan(plan(axes, seeds, overrides, args.recipe, args.smoke, root, args.regime))
        return 0
    enable_compile_cache()
    missing: list[str] = []
    read: list[str] = []
    results = run_axes(axes, seeds, overrides, recipe=args.recipe, smoke=args.smoke,
                       runs_root=root, verbose=not args.smoke,
                       only_finished=args.only_finished, missing=missing, regime=args.regime,
                       read=read)
    axes = [a for a in axes if len(results.get(a, {})) > 1]  # something beside the baseline
    if not axes:
        raise SystemExit("no finished runs to tabulate; run without --only-finished first")
    report(args, axes, seeds, overrides, results, read, missing)
    return 0


if __name__ == "__main__":
    sys.exit(main())
