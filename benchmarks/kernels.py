"""Fused Pallas mHC site vs the pure-JAX (XLA) site vs a plain residual add, on GPU/TPU.

One site (coefficients + Sinkhorn + read + write, forward + backward, branch = identity) at
n = 4 on `[B*T, N, C]` streams; timed in interleaved rounds so noise hits all variants alike;
prints times and ratios to the residual with the device named. Also the whole training step of
the `bench` config (d_model 512, 8 layers, seq 256, batch 16) with kernels="pallas" vs "xla".
Accelerators only: on CPU the kernels run in interpret mode, which measures nothing useful, so
the script says so and exits 0.

    python -m benchmarks.kernels                 # C = 512 and 2560, 4096 tokens, bf16 streams
"""
from __future__ import annotations

import dataclasses
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from study import flags


def site_variants(c: int, tokens: int, dtype, iters: int):
    from mhc import connections as cx
    from mhc import kernels

    n = 4
    spec = cx.ConnectionSpec(width=c, n_streams=n, sinkhorn_iters=iters)
    params = cx.init_params(spec, 1)
    params["phi"] = 0.01 * jax.random.normal(jax.random.key(0), params["phi"].shape)
    streams = jax.random.normal(jax.random.key(1), (tokens, n, c)).astype(dtype)

    def loss(apply):
        def f(params, streams):
            new, maps = apply(params, streams)
            return jnp.sum(new.astype(jnp.float32)) + jnp.sum(maps.res)
        return jax.jit(jax.grad(f, argnums=(0, 1)))

    identity = lambda h: h  # noqa: E731
    xla = dataclasses.replace(spec, kernels="xla")
    variants = {
        "residual": loss(lambda p, x: (x + x[:, :1], cx.residual_maps(x[:, :1]))),
        "mhc xla": loss(lambda p, x: cx.apply_site(p, x, identity, xla)),
        "mhc pallas": loss(lambda p, x: kernels.apply_site(p, x, identity, spec)),
    }
    return variants, (params, streams)


def time_variants(variants, args, rounds: int, steps: int) -> dict[str, float]:
    for fn in variants.values():  # compile + warm up
        jax.block_until_ready(fn(*args))
    times = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            start = time.perf_counter()
            for _ in range(steps):
                out = fn(*args)
            jax.block_until_ready(out)
            times[name].append((time.perf_counter() - start) / steps)
    return {name: float(np.median(t)) for name, t in times.items()}


def step_variants(kernels_choice: str):
    import importlib.util
    import os
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "step_time.py")
    module_spec = importlib.util.spec_from_file_location("step_time", path)
    step_time = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(step_time)  # same step and batch as step_time.py
    build, configs = step_time.build, step_time.configs
    cfg = configs(False)["bench"]
    model = dataclasses.replace(cfg.model, kernels=kernels_choice, dtype="bfloat16")
    return build(dataclasses.replace(cfg, model=model), "mhc")


FLAGS = ("tokens", flags.flag("--iters", type=int, default=20), "rounds",
         flags.flag("--steps", type=int, default=10),
         flags.flag("--no-step", action="store_true", help="skip the full training step"))


def time_steps(steps: int) -> dict[str, float]:
    """{"xla", "pallas"}: seconds per bench training step (mHC, bf16) with each kernel choice."""
    out = {}
    for choice in ("xla", "pallas"):
        fn, state, batch = step_variants(choice)
        state, _ = fn(state, batch)  # compile
        jax.block_until_ready(state)
        start = time.perf_counter()
        for _ in range(steps):
            state, loss = fn(state, batch)
        jax.block_until_ready(loss)
        out[choice] = (time.perf_counter() - start) / steps
    return out


def main(argv=None) -> int:
    args = flags.parser(__doc__, *FLAGS).parse_args(argv)
    backend = jax.default_backend()
    if backend not in ("gpu", "tpu"):
        print(f"benchmarks/kernels.py: needs a GPU or TPU (default backend is {backend!r}); "
              "Pallas runs only in interpret mode here, so there is nothing to time.")
        return 0
    device = jax.devices()[0].device_kind
    print(f"device: {device} ({backend}), jax {jax.__version__}")
    for c in (512, 2560):
        variants, site_args = site_variants(c, args.tokens, jnp.bfloat16, args.iters)
        t = time_variants(variants, site_args, args.rounds, args.steps)
        base = t["residual"]
        print(f"site fwd+bwd, n=4, C={c}, {args.tokens} tokens, bf16:")
        for name, sec in t.items():
            print(f"  {name:12s} {sec * 1e3:8.3f} ms  {sec / base:6.2f}x residual  "
                  f"{args.tokens / sec:12.0f} tokens/s")
    if not args.no_step:
        steps = time_steps(args.steps)
        print(f"bench training step (mHC, bf16): xla {steps['xla'] * 1e3:.1f} ms, pallas "
              f"{steps['pallas'] * 1e3:.1f} ms, pallas/xla {steps['pallas'] / steps['xla']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
