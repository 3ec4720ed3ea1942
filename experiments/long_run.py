"""One long deep run of HC against mHC near HC's edge of stability: does HC's gain compound?

30 blocks (the paper's 60 sites), a constant learning rate after warmup, clipping off, the same
data order and seed for both kinds, 2000 steps; the composite Amax gain is logged every step
and the per-site maps every 10 (the committed record keeps them every LAYER_EVERY steps). The
paper (arXiv 2512.24880, Figs. 2-3) reports HC's composite gain near 3000 and a loss surge with a
grad-norm spike at 27B; this asks whether the mechanism appears at CPU scale when the learning
rate is pushed to where the LR-sensitivity study (`experiments/lr_sensitivity.py`) finds HC's
largest stable LR.

Reported per kind: max composite and single-site Amax gain forward / backward over all steps
(and the step of the peak), whether it compounded (max composite gain ≥ 100, against single
sites near 1-3), loss-spike events, max grad norm, final eval loss; and the HC − mHC loss gap
over training.

    python -m experiments.long_run --lr 0.01                 # ~30 min per kind on 2 idle cores
    python -m experiments.long_run --lr 0.01 steps=500       # shorter
    python -m experiments.long_run --smoke --out /tmp/long
"""
from __future__ import annotations

import math
import os
import sys

import numpy as np

from study import REPO, flags, plots
from study.report import provenance, runs_commits, write_summary
from study.runs import (RECORDS, SMOKE_OVERRIDES, compact_run, enable_compile_cache, make_config,
                        recorded, regime_overrides, runs_root, train_or_resume, write_record)

KINDS = ("hc", "mhc")
WARMUP = 100  # steps; the grad-norm peak is also reported after them (spikes, not the start)
BASE = ("n_layers=30", "d_model=64", "n_heads=4", "d_ff=192", "seq_len=64", "batch_size=8",
        "steps=2000", f"warmup_steps={WARMUP}", "lr_schedule=constant", "grad_clip=0",
        "nan_patience=2001", "eval_every=200", "eval_batches=8", "log_every=10",
        "checkpoint=true", "checkpoint_every=200", "keep_last=1", "wandb=disabled",
        "dtype=float32")
KEEP = ("step", "loss", "eval_loss", "grad_norm", "lr", "skipped", "amax_fwd", "amax_bwd",
        "amax_fwd_max", "amax_bwd_max", "layer_amax_fwd_max", "layer_amax_bwd_max",
        "ds_col_err_max", "h_res_offdiag", "h_res_dist_init")
LAYER_KEYS = ("amax_fwd", "amax_bwd", "composite_fwd", "composite_bwd", "res_offdiag")
COMPOUNDED = 100.0  # the line: a composite gain of 100 or more has compounded
LAYER_EVERY = 100  # per-site arrays kept in the record every this many steps (scalars: every step)
FLAGS = (flags.flag("--lr", type=float, required=True,
                    help="constant LR (near HC's largest stable LR at 30 blocks)"),
         flags.flag("--seed", type=int, default=0), "out",
         flags.flag("runs", help="where runs train (default runs/long_run)"), "smoke", "overrides")


def summarize(record: dict) -> dict:
    rows = record["rows"]
    finite = lambda k: [(r["step"], r[k]) for r in rows if k in r and math.isfinite(r[k])]  # noqa: E731
    out = {}
    for key in ("amax_fwd_max", "amax_bwd_max", "layer_amax_fwd_max", "layer_amax_bwd_max",
                "grad_norm"):
        pts = finite(key)
        step, value = max(pts, key=lambda p: p[1]) if pts else (None, math.nan)
        out[key] = value
        out[key + "_step"] = step
    warm = [(st, v) for st, v in finite("grad_norm") if st > WARMUP]
    out["grad_norm_after_warmup_step"], out["grad_norm_after_warmup"] = (
        max(warm, key=lambda p: p[1]) if warm else (None, math.nan))
    evals = finite("eval_loss")
    out["final_eval_loss"] = evals[-1][1] if evals else math.nan
    out["spikes"], out["nonfinite"] = record["events"]["loss_spike"], record["events"]["nonfinite"]
    out["compounded"] = bool(max(out["amax_fwd_max"], out["amax_bwd_max"]) >= COMPOUNDED)
    return out


