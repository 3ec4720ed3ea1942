"""Is the 30-block gain real and lasting? Residual, HC, mHC and identity-HC at 30 blocks (the
paper's 60 sites), each at its own best LR, trained 4x longer than the LR grid, clipping off.

The LR-sensitivity grid (150 steps, `study.lr_grid`) finds mHC's best eval loss below the
residual's at 30 blocks, and HC's largest stable LR 10-100x below mHC's. Two questions the grid
cannot answer: does mHC's gain over the residual hold when training goes on, and does HC, stable
at 150 steps, surge later? Each kind trains at the LR with its lowest mean final eval loss on the
grid's committed records at 30 blocks (`best_lrs`; `--lr KIND=LR` overrides), with the grid's base
config (`study.lr_grid.BASE`) but STEPS steps and an eval every EVAL_EVERY.

Per kind (mean ± sd over seeds): final eval loss; unstable runs (the grid's criteria: diverged or
surged, `study.lr_grid.run_metrics`); runs whose training loss surges after step LATE (`late_surge`)
and the largest grad norm after step LATE.
Paired by seed (`study.verdict`, 5 seeds: headline claims): mHC's final eval loss below the
residual's, HC's and identity-HC's; whether mHC's gain over the residual shrinks from step LATE to
the end (the same runs' eval gaps); whether HC's largest grad norm after step LATE exceeds mHC's.
Writes `experiments/results/lasting/`.

    python -m experiments.lasting                  # 20 runs, ~5-8 min each on 2 idle cores
    python -m experiments.lasting --only-finished  # tabulate the records, train nothing
    python -m experiments.lasting --smoke --out /tmp/lasting
"""
from __future__ import annotations

import math
import os
import sys

import numpy as np

from study import REPO, flags, lr_grid, plots
from study.metrics import mean_spread
from study.report import provenance, runs_commits, write_summary
from study.runs import RECORDS, SMOKE_OVERRIDES, make_config, regime_overrides, runs_root
from study.verdict import RULE, seeded_verdict, values_cell

KINDS = ("residual", "hc", "mhc", "identity_hc")
DEPTH = 30
STEPS = 600
EVAL_EVERY = 75  # the grid's: the eval at step 150 is there too
LATE = 150  # the grid's length: what happens after it is what the grid could not see
SEEDS = (0, 1, 2, 3, 4)
FLAGS = (flags.kinds(dict.fromkeys(KINDS), help=f"comma list of: {', '.join(KINDS)}"),
         flags.flag("seeds", default=",".join(map(str, SEEDS)), help=None),
         flags.flag("--lr", nargs="*", default=[], metavar="KIND=LR",
                    help="a kind's LR instead of its best on the grid's records"), "out",
         flags.flag("runs", help="where runs train (default runs/lasting)"),
         flags.flag("only-finished", help="train nothing"),
         flags.flag("smoke", help="tiny models, 4 steps: wiring check"))


def best_lrs(kinds) -> dict[str, float]:
    """{kind: the grid LR with the lowest mean final eval loss at DEPTH blocks over the seeds of
    the LR-sensitivity study's committed records} (diverged runs excluded, as the grid's table)."""
    jobs = lr_grid.plan(kinds, [DEPTH], lr_grid.LRS, lr_grid.SEEDS_AT, runs_root="unused")
    metrics, _, missing = lr_grid.load(os.path.join(lr_grid.STUDY, RECORDS), jobs)
    if missing:
        raise SystemExit(f"the LR grid lacks {len(missing)} records at {DEPTH} blocks (e.g. "
                         f"{missing[0]}): run python -m experiments.lr_sensitivity first")
    return {kind: s["best_lr"] for (kind, _), s in lr_grid.summarize(metrics).items()}


def parse_lrs(pairs, kinds) -> dict[str, float]:
    out = {}
    for pair in pairs:
        kind, _, value = pair.partition("=")
        try:
            lr = float(value)
        except ValueError:
            lr = math.nan
        if kind not in kinds or not lr > 0:
            raise SystemExit(f"--lr {pair}: expected KIND=LR with KIND one of "
                             f"{', '.join(kinds)} and LR > 0")
        out[kind] = lr
    return out


