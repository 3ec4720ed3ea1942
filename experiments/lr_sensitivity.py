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

    python -m experiments.lr_sensitivity                     # the full grid (560 runs)
    python -m experiments.lr_sensitivity --depths 6 --seeds 0
    python -m experiments.lr_sensitivity --only-finished     # tabulate what exists, train nothing
    python -m experiments.lr_sensitivity --smoke --out /tmp/lrs
"""
from __future__ import annotations

import argparse
import math
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from experiments import common

KINDS = {"residual": ("residual=residual",), "hc": ("residual=hc",), "mhc": ("residual=mhc",),
         "mhc_lite": ("residual=mhc_lite",),
         "unconstrained": ("residual=mhc", "manifold=unconstrained"),
         "identity_hc": ("residual=mhc", "manifold=identity"),
         "hc_res_only": ("residual=hc", "learned_maps=res")}
DEPTHS = (6, 30)  # blocks; 30 blocks = the paper's 60 sites
# 1e-3 ... 1.0 (1000x), three points a decade: up to 0.215 the largest stable LR sat at the
# grid's top in 7 of 10 (kind, depth) cells, so the grid goes on until every kind fails
LRS = tuple(float(f"{10 ** (-3 + k / 3):.3g}") for k in range(10))
SEEDS = (0, 1, 2)  # the default at depths not in SEEDS_AT
SEEDS_AT = {30: (0, 1, 2, 3, 4)}  # the headline depth: >= 5 seeds for a paired test
SMOKE_GRID = ((1,), LRS[:2], SEEDS[:1])  # depths, LRs, seeds of --smoke
STEPS = 150
# d64 micro widths, 8 x 64 tokens per step: 30 blocks train ~0.5 s/step (residual) to
# ~0.8 s/step (mHC) on 2 cores. Clipping off: a surge must not be hidden.
BASE = ("d_model=64", "n_heads=4", "d_ff=192", "seq_len=64", "batch_size=8",
        f"steps={STEPS}", "warmup_steps=15", "eval_every=75", "eval_batches=8", "log_every=10",
        "grad_clip=0", f"nan_patience={STEPS + 1}", "checkpoint=true", "checkpoint_every=50",
        "keep_last=1", "wandb=disabled", "dtype=float32")
# what a compact run keeps of each metrics row
KEEP = ("step", "loss", "eval_loss", "grad_norm", "lr", "skipped", "amax_fwd", "amax_bwd",
        "amax_fwd_max", "amax_bwd_max", "layer_amax_fwd_max", "layer_amax_bwd_max",
        "ds_col_err_max", "h_res_offdiag", "h_res_offdiag_max", "h_res_dist_init",
        "h_res_entropy", "h_res_token_std", "h_pre_mean", "h_post_mean",
        "res_mz_gain_max", "composite_mz_gain", "stream_diversity")  # absent in older records


def run_name(kind: str, depth: int, lr: float, seed: int) -> str:
    return f"{kind}-L{depth}-lr{lr:.3g}-s{seed}"


def plan(kinds, depths, lrs, seeds, extra=(), smoke=False, runs_root=None):
    """[(name, kind, depth, lr, seed, overrides, cfg, run_dir)]: cheap depth first, then seed by
    seed, so partial results already cover whole curves. `seeds`: one tuple for every depth or
    {depth: seeds}. `overrides` are what a run's compact record stores (and what reuse compares)."""
    base = [*BASE, *(common.SMOKE_OVERRIDES if smoke else ()), *extra]
    jobs = []
    for depth in depths:
        for seed in (seeds[depth] if isinstance(seeds, dict) else seeds):
            for lr in lrs:
                for kind in kinds:
                    ov = [*base, *KINDS[kind], *common.regime_overrides(KINDS[kind]),
                          f"n_layers={depth}", f"lr={lr}", f"seed={seed}"]
                    cfg = common.make_config("tiny", ov)
                    name = run_name(kind, depth, lr, seed)
                    jobs.append((name, kind, depth, lr, seed, ov, cfg,
                                 os.path.join(runs_root, name)))
    return jobs


