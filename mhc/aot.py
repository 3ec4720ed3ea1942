"""Ahead-of-time plan: lower and compile the full training step for devices you do not have.

    mhc compile --recipe 27b --mesh fsdp=64,expert=8 --hbm 80GiB         # XLA:CPU, fake devices
    mhc compile --recipe 3b --target v5p-16 --mesh fsdp=2,expert=4        # libtpu's compiler
    mhc compile --recipe 3b --target h100x8 --mesh fsdp=2,expert=4        # XLA:GPU

The step is compiled over abstract arrays (nothing is allocated at full size) by the target's
own compiler (`mhc.targets`: fake CPU devices, or the compile-only devices of a TPU or H100/H200
topology). Every "auto" (compute dtype, MoE dispatch, Pallas target) follows the target, not this
host. Reported per device: parameter, optimizer and batch bytes (from the shardings), the
compiler's memory plan (arguments, outputs, temporaries, peak), FLOPs per token (the compiler's
cost analysis where it gives one, XLA:GPU does not without a device, and the 6·N_active
estimate), the Pallas kernel calls in the program, the remat plan, and which compiler made it.
Out of memory is a compile error on TPU (`DoesNotFit`) and a peak above the target's HBM
elsewhere. A plan is not a measurement: speed, autotuning and numerics need the device.
"""
from __future__ import annotations

import dataclasses
import math
import re
import time

import jax
import jax.numpy as jnp
from flax import nnx

from mhc import recipes, sharding, targets, train_step
from mhc.config import Config

_UNITS = {"": 1, "b": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
          "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}


def parse_bytes(text: str) -> int:
    """'80GiB' / '80GB' / '1e9' -> bytes."""
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([a-zA-Z]*)\s*", str(text))
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"--hbm {text!r}; expected a size like 80GiB, 96GB or 8e10")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def _gib(n: float) -> str:
    return f"{n / 2**30:,.2f} GiB"


def _sharded_bytes(abstract_state) -> int:
    """Bytes one device holds for a tree of ShapeDtypeStructs with shardings."""
    total = 0
    for leaf in jax.tree.leaves(abstract_state):
        shard = leaf.sharding.shard_shape(leaf.shape)
        total += math.prod(shard) * jnp.dtype(leaf.dtype).itemsize
    return total


class DoesNotFit(ValueError):
    """The target's compiler found that the step does not fit its memory (TPU: at compile
    time; GPU: from the plan's peak against the device's memory)."""


def plan(cfg: Config, mesh_spec: str | None, *, devices=None, target: str = "cpu") -> dict:
    """Compile the training step for `mesh_spec` over the devices of `target` (or the given
    `devices`) and return the memory/FLOPs plan."""
    from mhc.model import Decoder

    tgt = targets.parse(target)
    devices = devices if devices is not None else (
        None if tgt.platform == "cpu" else targets.devices(tgt.name))
    mesh = sharding.make_mesh(mesh_spec, devices)
    sharding.check_batch(cfg.train.batch_size, mesh)

    def build():
        model = Decoder(cfg.model, rngs=nnx.Rngs(0))
        return model, train_step.make_optimizer(model, cfg)

    start = time.perf_counter()
    with jax.set_mesh(mesh):  # every "auto" (dtype, dispatch, kernels) reads the mesh's platform
        compute_dtype = cfg.model.compute_dtype
    # built outside the mesh (flax would constrain each new parameter to it by name), with the
    # dtype the target resolves
    cfg = Config(dataclasses.replace(cfg.model, dtype=compute_dtype), cfg.train)
    model, optimizer = nnx.eval_shape(build)
    graphdef, state = nnx.split((model, optimizer))
    shardings = sharding.state_shardings(state, mesh)
    abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            state, shardings)
    batch_sharding = sharding.batch_sharding(mesh)
    shape = (cfg.train.batch_size, cfg.train.seq_len)
    batch = {k: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=batch_sharding)
             for k in ("inputs", "targets")}
    jitted = sharding.jit_state_step(
        lambda model, optimizer, batch: train_step.train_step_body(
            model, optimizer, batch, microbatches=cfg.train.microbatches)[0],
        graphdef, shardings, mesh)
    with jax.set_mesh(mesh):
        lowered = jitted.lower(abstract, batch)
    hlo = lowered.as_text()
    try:
        compiled = lowered.compile()
    except Exception as e:  # jax's XlaRuntimeError; TPU reports out of memory at compile time
        if "RESOURCE_EXHAUSTED" in str(e) or "Ran out of memory" in str(e):
            line = next((ln for ln in str(e).splitlines() if "memory" in ln), str(e))
            raise DoesNotFit(f"does not fit ({tgt.compiler}): {line.strip()}") from None
        raise
    compile_s = time.perf_counter() - start
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()  # None from XLA:GPU without a device
    cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
    n_devices = mesh.size
    tokens = shape[0] * shape[1]
    active, total = recipes.count_params(cfg)
    params_state, opt_state = abstract[0], abstract[1]
    peak = mem.argument_size_in_bytes + mem.temp_size_in_bytes + max(
        0, mem.output_size_in_bytes - mem.alias_size_in_bytes)
    compiled_text = compiled.as_text() or ""
    return {
        "mesh": dict(mesh.shape), "devices": n_devices, "tokens_per_step": tokens,
        "target": tgt.name, "platform": tgt.platform if tgt.platform != "cpu" else
        targets.current_platform(), "device_kind": mesh.devices.flat[0].device_kind,
        "compiler": tgt.compiler, "hbm_bytes": tgt.hbm_bytes, "compute_dtype": compute_dtype,
        "params_total": total, "params_active": active,
        "param_bytes": _sharded_bytes(params_state.filter(nnx.Param)),
        "optimizer_bytes": _sharded_bytes(opt_state),
        "batch_bytes": _sharded_bytes(batch),
        "argument_bytes": mem.argument_size_in_bytes, "output_bytes": mem.output_size_in_bytes,
        "alias_bytes": mem.alias_size_in_bytes, "temp_bytes": mem.temp_size_in_bytes,
        "peak_bytes": peak,
        "flops_per_token_xla": float(cost.get("flops", float("nan"))) * n_devices / tokens,
        "flops_per_token_model": train_step.model_flops_per_token(cfg, active),
        "remat": cfg.model.remat, "compile_seconds": compile_s,
        "kernel_calls": kernel_calls(hlo),
        "all_gathers": len(re.findall(r"\ball-gather(?:-start)?\(", compiled_text)),
        "fp8_gemms": fp8_gemms(compiled_text),
    }


