"""Scaling of the mHC gain: (a) a model-size ladder, residual vs mHC, loss gap vs training compute;
(b) token scaling, the loss gap over the course of one longer residual/mHC run pair.

(a) Ladder: one shape family, width/depth fixed at 16 (d_model 48/64/96 with 3/4/6 blocks, head
dim 16, FFN 3x width), all at the same number of steps and tokens per step (fixed steps, not
fixed tokens per parameter: the bigger models see the same data). Compute = training FLOPs per
token (`mhc.train_step.flops_per_token`, 6 x active params + attention) x tokens. The middle rung is
the micro config of the ablations, so those runs are reused. mHC runs in the CPU studies' H_res
regime (`study.runs.STUDY_REGIME`), where H_res leaves its initialisation within the step budget.
(b) Tokens: the micro config trained longer, one residual/mHC pair per seed; the gap is mHC's
training loss minus the residual's at every logged step (same seed, so the same batches),
smoothed by a moving average, plus the eval-loss gap at each evaluation, averaged over seeds.

    python -m experiments.scaling                        # both parts, CPU
    python -m experiments.scaling --part tokens --token-steps 2000
    python -m experiments.scaling --dry-run              # print the runs
    python -m experiments.scaling --smoke --out /tmp/sc  # seconds: wiring check
"""
from __future__ import annotations

import os
import sys

from study import REPO, flags
from study.report import provenance, runs_line, write_summary
from study.runs import MICRO_OVERRIDES, SMOKE_OVERRIDES, enable_compile_cache, runs_root
from study.scaling import (DEFAULT_SEEDS, LADDER, SMOKE_LADDER, TOKEN_STEPS, compute,
                           ladder_overrides, ladder_plan, ladder_table, micro_points, plot,
                           run_ladder, run_tokens, token_plan, tokens_table)

SEEDS = ",".join(map(str, DEFAULT_SEEDS))
FLAGS = (flags.flag("--part", choices=("all", "ladder", "tokens"), default="all"),
         flags.flag("seeds", default=SEEDS, help="ladder seeds"),
         flags.flag("token-steps", default=TOKEN_STEPS),
         flags.flag("--token-seeds", default=SEEDS, type=flags.parse_seeds,
                    help="seeds of the long run pairs"),
         "out", flags.flag("runs", help="run directories (default: shared experiments/results/"
                                        "trained; with --smoke: <out>/trained)"),
         flags.flag("smoke", help="tiny models, few steps, 1 seed"), "dry-run", "overrides")


def print_plan(points, seeds, token_base, token_steps, token_seeds, runs_root, do_ladder,
               do_tokens) -> None:
    """--dry-run: one line per planned run."""
    if do_ladder:
        for name, kind, seed, cfg, run_dir in ladder_plan(points, seeds, runs_root):
            print(f"ladder {name:3s} {kind:8s} seed {seed} d_model {cfg.model.d_model} "
                  f"L {cfg.model.n_layers} compute {compute(cfg):.3g} -> "
                  f"{os.path.relpath(run_dir)}")
    if do_tokens:
        for kind, seed, cfg, run_dir in token_plan("tiny", token_base, token_steps,
                                                   token_seeds, runs_root):
            print(f"tokens {kind:8s} seed {seed} {cfg.train.steps} steps -> "
                  f"{os.path.relpath(run_dir)}")


def report(out, ladder, tokens, read, meta, seeds, token_seeds, token_steps) -> None:
    """The figure, summary.json and summary.md of the ladder and the token pairs."""
    plot(ladder, tokens, os.path.join(out, "scaling.png"))
    lines = ["# Scaling of the mHC gain", "",
             f"{runs_line(meta, len(read))} Base overrides: `{' '.join(meta['overrides'])}`.", ""]
    if ladder:
        lines += [f"## (a) model ladder (fixed steps, seeds {list(seeds)}; gap = eval loss, "
                  "paired by seed, ± std)", "", *ladder_table(ladder), ""]
    if tokens:
        lines += [f"## (b) token scaling ({token_steps} steps, seeds {list(token_seeds)}; ± sd)",
                  "",
                  *tokens_table(tokens), ""]
    write_summary(out, meta, {"ladder": ladder, "tokens": tokens}, lines)


def main(argv=None) -> int:
    args = flags.parser(__doc__, *FLAGS,
                        out=os.path.join(REPO, "experiments", "results", "scaling")
                        ).parse_args(argv)
    seeds, token_seeds = args.seeds, args.token_seeds
    base, ladder_shapes, token_steps = list(MICRO_OVERRIDES), LADDER, args.token_steps
    if args.smoke:
        base = [*base, *SMOKE_OVERRIDES]
        # 4 steps: the token pair is then the "s" rung's seed-0 runs (reused)
        ladder_shapes, seeds, token_seeds, token_steps = SMOKE_LADDER, seeds[:1], seeds[:1], 4
    root = runs_root(args.runs, args.out, args.smoke)
    points = micro_points(ladder_shapes, base, args.overrides)
    token_base = [*base, *ladder_overrides(*ladder_shapes["s"]), *args.overrides]
    do_ladder, do_tokens = args.part in ("all", "ladder"), args.part in ("all", "tokens")
    if args.dry_run:
        print_plan(points, seeds, token_base, token_steps, token_seeds, root, do_ladder,
                   do_tokens)
        return 0
    enable_compile_cache()
    verbose = not args.smoke
    ladder = run_ladder(points, seeds, runs_root=root, verbose=verbose) if do_ladder else None
    tokens = run_tokens("tiny", token_base, token_steps, token_seeds, runs_root=root,
                        verbose=verbose, window=3 if args.smoke else 10) if do_tokens else None
    os.makedirs(args.out, exist_ok=True)
    read = ([job[-1] for job in ladder_plan(points, seeds, root)] if do_ladder else []) + (
        [job[-1] for job in token_plan("tiny", token_base, token_steps, token_seeds,
                                       root)] if do_tokens else [])
    meta = {**provenance(read), "ladder_seeds": list(seeds), "token_steps": token_steps,
            "token_seeds": list(token_seeds), "overrides": [*base, *args.overrides]}
    report(args.out, ladder, tokens, read, meta, seeds, token_seeds, token_steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