def load(records_dir: str, jobs) -> tuple[dict, list[dict], list[str]]:
    """({(kind, depth, lr, seed): run metrics}, the records read, names of the planned `jobs`
    with no record yet) from the compact records in `records_dir`."""
    from mhc import results
    metrics, read, missing = {}, [], []
    for name, kind, depth, lr, seed, *_ in jobs:
        path = os.path.join(records_dir, f"{name}.json")
        if not results.exists(path):
            missing.append(name)
            continue
        read.append(results.read_json(path))
        metrics[(kind, depth, lr, seed)] = run_metrics(read[-1])
    return metrics, read, missing


LEARNED = 0.1  # nats a run must end below its initial loss to count as not diverged
SURGE = 0.25  # nats the final eval loss may end above the smoothed training minimum
SMOOTH = 10  # steps of the training-loss windows of `smoothed_min`


def smoothed_min(rows: list[dict], window: int = SMOOTH) -> float:
    """The smallest mean training loss over a window of `window` steps: the rows with step in
    (s - window, s], for every logged step s with s - window + 1 >= the first logged step (a
    window the rows cover from the start of the run on). Windows with a non-finite loss are
    skipped; NaN when no window is left."""
    steps = np.array([r["step"] for r in rows], float)
    losses = np.array([r["loss"] for r in rows], float)
    best = math.nan
    for s in steps[steps - window + 1 >= steps[0]]:
        mean = float(losses[(steps > s - window) & (steps <= s)].mean())
        if math.isfinite(mean):
            best = mean if math.isnan(best) else min(best, mean)
    return best


