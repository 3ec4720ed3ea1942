"""The scaling plan of `experiments/scaling.py` and Fig. 6 (`paper_repro/fig6_scaling.py`):
(a) a model-size ladder, residual vs mHC, loss gap vs training compute; (b) token scaling, the loss
gap over one longer residual/mHC run pair per seed.

Ladder rungs share one shape family (width/depth 16, head dim 16, FFN 3x width) and the same steps
and tokens per step; compute = training FLOPs per token (`mhc.train.flops_per_token`) x tokens.
Gaps are mHC minus residual, paired by seed (the same seed gives both the same batches); eval
losses are in nats per byte. mHC runs in the H_res `regime` (default the CPU studies',
`study.runs.STUDY_REGIME`; () for the paper recipes).
"""
from __future__ import annotations

import math

import numpy as np

from study.metrics import final_metrics, mean_spread
from study.plots import pyplot, savefig
from study.runs import (MICRO_OVERRIDES, RUNS, STUDY_REGIME, make_config, regime_overrides,
                        run_dir_for, train_or_reuse)

KINDS = ("residual", "mhc")
# name: (d_model, n_layers, n_heads); width/depth = 16, head dim 16, d_ff = 3 x width
LADDER = {"xs": (48, 3, 3), "s": (64, 4, 4), "m": (96, 6, 6)}
SMOKE_LADDER = {"xs": (16, 1, 2), "s": (32, 2, 2)}
DEFAULT_SEEDS = (0, 1, 2)
TOKEN_STEPS = 400


def ladder_overrides(d_model: int, n_layers: int, n_heads: int) -> list[str]:
    return [f"d_model={d_model}", f"n_layers={n_layers}", f"n_heads={n_heads}",
            f"d_ff={3 * d_model}"]


def kind_config(recipe: str, overrides, kind: str, seed: int, regime=STUDY_REGIME):
    """The config of one run: mHC in the H_res `regime` (default the CPU studies', where H_res
    learns within the step budget; () for the paper recipes), the residual as it is."""
    ov = [*overrides, f"residual={kind}"]
    return make_config(recipe, [*ov, *regime_overrides(ov, regime), f"seed={seed}"])


def ladder_plan(points: dict[str, tuple[str, list[str]]], seeds, runs_root=RUNS,
                regime=STUDY_REGIME):
    """points: {name: (recipe, overrides)} -> [(name, kind, seed, cfg, run_dir)]."""
    return [(name, kind, seed, cfg, run_dir_for(cfg, runs_root))
            for name, (recipe, ov) in points.items() for kind in KINDS for seed in seeds
            for cfg in [kind_config(recipe, ov, kind, seed, regime)]]


def token_plan(recipe: str, overrides, steps: int, seeds, runs_root=RUNS,
               regime=STUDY_REGIME):
    """[(kind, seed, cfg, run_dir)] of the long run pairs, one per seed (eval about 8 times over
    the run)."""
    extra = [f"steps={steps}", f"warmup_steps={max(1, steps // 10)}",
             f"eval_every={max(2, steps // 8)}"]
    return [(kind, seed, cfg, run_dir_for(cfg, runs_root))
            for seed in seeds for kind in KINDS
            for cfg in [kind_config(recipe, [*overrides, *extra], kind, seed, regime)]]


def compute(cfg) -> float:
    """Training FLOPs of a run: per-token FLOPs x tokens seen."""
    from mhc.train import flops_per_token
    t = cfg.train
    return flops_per_token(cfg) * t.steps * t.batch_size * t.seq_len


def summarize_ladder(finals: dict, configs: dict) -> dict:
    """finals: {name: {kind: {seed: eval loss}}}, configs: {name: residual cfg} -> per rung:
    params, compute, losses mean ± std, gap (paired by seed) and mHC/residual in %."""
    from mhc.recipes import count_params
    out = {}
    for name, by_kind in finals.items():
        res, mhc = by_kind["residual"], by_kind["mhc"]
        seeds = sorted(set(res) & set(mhc))
        gaps = [mhc[s] - res[s] for s in seeds]
        ratios = [100 * mhc[s] / res[s] for s in seeds]
        cfg = configs[name]
        s = {"params_active": count_params(cfg)[0], "compute_flops": compute(cfg),
             "seeds": seeds}
        for key, values in (("residual", res.values()), ("mhc", mhc.values()), ("gap", gaps),
                            ("relative_pct", ratios)):
            s[key], s[key + "_std"] = mean_spread(values)
        out[name] = s
    return out


