"""Paper Table 1: which of HC's three maps gives the gain (arXiv 2512.24880, Table 1).

Disabled maps are fixed at the residual's values (H_pre -> 1/n, H_post -> ones, H_res -> I), i.e.
`residual=hc learned_maps=...`; "none" is the plain residual baseline. Gap = final eval loss of the
variant minus the baseline's, paired by seed; mean ± std over seeds.

    python -m paper_repro.table1_hc_ablation                     # micro config, 3 seeds, CPU
    python -m paper_repro.table1_hc_ablation --seeds 0,1,2,3,4 steps=400
    python -m paper_repro.table1_hc_ablation --scale paper --mesh fsdp=64,expert=8 --dry-run
    python -m paper_repro.table1_hc_ablation --smoke --out /tmp/t1
"""
from __future__ import annotations

import os
import sys

import numpy as np

from study import REPO, ablations, flags, plots
from study.metrics import mean_spread
from study.report import RESULTS, provenance, publish, write_json
from study.runs import (MICRO_OVERRIDES, SMOKE_OVERRIDES, enable_compile_cache, make_config,
                        run_dir_for, runs_root, train_or_reuse)
from study.verdict import Row, all_of, seeded_verdict, seeds_note

# what the paper shows and the runtime on 2 CPU cores: the paper_repro page lists every
# script that declares them (paper_repro/collect.py)
TITLE = "Table 1: HC component ablation"
RUNTIME = "about 15 min (4 variants x 3 seeds)"

# (label, overrides, paper's loss gap vs baseline) in the paper's row order
VARIANTS = (
    ("none (residual)", ("residual=residual",), 0.0),
    ("H_res", ("residual=hc", "learned_maps=res"), -0.022),
    ("H_res + H_pre", ("residual=hc", "learned_maps=res,pre"), -0.025),
    ("H_res + H_pre + H_post", ("residual=hc", "learned_maps=pre,post,res"), -0.027),
)
PAPER_RECIPE = "27b"
# Table 1's own runs, 3 seeds with provenance (HC variants only; the residual baseline is
# trained here too, so the table reads one folder)
TABLE1_RUNS = os.path.join(REPO, "experiments", "results", "table1", "trained")
FLAGS = ("scale", flags.flag("recipe", help=f"default: tiny + micro overrides (small), "
                                            f"{PAPER_RECIPE} (paper)"),
         "mesh", flags.flag("seeds", help="default 0,1,2 (small) or 0 (paper)"), "out",
         flags.flag("runs", help="run directories (default: experiments/results/table1/trained; "
                                 "--smoke: <out>/trained)"),
         flags.flag("smoke", help="tiny model, 4 steps, 1 seed"), "dry-run", "overrides")


def plan(seeds, base_overrides, recipe, runs_root):
    return [(label, seed, cfg, run_dir_for(cfg, runs_root))
            for label, ov, _ in VARIANTS for seed in seeds
            for cfg in [make_config(recipe, [*base_overrides, *ov, f"seed={seed}"])]]


def rows_from(per_seed: dict) -> list[Row]:
    """Paper-vs-ours rows: each variant's gap, then the claims (sign, ordering, H_res share).
    `per_seed`: {label: {seed: run metrics}}; every verdict is judged on the per-seed gaps."""
    labels = [v[0] for v in VARIANTS]
    paper = {label: gap for label, _, gap in VARIANTS}
    base = per_seed[labels[0]]
    gaps = {label: np.array([per_seed[label][k]["eval_loss"] - base[k]["eval_loss"]
                             for k in sorted(per_seed[label]) if k in base])
            for label in labels[1:]}
    res, pre, full = (gaps[label] for label in labels[1:])
    rows = []
    for label in labels[1:]:
        rows.append(Row(f"loss gap, {label} learned", f"{paper[label]:+.3f}",
                        f"{ablations.fmt(*mean_spread(gaps[label]), n=len(gaps[label]))}"
                        f"; seeds {', '.join(f'{x:+.3f}' for x in gaps[label])}",
                        seeded_verdict(gaps[label], -1)))
    means = [float(gaps[label].mean()) for label in labels[1:]]
    # paired by seed: each step down the paper's order must lower the gap on every seed
    rows.append(Row("ordering: more learned maps, larger gain", "-0.022 > -0.025 > -0.027",
                    " > ".join(f"{g:+.3f}" for g in means) + f"; {seeds_note(len(res))}",
                    all_of({"gap(H_res) > gap(+H_pre)": seeded_verdict(res - pre, +1),
                            "gap(+H_pre) > gap(+H_post)": seeded_verdict(pre - full, +1)})))
    # "most of the gain": the full gap is negative and H_res's is below half of it, per seed
    # (a difference, not the share, whose denominator can cross zero)
    share = means[0] / means[2] if means[2] != 0 else np.nan
    rows.append(Row("H_res alone gives most of the gain (share of the full gap)",
                    "0.022 / 0.027 = 81 %",
                    f"{100 * share:.0f} % of the mean gaps; per seed H_res gap − half the full "
                    "gap: " + ", ".join(f"{x:+.3f}" for x in res - full / 2),
                    all_of({"full gap < 0": seeded_verdict(full, -1),
                            "H_res gap < half of it": seeded_verdict(res - full / 2, -1)})))
    return rows