def plan(lrs: dict, seeds, smoke=False, root=None) -> list[tuple]:
    """[(name, kind, seed, overrides, cfg, run_dir)]: seed by seed, every kind."""
    base = [*lr_grid.BASE, f"steps={STEPS}", f"eval_every={EVAL_EVERY}",
            f"nan_patience={STEPS + 1}", "checkpoint_every=100", f"n_layers={DEPTH}",
            *(SMOKE_OVERRIDES if smoke else ())]
    jobs = []
    for seed in seeds:
        for kind, lr in lrs.items():
            ov = [*base, *lr_grid.KINDS[kind], *regime_overrides(lr_grid.KINDS[kind]),
                  f"lr={lr}", f"seed={seed}"]
            name = f"{kind}-L{DEPTH}-lr{lr:.3g}-s{seed}"
            jobs.append((name, kind, seed, ov, make_config("tiny", ov),
                         os.path.join(root, name)))
    return jobs


def late_surge(rows: list[dict]) -> bool:
    """Whether the training loss, in the grid's SMOOTH-step windows, rises after step LATE more
    than the grid's SURGE nats above the lowest window before it."""
    steps = np.array([r["step"] for r in rows], float)
    losses = np.array([r["loss"] for r in rows], float)
    smooth = np.array([losses[(steps > s - lr_grid.SMOOTH) & (steps <= s)].mean() for s in steps])
    smooth[~np.isfinite(smooth)] = np.inf  # a non-finite window is a surge too
    lowest = np.minimum.accumulate(smooth)
    late = np.nonzero(steps > LATE)[0]
    late = late[late > 0]
    return bool(np.any(smooth[late] > lowest[late - 1] + lr_grid.SURGE))


def run_metrics(record: dict) -> dict:
    rows = record["rows"]
    evals = {r["step"]: r["eval_loss"] for r in rows if "eval_loss" in r}
    late = [r for r in rows if r["step"] > LATE]
    peak = max((r["grad_norm"] for r in late if math.isfinite(r["grad_norm"])), default=math.nan)
    return {**lr_grid.run_metrics(record), "evals": evals, "late_grad_norm": peak,
            "late_surge": late_surge(rows)}


def at_step(m: dict, step: int) -> float:
    """The eval loss at `step`, or the last one before it (a smoke run's last eval)."""
    before = [s for s in m["evals"] if s <= step]
    return m["evals"][max(before)] if before else math.nan


def verdicts(metrics: dict, kinds, seeds) -> list[str]:
    """The paired claims, one line each."""
    def paired(kind, fn):
        both = [s for s in seeds if ("mhc", s) in metrics and (kind, s) in metrics]
        return [fn(metrics[("mhc", s)], metrics[(kind, s)]) for s in both]
    lines = []
    for other in (k for k in kinds if k != "mhc"):
        gaps = paired(other, lambda a, b: a["eval_loss"] - b["eval_loss"])
        lines.append(f"- mHC's final eval loss below {other}'s: {values_cell(gaps)}: "
                     f"{seeded_verdict(gaps, -1, headline=True)}")
    if "residual" in kinds:
        late = max(STEPS, *(max(m["evals"]) for m in metrics.values()))
        change = paired("residual", lambda a, b: (at_step(a, late) - at_step(b, late))
                        - (at_step(a, LATE) - at_step(b, LATE)))
        lines.append(f"- mHC's gain over the residual shrinks from step {LATE} to the end "
                     f"(gap at the end − gap at {LATE}): {values_cell(change)}: "
                     f"{seeded_verdict(change, +1, headline=True)}")
    if "hc" in kinds:
        ratio = paired("hc", lambda a, b: math.log10(b["late_grad_norm"] / a["late_grad_norm"]))
        lines.append(f"- HC's largest grad norm after step {LATE} exceeds mHC's (log10 ratio): "
                     f"{values_cell(ratio, '+.2f')}: {seeded_verdict(ratio, +1, headline=True)}")
    return lines


