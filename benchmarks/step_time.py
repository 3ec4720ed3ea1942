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

import argparse
import dataclasses
import datetime
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


from experiments.common import write_report

KINDS = ("residual", "hc", "mhc", "mhc_lite")
# (kind, remat policy) compiled for memory only (timed too with --time-remat)
REMAT_VARIANTS = (("residual", "mhc"), ("residual", "full"), ("mhc", "mhc"), ("mhc", "full"),
                  ("residual", "streams"), ("hc", "streams"), ("mhc", "streams"),
                  ("mhc_lite", "streams"))
# timed even without --time-remat: the paper's selective recompute, which its step-time figure uses
TIMED_REMAT = (("hc", "streams"), ("mhc", "streams"), ("mhc_lite", "streams"))


def configs(smoke: bool):
    from mhc import recipes
    from mhc.config import Config, ModelConfig, TrainConfig

    if smoke:
        return {"smoke": Config(ModelConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64),
                                TrainConfig(batch_size=2, seq_len=32))}
    bench = Config(ModelConfig(d_model=512, n_layers=8, n_heads=8, d_ff=1536, max_seq_len=256),
                   TrainConfig(batch_size=16, seq_len=256))
    return {"tiny": recipes.get("tiny"), "bench": bench}


def build(cfg, kind=None, remat=None, abstract=False):
    """(jitted pure step, state, batch) for one kind (default the config's) and remat policy
    (default the config's). `abstract`: state and batch as ShapeDtypeStructs (nothing
    allocated; for compiling only)."""
    from mhc import train_step
    from mhc.config import Config
    from mhc.model import Decoder

    model_cfg = cfg.model if kind is None else dataclasses.replace(cfg.model, residual=kind)
    if remat is not None:
        model_cfg = dataclasses.replace(model_cfg, remat=remat)
    cfg = Config(model_cfg, cfg.train)

    def make():
        model = Decoder(cfg.model, rngs=nnx.Rngs(0))
        return model, train_step.make_optimizer(model, cfg)

    graphdef, state = nnx.split(nnx.eval_shape(make) if abstract else make())

    def pure(state, batch):
        model, optimizer = nnx.merge(graphdef, state)
        metrics, _ = train_step.train_step_body(model, optimizer, batch)
        return nnx.state((model, optimizer)), metrics["loss"]

    tokens = np.random.default_rng(0).integers(0, 256, (cfg.train.batch_size,
                                                        cfg.train.seq_len + 1))
    batch = {"inputs": jnp.asarray(tokens[:, :-1], jnp.int32),
             "targets": jnp.asarray(tokens[:, 1:], jnp.int32)}
    if abstract:
        batch = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), batch)
    return jax.jit(pure, donate_argnums=0), state, batch


def measure(cfg, rounds: int, steps: int, time_remat: bool = False) -> dict:
    """{(kind, remat): {"compile_s", "temp_mb", "step_ms" (None if not timed)}}."""
    runs, results = {}, {}
    variants = [(kind, "none") for kind in KINDS] + list(REMAT_VARIANTS)
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


def time_interleaved(runs: dict, rounds: int, steps: int) -> dict:
    """{key: median milliseconds per step} of compiled steps `runs[key] = [step, state, batch]`
    (`step(state, batch) -> (state, loss)`, state donated), timed in interleaved rounds so that
    machine noise hits every variant alike; a warm-up step first."""
    for run in runs.values():
        step, state, batch = run
        run[1], loss = step(state, batch)
        jax.block_until_ready(loss)
    times = {key: [] for key in runs}
    order = list(runs)
    for r in range(rounds):  # the order is shuffled per round: with a fixed order, the variant
        # timed right after the residual read slowest in three paired runs (an HC variant each
        # time, with and without a change to it), which confounds an A/B comparison
        np.random.default_rng(r).shuffle(order)
        for key in order:
            step, state, batch = run = runs[key]
            start = time.perf_counter()
            for _ in range(steps):
                state, loss = step(state, batch)
            jax.block_until_ready(loss)
            times[key].append((time.perf_counter() - start) / steps)
            run[1] = state
    return {key: 1e3 * float(np.median(t)) for key, t in times.items()}


def compile_scaling(cfg, kind="mhc") -> tuple[float, float]:
    """Compile seconds of the step at 4 and at 32 layers (scanned layers keep this flat)."""
    from mhc.config import Config

    out = []
    for layers in (4, 32):
        c = Config(dataclasses.replace(cfg.model, n_layers=layers), cfg.train)
        step, state, batch = build(c, kind)
        start = time.perf_counter()
        step.lower(state, batch).compile()
        out.append(time.perf_counter() - start)
    return out[0], out[1]


def _ratio(a, b):
    return "–" if a is None or b is None else f"{a / b:.2f}x"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--time-remat", action="store_true", help="also time the remat variants")
    p.add_argument("--configs", default="tiny,bench", help="comma-separated: tiny, bench")
    p.add_argument("--out", default="benchmarks/results/step_time.md")
    args = p.parse_args(argv)
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
        results = measure(all_configs[name], rounds, steps, args.time_remat)
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
    four, thirty_two = compile_scaling(all_configs[chosen[0]])
    lines += ["", f"Compile time of the mHC step ({chosen[0]}): 4 layers {four:.1f} s, 32 layers "
                  f"{thirty_two:.1f} s (ratio {thirty_two / four:.2f}x)."]
    write_report(args.out, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