def smooth(values, window: int) -> np.ndarray:
    """Trailing moving average (the first points average what exists so far)."""
    v = np.asarray(values, float)
    c = np.cumsum(np.insert(v, 0, 0.0))
    idx = np.arange(1, v.size + 1)
    lo = np.maximum(0, idx - window)
    return (c[idx] - c[lo]) / (idx - lo)


def token_gap(res_rows: list[dict], mhc_rows: list[dict], window: int = 10) -> dict:
    """Per logged step: raw and smoothed training-loss gap (mHC − residual), and the eval gaps."""
    res = {r["step"]: r for r in res_rows}
    steps = [r["step"] for r in mhc_rows if r["step"] in res]
    mrow = {r["step"]: r for r in mhc_rows}
    raw = [mrow[s]["loss"] - res[s]["loss"] for s in steps]
    evals = [(s, mrow[s]["eval_loss"] - res[s]["eval_loss"],
              100 * mrow[s]["eval_loss"] / res[s]["eval_loss"])
             for s in steps if "eval_loss" in mrow[s] and "eval_loss" in res[s]]
    return {"steps": steps, "gap": raw, "gap_smooth": smooth(raw, window).tolist(),
            "eval_steps": [e[0] for e in evals], "eval_gap": [e[1] for e in evals],
            "eval_relative_pct": [e[2] for e in evals], "window": window}


def run_ladder(points, seeds, *, runs_root=RUNS, verbose=True,
               regime=STUDY_REGIME) -> dict:
    finals: dict = {}
    configs = {}
    jobs = ladder_plan(points, seeds, runs_root, regime)
    for i, (name, kind, seed, cfg, run_dir) in enumerate(jobs, 1):
        rows = train_or_reuse(cfg, run_dir, verbose=verbose,
                                     label=f"[ladder {i}/{len(jobs)}] {name} {kind} seed {seed}")
        finals.setdefault(name, {}).setdefault(kind, {})[seed] = \
            final_metrics(rows)["eval_loss"]
        configs.setdefault(name, cfg)
    return summarize_ladder(finals, configs)


def mean_token_gap(by_seed: dict) -> dict:
    """{seed: token_gap(...)} -> the same keys averaged over seeds at the steps every seed logged,
    with the eval gap's sample sd over seeds (`eval_gap_std`) and `by_seed` itself."""
    gaps = list(by_seed.values())
    steps = sorted(set.intersection(*(set(g["steps"]) for g in gaps)))
    evals = sorted(set.intersection(*(set(g["eval_steps"]) for g in gaps)))
    out = {"steps": steps, "eval_steps": evals, "window": gaps[0]["window"],
           "seeds": list(by_seed), "by_seed": by_seed}
    for key, at, keys in (("gap", steps, "steps"), ("gap_smooth", steps, "steps"),
                          ("eval_gap", evals, "eval_steps"),
                          ("eval_relative_pct", evals, "eval_steps")):
        table = np.array([[dict(zip(g[keys], g[key]))[s] for s in at] for g in gaps])
        out[key] = table.mean(0).tolist()
        if key == "eval_gap":
            out["eval_gap_std"] = (table.std(0, ddof=1) if len(gaps) > 1
                                   else np.zeros(len(at))).tolist()
    return out


def run_tokens(recipe, overrides, steps, seeds, *, runs_root=RUNS, verbose=True,
               window: int = 10, regime=STUDY_REGIME) -> dict:
    rows: dict = {}
    for kind, seed, cfg, run_dir in token_plan(recipe, overrides, steps, seeds, runs_root,
                                               regime):
        rows.setdefault(seed, {})[kind] = train_or_reuse(
            cfg, run_dir, verbose=verbose, label=f"[tokens] {kind} {steps} steps seed {seed}")
        tokens_per_step = cfg.train.batch_size * cfg.train.seq_len
    out = mean_token_gap({seed: token_gap(r["residual"], r["mhc"], window)
                          for seed, r in rows.items()})
    out["tokens"] = [s * tokens_per_step for s in out["steps"]]
    return out


