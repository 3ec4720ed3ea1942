"""Step time, compiled memory and compile time of residual vs HC vs mHC vs mHC-lite, side by side.

Every kind runs the same training step (forward + backward + AdamW) on the same batch. The kinds
are timed in interleaved rounds, so machine noise hits all of them alike, and the ratios to the
residual are taken from one run. Compiled temporary memory (XLA memory analysis) is listed with
no recompute and with the remat policies (`ModelConfig.remat`): mHC with its "mhc" policy against
the residual with the same policy and with its leanest one ("full"); every kind with "streams"
(the paper's selective recompute: only the stream path is re-run) against the residual baseline
without recompute, with its step time too: it is the configuration the paper's step-time figure
uses. Writes benchmarks/results/step_time.md and prints it.

    python -m benchmarks.step_time                 # tiny + bench configs, ~20 min on 2 CPU cores
    python -m benchmarks.step_time --smoke         # seconds: wiring check used by the tests
"""
from __future__ import annotations

import dataclasses
import datetime
import os
import sys
import time

import jax

from study import flags
from study.report import write_report
from study.step_time import build, configs, time_interleaved

KINDS = ("residual", "hc", "mhc", "mhc_lite")
# (kind, remat policy) compiled for memory only (timed too with --time-remat)
REMAT_VARIANTS = (("residual", "mhc"), ("residual", "full"), ("mhc", "mhc"), ("mhc", "full"),
                  ("residual", "streams"), ("hc", "streams"), ("mhc", "streams"),
                  ("mhc_lite", "streams"))
# timed even without --time-remat: the paper's selective recompute, which its step-time figure uses
TIMED_REMAT = (("hc", "streams"), ("mhc", "streams"), ("mhc_lite", "streams"))
# --smoke (a wiring check) compiles one pair per policy that has a "same remat" residual to
# compare with, the residual's leanest policy ("full", the last memory column), and one timed
# "streams" variant: 4 compiles instead of 8 (tests/test_model.py checks every policy's
# gradients and memory)
SMOKE_REMAT = (("residual", "mhc"), ("mhc", "mhc"), ("residual", "full"), ("mhc", "streams"))
FLAGS = (flags.flag("smoke", help="tiny shapes, one round: wiring check"), "rounds",
         flags.flag("--steps", type=int, default=3),
         flags.flag("--time-remat", action="store_true", help="also time the remat variants"),
         flags.flag("--configs", default="tiny,bench", help="comma-separated: tiny, bench"), "out")


def measure(cfg, rounds: int, steps: int, time_remat: bool = False,
            remat_variants=REMAT_VARIANTS) -> dict:
    """{(kind, remat): {"compile_s", "temp_mb", "step_ms" (None if not timed)}}."""
    runs, results = {}, {}
    variants = [(kind, "none") for kind in KINDS] + list(remat_variants)
    for kind, remat in variants:
        step, state, batch = build(cfg, kind, remat)
        start = time.perf_counter()
        compiled = step.lower(state, batch).compile()
        results[kind, remat] = {"compile_s": time.perf_counter() - start,
                                "temp_mb": compiled.memory_analysis().temp_size_in_bytes / 2**20}
        if remat != "none" and not time_remat and (kind, remat) not in TIMED_REMAT:
            continue
        runs[kind, remat] = [compiled, state, batch]
    for key, ms in time_interleaved(runs, rounds, steps).items():
        results[key]["step_ms"] = ms
    for r in results.values():
        r.setdefault("step_ms", None)
    return results


def compile_scaling(cfg, kind="mhc", layers=(4, 32), known=None) -> list[float]:
    """Compile seconds of the step at each depth of `layers` (scanned layers keep this flat);
    `known`: {depth: seconds} of this step already compiled (not compiled again)."""
    from mhc.config import Config

    out = []
    for depth in layers:
        if depth in (known or {}):
            out.append(known[depth])
            continue
        c = Config(dataclasses.replace(cfg.model, n_layers=depth), cfg.train)
        step, state, batch = build(c, kind)
        start = time.perf_counter()
        step.lower(state, batch).compile()
        out.append(time.perf_counter() - start)
    return out


def _ratio(a, b):
    return "–" if a is None or b is None else f"{a / b:.2f}x"


def main(argv=None) -> int:
    args = flags.parser(__doc__, *FLAGS, out="benchmarks/results/step_time.md").parse_args(argv)
    rounds, steps = (1, 1) if args.smoke else (args.rounds, args.steps)
    device = f"{jax.devices()[0].platform} x{len(jax.devices())} ({os.cpu_count()} host cores)"
    lines = [f"Step time (forward + backward + AdamW), {datetime.date.today()}, device {device}; "
             f"median of {rounds} interleaved rounds of {steps} steps. Memory: compiled temp "
             f"bytes (XLA memory analysis) of the whole step.", "",
             "| config | kind | remat | step ms | vs residual | compiled temp MiB | "
             "vs residual (same remat) | vs residual (no remat) | vs residual (remat full) | "
             "compile s |", "|---|---|---|---|---|---|---|---|---|---|"]
    chosen = ["smoke"] if args.smoke else args.configs.split(",")
    all_configs = configs(args.smoke)
    for name in chosen:
        results = measure(all_configs[name], rounds, steps, args.time_remat,
                          SMOKE_REMAT if args.smoke else REMAT_VARIANTS)
        base = results["residual", "none"]
        lean = results["residual", "full"]
        for (kind, remat), r in results.items():
            same = results.get(("residual", remat), base)
            step_ms = "–" if r["step_ms"] is None else f"{r['step_ms']:.1f}"
            lines.append(f"| {name} | {kind} | {remat} | {step_ms} | "
                         f"{_ratio(r['step_ms'], base['step_ms'])} | {r['temp_mb']:.1f} | "
                         f"{_ratio(r['temp_mb'], same['temp_mb'])} | "
                         f"{_ratio(r['temp_mb'], base['temp_mb'])} | "
                         f"{_ratio(r['temp_mb'], lean['temp_mb'])} | {r['compile_s']:.1f} |")
            print(lines[-1], flush=True)
    # --smoke: its own 2-layer step (compiled above) against 4 layers, one compile
    cfg = all_configs[chosen[0]]
    depths = (cfg.model.n_layers, 4) if args.smoke else (4, 32)
    known = {cfg.model.n_layers: results["mhc", "none"]["compile_s"]} if args.smoke else None
    low, high = compile_scaling(cfg, layers=depths, known=known)
    lines += ["", f"Compile time of the mHC step ({chosen[0]}): {depths[0]} layers {low:.1f} s, "
                  f"{depths[1]} layers {high:.1f} s (ratio {high / low:.2f}x)."]
    write_report(args.out, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