def run_metrics(record: dict) -> dict:
    """Per-run numbers of the tables, from a compact record."""
    rows = record["rows"]
    initial = rows[0]["loss"]
    evals = [r["eval_loss"] for r in rows if "eval_loss" in r]
    final = evals[-1] if evals else math.nan
    tail = float(np.mean([r["loss"] for r in rows[-max(1, len(rows) // 10):]]))
    diverged = bool(record["events"]["nonfinite"] or any(r.get("skipped") for r in rows)
                    or not math.isfinite(final) or not math.isfinite(tail)
                    or max(tail, final) > initial - LEARNED)
    low = smoothed_min(rows)
    surged = bool(math.isfinite(final) and math.isfinite(low) and final > low + SURGE)
    peak = lambda k: max((r[k] for r in rows if k in r and math.isfinite(r[k])),  # noqa: E731
                         default=math.nan)
    return {"initial_loss": initial, "eval_loss": final, "diverged": diverged,
            "smoothed_min": low, "surged": surged, "unstable": diverged or surged,
            "spikes": record["events"]["loss_spike"], "max_grad_norm": peak("grad_norm"),
            "composite_fwd_max": peak("amax_fwd_max"), "composite_bwd_max": peak("amax_bwd_max"),
            "site_fwd_max": peak("layer_amax_fwd_max"), "site_bwd_max": peak("layer_amax_bwd_max"),
            "ds_col_err_max": peak("ds_col_err_max"),
            "offdiag_end": rows[-1].get("h_res_offdiag", math.nan)}


def sensitivity(curve: dict[float, dict]) -> float:
    """Wortsman et al.'s LR sensitivity of one seed's curve {lr: run metrics}."""
    capped = [min(m["eval_loss"], m["initial_loss"]) if not m["diverged"] else m["initial_loss"]
              for m in curve.values()]
    return float(np.mean(capped) - np.min(capped))


def largest_stable(by_lr: dict[float, list[dict]]) -> float:
    """The largest LR at or below which no seed is unstable, diverged or surged (nan when the
    smallest already is)."""
    best = math.nan
    for lr in sorted(by_lr):
        if any(m["unstable"] for m in by_lr[lr]):
            break
        best = lr
    return best


def summarize(metrics: dict) -> dict:
    """{(kind, depth): summary} from {(kind, depth, lr, seed): run metrics}."""
    out = {}
    for kind, depth in sorted({(k, d) for k, d, _, _ in metrics}, key=lambda x: (x[1], x[0])):
        # a seed counts once its whole curve over the depth's grid (every LR run at it) exists
        grid = sorted({lr for _, d, lr, _ in metrics if d == depth})
        runs = {(lr, s): m for (k, d, lr, s), m in metrics.items() if (k, d) == (kind, depth)}
        lrs = [lr for lr in grid if any(key[0] == lr for key in runs)]
        seeds = sorted({s for _, s in runs})
        full = [s for s in seeds if all((lr, s) in runs for lr in grid)]
        sens = [sensitivity({lr: runs[(lr, s)] for lr in lrs}) for s in full]
        by_lr = {lr: [runs[(lr, s)] for s in seeds if (lr, s) in runs] for lr in lrs}
        curve = {lr: common.mean_spread(m["eval_loss"] for m in ms if not m["diverged"])
                 if any(not m["diverged"] for m in ms) else (math.nan, math.nan)
                 for lr, ms in by_lr.items()}
        best_lr = min((lr for lr in lrs if math.isfinite(curve[lr][0])),
                      key=lambda lr: curve[lr][0], default=math.nan)
        allm = list(runs.values())
        out[(kind, depth)] = {
            "seeds_complete": full, "lrs": lrs,
            "sensitivity": common.mean_spread(sens) if sens else (math.nan, math.nan),
            "largest_stable_lr": largest_stable(by_lr), "best_lr": best_lr,
            "best_eval_loss": curve.get(best_lr, (math.nan, math.nan)),
            "curve": {lr: list(v) for lr, v in curve.items()},
            "diverged": sum(m["diverged"] for m in allm), "runs": len(allm),
            "surged": sum(m["surged"] for m in allm),
            "unstable": sum(m["unstable"] for m in allm),
            "spikes": sum(m["spikes"] for m in allm),
            **{k: float(np.nanmax([m[k] for m in allm])) for k in
               ("max_grad_norm", "composite_fwd_max", "composite_bwd_max", "site_fwd_max",
                "site_bwd_max", "ds_col_err_max")},
            "offdiag_end": common.mean_spread(m["offdiag_end"] for m in allm),
        }
    return out


def table(summary: dict) -> list[str]:
    lines = ["| kind | blocks | seeds | LR sensitivity (mean ± std) | largest stable LR | best LR "
             "| best eval loss | diverged runs | surged runs (unstable) | loss spikes "
             "| max grad norm | max composite "
             "Amax fwd / bwd | max single-site fwd / bwd | max DS col error | H_res off-diag "
             "(end) |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (kind, depth), s in summary.items():
        sm, ss = s["sensitivity"]
        bm, bs = s["best_eval_loss"]
        om, osd = s["offdiag_end"]
        lines.append(
            f"| {kind} | {depth} | {len(s['seeds_complete'])} | {sm:.4f} ± {ss:.4f} | "
            f"{s['largest_stable_lr']:.3g} | {s['best_lr']:.3g} | {bm:.4f} ± {bs:.4f} | "
            f"{s['diverged']}/{s['runs']} | {s['surged']} ({s['unstable']}) | {s['spikes']} | "
            f"{s['max_grad_norm']:.3g} | "
            f"{s['composite_fwd_max']:.3g} / {s['composite_bwd_max']:.3g} | "
            f"{s['site_fwd_max']:.3g} / {s['site_bwd_max']:.3g} | {s['ds_col_err_max']:.2g} | "
            f"{om:.3f} ± {osd:.3f} |")
    return lines


def plot(summary: dict, metrics: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    depths = sorted({d for _, d in summary})
    fig, axes = plt.subplots(2, len(depths), figsize=(6 * len(depths), 8), squeeze=False)
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
        for ax in (top, bottom):
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=7)
    fig.suptitle("LR sensitivity (clipping off; Wortsman et al. 2023 small-scale proxy)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _floats(text: str, name: str, cast=float) -> tuple:
    try:
        values = tuple(cast(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise SystemExit(f"--{name} {text!r}: expected comma-separated numbers") from None
    if not values:
        raise SystemExit(f"--{name} is empty")
    return values


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kinds", default=",".join(KINDS), help=f"comma list of: {', '.join(KINDS)}")
    p.add_argument("--depths", default=",".join(map(str, DEPTHS)), help="blocks per model")
    p.add_argument("--lrs", default=",".join(map(str, LRS)), help="the LR grid")
    at = ", ".join(f"{d} blocks: {','.join(map(str, s))}" for d, s in SEEDS_AT.items())
    p.add_argument("--seeds", default=None,
                   help=f"comma list (default {','.join(map(str, SEEDS))}; {at})")
    p.add_argument("--out", default=os.path.join(REPO, "experiments", "results",
                                                 "lr_sensitivity"))
    p.add_argument("--runs", default=None, help="where runs train (default: runs/lr_sensitivity;"
                   " with --smoke: OUT/trained)")
    p.add_argument("--smoke", action="store_true", help="tiny model, 4 steps: wiring check")
    p.add_argument("--only-finished", action="store_true", help="train nothing; tabulate the "
                   "compact records in OUT/records")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="applied to every run")
    args = p.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise SystemExit(f"--kinds: unknown {', '.join(bad) or '(none)'}; allowed: "
                         f"{', '.join(KINDS)}")
    depths, lrs = _floats(args.depths, "depths", int), _floats(args.lrs, "lrs")
    seeds = (_floats(args.seeds, "seeds", int) if args.seeds is not None
             else {d: SEEDS_AT.get(d, SEEDS) for d in depths})
    if args.smoke:
        depths, lrs, seeds = SMOKE_GRID
    runs_root = args.runs or (os.path.join(args.out, "trained") if args.smoke
                              else os.path.join(REPO, "runs", "lr_sensitivity"))
    records_dir = os.path.join(args.out, common.RECORDS)
    os.makedirs(records_dir, exist_ok=True)
    jobs = plan(kinds, depths, lrs, seeds, args.overrides, args.smoke, runs_root)
    if not args.only_finished:
        common.enable_compile_cache()
        for i, (name, _, _, _, _, overrides, cfg, run_dir) in enumerate(jobs, 1):
            record_path = os.path.join(records_dir, f"{name}.json")
            if common.recorded(record_path, overrides):  # the committed record is the finished run
                continue
            common.train_or_resume(cfg, run_dir, verbose=not args.smoke,
                                   label=f"[{i}/{len(jobs)}] {name}")
            common.write_record(record_path, common.compact_run(run_dir, overrides, KEEP))
    metrics, read, missing = load(records_dir, jobs)
    if not metrics:
        raise SystemExit(f"no finished runs in {records_dir}; run without --only-finished")
    summary = summarize(metrics)
    plot(summary, metrics, os.path.join(args.out, "lr_sensitivity.png"))
    meta = {**common.provenance(), "runs": len(metrics), "missing": missing,
            "runs_commits": common.runs_commits(records=read), "base": list(BASE),
            "regime": list(common.regime_overrides(KINDS["mhc"]))}
    common.write_json(os.path.join(args.out, "summary.json"),
                      {"meta": meta, "summary": {f"{k}-L{d}": v for (k, d), v in summary.items()},
                       "per_run": {run_name(*key): m for key, m in metrics.items()}})
    lines = ["# LR sensitivity (Wortsman et al. 2023 small-scale proxy)", "",
             f"{meta['date']}, commit {meta['commit']}, {meta['device']}. {len(metrics)} runs, "
             f"trained at commits {meta['runs_commits']}. Grid: LR {', '.join(map(str, lrs))}; "
             f"seeds {seeds}; {STEPS} steps; clipping off. Base: `{' '.join(BASE)}`; "
             f"connection regime `{' '.join(meta['regime']) or 'none'}`.", "",
             "LR sensitivity = mean over the grid of min(final eval loss, initial loss) minus "
             "the best, per seed (a diverged run counts as the initial loss); largest stable LR"
             " = largest grid LR at or below which no seed is unstable: diverged (non-finite, or "
             f"ending less than {LEARNED} nat below the initial loss) or surged (final eval loss "
             f"more than {SURGE} nat above the smallest {SMOOTH}-step mean training loss).", "",
             *table(summary)]
    if missing:
        lines += ["", f"Not finished yet ({len(missing)}): " + ", ".join(missing) + "."]
    common.write_report(os.path.join(args.out, "summary.md"), lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
