"""Distillation at micro scale: does a residual teacher help a residual student, an mHC student,
and the mHC student more than the residual one? (issue 27; `teacher=RUN_DIR`, `mhc.distill`)

The teacher: a plain residual model at the tiny recipe's width (d_model 128, 4 blocks) trained
TEACHER_STEPS steps on the micro data (16 x 64 bytes a step), seed 0: larger and longer-trained
than the students. The students: the micro config of the ablation and scaling studies
(`study.runs.MICRO_OVERRIDES`: d_model 64, 4 blocks, 200 steps), residual or mHC (mHC in the CPU
studies' H_res regime, `study.runs.regime_overrides`), each trained with the teacher
(distill_weight WEIGHT, temperature TEMPERATURE) and without it, on the same seeds (same init and
data order within a seed). The measure is the final eval loss, the data cross-entropy on 16
fixed held-out batches: distillation only helps if the student predicts the data better.

Verdicts (the rule of `study.verdict`, paired by seed): for each student, is its eval loss with
the teacher below its loss without (gain = without - with); and is the mHC student's gain
larger than the residual student's (difference of gains, paired by seed). Writes
`experiments/results/distill/` (records of every run, the teacher's included; summary.md and
summary.json computed from the records alone).

    python -m experiments.distill                   # 5 seeds; finished runs are reused
    python -m experiments.distill --only-finished   # tabulate the records, train nothing
    python -m experiments.distill --smoke --out /tmp/distill
"""
from __future__ import annotations

import os
import sys

from study import REPO, flags, lr_grid
from study.metrics import mean_spread
from study.report import provenance, runs_commits, write_summary
from study.runs import (MICRO_OVERRIDES, RECORDS, SMOKE_OVERRIDES, compact_run, make_config,
                        recorded, regime_overrides, runs_root, train_or_resume, write_record)
from study.verdict import RULE, seeded_verdict, values_cell

STUDENTS = {"residual": ("residual=residual",), "mhc": ("residual=mhc",)}  # + their regime
TEACHER_STEPS = 400
TEACHER = ("residual=residual", "d_model=128", "d_ff=384", f"steps={TEACHER_STEPS}",
           "warmup_steps=40", "eval_every=200", "checkpoint=true", "checkpoint_every=0",
           "keep_last=1", "seed=0")
WEIGHT, TEMPERATURE = 0.5, 2.0
# the students' records name the teacher by its place in the runs folder (a checkout elsewhere
# matches them); the config that trains gets the real path
TEACHER_NAME, RUNS_TOKEN = "teacher", "<runs>"
DISTILL = (f"teacher={RUNS_TOKEN}/{TEACHER_NAME}", f"distill_weight={WEIGHT}",
           f"distill_temperature={TEMPERATURE}")
SEEDS = (0, 1, 2, 3, 4)
KEEP = ("step", "loss", "eval_loss", "distill_kl", "distill_objective", "grad_norm", "lr",
        "h_res_offdiag")
FLAGS = (flags.kinds(STUDENTS, help=f"students, comma list of: {', '.join(STUDENTS)}"),
         flags.flag("seeds", default=",".join(map(str, SEEDS)), help=None), "out",
         flags.flag("runs", help="where runs train (default runs/distill)"),
         flags.flag("only-finished", help="train nothing"),
         flags.flag("smoke", help="tiny models, 4 steps: wiring check"))


def _job(name: str, overrides, root: str, **labels) -> tuple:
    """(name, labels, overrides as recorded, config, run directory)."""
    real = [o.replace(RUNS_TOKEN, root) for o in overrides]
    return (name, labels, list(overrides), make_config("tiny", real), os.path.join(root, name))


def plan(kinds, seeds, smoke: bool, root: str) -> tuple[tuple, list[tuple]]:
    """(teacher job, student jobs seed by seed: each kind without and with the teacher)."""
    base = [*MICRO_OVERRIDES, *(SMOKE_OVERRIDES if smoke else ())]
    teacher = _job(TEACHER_NAME, [*base, *TEACHER, *(("steps=4",) if smoke else ())], root)
    jobs = []
    for seed in seeds:
        for kind in kinds:
            for distilled in (False, True):
                name = f"{kind}{'-distilled' if distilled else ''}-s{seed}"
                ov = [*base, *STUDENTS[kind], *regime_overrides(STUDENTS[kind]),
                      *(DISTILL if distilled else ()), f"seed={seed}"]
                jobs.append(_job(name, ov, root, kind=kind, distilled=distilled, seed=seed))
    return teacher, jobs


def train_all(teacher, jobs, records_dir: str, verbose: bool) -> None:
    """Train the teacher (kept with its checkpoint: the students read it) when a student has no
    record yet, then every student without a record."""
    name, _, overrides, cfg, run_dir = teacher
    todo = [j for j in jobs if not recorded(os.path.join(records_dir, f"{j[0]}.json"), j[2])]
    if not todo:
        return
    lr_grid.enable_compile_cache()
    train_or_resume(cfg, run_dir, verbose=verbose, label=name, keep_checkpoints=True)
    write_record(os.path.join(records_dir, f"{name}.json"), compact_run(run_dir, overrides, KEEP))
    lr_grid.record_all(todo, records_dir, verbose=verbose, keep=KEEP)


