"""The mHC ablation plan of `experiments/ablations.py`, and the pieces Table 1
(`paper_repro/table1_hc_ablation.py`) and the variants study (`experiments/variants.py`) read:
the axes, the runs they plan (micro config, one directory per config under `study.runs.RUNS`, so a
point two axes share trains once), the per-run metrics, their mean ± std over seeds with the gap
to the residual paired by seed, and the rule that chose the CPU studies' H_res regime.

Losses are final eval losses in nats per byte (16 fixed held-out batches of the micro config).
"""
from __future__ import annotations

import math

from study.metrics import H_RES_MOVEMENT, final_metrics, h_res_movement, mean_spread, tail_loss
from study.runs import (RUNS, STRESS_REGIME, STUDY_REGIME, make_config, regime_overrides,
                        run_dir_for)

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


def variants(axis: str, smoke: bool = False) -> list[tuple[str, tuple[str, ...]]]:
    """(label, overrides) of one axis, the residual baseline first. Smoke keeps the default point
    and one other value."""
    _, default, points = AXES[axis]
    if smoke:
        other = next(label for label, _ in points if label != default)
        points = [p for p in points if p[0] in (default, other)]
    return [BASELINE] + [(label, MHC + ov) for label, ov in points]


REGIMES = {"frozen": (), "study": STUDY_REGIME, "stress": STRESS_REGIME}
DEFAULT_REGIME = "study"


def plan(axes, seeds, base_overrides, recipe="tiny", smoke=False, runs_root=RUNS,
         regime: str = DEFAULT_REGIME):
    """[(axis, label, seed, cfg, run_dir)]; configs are validated here, nothing is trained.
    `regime` adds the H_res regime's options to every connection variant (those that apply to
    it: `regime_overrides`); "frozen" is the plain default (H_res ≈ I stays put). The
    h_res_regime axis compares regimes itself, so none is added to it."""
    out = []
    for axis in axes:
        added = () if axis == "h_res_regime" else REGIMES[regime]
        for label, ov in variants(axis, smoke):
            ov = (*ov, *regime_overrides((*base_overrides, *ov), added))
            for seed in seeds:
                cfg = make_config(recipe, [*base_overrides, *ov, f"seed={seed}"])
                out.append((axis, label, seed, cfg, run_dir_for(cfg, runs_root)))
    return out


def run_metrics(rows: list[dict]) -> dict:
    """The numbers of one run that the tables use (H_res's movement: first and last step)."""
    final = final_metrics(rows)
    return {"eval_loss": final["eval_loss"], "tail_loss": tail_loss(rows),
            "amax_fwd_max": max(r.get("amax_fwd_max", 1.0) for r in rows),
            "amax_bwd_max": max(r.get("amax_bwd_max", 1.0) for r in rows),
            "ds_col_err_max": max(r.get("ds_col_err_max", 0.0) for r in rows),
            **h_res_movement(rows)}


METRICS = ("eval_loss", "tail_loss", "amax_fwd_max", "amax_bwd_max", "ds_col_err_max",
           *H_RES_MOVEMENT)


def summarize(per_seed: dict[str, dict[int, dict]], baseline: str = "residual") -> dict:
    """Per variant: mean ± std over seeds of each run metric, and the gap to `baseline` in eval
    loss, paired by seed (only seeds both have)."""
    base = per_seed.get(baseline, {})
    out = {}
    for label, by_seed in per_seed.items():
        s = {"seeds": sorted(by_seed)}
        for key in METRICS:
            # a metric a run predates is NaN, not an error
            s[key], s[key + "_std"] = mean_spread(m.get(key, math.nan)
                                                         for m in by_seed.values())
        paired = [by_seed[k]["eval_loss"] - base[k]["eval_loss"] for k in by_seed if k in base]
        s["gap"], s["gap_std"] = mean_spread(paired) if paired else (math.nan, math.nan)
        out[label] = s
    return out


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
