"""Ablations of mHC, one axis at a time, against the plain residual baseline, over several seeds.

Axes (the mHC default point is n = 4, Sinkhorn 20 iterations, paper convention, dynamic
coefficients, in the CPU studies' H_res regime `common.STUDY_REGIME` (a soft identity that H_res
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

import argparse
import math
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from experiments import common

BASELINE = ("residual", ("residual=residual",))
MHC = ("residual=mhc",)
# axis: (title, default label, [(label, overrides)])
AXES = {
    "sinkhorn_iters": ("Sinkhorn iterations t_max", "20",
                       [(str(t), (f"sinkhorn_iters={t}",)) for t in (1, 3, 5, 10, 20, 40)]),
    "n_streams": ("expansion rate n", "4", [(str(n), (f"n_streams={n}",)) for n in (1, 2, 4, 8)]),
    "res_init": ("H_res initialisation", "identity",
                 [(s, (f"res_init={s}",)) for s in ("identity", "uniform")]),
    "manifold": ("manifold of H_res", "sinkhorn",
                 [("sinkhorn", ("manifold=sinkhorn",)), ("mhc_lite", ("residual=mhc_lite",)),
                  ("orthostochastic", ("manifold=orthostochastic",)),
                  ("unconstrained", ("manifold=unconstrained",))]),
    "dynamic": ("coefficients", "dynamic",
                [("static", ("dynamic=false",)), ("dynamic", ("dynamic=true",))]),
    "sinkhorn_convention": ("Sinkhorn convention", "paper",
                            [(c, (f"sinkhorn_convention={c}",)) for c in ("paper", "deepseek_v4")]),
    "h_res_regime": ("H_res init and connection learning rate", "identity",
                     [(f"{name}{' x' + str(mult) if mult != 1 else ''}",
                       (*ov, f"connection_lr_mult={mult}"))
                      for name, ov in (("identity", ()), ("soft-2", ("res_offdiag_logit=-2",)),
                                       ("uniform+offset", ("res_init=uniform",
                                                           "stream_offset_std=0.02")),
                                       ("cap2", ("sinkhorn_range_cap=2",)))
                      for mult in (1, 10)]),
}
DEFAULT_SEEDS = (0, 1, 2)


def axis_names(spec: str) -> list[str]:
    names = list(AXES) if spec == "all" else [a.strip() for a in spec.split(",") if a.strip()]
    bad = [a for a in names if a not in AXES]
    if bad or not names:
        raise SystemExit(f"--axis {spec!r}: unknown axis {', '.join(bad) or '(none)'}; "
                         f"allowed: all, {', '.join(AXES)}")
    return names


def variants(axis: str, smoke: bool = False) -> list[tuple[str, tuple[str, ...]]]:
    """(label, overrides) of one axis, the residual baseline first. Smoke keeps the default point
    and one other value."""
    _, default, points = AXES[axis]
    if smoke:
        other = next(label for label, _ in points if label != default)
        points = [p for p in points if p[0] in (default, other)]
    return [BASELINE] + [(label, MHC + ov) for label, ov in points]


def parse_seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise SystemExit(f"--seeds {text!r}: expected comma-separated integers") from None
    if not seeds:
        raise SystemExit("--seeds is empty; give at least one seed, e.g. 0,1,2")
    return seeds


REGIMES = {"frozen": (), "study": common.STUDY_REGIME, "stress": common.STRESS_REGIME}
DEFAULT_REGIME = "study"


def plan(axes, seeds, base_overrides, recipe="tiny", smoke=False, runs_root=common.RUNS,
         regime: str = DEFAULT_REGIME):
    """[(axis, label, seed, cfg, run_dir)]; configs are validated here, nothing is trained.
    `regime` adds the H_res regime's options to every connection variant (those that apply to
    it: `common.regime_overrides`); "frozen" is the plain default (H_res ≈ I stays put). The
    h_res_regime axis compares regimes itself, so none is added to it."""
    out = []
    for axis in axes:
        added = () if axis == "h_res_regime" else REGIMES[regime]
        for label, ov in variants(axis, smoke):
            ov = (*ov, *common.regime_overrides((*base_overrides, *ov), added))
            for seed in seeds:
                cfg = common.make_config(recipe, [*base_overrides, *ov, f"seed={seed}"])
                out.append((axis, label, seed, cfg, common.run_dir_for(cfg, runs_root)))
    return out


def run_metrics(rows: list[dict]) -> dict:
    """The numbers of one run that the tables use (H_res's movement: first and last step)."""
    final = common.final_metrics(rows)
    return {"eval_loss": final["eval_loss"], "tail_loss": common.tail_loss(rows),
            "amax_fwd_max": max(r.get("amax_fwd_max", 1.0) for r in rows),
            "amax_bwd_max": max(r.get("amax_bwd_max", 1.0) for r in rows),
            "ds_col_err_max": max(r.get("ds_col_err_max", 0.0) for r in rows),
            **common.h_res_movement(rows)}


METRICS = ("eval_loss", "tail_loss", "amax_fwd_max", "amax_bwd_max", "ds_col_err_max",
           *common.H_RES_MOVEMENT)


def summarize(per_seed: dict[str, dict[int, dict]], baseline: str = "residual") -> dict:
    """Per variant: mean ± std over seeds of each run metric, and the gap to `baseline` in eval
    loss, paired by seed (only seeds both have)."""
    base = per_seed.get(baseline, {})
    out = {}
    for label, by_seed in per_seed.items():
        s = {"seeds": sorted(by_seed)}
        for key in METRICS:
            # a metric a run predates is NaN, not an error
            s[key], s[key + "_std"] = common.mean_spread(m.get(key, math.nan)
                                                         for m in by_seed.values())
        paired = [by_seed[k]["eval_loss"] - base[k]["eval_loss"] for k in by_seed if k in base]
        s["gap"], s["gap_std"] = common.mean_spread(paired) if paired else (math.nan, math.nan)
        out[label] = s
    return out


def run_axes(axes, seeds, overrides, *, recipe="tiny", smoke=False, runs_root=common.RUNS,
             verbose=True, only_finished=False, missing=None, regime=DEFAULT_REGIME,
             read=None) -> dict:
    """Train (or reuse) every run of `axes`; returns {axis: {label: {seed: run metrics}}}.
    `only_finished`: train nothing, use the finished runs (the others go to `missing`);
    `read` collects the run directories the results come from."""
    results: dict = {}
    jobs = plan(axes, seeds, overrides, recipe, smoke, runs_root, regime)
    for i, (axis, label, seed, cfg, run_dir) in enumerate(jobs, 1):
        if only_finished and not common.finished(cfg, run_dir):
            if missing is not None:
                missing.append(f"{axis}={label} seed {seed}")
            continue
        rows = common.train_or_reuse(cfg, run_dir, verbose=verbose,
                                     label=f"[{i}/{len(jobs)}] {axis}={label} seed {seed}")
        results.setdefault(axis, {}).setdefault(label, {})[seed] = run_metrics(rows)
        if read is not None and run_dir not in read:
            read.append(run_dir)
    return results


MOVED = 0.1  # distance of H_res from its initial map (Frobenius, mean over sites and tokens)
STAYS_DS = 0.1  # max doubly-stochastic column error over training


def choose_regime(summary: dict) -> tuple[str | None, str]:
    """The study regime from the `h_res_regime` axis: among variants whose H_res moved (mean
    distance from init at the end >= MOVED) and stayed doubly stochastic (max column error <=
    STAYS_DS, so the manifold's promise holds), the lowest mean eval loss. Returns (label or
    None, the rule in words)."""
    rule = (f"H_res learns = mean distance from its initial map at the end >= {MOVED}; stays on "
            f"the manifold = max DS column error <= {STAYS_DS}; among those, the lowest mean "
            "final eval loss")
    ok = {label: s for label, s in summary.items() if label != "residual"
          and s["dist_init_end"] >= MOVED and s["ds_col_err_max"] <= STAYS_DS}
    return (min(ok, key=lambda k: ok[k]["eval_loss"]) if ok else None), rule


def fmt(mean: float, std: float, digits: int = 3, n: int = 2) -> str:
    """mean ± std; the mean alone for a single seed (no spread to show)."""
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 else f"{mean:.{digits}f}"


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
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(summaries)
    fig, axes = plt.subplots(2, k, figsize=(3.6 * k, 6.4), squeeze=False)
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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--axis", default="all", help=f"all or a comma list of: {', '.join(AXES)}")
    p.add_argument("--seeds", default=",".join(map(str, DEFAULT_SEEDS)))
    p.add_argument("--recipe", default="tiny", help="base recipe; the micro overrides apply on top")
    p.add_argument("--out", default=None, help="default experiments/results/ablations, or "
                   "ablations_<regime> with --regime frozen|stress")
    p.add_argument("--runs", default=None, help="run directories (default: the shared "
                   "experiments/results/trained, one per config whatever the regime; with "
                   "--smoke: <out>/trained)")
    p.add_argument("--regime", choices=tuple(REGIMES), default=DEFAULT_REGIME,
                   help="H_res regime added to every mHC variant: study (default: "
                   f"{' '.join(common.STUDY_REGIME)}, where H_res learns in 200 steps), frozen "
                   f"(the library defaults: H_res ≈ I stays put), stress "
                   f"({' '.join(common.STRESS_REGIME)})")
    p.add_argument("--smoke", action="store_true", help="tiny model, 4 steps, 1 seed, 2 values")
    p.add_argument("--dry-run", action="store_true", help="print the runs, train nothing")
    p.add_argument("--only-finished", action="store_true",
                   help="train nothing: tabulate the finished runs and list the missing ones")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args(argv)
    axes = axis_names(args.axis)
    seeds = parse_seeds(args.seeds)
    overrides = [*common.MICRO_OVERRIDES, *args.overrides]
    if args.smoke:
        seeds = seeds[:1]
        overrides = [*common.MICRO_OVERRIDES, *common.SMOKE_OVERRIDES, *args.overrides]
    args.out = args.out or os.path.join(REPO, "experiments", "results", "ablations" + (
        "" if args.regime == DEFAULT_REGIME else f"_{args.regime}"))
    runs_root = args.runs or (os.path.join(args.out, "trained") if args.smoke else common.RUNS)
    if args.dry_run:
        for axis, label, seed, cfg, run_dir in plan(axes, seeds, overrides, args.recipe,
                                                    args.smoke, runs_root, args.regime):
            print(f"{axis:20s} {label:16s} seed {seed}  {cfg.model.residual} "
                  f"n={cfg.model.n_streams} {cfg.model.manifold} -> {os.path.relpath(run_dir)}")
        return 0
    common.enable_compile_cache()
    missing: list[str] = []
    read: list[str] = []
    results = run_axes(axes, seeds, overrides, recipe=args.recipe, smoke=args.smoke,
                       runs_root=runs_root, verbose=not args.smoke,
                       only_finished=args.only_finished, missing=missing, regime=args.regime,
                       read=read)
    axes = [a for a in axes if len(results.get(a, {})) > 1]  # something beside the baseline
    if not axes:
        raise SystemExit("no finished runs to tabulate; run without --only-finished first")
    summaries = {axis: summarize(results[axis]) for axis in axes}
    os.makedirs(args.out, exist_ok=True)
    plot(summaries, os.path.join(args.out, "ablations.png"))
    meta = {**common.provenance(read), "recipe": args.recipe, "seeds": list(seeds),
            "regime": args.regime,
            "overrides": overrides, "axes": axes, "missing": missing}
    common.write_json(os.path.join(args.out, "summary.json"),
                      {"meta": meta, "summary": summaries, "per_seed": results})
    regime = ("each variant's own (the h_res_regime axis adds no regime)"
              if axes == ["h_res_regime"] else
              f"{args.regime}: `{' '.join(REGIMES[args.regime]) or 'defaults'}`")
    lines = [f"# mHC ablations ({args.recipe} + micro overrides, seeds {list(seeds)}, H_res "
             f"regime {regime})", "",
             f"{meta['date']}, commit {meta['commit']}, {meta['device']}; {len(read)} runs "
             f"trained at commits {meta['runs_commits']}. Overrides: "
             f"`{' '.join(overrides)}`. Gap = eval loss − residual's, paired by seed "
             "(negative = mHC variant better); ± is the sample std over seeds.", ""]
    for axis in axes:
        lines += table(axis, summaries[axis]) + [""]
        if axis == "h_res_regime":
            choice, rule = choose_regime(summaries[axis])
            lines += [f"Study regime by the rule ({rule}): **{choice or 'none qualifies'}**.", ""]
    common.write_report(os.path.join(args.out, "summary.md"), lines, missing)
    return 0


if __name__ == "__main__":
    sys.exit(main())