_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = \(?(\w+)\[")
_DOT = re.compile(r"\b(?:dot|convolution)\(%([\w.\-]+), %([\w.\-]+)\)")


def fp8_gemms(compiled_text: str) -> dict[str, int]:
    """The FP8 GEMMs in a compiled program's text (`fp8=deepseek`): cuBLASLt's FP8 matmul custom
    calls (`__cublas$lt$matmul$f8`), and dots (or convolutions) whose two operands are float8
    (XLA:GPU emits them inside Triton gemm fusions when it does not pick cuBLASLt). Operand
    types are looked up by name within each computation."""
    types, dots = {}, 0
    for line in compiled_text.splitlines():
        if line.rstrip().endswith("{") and " = " not in line:  # a computation starts
            types = {}
        found = _INSTRUCTION.match(line)
        if found:
            types[found.group(1)] = found.group(2)
        dot = _DOT.search(line)
        if dot and all(types.get(name, "").startswith("f8") for name in dot.groups()):
            dots += 1
    return {"cublas_lt_f8": compiled_text.count('custom_call_target="__cublas$lt$matmul$f8"'),
            "f8_dots": dots}


def kernel_calls(hlo_text: str) -> dict[str, int]:
    """Pallas kernel calls in a lowered program's text, by custom-call target."""
    found = re.findall(r'custom_call_target\s*=\s*"([^"]+)"|stablehlo.custom_call @([\w$.]+)',
                       hlo_text)
    names = [a or b for a, b in found]
    kernels = [n for n in names if n in ("tpu_custom_call", "mosaic_gpu", "mosaic_gpu_v2",
                                         "triton_kernel_call", "__gpu$xla.gpu.triton")]
    return {n: kernels.count(n) for n in sorted(set(kernels))}


def format_plan(name: str, cfg: Config, p: dict, hbm: int | None = None) -> str:
    mesh = ",".join(f"{k}={v}" for k, v in p["mesh"].items() if v > 1) or "single device"
    kernels = ", ".join(f"{v} {k}" for k, v in p["kernel_calls"].items()) or "none"
    lines = [
        f"AOT plan: recipe {name}, residual {cfg.model.residual}, mesh {mesh} "
        f"({p['devices']} devices), batch {cfg.train.batch_size}x{cfg.train.seq_len}"
        + (f" in {cfg.train.microbatches} microbatches" if cfg.train.microbatches > 1 else ""),
        f"  target {p['target']}: {p['devices']} x {p['device_kind']}; compiled by "
        f"{p['compiler']}",
        f"  compute dtype {cfg.model.dtype} -> {p['compute_dtype']}, kernels={cfg.model.kernels} "
        f"(Pallas calls: {kernels})",
        f"  parameters            {p['params_total'] / 1e9:.3f}B total, "
        f"{p['params_active'] / 1e9:.3f}B active",
        f"  per device: params    {_gib(p['param_bytes'])}",
        f"              optimizer {_gib(p['optimizer_bytes'])}",
        f"              batch     {_gib(p['batch_bytes'])}",
        f"  compiled:   arguments {_gib(p['argument_bytes'])}, outputs "
        f"{_gib(p['output_bytes'])} ({_gib(p['alias_bytes'])} aliased)",
        f"              temporaries (activations, gradients) {_gib(p['temp_bytes'])}",
        f"              peak      {_gib(p['peak_bytes'])}",
        f"  FLOPs/token: {p['flops_per_token_model'] / 1e9:.2f} GFLOP (6·N_active + attention); "
        + (f"XLA cost analysis {p['flops_per_token_xla'] / 1e9:.2f} (counts a scanned layer once)"
           if math.isfinite(p["flops_per_token_xla"]) else
           "no cost analysis from this compiler"),
        f"  remat: {p['remat']}; compiled in {p['compile_seconds']:.1f} s",
    ]
    if cfg.model.fp8 != "none":
        f8 = p["fp8_gemms"]
        lines.append(f"  fp8={cfg.model.fp8}: {f8['cublas_lt_f8']} cuBLASLt FP8 GEMM calls, "
                     f"{f8['f8_dots']} dots on float8 operands in the compiled program")
    hbm = hbm or p["hbm_bytes"]
    if hbm:
        verdict = "fits" if p["peak_bytes"] <= hbm else "DOES NOT FIT"
        lines.append(f"  {verdict} in {_gib(hbm)} per device")
    return "\n".join(lines)


def reduced_depth(cfg: Config, n_layers: int) -> Config:
    """The same recipe with fewer blocks (for tests and quick plans)."""
    model = dataclasses.replace(cfg.model, n_layers=n_layers,
                                n_dense_layers=min(cfg.model.n_dense_layers, n_layers))
    return Config(model, cfg.train)