def final(record: dict, key: str = "eval_loss") -> float:
    return [r[key] for r in record["rows"] if key in r][-1]


def table(records: dict, kinds, seeds) -> tuple[list[str], dict]:
    """The Markdown table (a row per student, then the difference of gains) and its numbers."""
    gains, out = {}, {}
    lines = ["| student | seeds | eval loss without teacher | eval loss with teacher | "
             "KL to teacher at the end (T = 2) | gain (without − with), per seed | does "
             "distillation help? |", "|---|" + "---|" * 6]
    for kind in kinds:
        pairs = [s for s in seeds if (kind, False, s) in records and (kind, True, s) in records]
        if not pairs:
            continue
        plain = [final(records[(kind, False, s)]) for s in pairs]
        taught = [final(records[(kind, True, s)]) for s in pairs]
        kl = [final(records[(kind, True, s)], "distill_kl") for s in pairs]
        gains[kind] = dict(zip(pairs, (p - t for p, t in zip(plain, taught))))
        verdict = seeded_verdict(list(gains[kind].values()), +1)
        out[kind] = {"seeds": pairs, "eval_loss_plain": plain, "eval_loss_distilled": taught,
                     "distill_kl_end": kl, "gain": list(gains[kind].values()), "verdict": verdict}
        cell = lambda v: "{:.4f} ± {:.4f}".format(*mean_spread(v))  # noqa: E731
        lines.append(f"| {kind} | {len(pairs)} | {cell(plain)} | {cell(taught)} | {cell(kl)} | "
                     f"{values_cell(gains[kind].values())} | {verdict} |")
    if {"residual", "mhc"} <= set(gains):
        both = [s for s in gains["mhc"] if s in gains["residual"]]
        diff = [gains["mhc"][s] - gains["residual"][s] for s in both]
        verdict = seeded_verdict(diff, +1)
        out["mhc_minus_residual_gain"] = {"seeds": both, "values": diff, "verdict": verdict}
        lines += ["", "| claim | per seed (mHC gain − residual gain) | mean | verdict |",
                  "|---|---|---|---|",
                  f"| the mHC student gains more than the residual student | "
                  f"{values_cell(diff)} | {mean_spread(diff)[0]:+.4f} | {verdict} |"]
    return lines, out


def report(out: str, teacher, jobs, records: dict, teacher_record, kinds, seeds) -> None:
    meta = provenance()
    lines, numbers = table(records, kinds, seeds)
    every = [*records.values(), *([teacher_record] if teacher_record else [])]
    teacher_loss = final(teacher_record) if teacher_record else float("nan")
    student = " ".join(o for o in MICRO_OVERRIDES if not o.startswith(("wandb", "checkpoint")))
    lines = ["# Distillation: a residual teacher, a residual and an mHC student", "",
             f"{meta['date']}, commit {meta['commit']}, {meta['device']}, jax {meta['jax']}. "
             f"{len(every)} runs, trained at commits {runs_commits(records=every)}.", "",
             f"Teacher: `{' '.join(TEACHER)}` on the micro data, final eval loss "
             f"{teacher_loss:.4f}. Students: `{student}`, mHC in the regime "
             f"`{' '.join(regime_overrides(STUDENTS['mhc']))}`; with the teacher: "
             f"distill_weight {WEIGHT}, distill_temperature {TEMPERATURE} (objective "
             "(1 − a) CE + a T² KL). Eval loss: "
             "data cross-entropy on 16 fixed held-out batches at the last step.", "",
             *lines, "", RULE]
    missing = [j[0] for j in jobs if (j[1]["kind"], j[1]["distilled"], j[1]["seed"])
               not in records]
    write_summary(out, meta, {"teacher_eval_loss": teacher_loss, **numbers}, lines, missing)


def main(argv=None) -> int:
    args = flags.parser(__doc__, *FLAGS,
                        out=os.path.join(REPO, "experiments", "results", "distill")
                        ).parse_args(argv)
    root = os.path.abspath(runs_root(args.runs, args.out, args.smoke,
                                     os.path.join(REPO, "runs", "distill")))
    records_dir = os.path.join(args.out, RECORDS)
    teacher, jobs = plan(args.kinds, args.seeds, args.smoke, root)
    if not args.only_finished:
        train_all(teacher, jobs, records_dir, verbose=not args.smoke)
    records = {(j[1]["kind"], j[1]["distilled"], j[1]["seed"]): r for j in jobs
               if (r := recorded(os.path.join(records_dir, f"{j[0]}.json"), j[2]))}
    if not records:
        raise SystemExit(f"no finished runs in {records_dir}; run without --only-finished")
    teacher_record = recorded(os.path.join(records_dir, f"{TEACHER_NAME}.json"), teacher[2])
    report(args.out, teacher, jobs, records, teacher_record, args.kinds, args.seeds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