def gap_lines(records: dict) -> list[str]:
    """HC − mHC loss over training: the training loss in windows of a tenth of the run, and the
    eval loss at each eval (one seed: a description, not a verdict)."""
    hc, mh = ({r["step"]: r for r in records[k]["rows"]} for k in KINDS)
    steps = sorted(set(hc) & set(mh))
    tenth = max(1, len(steps) // 10)
    train = [np.mean([hc[st]["loss"] - mh[st]["loss"] for st in steps[i:i + tenth]])
             for i in range(0, len(steps), tenth)]
    evals = [(st, hc[st]["eval_loss"] - mh[st]["eval_loss"]) for st in steps
             if "eval_loss" in hc[st] and "eval_loss" in mh[st]]
    return [f"HC − mHC training loss, mean over each tenth of the run (steps 1..{steps[-1]}): "
            + ", ".join(f"{g:+.4f}" for g in train) + ".", "",
            "HC − mHC eval loss at each eval (step: gap): "
            + ", ".join(f"{st}: {g:+.4f}" for st, g in evals) + ".", "",
            "One seed, one pair of runs: these describe the pair; the verdict rule needs 3 seeds "
            "(the LR-sensitivity study has them)."]


def plot(records: dict, path: str) -> None:
    fig, axes = plots.pyplot().subplots(2, 2, figsize=(12, 8))
    for kind, rec in records.items():
        rows = rec["rows"]
        steps = [r["step"] for r in rows]
        axes[0, 0].plot(steps, [r["loss"] for r in rows], lw=0.8, label=kind)
        axes[0, 1].plot(steps, [r["grad_norm"] for r in rows], lw=0.8, label=kind)
        axes[1, 0].plot(steps, [r["amax_fwd_max"] for r in rows], lw=0.8, label=f"{kind} fwd")
        axes[1, 0].plot(steps, [r["amax_bwd_max"] for r in rows], "--", lw=0.8,
                        label=f"{kind} bwd")
        layered = [r for r in rows if "layers" in r]
        if layered:
            peak = max(layered, key=lambda r: max(r["layers"]["composite_fwd"]))
            sites = np.arange(1, len(peak["layers"]["composite_fwd"]) + 1)
            axes[1, 1].plot(sites, peak["layers"]["composite_fwd"], "o-", ms=2,
                            label=f"{kind} composite fwd, step {peak['step']}")
    if set(KINDS) <= set(records):
        hc, mh = ({r["step"]: r["loss"] for r in records[k]["rows"]} for k in KINDS)
        common_steps = sorted(set(hc) & set(mh))
        raw = np.array([hc[s] - mh[s] for s in common_steps])
        gap = np.convolve(raw, np.ones(20) / 20, mode="full")[:raw.size]  # trailing mean
        twin = axes[0, 0].twinx()
        twin.plot(common_steps, gap, color="tab:red", lw=0.8)
        twin.set_ylabel("HC − mHC loss (20-step mean)", color="tab:red")
    axes[0, 0].set(title="training loss", xlabel="step")
    axes[0, 1].set(title="grad norm (no clipping)", xlabel="step", yscale="log")
    axes[1, 0].set(title="max composite Amax gain over depth", xlabel="step", yscale="log")
    axes[1, 1].set(title="composite gain per site at its peak", xlabel="site", yscale="log")
    plots.style(axes.flat, 7, loc="upper left", which="both")
    plots.savefig(fig, path)


def train(args, base) -> dict:
    """{kind: compact record} of the HC and mHC runs: a committed record of the same overrides is
    the finished run; otherwise the run trains (or resumes) in --runs and its record is written
    to OUT/records."""
    root = runs_root(args.runs, args.out, args.smoke, os.path.join(REPO, "runs", "long_run"))
    enable_compile_cache()
    records = {}
    for kind in KINDS:
        kind_ov = (f"residual={kind}",)
        overrides = [*base, *kind_ov, *regime_overrides(kind_ov)]
        cfg = make_config("tiny", overrides)
        name = f"{kind}-L{cfg.model.n_layers}-lr{args.lr:.3g}-s{args.seed}"
        run_dir, record_path = (os.path.join(root, name),
                                os.path.join(args.out, RECORDS, f"{name}.json"))
        records[kind] = recorded(record_path, overrides)
        if records[kind] is None:
            train_or_resume(cfg, run_dir, verbose=not args.smoke, label=name)
            records[kind] = compact_run(run_dir, overrides, KEEP, LAYER_KEYS,
                                        layer_every=LAYER_EVERY)
            write_record(record_path, records[kind])
    return records


def report(records: dict, args, base) -> None:
    """The figure, summary.json and summary.md of the HC and mHC records."""
    summary = {kind: summarize(rec) for kind, rec in records.items()}
    plot(records, os.path.join(args.out, "long_run.png"))
    meta = {**provenance(), "lr": args.lr, "seed": args.seed, "overrides": base,
            "runs_commits": runs_commits(records=records.values())}
    lines = [f"# Long deep run: HC vs mHC at constant LR {args.lr:g}", "",
             f"{meta['date']}, commit {meta['commit']}, {meta['device']}; runs trained at "
             f"{meta['runs_commits']}. Overrides: `{' '.join(base)}`.", "",
             "| kind | max composite fwd / bwd (step) | max single-site fwd / bwd | compounded "
             f"(≥ {COMPOUNDED:g}) | loss spikes | non-finite steps | max grad norm (step) "
             f"| after step {WARMUP} | final eval loss |", "|---|---|---|---|---|---|---|---|---|"]
    for kind, s in summary.items():
        lines.append(
            f"| {kind} | {s['amax_fwd_max']:.4g} / {s['amax_bwd_max']:.4g} "
            f"({s['amax_fwd_max_step']}) | {s['layer_amax_fwd_max']:.3g} / "
            f"{s['layer_amax_bwd_max']:.3g} | {'yes' if s['compounded'] else 'no'} | "
            f"{s['spikes']} | {s['nonfinite']} | {s['grad_norm']:.3g} ({s['grad_norm_step']}) | "
            f"{s['grad_norm_after_warmup']:.3g} ({s['grad_norm_after_warmup_step']}) | "
            f"{s['final_eval_loss']:.4f} |")
    if set(KINDS) <= set(records):
        lines += ["", *gap_lines(records)]
    write_summary(args.out, meta, {"summary": summary}, lines)


def main(argv=None) -> int:
    args = flags.parser(__doc__, *FLAGS,
                        out=os.path.join(REPO, "experiments", "results", "long_run")
                        ).parse_args(argv)
    if not args.lr > 0:
        raise SystemExit(f"--lr {args.lr}: must be > 0")
    base = [*BASE, *(SMOKE_OVERRIDES if args.smoke else ()), f"lr={args.lr}",
            f"seed={args.seed}", *args.overrides]
    report(train(args, base), args, base)
    return 0


if __name__ == "__main__":
    sys.exit(main())
