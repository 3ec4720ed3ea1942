"""Stability study: residual vs HC vs mHC trained on the same data, seed and schedule.

Writes, under --out: one run directory per kind (config.json, metrics.jsonl, checkpoint), a
figure `stability.png` (loss, grad norm, composite Amax gain over training, and the composite
gain per layer at the end) and `summary.md` / `summary.json` with the paper's numbers beside ours.

    python experiments/stability.py                      # small recipe, ~25 min on 2 CPU cores
    python experiments/stability.py --smoke              # seconds: wiring check used by the tests
    python experiments/stability.py steps=1000 lr=6e-3   # any config override as key=value
    python experiments/stability.py --scale paper mesh=fsdp=64,expert=8   # 27B on hardware

A finished run of the same config is reused, so re-running only redraws the figure.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from experiments.common import (SMOKE_OVERRIDES, h_res_movement, make_config,  # noqa: E402
                                provenance, train_or_reuse)

KINDS = ("residual", "hc", "mhc")
PAPER = {  # 27B model, arXiv 2512.24880 Figs. 3 and 7
    "hc": "composite Amax gain peaks near 3000",
    "mhc": "composite Amax gain at most about 1.6",
    "residual": "identity maps: gain 1",
}


def run_all(recipe: str, kinds, steps, overrides, out_dir, *, verbose=True) -> dict:
    """Metrics rows per kind, trained into `out_dir/<kind>` (a finished run of the same config
    is reused, so the paper_repro figures built on this study train it once)."""
    results = {}
    for kind in kinds:
        cfg = make_config(recipe, [f"residual={kind}", *([f"steps={steps}"] if steps else []),
                                   *overrides])
        results[kind] = train_or_reuse(cfg, os.path.join(out_dir, kind), verbose=verbose,
                                       label=kind)
    return results


def summarize(results: dict) -> dict:
    summary = {}
    for kind, rows in results.items():
        final = rows[-1]
        evals = [r for r in rows if "eval_loss" in r]
        summary[kind] = {
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
    return summary


def plot(results: dict, path: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(20, 4.2))
    colors = {"residual": "tab:gray", "hc": "tab:red", "mhc": "tab:blue", "mhc_lite": "tab:green"}
    for kind, rows in results.items():
        steps = [r["step"] for r in rows]
        c = colors.get(kind)
        axes[0].plot(steps, [r["loss"] for r in rows], color=c, label=kind, lw=1)
        axes[1].plot(steps, [r["grad_norm"] for r in rows], color=c, label=kind, lw=1)
        axes[2].plot(steps, [r["amax_fwd_max"] for r in rows], color=c, label=f"{kind} fwd")
        axes[2].plot(steps, [r["amax_bwd_max"] for r in rows], color=c, ls="--",
                     label=f"{kind} bwd")
        last = [r for r in rows if "layers" in r][-1]["layers"]
        sites = np.arange(1, len(last["composite_fwd"]) + 1)
        axes[3].plot(sites, last["composite_fwd"], color=c, marker="o", ms=3, label=f"{kind} fwd")
        axes[3].plot(sites, last["composite_bwd"], color=c, ls="--", label=f"{kind} bwd")
    axes[0].set(title="training loss", xlabel="step", ylabel="cross-entropy (nats/byte)")
    axes[1].set(title="gradient norm (before clipping)", xlabel="step", yscale="log")
    axes[2].set(title="max composite Amax gain over depth", xlabel="step", yscale="log")
    axes[3].set(title="composite Amax gain per site (end)", xlabel="site (2 per block)",
                yscale="log")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_summary(summary: dict, meta: dict, path_md: str, path_json: str):
    with open(path_json, "w") as f:
        json.dump({"meta": meta, "summary": summary}, f, indent=2)
    lines = [f"# Stability: {', '.join(summary)} ({meta['recipe']}, {meta['steps']} steps, "
             f"overrides: {' '.join(meta['overrides']) or 'none'})", "",
             f"`{meta['command']}` on {meta['date']}, commit {meta['commit']}, {meta['device']}; "
             f"runs trained at commits {meta['runs_commits']}.", "",
             "| kind | final loss | final eval | max grad norm | composite gain fwd / bwd (end) "
             "| max composite fwd / bwd | max single-layer fwd / bwd | H_res off-diagonal mass "
             "start → end | H_res distance from init (end) | paper (27B) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for kind, s in summary.items():
        lines.append(
            f"| {kind} | {s['final_loss']:.3f} | {s['final_eval_loss']:.3f} | "
            f"{s['max_grad_norm']:.2f} | {s['final_composite_fwd']:.3g} / "
            f"{s['final_composite_bwd']:.3g} | {s['max_composite_fwd']:.3g} / "
            f"{s['max_composite_bwd']:.3g} | {s['max_layer_fwd']:.3g} / {s['max_layer_bwd']:.3g} "
            f"| {s['offdiag_start']:.3f} → {s['offdiag_end']:.3f} | {s['dist_init_end']:.3f} "
            f"| {PAPER.get(kind, '')} |")
    with open(path_md, "w") as f:
        f.write("\n".join(lines) + "\n")
    return "\n".join(lines)


# The documented small scale (README): 12 blocks = 24 sites, C = 128, 300 steps on 2 CPU cores.
SMALL = ("small", ("steps=300", "lr=4e-3", "warmup_steps=30", "eval_every=50", "log_every=25",
                   "wandb=disabled"))
PAPER_SCALE = ("27b", ("wandb=disabled",))  # Table 5's 27B; add mesh=... for the hardware


def scale_setup(scale: str, smoke: bool, overrides=()) -> tuple[str, list[str]]:
    """(recipe, overrides) of the study at a scale: "small" (CPU minutes), "paper" (27B), or the
    few-second smoke check; user overrides come last."""
    if smoke:
        return "tiny", [*SMOKE_OVERRIDES, *overrides]
    recipe, base = {"small": SMALL, "paper": PAPER_SCALE}[scale]
    return recipe, [*base, *overrides]


def add_scale_args(p: argparse.ArgumentParser, out: str) -> None:
    p.add_argument("--scale", choices=("small", "paper"), default="small",
                   help="small: CPU minutes (default); paper: the 27B recipe (pass mesh=...)")
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--out", default=out)
    p.add_argument("--smoke", action="store_true", help="tiny model, 4 steps (wiring check)")
    p.add_argument("overrides", nargs="*", metavar="key=value")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_scale_args(p, "experiments/results/stability")
    args = p.parse_args(argv)
    recipe, overrides = scale_setup(args.scale, args.smoke, args.overrides)
    kinds = [k for k in args.kinds.split(",") if k]
    os.makedirs(args.out, exist_ok=True)
    results = run_all(recipe, kinds, None, overrides, args.out, verbose=not args.smoke)
    summary = summarize(results)
    plot(results, os.path.join(args.out, "stability.png"))
    meta = {**provenance([os.path.join(args.out, k) for k in kinds]), "recipe": recipe,
            "steps": results[kinds[0]][-1]["step"], "overrides": overrides,
            "command": " ".join(["python", "experiments/stability.py", *(argv or sys.argv[1:])])}
    table = write_summary(summary, meta, os.path.join(args.out, "summary.md"),
                          os.path.join(args.out, "summary.json"))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
