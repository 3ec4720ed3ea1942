"""One training step (forward + backward + AdamW) built for timing and compiling, and the way
steps are timed side by side: `benchmarks/step_time.py`, the accelerator check and the variants
study (`experiments/variants.py`) share them, so their numbers measure the same program.
"""
from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def configs(smoke: bool):
    """{name: Config} of the step-time benchmark: the tiny recipe and the "bench" config (d_model
    512, 8 layers, 16 x 256 tokens per step); --smoke: one 2-layer config of seconds."""
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
