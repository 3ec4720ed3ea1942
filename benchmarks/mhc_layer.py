"""One connection site alone (coefficients + Sinkhorn + read/mix/write), forward + backward.

Streams [B, T, N, C] = [16, 256, 4, 512] fp32 (the bench config's site), a cheap elementwise
branch F = tanh so that the connection dominates, loss = sum(out * w) with a random w (a real
cotangent). Variants, timed in interleaved rounds in one run:
  residual       x + F(x) on one stream (the baseline)
  mhc            dynamic mHC, Sinkhorn 20 iterations, the library's default (fused) formulation
  mhc unfused    the same site with `kernels="reference"` (plain einsums + autodiff)
  hc / hc unfused  Hyper-Connections, both formulations
Prints ms per fwd+bwd, tokens/s and ratios to the residual and to the unfused formulation.
Writes benchmarks/results/mhc_layer.md.

    python -m benchmarks.mhc_layer            # ~1 min on 2 CPU cores
    python -m benchmarks.mhc_layer --smoke    # seconds
"""
from __future__ import annotations

import datetime
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from study import flags
from study.report import write_report


def build(kind: str, reference: bool, shape):
    """(jitted fwd+bwd, args) for one site variant."""
    from mhc import connections

    b, t, n, c = shape
    n = 1 if kind == "residual" else n
    spec = connections.ConnectionSpec(width=c, n_streams=n, kind=kind,
                                      kernels="reference" if reference else "auto")
    params = connections.init_params(spec, 1)
    keys = jax.random.split(jax.random.key(0), len(params) + 2)
    # perturbed parameters: maps away from their initial values, as after some training
    params = {k: v + 0.02 * jax.random.normal(key, v.shape) for (k, v), key in
              zip(sorted(params.items()), keys)}
    x = jax.random.normal(keys[-2], (b, t, n, c), jnp.float32)
    w = jax.random.normal(keys[-1], (b, t, n, c), jnp.float32)

    def loss(params, x, w):
        out, _ = connections.apply_site(params, x, jnp.tanh, spec)
        return jnp.sum(out * w)

    fn = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, x, w).compile()
    return fn, (params, x, w)


VARIANTS = (("residual", False), ("mhc", False), ("mhc", True), ("hc", False), ("hc", True))
FLAGS = (flags.flag("smoke", help="tiny shapes, one round: wiring check"), "rounds", "reps", "out")


def main(argv=None) -> int:
    args = flags.parser(__doc__, *FLAGS, rounds=9, out="benchmarks/results/mhc_layer.md"
                        ).parse_args(argv)
    shape, rounds, reps = (((2, 8, 4, 32), 1, 1) if args.smoke
                           else ((16, 256, 4, 512), args.rounds, args.reps))
    runs = {}
    for kind, ref in VARIANTS:
        fn, fargs = build(kind, ref, shape)
        jax.block_until_ready(fn(*fargs))
        runs[kind, ref] = (fn, fargs, [])
    for _ in range(rounds):
        for fn, fargs, times in runs.values():
            start = time.perf_counter()
            for _ in range(reps):
                out = fn(*fargs)
            jax.block_until_ready(out)
            times.append(1e3 * (time.perf_counter() - start) / reps)
    ms = {key: float(np.median(r[2])) for key, r in runs.items()}
    tokens = shape[0] * shape[1]
    device = f"{jax.devices()[0].platform} ({os.cpu_count()} host cores)"
    lines = [f"One site forward + backward, streams {list(shape)} fp32, F = tanh, "
             f"{datetime.date.today()}, device {device}; median of {rounds} interleaved rounds "
             f"of {reps} calls.", "",
             "| site | ms | tokens/s | vs residual | vs unfused |", "|---|---|---|---|---|"]
    base = ms["residual", False]
    for (kind, ref), t in ms.items():
        name = kind + (" unfused" if ref else "")
        unfused = ms.get((kind, True))
        vs_unfused = f"{t / unfused:.2f}x" if unfused and kind != "residual" else "–"
        lines.append(f"| {name} | {t:.1f} | {tokens / t * 1e3:,.0f} | {t / base:.1f}x | "
                     f"{vs_unfused} |")
    write_report(args.out, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