def table(metrics: dict, lrs: dict, seeds) -> list[str]:
    lines = ["| kind | LR | seeds | final eval loss | eval loss at step 150 | unstable runs | "
             f"training-loss surge after step {LATE} | max grad norm after step {LATE} |",
             "|---|---|---|---|---|---|---|---|"]
    for kind, lr in lrs.items():
        runs = [metrics[(kind, s)] for s in seeds if (kind, s) in metrics]
        if not runs:
            continue
        fmt = lambda vals, f=".4f": "{:{f}} ± {:{f}}".format(*mean_spread(vals), f=f)  # noqa: E731
        lines.append(f"| {kind} | {lr:g} | {len(runs)} | {fmt(m['eval_loss'] for m in runs)} | "
                     f"{fmt(at_step(m, LATE) for m in runs)} | "
                     f"{sum(m['unstable'] for m in runs)}/{len(runs)} | "
                     f"{sum(m['late_surge'] for m in runs)}/{len(runs)} | "
                     f"{fmt((m['late_grad_norm'] for m in runs), '.3g')} |")
    return lines


def plot(records: dict, path: str) -> None:
    """Eval loss and grad norm over training, mean over seeds per kind."""
    fig, axes = plots.pyplot().subplots(1, 2, figsize=(11, 4))
    for ax, key in zip(axes, ("eval_loss", "grad_norm")):
        for kind, (steps, mean) in plots.seed_means(records, key).items():
            ax.plot(steps, mean, marker="o" if key == "eval_loss" else None, ms=3, lw=0.8,
                    label=kind)
    axes[0].set(xlabel="step", ylabel="eval loss (mean over seeds)")
    axes[1].set(xlabel="step", ylabel="grad norm (mean over seeds, no clipping)", yscale="log")
    plots.style(axes, 7, loc="upper right", which="both")
    plots.savefig(fig, path)


def report(out: str, jobs, records: dict, lrs: dict, kinds, seeds) -> None:
    metrics = {key: run_metrics(r) for key, r in records.items()}
    plot(records, os.path.join(out, "lasting.png"))
    meta = {**provenance(), "lrs": lrs}
    lines = ["# Is the 30-block gain real and lasting?", "",
             f"{meta['date']}, commit {meta['commit']}, {meta['device']}, jax {meta['jax']}. "
             f"{len(records)} runs, trained at commits {runs_commits(records=records.values())}. "
             f"{DEPTH} blocks, {STEPS} steps (the LR grid's 4x), each kind at its best LR on the "
             f"grid at {DEPTH} blocks; the grid's base `{' '.join(lr_grid.BASE)}` with "
             f"`{' '.join(jobs[0][3][len(lr_grid.BASE):len(lr_grid.BASE) + 4])}`.", "",
             *table(metrics, lrs, seeds), "", *verdicts(metrics, kinds, seeds), "", RULE]
    missing = [name for name, kind, seed, *_ in jobs if (kind, seed) not in records]
    write_summary(out, meta, {"per_run": {f"{k}-s{s}": {x: v for x, v in m.items()
                                                         if x != "evals"}
                                          for (k, s), m in metrics.items()}}, lines, missing)


def main(argv=None) -> int:
    args = flags.parser(__doc__, *FLAGS, out=os.path.join(REPO, "experiments", "results",
                                                          "lasting")).parse_args(argv)
    given = parse_lrs(args.lr, args.kinds)
    lrs = {**best_lrs([k for k in args.kinds if k not in given]), **given}
    lrs = {k: lrs[k] for k in args.kinds}
    root = runs_root(args.runs, args.out, args.smoke, os.path.join(REPO, "runs", "lasting"))
    records_dir = os.path.join(args.out, RECORDS)
    jobs = plan(lrs, args.seeds, args.smoke, root)
    records = lr_grid.plan_records(jobs, records_dir, train=not args.only_finished,
                                   verbose=not args.smoke)
    report(args.out, jobs, records, lrs, args.kinds, args.seeds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
