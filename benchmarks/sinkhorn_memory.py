"""What Sinkhorn holds from forward to backward, and its time, versus the iteration count.

For each gradient mode of `mhc.sinkhorn` ("recompute", "implicit", "autodiff") and 5/10/20/40
iterations, on the logits of one bench-config site (B*T = 4096 tokens, N = 4):
  saved bytes   the residuals `jax.vjp` keeps for the backward (what lives from forward to backward)
  fwd ms        forward alone (jitted)
  bwd ms        forward + backward minus forward (median of interleaved rounds)
Ratios printed: saved bytes at 40 vs 5 iterations (target: within 10 %, i.e. <= 1.10x) and
backward time / forward time. Writes benchmarks/results/sinkhorn_memory.md.

    python -m benchmarks.sinkhorn_memory            # ~1 min on 2 CPU cores
    python -m benchmarks.sinkhorn_memory --smoke    # seconds
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

ITERS = (5, 10, 20, 40)
FLAGS = (flags.flag("smoke", help="tiny shapes, one round: wiring check"), "tokens", "rounds",
         "reps", "out")


def saved_bytes(fn, x) -> int:
    """Bytes of the residuals jax.vjp keeps between forward and backward."""
    return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(jax.vjp(fn, x)[1]))


def measure(tokens: int, n: int, rounds: int, reps: int) -> dict:
    import mhc
    from mhc import manifolds

    x = jax.random.normal(jax.random.key(0), (tokens, n, n), jnp.float32)
    g = jax.random.normal(jax.random.key(1), (tokens, n, n), jnp.float32)
    fns, out = {}, {}
    for mode in manifolds.GRADS:
        for iters in ITERS:
            def f(x, iters=iters, mode=mode):
                return mhc.sinkhorn(x, iters, grad=mode)
            fwd = jax.jit(f)
            fwd_bwd = jax.jit(lambda x, g, f=f: jax.vjp(f, x)[1](g)[0])
            jax.block_until_ready((fwd(x), fwd_bwd(x, g)))
            fns[mode, iters] = (fwd, fwd_bwd)
            out[mode, iters] = {"saved": saved_bytes(f, x), "fwd": [], "fwd_bwd": []}
    for _ in range(rounds):
        for key, (fwd, fwd_bwd) in fns.items():
            for name, call in (("fwd", lambda: fwd(x)), ("fwd_bwd", lambda: fwd_bwd(x, g))):
                start = time.perf_counter()
                for _ in range(reps):
                    res = call()
                jax.block_until_ready(res)
                out[key][name].append(1e3 * (time.perf_counter() - start) / reps)
    for r in out.values():
        r["fwd"], r["fwd_bwd"] = float(np.median(r["fwd"])), float(np.median(r["fwd_bwd"]))
        r["bwd"] = max(r["fwd_bwd"] - r["fwd"], 0.0)
    return out


def main(argv=None) -> int:
    args = flags.parser(__doc__, *FLAGS, rounds=7, reps=5,
                        out="benchmarks/results/sinkhorn_memory.md").parse_args(argv)
    tokens, rounds, reps = (64, 1, 1) if args.smoke else (args.tokens, args.rounds, args.reps)
    results = measure(tokens, 4, rounds, reps)
    device = f"{jax.devices()[0].platform} ({os.cpu_count()} host cores)"
    lines = [f"Sinkhorn saved residuals and time vs iterations, {datetime.date.today()}, device "
             f"{device}; logits [{tokens}, 4, 4] fp32, median of {rounds} interleaved rounds of "
             f"{reps} calls.", "",
             "| grad | iters | saved KiB | saved vs 5 iters | fwd ms | bwd ms | bwd / fwd |",
             "|---|---|---|---|---|---|---|"]
    for (mode, iters), r in results.items():
        first = results[mode, ITERS[0]]["saved"]
        lines.append(f"| {mode} | {iters} | {r['saved'] / 1024:.1f} | {r['saved'] / first:.2f}x | "
                     f"{r['fwd']:.2f} | {r['bwd']:.2f} | {r['bwd'] / max(r['fwd'], 1e-9):.2f}x |")
    write_report(args.out, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
