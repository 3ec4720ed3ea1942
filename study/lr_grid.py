"""The LR-sensitivity grid (Wortsman et al. 2023's small-scale proxy, arXiv 2309.14322): the runs
of `experiments/lr_sensitivity.py`, extended by bisection in `experiments/depth_law.py` and judged
in `paper_repro/lr_proxy.py`. Each run is a (kind, depth, LR, seed) of the tiny recipe at the d64
micro widths (`BASE`), named `run_name(...)`; a finished run is kept as a compact record,
OUT/records/<name>.json.xz (`study.runs.compact_run` of the `KEEP` keys), and every table is
computed from those records alone.

Per run (`run_metrics`): final eval loss, divergence, surge, loss spikes, max grad norm (clipping
is off, so it is the raw norm), max composite and single-site Amax gains and H_res's movement. A
run diverges when a step is non-finite, or when its final eval loss or final training loss (mean
of the last 10 % of steps) is not at least LEARNED nats below the initial loss; it surges when its
final eval loss is more than SURGE nats above its smallest SMOOTH-step mean training loss
(`smoothed_min`). Per kind and depth (`summarize`): Wortsman et al.'s LR sensitivity
E_η[min(ℓ(η), ℓ₀) − ℓ*] per seed (`sensitivity`), mean ± std over seeds, and the largest stable LR
(`largest_stable`). The study's docstring explains the criteria's choices.
"""
from __future__ import annotations

import math
import os

import numpy as np

from study import REPO
from study.metrics import mean_spread
from study.runs import (SMOKE_OVERRIDES, compact_run, enable_compile_cache, make_config,
                        recorded, regime_overrides, train_or_resume, write_record)

STUDY = os.path.join(REPO, "experiments", "results", "lr_sensitivity")  # its --out: the records
RUNS = os.path.join(REPO, "runs", "lr_sensitivity")  # where its runs train (not committed)
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
# the kinds the headline depth's claims compare (the paper's three and the two controls);
# mHC-lite and unconstrained mixing make no headline claim and keep SEEDS there
HEADLINE_KINDS = ("residual", "hc", "mhc", "identity_hc", "hc_res_only")
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


def default_seeds(depths) -> dict:
    """The study's seeds: {depth: seeds}, with {(depth, kind): SEEDS} for the kinds outside
    HEADLINE_KINDS at a SEEDS_AT depth."""
    seeds = {}
    for depth in depths:
        seeds[depth] = SEEDS_AT.get(depth, SEEDS)
        if depth in SEEDS_AT:
            seeds.update({(depth, k): SEEDS for k in KINDS if k not in HEADLINE_KINDS})
    return seeds


def seeds_of(seeds, depth: int, kind: str) -> tuple:
    """The seeds of one (depth, kind) in a plan's `seeds`: one tuple for all, {depth: seeds},
    or that with {(depth, kind): seeds} exceptions (`default_seeds`)."""
    if not isinstance(seeds, dict):
        return tuple(seeds)
    return tuple(seeds.get((depth, kind), seeds.get(depth, ())))


def seeds_text(seeds) -> str:
    """`seeds` (as `seeds_of` reads them) in words, for a table's header."""
    csv = lambda s: ",".join(map(str, s))  # noqa: E731
    if not isinstance(seeds, dict):
        return csv(seeds)
    return "; ".join(
        f"{depth} blocks: {csv(s)}" + "".join(f" ({key[1]}: {csv(ks)})" for key, ks in seeds.items()
                                             if isinstance(key, tuple) and key[0] == depth)
        for depth, s in seeds.items() if not isinstance(depth, tuple))


def plan(kinds, depths, lrs, seeds, extra=(), smoke=False, runs_root=None):
    """[(name, kind, depth, lr, seed, overrides, cfg, run_dir)]: cheap depth first, then seed by
    seed, so partial results already cover whole curves. `seeds`: as `seeds_of` reads them.
    `overrides` are what a run's compact record stores (and what reuse compares)."""
    base = [*BASE, *(SMOKE_OVERRIDES if smoke else ()), *extra]
    jobs = []
    for depth in depths:
        for seed in sorted({s for kind in kinds for s in seeds_of(seeds, depth, kind)}):
            for lr in lrs:
                for kind in kinds:
                    if seed not in seeds_of(seeds, depth, kind):
                        continue
                    ov = [*base, *KINDS[kind], *regime_overrides(KINDS[kind]),
                          f"n_layers={depth}", f"lr={lr}", f"seed={seed}"]
                    cfg = make_config("tiny", ov)
                    name = run_name(kind, depth, lr, seed)
                    jobs.append((name, kind, depth, lr, seed, ov, cfg,
                                 os.path.join(runs_root, name)))
    return jobs


