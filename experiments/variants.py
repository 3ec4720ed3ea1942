"""Every published successor of mHC under one model, data, seeds and diagnostics.

Variants (each one flag on top of the micro config, `study.runs.MICRO_OVERRIDES`), all in the
CPU studies' H_res regime `study.runs.STUDY_REGIME`, a soft identity: mHC-lite and KromHC translated to
start from Sinkhorn's H_res or its diagonal, sHC's σ logit chosen to give Sinkhorn's start
exactly, go-mHC a constant Θ with Sinkhorn's starting diagonal (its zero init, H = I exactly, is
an exact saddle; it is run too, as "go_mhc zero init", without the regime):
  residual      the baseline (x + F(x))
  hc            Hyper-Connections, unconstrained H_res (arXiv 2409.19606)
  mhc           mHC, Sinkhorn 20 iterations (arXiv 2512.24880)
  mhc_lite      convex hull of the n! permutations, exact (arXiv 2601.05732)
  kromhc        Kronecker product of 2x2 doubly stochastic factors (arXiv 2601.21579)
  go_mhc        generalized orthostochastic, block size 2 (arXiv 2604.02309)
  shc           spectral sphere: unit row/column sums, spectral norm 1, entries may be
                negative (arXiv 2603.20896)
  sinkhorn_cap2 range-capped Sinkhorn, cap 2 (RRCS)
  single_pass   DeepSeek-V4.1's single-pass mHC (the previous site's H_pre reads the streams)
and at n = 8 and 16 (where mHC-lite's n! logits are out of reach) KromHC against Sinkhorn.

Per variant: final eval loss and its gap to the residual and to mHC (paired by seed, mean ± std,
the verdict rule of `study.verdict`), H_res movement, max composite Amax gain, the max
doubly-stochastic column error and negative mass, parameters of the connections, and the step
time and compiled temporary memory of one training step relative to the residual, measured side
by side in one process (interleaved rounds). Writes `experiments/results/variants/`.

    python -m experiments.variants                 # 5 seeds; finished runs are reused
    python -m experiments.variants --only-finished # tabulate what exists, train nothing
    python -m experiments.variants --smoke --out /tmp/variants
"""
from __future__ import annotations

import math
import os
import sys

import numpy as np

from study import REPO, ablations, flags, plots
from study.metrics import mean_spread
from study.report import provenance, runs_line, write_summary
from study.runs import (MICRO_OVERRIDES, RUNS, SMOKE_OVERRIDES, STUDY_REGIME, enable_compile_cache,
                        finished, make_config, regime_overrides, run_dir_for, runs_root,
                        train_or_reuse)
from study.verdict import RULE, seeded_verdict

MHC = ("residual=mhc",)
# (label, overrides, source); the baselines first
VARIANTS = (
    ("residual", ("residual=residual",), "baseline"),
    ("hc", ("residual=hc",), "Hyper-Connections, arXiv 2409.19606"),
    ("mhc", MHC, "mHC, arXiv 2512.24880"),
    ("mhc_lite", ("residual=mhc_lite",), "mHC-lite, arXiv 2601.05732"),
    ("kromhc", (*MHC, "manifold=kromhc"), "KromHC, arXiv 2601.21579"),
    ("go_mhc", (*MHC, "manifold=go_mhc"), "go-mHC, arXiv 2604.02309"),
    ("go_mhc zero init", (*MHC, "manifold=go_mhc"), "go-mHC, the zero init of a port"),
    ("shc", (*MHC, "manifold=spectral_sphere"), "sHC, arXiv 2603.20896"),
    ("sinkhorn_cap2", (*MHC, "sinkhorn_range_cap=2"), "range-capped Sinkhorn (RRCS)"),
    ("single_pass", (*MHC, "single_pass=true"), "DeepSeek-V4.1 single-pass mHC"),
)
WIDE = tuple((f"{label} n={n}", (*ov, f"n_streams={n}"), source)
             for n in (8, 16) for label, ov, source in VARIANTS if label in ("mhc", "kromhc"))
