"""Paper Fig. 6: (a) the mHC gain across model sizes vs training compute, (b) over training tokens
(arXiv 2512.24880; PAPER.md §6). Runs `experiments/scaling.py`'s ladder and long run pair.

Small scale: the micro ladder (d_model 48/64/96, 3/4/6 blocks, fixed steps) and a 400-step pair.
Paper scale: 3B/9B/27B recipes (Table 5) for (a) and the 3B-1T run for (b), on a mesh.

    python paper_repro/fig6_scaling.py                                   # CPU
    python paper_repro/fig6_scaling.py --scale paper --mesh fsdp=64,expert=8 --dry-run
    python paper_repro/fig6_scaling.py --smoke --out /tmp/f6
"""
from __future__ import annotations

import argparse
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from experiments import common, scaling  # noqa: E402
from experiments.ablations import parse_seeds  # noqa: E402
from paper_repro.common import RESULTS, Row, command_line, write  # noqa: E402

PAPER_LADDER = ("3b", "9b", "27b")
PAPER_TOKENS = "3b-1t"
PAPER_ABS = (-0.025, -0.015)  # PAPER.md §6: plots read roughly -0.015 ... -0.025 absolute
PAPER_REL = (98.5, 99.2)      # ... and about 98.5-99.2 % relative