def plot(summary: dict, path: str, title: str) -> None:
    labels = [v[0] for v in VARIANTS]
    x = np.arange(len(labels))
    fig, ax = plots.pyplot().subplots(figsize=(7.5, 4.2))
    ax.bar(x - 0.2, [v[2] for v in VARIANTS], 0.4, color="tab:gray", label="paper (27B)")
    ax.bar(x + 0.2, [summary[lab]["gap"] for lab in labels], 0.4,
           yerr=[summary[lab]["gap_std"] for lab in labels], capsize=4, color="tab:red",
           label="ours (mean ± std over seeds)")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, fontsize=8)
    ax.set(ylabel="final loss − baseline", title=title)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    plots.savefig(fig, path)


def setup(args) -> tuple[str, list[str], tuple[int, ...]]:
    """(recipe, overrides of every run, seeds) at --scale."""
    paper = args.scale == "paper"
    seeds = args.seeds or ((0,) if paper else (0, 1, 2))
    recipe = args.recipe or (PAPER_RECIPE if paper else "tiny")
    if paper:
        base = [*([f"mesh={args.mesh}"] if args.mesh else []), *args.overrides]
    elif args.smoke:
        base, seeds = [*MICRO_OVERRIDES, *SMOKE_OVERRIDES, *args.overrides], seeds[:1]
    else:
        base = [*MICRO_OVERRIDES, *args.overrides]
    return recipe, base, seeds


def print_plan(jobs, recipe: str) -> None:
    """--dry-run: one line per planned run."""
    for label, seed, cfg, run_dir in jobs:
        m = cfg.model
        print(f"{label:24s} seed {seed}  recipe {recipe} d_model {m.d_model} L {m.n_layers} "
              f"{m.residual} learned_maps={m.learned_maps if m.residual == 'hc' else '-'} "
              f"mesh={cfg.train.mesh or '-'} -> {os.path.relpath(run_dir)}")


def report(args, argv, jobs, per_seed: dict, recipe: str, base, seeds) -> int:
    """The figure, table1_hc_ablation.json and the paper-vs-ours table of {label: {seed: run
    metrics}}."""
    summary = ablations.summarize(per_seed, baseline=VARIANTS[0][0])
    os.makedirs(args.out, exist_ok=True)
    scale = f"{recipe}{'' if args.scale == 'paper' else ' + micro overrides'}, seeds {list(seeds)}"
    plot(summary, os.path.join(args.out, "table1_hc_ablation.png"),
         f"HC component ablation (Table 1): paper 27B vs ours ({scale})")
    write_json(os.path.join(args.out, "table1_hc_ablation.json"),
               {"meta": {**provenance(), "recipe": recipe, "overrides": base,
                         "seeds": list(seeds)},
                "summary": summary, "per_seed": per_seed})
    lines = ["| variant (learned maps) | final eval loss | gap (ours) | paper gap |",
             "|---|---|---|---|"]
    for label, _, gap in VARIANTS:
        s, n = summary[label], len(summary[label]["seeds"])
        lines.append(f"| {label} ({n} seed{'s' * (n > 1)}) | "
                     f"{ablations.fmt(s['eval_loss'], s['eval_loss_std'], n=n)} | "
                     f"{ablations.fmt(s['gap'], s['gap_std'], n=n)} | {gap:+.3f} |")
    notes = (f"Ours: {scale}; `{' '.join(base)}`. Gap = final eval loss (16 fixed held-out "
             "batches) minus the residual's, paired by seed; ± = sample sd over seeds. The "
             "ordering and share rows compare variants seed by seed. Paper: 27B MoE, 262B "
             "tokens.\n\n" + "\n".join(lines))
    return publish("table1_hc_ablation", "Table 1: HC component ablation", rows_from(per_seed),
                   args.out, argv, notes, [run_dir for *_, run_dir in jobs])


def main(argv=None) -> int:
    args = flags.parser(__doc__, *FLAGS, out=RESULTS).parse_args(argv)
    recipe, base, seeds = setup(args)
    jobs = plan(seeds, base, recipe, runs_root(args.runs, args.out, args.smoke, TABLE1_RUNS))
    if args.dry_run:
        print_plan(jobs, recipe)
        return 0
    enable_compile_cache()
    per_seed: dict = {}
    for i, (label, seed, cfg, run_dir) in enumerate(jobs, 1):
        rows = train_or_reuse(cfg, run_dir, verbose=not args.smoke,
                              label=f"[{i}/{len(jobs)}] {label} seed {seed}")
        per_seed.setdefault(label, {})[seed] = ablations.run_metrics(rows)
    return report(args, argv, jobs, per_seed, recipe, base, seeds)


if __name__ == "__main__":
    sys.exit(main())
