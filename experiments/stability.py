"""Stability study: residual vs HC vs mHC trained on the same data order and schedule, 5 seeds.

Writes, under --out: one run directory per kind and seed, `<kind>-s<seed>` (config.json,
provenance.json, metrics.jsonl, final checkpoint - not committed), a figure `stability.png` (loss,
grad norm, composite Amax gain over training, and the composite gain per site at the end; seed 0
drawn full, the others faint) and `summary.md` / `summary.json`: mean ± std over seeds beside the
paper's numbers. The same seed gives every kind the same data order, so kinds pair by seed.

The small scale trains the connections in the study regime (`study.runs.STUDY_REGIME`,
where H_res leaves its initialisation) with gradient clipping off, so that a gradient surge is
measured rather than clipped away.

    python -m experiments.stability                      # small recipe, 15 runs, ~2.5 h on 2 cores
    python -m experiments.stability --seeds 0            # one seed per kind (~30 min)
    python -m experiments.stability --no-train           # summarise the finished runs only
    python -m experiments.stability --smoke              # seconds: wiring check used by the tests
    python -m experiments.stability steps=1000 lr=6e-3   # any config override as key=value
    python -m experiments.stability --scale paper mesh=fsdp=64,expert=8   # 27B on hardware

A finished run of the same config is reused, so re-running only redraws the figure.
"""
from __future__ import annotations

import math
import os
import sys

import numpy as np

from study import flags, plots
from study.metrics import h_res_movement, mean_spread
from study.report import provenance, write_json, write_report
from study.runs import STUDY_REGIME
from study.stability import FLAGS, read_all, run_all, run_dirs, scale_setup, seeds_of

PAPER = {  # 27B model, arXiv 2512.24880 Figs. 3 and 7
    "hc": "composite Amax gain peaks near 3000",
    "mhc": "composite Amax gain at most about 1.6",
    "residual": "identity maps: gain 1",
}


def run_summary(rows: list[dict]) -> dict:
    """The numbers of one run: final losses, max grad norm and Amax gains over every step."""
    evals = [r for r in rows if "eval_loss" in r]
    final = rows[-1]
    return {
        "final_loss": final["loss"],
        "final_eval_loss": evals[-1]["eval_loss"] if evals else math.nan,
        "max_grad_norm": max(r["grad_norm"] for r in rows),
        "final_composite_fwd": final["amax_fwd"],
        "final_composite_bwd": final["amax_bwd"],
        "max_composite_fwd": max(r["amax_fwd_max"] for r in rows),
        "max_composite_bwd": max(r["amax_bwd_max"] for r in rows),
        "max_layer_fwd": max(r["layer_amax_fwd_max"] for r in rows),
        "max_layer_bwd": max(r["layer_amax_bwd_max"] for r in rows),
        "max_ds_col_err": max(r["ds_col_err_max"] for r in rows),
        **h_res_movement(rows),
    }


def summarize(results: dict) -> dict:
    """{kind: {quantity: [mean, std over seeds], "seeds": [...], "per_seed": {seed: run}}}."""
    summary = {}
    for kind, by_seed in results.items():
        per_seed = {seed: run_summary(rows) for seed, rows in by_seed.items()}
        keys = next(iter(per_seed.values())).keys()
        summary[kind] = {key: list(mean_spread(run[key] for run in per_seed.values()))
                         for key in keys}
        summary[kind].update(seeds=sorted(per_seed), per_seed=per_seed)
    return summary


def plot(results: dict, path: str):
    fig, axes = plots.pyplot().subplots(1, 4, figsize=(20, 4.2))
    colors = {"residual": "tab:gray", "hc": "tab:red", "mhc": "tab:blue", "mhc_lite": "tab:green"}
    for kind, by_seed in results.items():
        c = colors.get(kind)
        for i, (seed, rows) in enumerate(sorted(by_seed.items())):
            steps = [r["step"] for r in rows]
            style = dict(color=c, lw=1, alpha=1.0 if i == 0 else 0.3)
            tag = (lambda text: f"{text}, seed {seed}") if i == 0 else (lambda text: None)
            axes[0].plot(steps, [r["loss"] for r in rows], label=tag(kind), **style)
            axes[1].plot(steps, [r["grad_norm"] for r in rows], label=tag(kind), **style)
            axes[2].plot(steps, [r["amax_fwd_max"] for r in rows], label=tag(f"{kind} fwd"),
                         **style)
            axes[2].plot(steps, [r["amax_bwd_max"] for r in rows], ls="--",
                         label=tag(f"{kind} bwd"), **style)
            last = [r for r in rows if "layers" in r][-1]["layers"]
            sites = np.arange(1, len(last["composite_fwd"]) + 1)
            axes[3].plot(sites, last["composite_fwd"], marker="o", ms=3,
                         label=tag(f"{kind} fwd"), **style)
            axes[3].plot(sites, last["composite_bwd"], ls="--", label=tag(f"{kind} bwd"),
                         **style)
    axes[0].set(title="training loss", xlabel="step", ylabel="cross-entropy (nats/byte)")
    axes[1].set(title="gradient norm (clipping off)", xlabel="step", yscale="log")
    axes[2].set(title="max composite Amax gain over depth", xlabel="step", yscale="log")
    axes[3].set(title="composite Amax gain per site (end)", xlabel="site (2 per block)",
                yscale="log")
    plots.style(axes, 7)
    plots.savefig(fig, path)


