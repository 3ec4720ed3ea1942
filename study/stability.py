"""The plan of the stability study: residual, HC and mHC trained on the same data order and
schedule, one run per kind and seed in `<runs>/<kind>-s<seed>`, read by `experiments/stability.py`
(its summary) and by the paper figures built on it (Figs. 2, 3, 5, 7 and 8; Table 4's default
checkpoints), which train the study once and reuse its runs.

The same seed gives every kind the same data order, so kinds pair by seed. The small scale trains
the connections in the study regime (`study.runs.STUDY_REGIME`, where H_res leaves its
initialisation) with gradient clipping off, so that a gradient surge is measured rather than
clipped away.
"""
from __future__ import annotations

import os

from study import REPO, flags, plots
from study.report import RESULTS
from study.runs import (SMOKE_OVERRIDES, finished, make_config, regime_overrides,
                        train_or_reuse)

KINDS = ("residual", "hc", "mhc")
SEEDS = (0, 1, 2, 3, 4)  # Fig. 5 is a headline claim: the verdict rule needs 5 seeds
# The documented small scale (README): 12 blocks = 24 sites, C = 128, 300 steps on 2 CPU cores.
# Clipping off: Fig. 2's gradient surge is what is measured, and a clip at 1 would hide it.
SMALL = ("small", ("steps=300", "lr=4e-3", "warmup_steps=30", "eval_every=50", "log_every=25",
                   "grad_clip=0", "nan_patience=301", "checkpoint=true", "checkpoint_every=300",
                   "keep_last=1", "wandb=disabled"))
PAPER_SCALE = ("27b", ("wandb=disabled",))  # Table 5's 27B; add mesh=... for the hardware
DEFAULT_RUNS = os.path.join(REPO, "experiments", "results", "stability")

# the study's flags (experiments/stability.py); the figures add FIGURE_FLAGS
FLAGS = (flags.flag("scale", help="small: CPU minutes (default); paper: the 27B recipe (pass "
                                  "mesh=...)"),
         flags.kinds(KINDS),
         flags.flag("seeds", help=f"comma list (default {','.join(map(str, SEEDS))}; "
                                  "--smoke: 0)"),
         "out", flags.flag("smoke", help="tiny model, 4 steps (wiring check)"), "overrides")
FIGURE_FLAGS = (flags.flag("runs", help="run directories (default: experiments/results/"
                                        "stability, or OUT/runs with --smoke)"), "no-train")


def run_dir(out_dir: str, kind: str, seed: int) -> str:
    return os.path.join(out_dir, f"{kind}-s{seed}")


def config(recipe: str, kind: str, seed: int, overrides):
    """The config of one run: `kind`'s residual, the study regime's connection options that
    apply to it, then `overrides` (which win), then the seed."""
    kind_ov = [f"residual={kind}"]
    return make_config(recipe, [*kind_ov, *regime_overrides(kind_ov), *overrides, f"seed={seed}"])


def run_all(recipe: str, kinds, seeds, overrides, out_dir, *, verbose=True) -> dict:
    """{kind: {seed: metrics rows}}, trained into `run_dir(out_dir, kind, seed)` (a finished
    run of the same config is reused, so the paper_repro figures built on this study train it
    once). Seeds go outermost, so an interrupted study has whole seeds of every kind."""
    results = {kind: {} for kind in kinds}
    for seed in seeds:
        for kind in kinds:
            results[kind][seed] = train_or_reuse(config(recipe, kind, seed, overrides),
                                                 run_dir(out_dir, kind, seed),
                                                 verbose=verbose, label=f"{kind} seed {seed}")
    return results


def read_all(recipe: str, kinds, seeds, overrides, out_dir) -> dict:
    """{kind: {seed: metrics rows}} of the finished runs in `out_dir`, training nothing (exits
    naming the first run that is missing or unfinished)."""
    return {kind: {seed: logged_rows(config(recipe, kind, seed, overrides),
                                     run_dir(out_dir, kind, seed))
                   for seed in seeds} for kind in kinds}


def run_dirs(out_dir: str, results: dict) -> list[str]:
    """The run directories behind {kind: {seed: rows}}."""
    return [run_dir(out_dir, kind, seed) for kind, by_seed in results.items() for seed in by_seed]