NO_REGIME = ("go_mhc zero init",)  # run at the variant's own init
DEFAULT_SEEDS = (0, 1, 2, 3, 4)  # the gaps against mHC are headline claims: 5 seeds
METRICS = (*ablations.METRICS, "ds_neg_mass_max")
FLAGS = (flags.flag("seeds", default=",".join(map(str, DEFAULT_SEEDS)), help=None), "out",
         flags.flag("runs", help="run directories (default: the shared experiments/results/"
                                 "trained; with --smoke: <out>/trained)"),
         flags.flag("smoke", help="tiny model, 4 steps, 1 seed, 4 variants"), "dry-run",
         "only-finished",
         flags.flag("--no-costs", action="store_true", help="skip the step-time / memory timing"),
         "overrides")


def plan(seeds, base_overrides, runs_root=RUNS, smoke=False):
    """[(label, seed, cfg, run_dir)] of every variant (and the wide ones), nothing trained."""
    variants = VARIANTS if smoke else VARIANTS + WIDE
    if smoke:  # the wiring of every kind of variant in seconds
        variants = [v for v in VARIANTS if v[0] in ("residual", "mhc", "shc", "single_pass")]
    out = []
    for label, ov, _ in variants:
        if label not in NO_REGIME:
            ov = (*ov, *regime_overrides((*base_overrides, *ov)))
        for seed in seeds:
            cfg = make_config("tiny", [*base_overrides, *ov, f"seed={seed}"])
            out.append((label, seed, cfg, run_dir_for(cfg, runs_root)))
    return out


def run_metrics(rows: list[dict]) -> dict:
    return {**ablations.run_metrics(rows),
            "ds_neg_mass_max": max(r.get("ds_neg_mass_max", math.nan) for r in rows)}


def summarize(per_seed: dict) -> dict:
    """`ablations.summarize` (gap to the residual) plus the gap to mHC, paired by seed, and the
    per-seed gaps the verdicts use."""
    out = ablations.summarize(per_seed)
    for reference in ("residual", "mhc"):
        base = per_seed.get(reference, {})
        for label, by_seed in per_seed.items():
            gaps = [by_seed[k]["eval_loss"] - base[k]["eval_loss"] for k in sorted(by_seed)
                    if k in base]
            out[label][f"gaps_vs_{reference}"] = gaps
            if reference == "mhc":
                out[label]["gap_mhc"], out[label]["gap_mhc_std"] = (
                    mean_spread(gaps) if gaps else (math.nan, math.nan))
    for label, by_seed in per_seed.items():
        negative = [m["ds_neg_mass_max"] for m in by_seed.values()
                    if not math.isnan(m.get("ds_neg_mass_max", math.nan))]
        out[label]["ds_neg_mass_max"] = max(negative) if negative else math.nan
    return out


def costs(cfgs: dict, rounds: int = 5, steps: int = 5, timed=None) -> dict:
    """{label: {"params": connection parameters, "step_ms", "temp_mb"}} of one training step
    of each config, compiled and timed side by side in this process; `timed`: the labels
    compiled and timed (default all; the others get their parameter count only)."""
    import jax

    from study.step_time import build, time_interleaved
    runs, out = {}, {}
    for label, cfg in cfgs.items():
        compile_it = timed is None or label in timed
        step, state, batch = build(cfg, abstract=not compile_it)
        params = state[0]
        hc = [leaf.size for path, leaf in jax.tree_util.tree_leaves_with_path(params)
              if any(getattr(k, "key", None) in ("attn_hc", "ffn_hc") for k in path)]
        out[label] = {"params": int(sum(hc))}
        if not compile_it:
            continue
        compiled = step.lower(state, batch).compile()
        out[label]["temp_mb"] = compiled.memory_analysis().temp_size_in_bytes / 2**20
        runs[label] = [compiled, state, batch]
    for label, ms in time_interleaved(runs, rounds, steps).items():
        out[label]["step_ms"] = ms
    return out


def learns(label: str, s: dict) -> str:
    """Whether the mechanism under study is active: H_res's mean distance from its initial map
    at the end is at least `ablations.MOVED` (the residual has no H_res)."""
    if label == "residual":
        return "–"
    return "yes" if s["dist_init_end"] >= ablations.MOVED else "**no**"