def rows_from(ladder: dict, tokens: dict) -> list[Row]:
    rows = []
    single = min(len(s["seeds"]) for s in ladder.values()) < 2
    tag = " (1 seed: spread unknown)" if single else ""
    for name, s in ladder.items():
        within = abs(s["gap"]) <= s["gap_std"] and not single
        rows.append(Row(f"(a) gap at {name} ({s['compute_flops']:.2g} FLOPs)",
                        "-0.015 ... -0.025 (3B/9B/27B)",
                        f"{s['gap']:+.4f}" + ("" if single else f" ± {s['gap_std']:.4f}")
                        + f" ({s['relative_pct']:.2f} %)",
                        "within noise" if within else ("yes" if s["gap"] < 0 else "no") + tag))
    names = list(ladder)
    gaps = [ladder[n]["gap"] for n in names]
    noise = max(ladder[n]["gap_std"] for n in names)
    holds = all(g < 0 for g in gaps)
    rows.append(Row("(a) the gain holds across sizes (gap < 0 at every rung)",
                    "yes, with only slight attenuation",
                    ", ".join(f"{n}: {g:+.4f}" for n, g in zip(names, gaps)),
                    ("yes" if holds else "partly" if any(g < 0 for g in gaps) else "no") + tag
                    if single else
                    "yes" if holds and min(abs(g) for g in gaps) > noise else
                    ("within noise" if all(abs(g) <= noise for g in gaps) else
                     ("partly" if any(g < 0 for g in gaps) else "no"))))
    if tokens and tokens["eval_gap"]:
        first, last = tokens["eval_gap"][0], tokens["eval_gap"][-1]
        rel = tokens["eval_relative_pct"][-1]
        rows.append(Row("(b) gap at the end of the long run (eval loss)",
                        "-0.015 ... -0.025, 98.5-99.2 %", f"{last:+.4f} ({rel:.2f} %)",
                        "yes" if last < 0 and PAPER_REL[0] - 1 <= rel < 100 else
                        ("partly" if last < 0 else "no")))
        rows.append(Row("(b) the gap persists over training (first vs last evaluation)",
                        "holds with slight attenuation",
                        f"{first:+.4f} -> {last:+.4f} (smoothed train gap "
                        f"{tokens['gap_smooth'][-1]:+.4f})",
                        "yes" if last < 0 and first < 0 else ("partly" if last < 0 else "no")))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", choices=("small", "paper"), default="small")
    p.add_argument("--mesh", default="", help="paper scale: e.g. fsdp=64,expert=8")
    p.add_argument("--seeds", default=None, help="ladder seeds (default 0,1,2 small, 0 paper)")
    p.add_argument("--token-steps", type=int, default=scaling.TOKEN_STEPS,
                   help="small scale: length of the long run pair")
    p.add_argument("--out", default=RESULTS)
    p.add_argument("--runs", default=None, help="run directories (default: the shared "
                   "experiments/results/trained; --smoke: <out>/trained)")
    p.add_argument("--smoke", action="store_true", help="tiny models, few steps, 1 seed")
    p.add_argument("--dry-run", action="store_true", help="print the runs, train nothing")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    args = p.parse_args(argv)
    paper = args.scale == "paper"
    seeds = parse_seeds(args.seeds or ("0" if paper else ",".join(map(str, scaling.DEFAULT_SEEDS))))
    runs_root = args.runs or (os.path.join(args.out, "trained") if args.smoke else common.RUNS)
    if paper:
        extra = [*([f"mesh={args.mesh}"] if args.mesh else []), *args.overrides]
        points = {name: (name, extra) for name in PAPER_LADDER}
        token_recipe, token_base = PAPER_TOKENS, extra
        token_steps = common.make_config(PAPER_TOKENS, extra).train.steps
    else:
        base, shapes, token_steps = list(common.MICRO_OVERRIDES), scaling.LADDER, args.token_steps
        if args.smoke:
            base = [*base, *common.SMOKE_OVERRIDES]
            shapes, seeds, token_steps = scaling.SMOKE_LADDER, seeds[:1], 4
        points = scaling.micro_points(shapes, base, args.overrides)
        token_recipe = "tiny"
        token_base = [*base, *scaling.ladder_overrides(*shapes["s"]), *args.overrides]
    if args.dry_run:
        for name, kind, seed, cfg, run_dir in scaling.ladder_plan(points, seeds, runs_root):
            m = cfg.model
            print(f"(a) {name:5s} {kind:8s} seed {seed} d_model {m.d_model} L {m.n_layers} "
                  f"ffn {m.ffn} steps {cfg.train.steps} mesh={cfg.train.mesh or '-'} "
                  f"compute {scaling.compute(cfg):.3g} FLOPs -> {os.path.relpath(run_dir)}")
        for kind, cfg, run_dir in scaling.token_plan(token_recipe, token_base, token_steps,
                                                     seeds[0], runs_root):
            print(f"(b) {token_recipe:5s} {kind:8s} steps {cfg.train.steps} "
                  f"batch {cfg.train.batch_size} mesh={cfg.train.mesh or '-'} -> "
                  f"{os.path.relpath(run_dir)}")
        return 0
    common.enable_compile_cache()
    verbose = not args.smoke
    ladder = scaling.run_ladder(points, seeds, runs_root=runs_root, verbose=verbose)
    tokens = scaling.run_tokens(token_recipe, token_base, token_steps, seeds[0],
                                runs_root=runs_root, verbose=verbose,
                                window=3 if args.smoke else 10)
    os.makedirs(args.out, exist_ok=True)
    what = "paper recipes" if paper else "micro ladder (CPU)"
    scaling.plot(ladder, tokens, os.path.join(args.out, "fig6_scaling.png"),
                 f"Fig. 6 at small scale: {what}; paper: gap about -0.015 ... -0.025 "
                 "(98.5-99.2 %), holding with slight attenuation")
    common.write_json(os.path.join(args.out, "fig6_scaling.json"),
                      {"meta": {**common.provenance(), "seeds": list(seeds),
                                "token_steps": token_steps},
                       "ladder": ladder, "tokens": tokens})
    notes = "\n".join([
        f"Ours: {what}, ladder seeds {list(seeds)}, fixed steps per rung (the same tokens for "
        "every size); compute = FLOPs per token (6 x active params + attention) x tokens, of the "
        "residual model. Gap = mHC eval loss − residual's, paired by seed; ± = std over seeds. "
        "(b) is one seed: the smoothed train-loss gap compares the same batches. 'within noise' "
        "= |gap| not above the seed spread. Paper: 3B/9B/27B MoE (a) and 3B on 1T tokens (b).",
        "", *scaling.ladder_table(ladder), "", *scaling.tokens_table(tokens)])
    text = write("fig6_scaling", "Fig. 6: compute and token scaling of the mHC gain",
                 rows_from(ladder, tokens), args.out,
                 command_line("fig6_scaling.py", argv if argv is not None else sys.argv[1:]),
                 notes)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
