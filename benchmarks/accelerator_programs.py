"""What `benchmarks/accelerator_check.py` compiles and runs, defined once for the check and for
its compile-only mode (`benchmarks/accelerator_compile.py`): part (a)'s kernel and reference
programs and shapes, the configs of parts (b), (c) and (d), and the step builder they share."""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp


def step_time():
    """`study.step_time`, the step builder of benchmarks/step_time.py: its `build` is the step
    every part times."""
    from study import step_time
    return step_time


# n, C, tokens, Sinkhorn iterations, timing reps; smoke: n = 2 and 3 iterations keep the
# interpret-mode programs (and their compile) small
A_SHAPES = {False: (4, 2560, 4096, 20, 5), True: (2, 32, 40, 3, 1)}


def sinkhorn_programs(convention: str, target: str, iters: int) -> dict:
    """{"kernel", "xla"}: jitted (x [M, N, N], cotangent g) -> ((sum h·g, h), d x) of the Pallas
    Sinkhorn on `target` and of `mhc.manifolds.sinkhorn`."""
    from mhc import kernels, manifolds

    def value_and_grad(fn):
        def loss(x, g):
            h = fn(x, iters, convention=convention)
            return jnp.sum(h * g), h
        return jax.jit(jax.value_and_grad(loss, has_aux=True))
    return {"kernel": value_and_grad(functools.partial(kernels.sinkhorn, target=target)),
            "xla": value_and_grad(manifolds.sinkhorn)}


def site_programs(spec, targets) -> dict:
    """{target or "xla" / "reference": jitted (params, streams [M, N, C], cotangent) -> ((loss,
    (new, maps)), (d params, d streams))}: the fused site on each kernel target and the
    pure-JAX site, every output carrying a cotangent; branch F = tanh."""
    from mhc import connections as cx
    from mhc import kernels

    def site_fn(apply, site_spec):
        def loss(params, streams, cot):
            new, maps = apply(params, streams, jnp.tanh, site_spec)
            return (jnp.sum(new.astype(jnp.float32) * cot) + jnp.sum(maps.res ** 2)
                    + jnp.sum(maps.pre * maps.post)), (new, maps)
        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
    fns = {ref: site_fn(cx.apply_site, dataclasses.replace(spec, kernels=ref))
           for ref in ("xla", "reference")}
    fns.update({t: site_fn(functools.partial(kernels.apply_site, target=t), spec)
                for t in targets})
    return fns


# 829M parameters: state (fp32 params + AdamW) 9.3 GiB; XLA:CPU's memory analysis of the mHC step
# at batch 1 gives 66 GiB temp (61 GiB with remat=streams). A variant that would not fit beside
# the resident baseline is compiled (its memory reported) but not run.
GPU_DENSE = ("d_model=2048", "n_layers=16", "n_heads=16", "d_ff=5632", "max_seq_len=4096",
             "seq_len=4096", "batch_size=1", "dtype=bfloat16")
TINY = ("d_model=32", "n_layers=2", "n_heads=2", "d_ff=64", "seq_len=32", "batch_size=2",
        "n_streams=2")
KINDS = {"residual": ("residual=residual",), "mhc xla": ("residual=mhc", "kernels=xla"),
         "mhc pallas": ("residual=mhc", "kernels=pallas"), "hc": ("residual=hc",),
         "mhc-lite": ("residual=mhc", "manifold=mhc_lite")}
# (label, overrides, remat) in priority order, the budget dropping the tail (the paper's
# comparison, mHC under its selective recompute, comes early); the smoke run takes the first four
B_VARIANTS = [(name.split()[0], KINDS[name], remat) for name, remat in (
    ("residual", "none"), ("mhc xla", "none"), ("mhc pallas", "none"), ("mhc xla", "streams"),
    ("mhc pallas", "streams"), ("hc", "none"), ("mhc-lite", "none"), ("residual", "streams"),
    ("hc", "streams"), ("mhc-lite", "streams"))]


MOE = ("ffn=moe", "d_model=512", "n_layers=4", "n_heads=8", "d_ff=1536", "n_routed_experts=16",
       "n_shared_experts=1", "n_active_experts=2", "expert_ff=512", "max_seq_len=1024",
       "seq_len=1024", "batch_size=8", "dtype=bfloat16")
MOE_SMOKE = ("ffn=moe", "d_model=32", "n_layers=2", "n_heads=2", "d_ff=64", "n_routed_experts=4",
             "n_shared_experts=1", "n_active_experts=2", "expert_ff=32", "seq_len=32",
             "batch_size=2", "n_streams=2")


def moe_variants(smoke: bool):
    """(base config, {dispatch name: overrides}) of part c."""
    from study.runs import make_config

    # no warmup: the second step's loss then depends on the first step's gradients
    base = make_config("tiny", (*(MOE_SMOKE if smoke else MOE), "warmup_steps=0", "lr=1e-3"))
    drop_free = base.model.n_routed_experts / base.model.n_active_experts  # capacity = all
    variants = {"ragged": ("moe_dispatch=ragged",),
                "capacity, drop-free": ("moe_dispatch=capacity", f"capacity_factor={drop_free}")}
    if not smoke:  # the check needs only the two above: this one only adds a compile
        variants["capacity"] = ("moe_dispatch=capacity",)
    return base, variants


TRAIN_100M = ("d_model=768", "n_layers=12", "n_heads=12", "d_ff=2560", "max_seq_len=1024",
              "seq_len=1024", "batch_size=16", "dtype=bfloat16", "steps=300", "lr=1e-3",
              "warmup_steps=30")
TRAIN_SMOKE = (*TINY, "batch_size=4", "steps=5", "lr=1e-2", "warmup_steps=0")