def frozen_note(summary: dict) -> list[str]:
    frozen = [label for label, s in summary.items() if learns(label, s) == "**no**"]
    if not frozen:
        return []
    return [f"H_res did not learn (distance from its initial map < {ablations.MOVED}) for: "
            f"{', '.join(frozen)}. Their rows compare learned H_pre / H_post with an H_res that "
            f"stayed at its start, not the variant's mixing; go-mHC's zero init is an exact "
            f"saddle (zero gradient, `tests/test_manifolds.py`).", ""]


def lite_note(width: int) -> str:
    """What mHC-lite would cost at the widths KromHC is run at (its n! residual logits)."""
    from mhc import manifolds
    parts = []
    for n in (4, 8, 16):
        per_site = n * width * (2 * n + manifolds.get("mhc_lite").num_logits(n))
        kron = n * width * (2 * n + manifolds.get("kromhc").num_logits(n))
        parts.append(f"n = {n}: mHC-lite {per_site:.3g} vs KromHC {kron:,} phi entries per site")
    return ("mHC-lite is not run at n = 8 and 16: its phi is nC x (2n + n!) per site (" +
            "; ".join(parts) + f", at C = {width}).")


def _fmt(mean, std, n, digits=3):
    return ablations.fmt(mean, std, digits, n) if not math.isnan(mean) else "–"