def scale_setup(scale: str, smoke: bool, overrides=()) -> tuple[str, list[str]]:
    """(recipe, overrides) of the study at a scale: "small" (CPU minutes), "paper" (27B), or the
    few-second smoke check; user overrides come last."""
    if smoke:
        return "tiny", [*SMOKE_OVERRIDES, *overrides]
    recipe, base = {"small": SMALL, "paper": PAPER_SCALE}[scale]
    return recipe, [*base, *overrides]


def seeds_of(args) -> tuple[int, ...]:
    """--seeds, or the default: the study's seeds (--smoke: seed 0)."""
    return args.seeds or ((0,) if args.smoke else SEEDS)


# ------------------------------------------------------ figures built on the stability study
def parser(doc: str, *extra):
    """Arguments shared by the figures that read the residual/HC/mHC stability runs: --scale,
    --kinds, --seeds, --out (default paper_repro/results), --smoke, key=value overrides, --runs
    (where the runs live; a finished run of the same config there is reused, so the figures
    train the study once) and --no-train (read the finished runs' metrics, never train); then
    a figure's own `extra` flags (`study.flags.flag` specs)."""
    return flags.parser(doc, *FLAGS, *FIGURE_FLAGS, *extra, out=RESULTS)


def results(args, kinds=None) -> tuple[dict, str]:
    """({kind: {seed: metrics rows}}, runs directory) of the stability study at `args.scale`,
    for the seeds of `args.seeds` (the study's default: 5; --smoke: 1)."""
    # smoke runs keep their (tiny) final checkpoint so Fig. 8 reuses the same runs
    extra = ["checkpoint=true"] if args.smoke else []
    recipe, overrides = scale_setup(args.scale, args.smoke, [*extra, *args.overrides])
    default = "stability" if args.scale == "small" else f"stability_{args.scale}"
    runs = args.runs or (os.path.join(args.out, "runs") if args.smoke else
                         os.path.join(REPO, "experiments", "results", default))
    kinds = kinds or args.kinds
    seeds = seeds_of(args)
    if args.no_train:
        return read_all(recipe, kinds, seeds, overrides, runs), runs
    return run_all(recipe, kinds, seeds, overrides, runs, verbose=not args.smoke), runs


def kind_results(args, kind: str) -> tuple[dict, list[int], str, list[str]]:
    """({seed: metrics rows}, its seeds in order, runs directory, the run directories read) of
    one kind of the study, for a figure of that kind alone (Figs. 3 and 7)."""
    by_kind, runs = results(args, [kind])
    return by_kind[kind], sorted(by_kind[kind]), runs, run_dirs(runs, by_kind)


def amax_figure(args, kind: str, title: str, name: str) -> tuple[dict, list[str], str]:
    """Figs. 3 and 7: the runs of one `kind` and its per-site Amax figure
    (`study.plots.amax_figure`) of the first seed, drawn to OUT/<name>.png. Returns ({seed:
    metrics rows}, the run directories read, the first sentence of the figure's notes)."""
    by_seed, seeds, runs, read = kind_results(args, kind)
    plots.amax_figure(by_seed[seeds[0]], kind, f"{title} (seed {seeds[0]})",
                      os.path.join(args.out, f"{name}.png"))
    return by_seed, read, (f"{runs_note(runs, seeds)} (the plot: the first). Peaks are the "
                           "per-step scalars of metrics.jsonl (every step)")


def runs_note(runs: str, seeds) -> str:
    """The start of a figure's notes: where its runs are (relative to the repository) and the
    seeds it read."""
    return f"Runs: `{os.path.relpath(runs, REPO)}`, seeds {', '.join(map(str, seeds))}"


def logged_rows(cfg, run_dir: str) -> list[dict]:
    """The metrics rows of a finished run of `cfg` in `run_dir`, read without training (exits
    naming the run otherwise). The final checkpoint is not asked for: checkpoints are not
    committed, and Figs. 2, 3, 5 and 7 read only metrics."""
    from mhc.metrics import read_jsonl
    if not finished(cfg, run_dir, need_checkpoint=False):
        raise SystemExit(f"--no-train: {run_dir} holds no finished run of this config "
                         f"({cfg.train.steps} steps); run without --no-train to train it")
    return read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