def record(job, records_dir: str, *, train: bool = True, verbose: bool = True,
           label: str = "", keep=KEEP) -> bool:
    """Whether `job` (a `plan` entry) has its compact record in `records_dir`: a record of a
    finished run with the same overrides is the run (a fresh checkout continues the grid without
    retraining what is committed); otherwise, with `train`, the run trains (or resumes) and its
    record (the `keep` keys of each metrics row) is written."""
    name, *_, overrides, cfg, run_dir = job
    path = os.path.join(records_dir, f"{name}.json")
    if recorded(path, overrides):
        return True
    if not train:
        return False
    train_or_resume(cfg, run_dir, verbose=verbose, label=label or name)
    write_record(path, compact_run(run_dir, overrides, keep))
    return True


def record_all(jobs, records_dir: str, verbose: bool = True, keep=KEEP) -> None:
    """`record` every job of a plan, training what has no record yet."""
    enable_compile_cache()
    for i, job in enumerate(jobs, 1):
        record(job, records_dir, verbose=verbose, label=f"[{i}/{len(jobs)}] {job[0]}", keep=keep)


def plan_records(jobs, records_dir: str, *, train: bool, verbose: bool = True) -> dict:
    """{(kind, seed): record} of a plan of `(name, kind, seed, overrides, ...)` jobs (the studies
    that run each kind at one depth and LR: diversity, lasting), after training the unrecorded
    ones unless `train` is false; exits when no run of the plan is recorded."""
    if train:
        record_all(jobs, records_dir, verbose=verbose)
    records = {(kind, seed): r for name, kind, seed, overrides, *_ in jobs
               if (r := recorded(os.path.join(records_dir, f"{name}.json"), overrides))}
    if not records:
        raise SystemExit(f"no finished runs in {records_dir}; run without --only-finished")
    return records


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
        curve = {lr: mean_spread(m["eval_loss"] for m in ms if not m["diverged"])
                 if any(not m["diverged"] for m in ms) else (math.nan, math.nan)
                 for lr, ms in by_lr.items()}
        best_lr = min((lr for lr in lrs if math.isfinite(curve[lr][0])),
                      key=lambda lr: curve[lr][0], default=math.nan)
        allm = list(runs.values())
        out[(kind, depth)] = {
            "seeds_complete": full, "lrs": lrs,
            "sensitivity": mean_spread(sens) if sens else (math.nan, math.nan),
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
            "offdiag_end": mean_spread(m["offdiag_end"] for m in allm),
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


# ------------------------------------------- the stability edge by bisection (the depth law)
ABOVE = (2.15, 4.64, 10.0)  # the sweep's grid continued in thirds of a decade: at 30 blocks
GRID = (*LRS, *ABOVE)        # the residual, mHC and identity-HC are stable at the sweep's top


def bisect_edge(n: int, stable) -> tuple[int, list[int]]:
    """(largest index i in [-1, n - 1] with `stable(i)` true, assuming stable(j) for every j <= i
    and unstable above; -1: none; the indices asked, in order)."""
    lo, hi, asked = -1, n, []
    while hi - lo > 1:
        mid = (lo + hi) // 2
        asked.append(mid)
        if stable(mid):
            lo = mid
        else:
            hi = mid
    return lo, asked


def seed_edges(metrics: dict, kind: str, depth: int, grid) -> dict[int, float]:
    """{seed: largest stable LR} from the runs there are; a seed whose bisection is unfinished
    is left out. Edges at the grid's ends are +inf (stable at the top) / -inf (none stable)."""
    out = {}
    for seed in sorted({s for k, d, _, s in metrics if (k, d) == (kind, depth)}):
        runs = {lr: m for (k, d, lr, s), m in metrics.items() if (k, d, s) == (kind, depth, seed)}
        known = True

        def stable(i):
            nonlocal known
            if grid[i] not in runs:
                known = False
                return False
            return not runs[grid[i]]["unstable"]
        i, _ = bisect_edge(len(grid), stable)
        if known:
            out[seed] = math.inf if i == len(grid) - 1 else (-math.inf if i < 0 else grid[i])
    return out
