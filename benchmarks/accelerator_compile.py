"""Compile every program of `benchmarks/accelerator_check.py` for a target, here, without the
device: the kernels of part (a) on each of the device's kernel targets, the step of every
variant of (b), both MoE dispatches of (c) and the training step of (d), at the check's own
shapes, by the target's own compiler (`mhc.targets`). A GPU or TPU session then spends its
minutes running, not debugging what does not compile.

    python -m benchmarks.accelerator_check --compile-only --target h100x1
    python -m benchmarks.accelerator_check --compile-only --target v5e-1 --parts a,c

Each program is lowered over abstract arrays on one device of the target (the check runs on
one) and compiled; a failure is recorded as one line and the next program compiles. The report
lists per program the compile seconds, the compiler's memory plan and the Pallas kernel calls.
"""
from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from benchmarks import accelerator_programs as ap


def _abstract(tree, sharding):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                        tree)


def programs(keys, smoke: bool, kernel_targets, dtype: str):
    """[(part, name, jitted fn, example args)] of the check's parts `keys` (args may be
    concrete or ShapeDtypeStructs; only their shapes and dtypes are used), with the target's
    kernel targets and compute dtype (models are built outside its mesh: flax would constrain
    each new parameter to it)."""
    from study.runs import make_config
    from mhc import connections as cx
    from mhc import manifolds
    from mhc.config import apply_overrides

    def build(cfg, kind=None, abstract=True):
        if cfg.model.dtype == "auto":
            cfg = apply_overrides(cfg, [f"dtype={dtype}"])
        return ap.step_time().build(cfg, kind, abstract=abstract)

    out = []
    if "a" in keys:
        n, c, tokens, iters, _ = ap.A_SHAPES[smoke]
        logits = jax.ShapeDtypeStruct((tokens, n, n), jnp.float32)
        for convention in manifolds.CONVENTIONS:
            for i, target in enumerate(kernel_targets):
                fns = ap.sinkhorn_programs(convention, target, iters)
                out += [("a", f"sinkhorn {convention} {target}", fns["kernel"], (logits,) * 2)]
                out += [("a", f"sinkhorn {convention} xla", fns["xla"], (logits,) * 2)] * (i == 0)
        spec = cx.ConnectionSpec(width=c, n_streams=n, sinkhorn_iters=iters, kernels="pallas")
        params = jax.eval_shape(lambda: cx.init_params(spec, 1))
        streams = jax.ShapeDtypeStruct((tokens, n, c), jnp.bfloat16)
        cot = jax.ShapeDtypeStruct((tokens, n, c), jnp.float32)
        for name, fn in ap.site_programs(spec, kernel_targets).items():
            out.append(("a", f"mHC site {name}", fn, (params, streams, cot)))
    if "b" in keys:
        base = make_config("tiny", ap.TINY if smoke else ap.GPU_DENSE)
        for label, overrides, remat in ap.B_VARIANTS[:4] if smoke else ap.B_VARIANTS:
            cfg = apply_overrides(base, [*overrides, f"remat={remat}"])
            step, state, batch = build(cfg, cfg.model.residual, abstract=True)
            out.append(("b", f"{label} {' '.join(overrides[1:])} remat={remat}".replace("  ", " "),
                        step, (state, batch)))
    if "c" in keys:
        base, variants = ap.moe_variants(smoke)
        for name, overrides in variants.items():
            step, state, batch = build(apply_overrides(base, overrides), abstract=True)
            out.append(("c", f"moe {name}", step, (state, batch)))
    if "d" in keys:
        cfg = make_config("tiny", ap.TRAIN_SMOKE if smoke else ap.TRAIN_100M)
        step, state, batch = build(cfg, "mhc", abstract=True)
        out.append(("d", "training step (mHC ~100M)", step, (state, batch)))
    return out


def compile_all(check, target: str, keys, smoke: bool, out_path: str | None) -> int:
    """Compile the programs for one device of `target`; write the report; 1 if any failed."""
    from mhc import aot, kernels, rundir, sharding, targets
    from mhc.config import ModelConfig

    t = targets.parse(target)
    devices = targets.devices(t.name)[:1] if t.platform != "cpu" else jax.devices()[:1]
    mesh = sharding.make_mesh(None, devices)
    replicated = NamedSharding(mesh, P())
    t0 = time.perf_counter()
    rows, failed = [], 0
    with jax.set_mesh(mesh):
        kernel_targets = kernels.backend_targets()
        dtype = ModelConfig(dtype="auto").compute_dtype
    progs = programs(keys, smoke, kernel_targets, dtype)
    with jax.set_mesh(mesh):
        print(f"compile-only for {t.name} ({t.compiler}): {len(progs)} programs", flush=True)
        for part, name, fn, args in progs:
            start = time.perf_counter()
            try:
                lowered = fn.lower(*_abstract(args, replicated))
                calls = aot.kernel_calls(lowered.as_text())
                mem = lowered.compile().memory_analysis()
                seconds = time.perf_counter() - start
                peak = mem.argument_size_in_bytes + mem.temp_size_in_bytes
                rows.append(f"| {part} | {name} | ok | {seconds:.1f} | {check._size(peak)} | "
                            f"{', '.join(f'{v} {k}' for k, v in calls.items()) or '-'} |")
                status = f"ok {seconds:.1f} s, {check._size(peak)}"
            except Exception as e:  # noqa: BLE001  (every failure is one line of the report)
                failed += 1
                status = f"FAILED: {check._one_line(e)}"
                rows.append(f"| {part} | {name} | {status.replace('|', '/')} | "
                            f"{time.perf_counter() - start:.1f} | - | - |")
            print(f"[{part}] {time.perf_counter() - t0:7.1f}s  {name}: {status}", flush=True)
    version = rundir.source_version()
    text = "\n".join([
        f"# Accelerator check, compile only: {t.name} ({devices[0].device_kind})", "",
        f"Compiled on a host without the device by {t.compiler}; commit {version['commit']}"
        f"{' (dirty)' if version['dirty'] else ''}; parts {','.join(keys)}"
        f"{' (smoke shapes)' if smoke else ''}; {len(rows) - failed}/{len(rows)} programs "
        f"compiled in {time.perf_counter() - t0:.0f} s. Peak = arguments + temporaries of the "
        "compiler's memory plan for one device; nothing was run, so nothing here is a timing "
        "or a numerical check.", "",
        "| part | program | status | compile s | peak | Pallas calls |",
        "|---|---|---|---|---|---|", *rows]) + "\n"
    if out_path:
        os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
        with open(out_path, "w") as f:
            f.write(text)
    print(f"accelerator_check --compile-only: {len(rows) - failed}/{len(rows)} compiled"
          f"{f' -> {out_path}' if out_path else ''}{' (FAILED)' if failed else ''}", flush=True)
    return 1 if failed else 0