def table(summary: dict, cost: dict, sources: dict) -> list[str]:
    res_ms = cost.get("residual", {}).get("step_ms")
    res_mb = cost.get("residual", {}).get("temp_mb")
    lines = ["| variant | source | seeds | final eval loss | gap vs residual | verdict: below "
             "the residual | gap vs mHC | verdict: below mHC | H_res off-diagonal start → end "
             "| distance from init | H_res learns? | max composite Amax fwd / bwd | max DS column error / "
             "negative mass | connection params | step time / memory vs residual |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, s in summary.items():
        n = len(s["seeds"])
        c = cost.get(label, {})
        ratio = (f"{c['step_ms'] / res_ms:.2f}x / {c['temp_mb'] / res_mb:.2f}x"
                 if "step_ms" in c and res_ms else "–")
        vs_res = seeded_verdict(s["gaps_vs_residual"], -1) if label != "residual" else "–"
        vs_mhc = (seeded_verdict(s["gaps_vs_mhc"], -1, headline=True)
                  if label not in ("residual", "mhc") and s["gaps_vs_mhc"] else "–")
        neg = s["ds_neg_mass_max"]
        lines.append(
            f"| {label} | {sources[label]} | {n} | {_fmt(s['eval_loss'], s['eval_loss_std'], n)}"
            f" | {_fmt(s['gap'], s['gap_std'], n)} | {vs_res} | "
            f"{_fmt(s['gap_mhc'], s['gap_mhc_std'], n)} | {vs_mhc} | "
            f"{s['offdiag_start']:.3f} → {_fmt(s['offdiag_end'], s['offdiag_end_std'], n)} | "
            f"{_fmt(s['dist_init_end'], s['dist_init_end_std'], n)} | {learns(label, s)} | "
            f"{s['amax_fwd_max']:.3g} / {s['amax_bwd_max']:.3g} | "
            f"{s['ds_col_err_max']:.2g} / {'–' if not np.isfinite(neg) else f'{neg:.2g}'} | "
            f"{c.get('params', '–')} | {ratio} |")
    return lines


def plot(summary: dict, cost: dict, path: str) -> None:
    labels = [lab for lab in summary if lab != "residual"]
    x = np.arange(len(labels))
    fig, axes = plots.pyplot().subplots(1, 3, figsize=(15, 4.2))
    axes[0].bar(x, [summary[lab]["gap"] for lab in labels],
                yerr=[summary[lab]["gap_std"] for lab in labels], capsize=3, color="tab:blue")
    axes[0].axhline(0, color="tab:gray", lw=1)
    axes[0].set(title="eval loss − residual (mean ± std over seeds)")
    axes[1].bar(x, [summary[lab]["dist_init_end"] for lab in labels], color="tab:green")
    axes[1].set(title="H_res distance from its initial map (end)")
    res_ms = cost.get("residual", {}).get("step_ms")
    axes[2].bar(x, [cost.get(lab, {}).get("step_ms", math.nan) / res_ms if res_ms else math.nan
                    for lab in labels], color="tab:orange")
    axes[2].axhline(1, color="tab:gray", lw=1)
    axes[2].set(title="step time vs residual (one process, interleaved)")
    for ax in axes:
        ax.set_xticks(x, labels, rotation=35, fontsize=8, ha="right")
        ax.grid(alpha=0.3, axis="y")
    plots.savefig(fig, path)


def train(jobs, args) -> tuple[dict, list[str], list[str], dict]:
    """({label: {seed: run metrics}}, the runs not finished with --only-finished, the run
    directories read, {label: config}) of the planned `jobs`."""
    per_seed, missing, read, cfgs = {}, [], [], {}
    for i, (label, seed, cfg, run_dir) in enumerate(jobs, 1):
        cfgs.setdefault(label, cfg)
        if args.only_finished and not finished(cfg, run_dir):
            missing.append(f"{label} seed {seed}")
            continue
        rows = train_or_reuse(cfg, run_dir, verbose=not args.smoke,
                              label=f"[{i}/{len(jobs)}] {label} seed {seed}")
        per_seed.setdefault(label, {})[seed] = run_metrics(rows)
        read.append(run_dir)
    if "residual" not in per_seed:
        raise SystemExit("no finished residual runs to compare with; run without "
                         "--only-finished first")
    return per_seed, missing, read, cfgs


def report(out, per_seed, missing, read, cfgs, seeds, overrides, cost) -> None:
    """The figure, summary.json and summary.md of {label: {seed: run metrics}} and the costs."""
    summary = summarize(per_seed)
    sources = {label: source for label, _, source in VARIANTS + WIDE}
    os.makedirs(out, exist_ok=True)
    plot(summary, cost, os.path.join(out, "variants.png"))
    meta = {**provenance(read), "seeds": list(seeds), "overrides": overrides,
            "regime": list(STUDY_REGIME), "missing": missing}
    lines = [f"# mHC and its successors (micro config, seeds {list(seeds)}, H_res regime "
             f"`{' '.join(STUDY_REGIME)}`)", "",
             f"{runs_line(meta, len(read))} Overrides: `{' '.join(overrides)}`. "
             "Gaps are eval loss minus the reference's, paired by seed (negative = better); "
             "± is the sample std over seeds. Step time and compiled temporary memory: one "
             "training step of each config in one process, median of interleaved rounds. "
             "Negative mass: the largest sum of negative H_res entries over tokens and steps "
             "(0 on the Birkhoff polytope; \"–\" for runs that predate the metric). sHC keeps "
             "row and column sums exactly 1 but is not doubly stochastic by design.", "", RULE, ""]
    lines += table(summary, cost, sources) + [""] + frozen_note(summary)
    lines += [lite_note(cfgs["residual"].model.d_model), ""]
    write_summary(out, meta, {"summary": summary, "costs": cost, "per_seed": per_seed}, lines,
                  missing)


def main(argv=None) -> int:
    args = flags.parser(__doc__, *FLAGS,
                        out=os.path.join(REPO, "experiments", "results", "variants")
                        ).parse_args(argv)
    seeds, overrides = args.seeds, [*MICRO_OVERRIDES, *args.overrides]
    if args.smoke:
        seeds, overrides = seeds[:1], [*overrides, *SMOKE_OVERRIDES]
    jobs = plan(seeds, overrides, runs_root(args.runs, args.out, args.smoke), args.smoke)
    if args.dry_run:
        for label, seed, cfg, run_dir in jobs:
            print(f"{label:16s} seed {seed}  -> {os.path.relpath(run_dir)}")
        return 0
    enable_compile_cache()
    per_seed, missing, read, cfgs = train(jobs, args)
    # --smoke (a wiring check) compiles and times the residual and mHC (the ratios' base and
    # one variant) and counts every variant's parameters: 2 step compiles instead of 4
    cost = {} if args.no_costs else costs({k: v for k, v in cfgs.items() if k in per_seed},
                                          rounds=2 if args.smoke else 5,
                                          timed=("residual", "mhc") if args.smoke else None)
    report(args.out, per_seed, missing, read, cfgs, seeds, overrides, cost)
    return 0


if __name__ == "__main__":
    sys.exit(main())