COLUMNS = (  # (header, quantity, format) of the summary table; each cell is mean ± std
    ("final loss", "final_loss", ".3f"), ("final eval", "final_eval_loss", ".3f"),
    ("max grad norm", "max_grad_norm", ".3g"),
    ("max composite fwd", "max_composite_fwd", ".3g"),
    ("max composite bwd", "max_composite_bwd", ".3g"),
    ("max single-site fwd", "max_layer_fwd", ".3g"),
    ("max single-site bwd", "max_layer_bwd", ".3g"),
    ("max DS column error", "max_ds_col_err", ".2g"),
    ("H_res off-diagonal mass start", "offdiag_start", ".3f"),
    ("end", "offdiag_end", ".3f"), ("H_res distance from init (end)", "dist_init_end", ".3f"))


def write_summary(summary: dict, meta: dict, path_md: str, path_json: str):
    write_json(path_json, {"meta": meta, "summary": summary})
    seeds = sorted({s for k in summary.values() for s in k["seeds"]})
    lines = [f"# Stability: {', '.join(summary)} ({meta['recipe']}, {meta['steps']} steps, "
             f"seeds {', '.join(map(str, seeds))})", "",
             f"`{meta['command']}` on {meta['date']}, commit {meta['commit']}, {meta['device']}; "
             f"runs trained at commits {meta['runs_commits']}. Overrides (every kind): "
             f"`{' '.join(meta['overrides']) or 'none'}`; connection regime: "
             f"`{' '.join(meta['regime']) or 'none'}`.", "",
             "Each cell: mean ± std over the seeds; maxima are over every logged step.", "",
             "| kind | seeds | " + " | ".join(h for h, _, _ in COLUMNS) + " | paper (27B) |",
             "|---|---|" + "---|" * len(COLUMNS) + "---|"]
    for kind, s in summary.items():
        cells = [f"{s[key][0]:{fmt}} ± {s[key][1]:{fmt}}" for _, key, fmt in COLUMNS]
        lines.append(f"| {kind} | {len(s['seeds'])} | " + " | ".join(cells)
                     + f" | {PAPER.get(kind, '')} |")
    return write_report(path_md, lines)


# the committed runs keep no checkpoints: retraining them to redraw the summary would replace them
NO_TRAIN = flags.flag("no-train", help="summarise the finished runs in --out (metrics only); "
                                      "exit naming a missing one instead of training it")


def main(argv=None) -> int:
    args = flags.parser(__doc__, *FLAGS, NO_TRAIN,
                        out="experiments/results/stability").parse_args(argv)
    recipe, overrides = scale_setup(args.scale, args.smoke, args.overrides)
    kinds, seeds = args.kinds, seeds_of(args)
    os.makedirs(args.out, exist_ok=True)
    results = (read_all(recipe, kinds, seeds, overrides, args.out) if args.no_train else
               run_all(recipe, kinds, seeds, overrides, args.out, verbose=not args.smoke))
    summary = summarize(results)
    plot(results, os.path.join(args.out, "stability.png"))
    meta = {**provenance(run_dirs(args.out, results)), "recipe": recipe,
            "steps": results[kinds[0]][seeds[0]][-1]["step"], "overrides": overrides,
            "regime": list(STUDY_REGIME), "seeds": list(seeds),
            "command": " ".join(["python", "-m", "experiments.stability",
                                 *(argv or sys.argv[1:])])}
    write_summary(summary, meta, os.path.join(args.out, "summary.md"),
                  os.path.join(args.out, "summary.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