def plot(ladder: dict | None, tokens: dict | None, path: str, title: str = "") -> None:
    fig, (a, b) = pyplot().subplots(1, 2, figsize=(11, 4.2))
    if ladder:
        names = list(ladder)
        x = [ladder[n]["compute_flops"] for n in names]
        a.errorbar(x, [ladder[n]["gap"] for n in names], yerr=[ladder[n]["gap_std"] for n in names],
                   marker="o", capsize=4, color="tab:blue", label="mHC − residual (eval loss)")
        for n, xi in zip(names, x):
            a.annotate(f"{n} ({ladder[n]['params_active'] / 1e3:.0f}k)",
                       (xi, ladder[n]["gap"]), textcoords="offset points", xytext=(4, 6),
                       fontsize=8)
        a.axhline(0, color="tab:gray", lw=1)
        a.set(xscale="log", xlabel="training compute (FLOPs)", ylabel="loss gap",
              title="(a) compute scaling: gap vs compute (mean ± std over seeds)")
        a.legend(fontsize=8)
    if tokens:
        a2 = b
        a2.plot(tokens["tokens"], tokens["gap"], color="tab:blue", alpha=0.25, lw=0.8,
                label="train loss gap (raw)")
        a2.plot(tokens["tokens"], tokens["gap_smooth"], color="tab:blue",
                label=f"train loss gap (moving average, {tokens['window']} logs)")
        tps = tokens["tokens"][0] / tokens["steps"][0] if tokens["steps"] else 1
        a2.plot([s * tps for s in tokens["eval_steps"]], tokens["eval_gap"], "o-",
                color="tab:red", label="eval loss gap")
        a2.axhline(0, color="tab:gray", lw=1)
        a2.set(xlabel="tokens", ylabel="mHC − residual",
               title=f"(b) token scaling: gap over training (mean of {len(tokens['seeds'])} "
                     "seed(s))")
        a2.legend(fontsize=8)
    for ax in (a, b):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    savefig(fig, path)


def ladder_table(ladder: dict) -> list[str]:
    lines = ["| rung | active params | compute (FLOPs) | residual eval | mHC eval | gap | "
             "mHC / residual |", "|---|---|---|---|---|---|---|"]
    for n, s in ladder.items():
        lines.append(f"| {n} | {s['params_active']:,} | {s['compute_flops']:.3g} | "
                     f"{s['residual']:.3f} ± {s['residual_std']:.3f} | "
                     f"{s['mhc']:.3f} ± {s['mhc_std']:.3f} | {s['gap']:+.3f} ± {s['gap_std']:.3f} "
                     f"| {s['relative_pct']:.2f} % |")
    return lines


def tokens_table(tokens: dict) -> list[str]:
    """One row per eval point: the eval gap mean ± sd over seeds and each seed's."""
    lines = ["| step | tokens | eval gap (mHC − residual) | per seed | mHC / residual | "
             "smoothed train gap |", "|---|---|---|---|---|---|"]
    smooth_at = dict(zip(tokens["steps"], tokens["gap_smooth"]))
    tps = tokens["tokens"][0] / tokens["steps"][0] if tokens["steps"] else 1
    for i, s in enumerate(tokens["eval_steps"]):
        seeds = ", ".join(f"{dict(zip(g['eval_steps'], g['eval_gap']))[s]:+.4f}"
                          for g in tokens["by_seed"].values())
        lines.append(f"| {s} | {int(s * tps):,} | {tokens['eval_gap'][i]:+.4f} ± "
                     f"{tokens['eval_gap_std'][i]:.4f} | {seeds} | "
                     f"{tokens['eval_relative_pct'][i]:.2f} % | "
                     f"{smooth_at.get(s, math.nan):+.4f} |")
    return lines


def micro_points(ladder=LADDER, base=MICRO_OVERRIDES, extra=()) -> dict:
    return {name: ("tiny", [*base, *ladder_overrides(*shape), *extra])
            for name, shape in ladder.items()}
