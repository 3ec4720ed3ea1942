"""One-command validation of an accelerator (one H100/H200-class GPU or a TPU host) for mHC.

Checks, each part guarded (an error is recorded as one line and the next part runs):
  (a) the Pallas kernels against the XLA reference at paper-like shapes (C = 2560, n = 4, 4096
      tokens, bf16 streams, fp32 maps): `mhc.kernels.sinkhorn` against `mhc.manifolds.sinkhorn`
      and the fused site `mhc.kernels.apply_site` against `mhc.connections.apply_site` with
      kernels="xla" and "reference", values and gradients; kernel / XLA time of fwd + bwd
  (b) step time and compiled memory of residual / HC / mHC (kernels xla and pallas; "auto" is
      whichever of the two `mhc.kernels.AUTO_PALLAS` picks here) / mHC-lite, without recompute
      and with remat=streams, on a dense d_model 2048, 16-layer, seq 4096 bf16 model, as ratios
      to the residual timed side by side in this process
  (c) one small MoE model: moe_dispatch ragged (ragged_dot) vs capacity, step time and losses
  (d) 300 steps of a ~100M-parameter mHC model on synthetic, learnable tokens (repeated random
      n-grams): first / last loss (the loss must fall), tokens/s, MFU
Writes benchmarks/results/accelerator_<device>.md (rewritten after every part, so a run cut short
keeps what it measured), prints progress lines and a final PASS/FAIL line; exit status 1 if any
check failed or errored. Parts stop early, and say so, when their share of --budget-s is spent.

    python -m benchmarks.accelerator_check [--parts a,d]  # < 8 min: 420 s budget + start-up
    python -m benchmarks.accelerator_check --smoke --out /tmp/check.md  # CPU, tiny: ~1 min
    python -m benchmarks.accelerator_check --compile-only --target h100x1  # here, no device
      (every program of the parts compiled by the target's compiler: benchmarks/
      accelerator_compile.py; needs pip install -e ".[aot]")

Needs jax, flax, optax, orbax-checkpoint and grain (imported by `mhc` modules; grain is not used)
and this repository; synthetic data only: no corpus, no wandb, no matplotlib, nothing downloaded.
"""
from __future__ import annotations

import datetime
import importlib.metadata
import math
import os
import re
import sys
import time
import types

import jax
import jax.numpy as jnp
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.dirname(HERE) not in sys.path:  # run by path: the project's root for `study`
    sys.path.insert(0, os.path.dirname(HERE))

from benchmarks.accelerator_programs import (  # noqa: E402  (after the path)
    A_SHAPES, B_VARIANTS, GPU_DENSE, TINY, TRAIN_100M, TRAIN_SMOKE, moe_variants,
    sinkhorn_programs, site_programs, step_time)
from study import flags  # noqa: E402

PARTS = ("a", "b", "c", "d")
TITLES = {"a": "(a) Pallas kernels vs the XLA reference",
          "b": "(b) Step time and memory: residual / HC / mHC / mHC-lite",
          "c": "(c) MoE dispatch: ragged_dot vs capacity",
          "d": "(d) Training a ~100M mHC model on synthetic tokens"}
# Share of the time left that each part may spend (unused time passes on to the later parts):
# b compiles ten 0.8B-parameter steps, d trains for a few hundred steps.
SHARES = {"a": 1.2, "b": 3.0, "c": 0.6, "d": 1.2}


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {next((s for s in str(e).splitlines() if s.strip()), '')}"[:300]


class Part:
    """One part's report (Markdown lines), checks (what, ok), errors and skipped items. A plain
    class: a dataclass needs its module in sys.modules, which `_load(path)` in the tests skips."""

    def __init__(self, key: str, t0: float, deadline: float):
        # t0: start of the run (for the progress lines); deadline: perf_counter() to skip after
        self.key, self.t0, self.deadline, self.seconds = key, t0, deadline, 0.0
        self.lines, self.checks, self.errors, self.skipped = [], [], [], []

    def log(self, what: str):
        print(f"[{self.key}] {time.perf_counter() - self.t0:7.1f}s  {what}", flush=True)

    def check(self, what: str, ok: bool) -> bool:
        self.checks.append((what, bool(ok)))
        self.log(f"check {'ok  ' if ok else 'FAIL'} {what}")
        return bool(ok)

    def guard(self, what: str, fn):
        """fn(), or None with the error recorded in one line (the part goes on)."""
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - any failure is a finding, not a crash
            self.errors.append(f"{what}: {_one_line(e)}")
            self.log(f"ERROR {self.errors[-1]}")

    def over_budget(self, what: str) -> bool:
        spent = time.perf_counter() >= self.deadline
        if spent:
            self.skipped.append(f"{what} (budget spent)")
            self.log(f"skipped: {self.skipped[-1]}")
        return spent

    def status(self) -> str:  # SKIP: nothing was checked, all of it skipped
        failed = self.errors or not all(ok for _, ok in self.checks)
        return "FAIL" if failed else "PASS" if self.checks else "SKIP"

    def detail(self) -> str:
        bad = [w for w, ok in self.checks if not ok]
        return "; ".join([f"{len(self.checks) - len(bad)}/{len(self.checks)} checks passed"]
                         + (["failed: " + "; ".join(bad)] if bad else [])
                         + ([f"{len(self.errors)} error(s)"] if self.errors else [])
                         + ([f"{len(self.skipped)} item(s) skipped"]
                            if self.skipped else []) + [f"{self.seconds:.0f} s"])


def _median_times(fns: dict, args: tuple, reps: int) -> dict:
    """Median seconds per call of each fn on `args`, the fns interleaved per rep."""
    times = {name: [] for name in fns}
    for rep in range(reps + 1):  # rep 0: compile + warm up
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[name] += [time.perf_counter() - start] if rep else []
    return {name: float(np.median(t)) for name, t in times.items()}


def _err(a, b, rtol=None, atol=None) -> float:
    """Without tolerances max |a - b| / max |b| (the error at the reference's scale: right for
    bf16); with them max |a - b| / (atol + rtol |b|), <= 1 meaning np.allclose."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    if a.shape != b.shape:
        raise ValueError(f"shape {a.shape} vs reference {b.shape}")
    if rtol is None:
        return float(np.abs(a - b).max()) / max(float(np.abs(b).max()), 1e-30)
    return float((np.abs(a - b) / (atol + rtol * np.abs(b))).max())


# ----------------------------------------------------------------------------------- (a)
SINKHORN_TOL = {"values": (1e-5, 1e-6), "grad": (1e-4, 1e-5)}  # (rtol, atol), fp32
# error / max|reference|: bf16 results carry one rounding (2^-8 ~ 4e-3) plus accumulation-order
# differences; fp32 maps come from a D = N*C = 10240 long fp32 dot whose order differs
SITE_TOL = {"new streams (bf16)": 2e-2, "H_pre": 1e-4, "H_post": 1e-4, "H_res": 1e-4,
            "d phi": 1e-2, "d bias": 1e-2, "d alpha": 1e-2, "d streams (bf16)": 2e-2}


def part_a(p: Part, smoke: bool):
    from mhc import connections as cx
    from mhc import kernels, manifolds

    n, c, tokens, iters, reps = A_SHAPES[smoke]
    targets = kernels.backend_targets()  # every kernel on each (GPU: Mosaic GPU and Triton)
    p.lines += [f"Shapes: {tokens} tokens, n = {n}, C = {c}, Sinkhorn {iters} iterations; "
                f"streams bf16, maps fp32. Kernel targets: {', '.join(targets)}"
                + (" (interpret mode: the timings below are not performance numbers)."
                   if kernels.backends.resolve(targets[0]).interpret else "."),
                "Tolerances: Sinkhorn values |err| <= 1e-6 + 1e-5·|ref|, gradients |err| <= "
                "1e-5 + 1e-4·|ref| (measured: worst |err| / that bound, ok if <= 1); site: "
                "max |err| / max |ref| against the bound listed.", "",
                "| check | quantity | measured | tolerance | ok |", "|---|---|---|---|---|"]
    timing = ["", "| op, forward + backward | kernel ms | XLA ms | kernel / XLA |",
              "|---|---|---|---|"]

    def sinkhorn_check(convention, target):
        x = 2.0 * jax.random.normal(jax.random.key(1), (tokens, n, n))
        g = jax.random.normal(jax.random.key(2), (tokens, n, n))
        fns = sinkhorn_programs(convention, target, iters)
        ((_, h_k), dx_k), ((_, h_r), dx_r) = fns["kernel"](x, g), fns["xla"](x, g)
        for quantity, a, b in (("values", h_k, h_r), ("grad", dx_k, dx_r)):
            rtol, atol = SINKHORN_TOL[quantity]
            worst = _err(a, b, rtol, atol)
            ok = p.check(f"sinkhorn {convention} {target} {quantity}", worst <= 1)
            p.lines.append(f"| sinkhorn {convention} ({target}) vs mhc.manifolds | {quantity} | "
                           f"{worst:.2g} of bound (max abs {np.abs(np.float32(a) - b).max():.1e})"
                           f" | rtol {rtol:g}, atol {atol:g} | {'yes' if ok else 'NO'} |")
        t = _median_times(fns, (x, g), reps)
        timing.append(f"| sinkhorn {convention} ({target}) [{tokens}, {n}, {n}] | "
                      f"{1e3 * t['kernel']:.3f} | "
                      f"{1e3 * t['xla']:.3f} | {t['kernel'] / t['xla']:.2f}x |")

    for convention in manifolds.CONVENTIONS:
        for t_name in targets:
            if not p.over_budget(f"sinkhorn {convention} {t_name}"):
                p.log(f"sinkhorn {convention} ({t_name}): kernel vs mhc.manifolds")
                p.guard(f"sinkhorn {convention} {t_name}",
                        lambda: sinkhorn_check(convention, t_name))

    spec = cx.ConnectionSpec(width=c, n_streams=n, sinkhorn_iters=iters, kernels="pallas")
    k = jax.random.split(jax.random.key(3), 4)
    init = cx.init_params(spec, 1)
    # away from the zero init: phi scaled so the logits are of order 1 at any width
    params = {"phi": 2.0 / math.sqrt(n * c) * jax.random.normal(k[0], init["phi"].shape),
              "bias": init["bias"] + 0.5 * jax.random.normal(k[1], init["bias"].shape),
              "alpha": jnp.array([0.7, 0.5, 1.3])}
    streams = (2.0 * jax.random.normal(k[2], (tokens, n, c))).astype(jnp.bfloat16)
    cot = jax.random.normal(k[3], (tokens, n, c))

    def unpack(out):
        (_, (new, maps)), (g_params, g_streams) = out
        return {"new streams (bf16)": new, "H_pre": maps.pre, "H_post": maps.post,
                "H_res": maps.res, "d phi": g_params["phi"], "d bias": g_params["bias"],
                "d alpha": g_params["alpha"], "d streams (bf16)": g_streams}

    fns = site_programs(spec, targets)

    want = {}
    # the site on the same targets
    for t_name in targets:
        kernel = fns[t_name]
        got = {}
        for ref in ("xla", "reference"):
            if p.over_budget(f"fused site ({t_name}) vs kernels={ref}"):
                continue
            p.log(f"fused site ({t_name}) vs mhc.connections kernels={ref}")

            def site_check(ref=ref, kernel=kernel, got=got, t_name=t_name):
                if "kernel" not in got:
                    got["kernel"] = unpack(kernel(params, streams, cot))
                if ref not in want:
                    want[ref] = unpack(fns[ref](params, streams, cot))
                for quantity, tol in SITE_TOL.items():
                    err = _err(got["kernel"][quantity], want[ref][quantity])
                    ok = p.check(f"site ({t_name}) vs {ref}: {quantity}", err <= tol)
                    p.lines.append(f"| fused site ({t_name}) vs kernels={ref} | {quantity} | "
                                   f"{err:.1e} of scale | {tol:g} | {'yes' if ok else 'NO'} |")
            p.guard(f"fused site ({t_name}) vs kernels={ref}", site_check)
        if not p.over_budget(f"fused site ({t_name}) timing"):
            t = p.guard(f"fused site ({t_name}) timing", lambda kernel=kernel: _median_times(
                {"kernel": kernel, "xla": fns["xla"]}, (params, streams, cot), reps))
            if t:
                ms = {k: f"{1e3 * v:.3f}" for k, v in t.items()}
                timing.append(f"| mHC site ({t_name}), F = tanh, [{tokens}, {n}, {c}] bf16 | "
                              f"{ms['kernel']} | {ms['xla']} | {t['kernel'] / t['xla']:.2f}x |")
    p.lines += timing + ["", f"Median of {reps} interleaved calls after a warm-up call."]


# ----------------------------------------------------------------------------------- (b)
def _size(nbytes: float) -> str:
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-30)


def _ratio(a, b) -> str:
    return "–" if a is None or b is None else f"{a / b:.2f}x"


def _fmt(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _run_variant(build, cfg, baseline, rounds: int, steps: int, n_losses: int = 1):
    """Compile one step, take the losses of its first `n_losses` steps, then time it in rounds
    alternating with the baseline run [compiled, state, batch, times] (None: it is the
    baseline). -> (result, run)"""
    step, state, batch = build(cfg, cfg.model.residual)
    start = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    mem = compiled.memory_analysis()
    r = {"compile_s": time.perf_counter() - start, "temp": mem.temp_size_in_bytes,
         "args": mem.argument_size_in_bytes, "losses": [], "ms": None, "loss": None,
         "ratio": None}
    stats = jax.devices()[0].memory_stats() or {}  # None on CPU
    need = stats.get("bytes_in_use", 0) + r["temp"]  # in use: this state and the baseline's
    if need > 0.95 * stats.get("bytes_limit", math.inf):  # the memory is reported, not run
        r["unfit"] = (f"not run: needs {_size(need)} with the baseline resident, of "
                      f"{_size(stats['bytes_limit'])}")
        return r, None
    for _ in range(n_losses):
        state, loss = compiled(state, batch)
        r["losses"].append(float(loss))
    r["loss"], run = r["losses"][0], [compiled, state, batch, []]
    for i in range(rounds):
        # alternate who goes first, so that neither always runs right after the other
        for rr in ([run, baseline] if i % 2 else [baseline, run]):
            if rr is None:
                continue
            begin = time.perf_counter()
            for _ in range(steps):
                rr[1], loss = rr[0](rr[1], rr[2])
            jax.block_until_ready(loss)
            rr[3].append((time.perf_counter() - begin) / steps)
    r["ms"] = 1e3 * float(np.median(run[3]))
    base_times = run[3] if baseline is None else baseline[3][-rounds:]
    r["ratio"] = float(np.median(np.array(run[3]) / np.array(base_times)))
    return r, run


def part_b(p: Part, smoke: bool):
    from study.runs import make_config
    from mhc import kernels
    from mhc.config import apply_overrides

    build = step_time().build
    base = make_config("tiny", TINY if smoke else GPU_DENSE)
    rounds, steps = (1, 1) if smoke else (4, 3)
    m, t = base.model, base.train
    auto = "pallas" if kernels.pallas_selected("auto") else "xla"
    p.lines += [f"Model: dense, d_model {m.d_model}, {m.n_layers} layers, {m.n_heads} heads, "
                f"d_ff {m.d_ff}, n = {m.n_streams}, seq {t.seq_len}, batch {t.batch_size}, "
                f"dtype {m.compute_dtype}; step = forward + backward + AdamW "
                "(`mhc.train_step.train_step_body` via benchmarks/step_time.py `build`).",
                f"kernels=auto takes {auto} on `{jax.default_backend()}` (mhc.kernels.AUTO_PALLAS"
                f" = {kernels.AUTO_PALLAS}), so mHC auto is the `{auto}` row, not compiled again;"
                f" the pallas target is `{kernels.default_target()}`.",
                f"Each variant is timed in {rounds} rounds of {steps} steps alternating with the "
                "residual baseline (no remat), which stays compiled; step ms and the ratio are "
                "medians over rounds. Memory: XLA memory analysis of the compiled step (temp: "
                "the step's scratch; args: state + batch).", "",
                "| kind | kernels | remat | step ms | vs residual | temp | vs residual (no remat) "
                "| vs residual (same remat) | args | compile s | first loss |",
                "|---|---|---|---|---|---|---|---|---|---|---|"]
    baseline, results = None, {}
    # smoke: the wiring only (the baseline, both mHC paths, one recompute variant)
    for label, overrides, remat in B_VARIANTS[:4] if smoke else B_VARIANTS:
        cfg = apply_overrides(base, [*overrides, f"remat={remat}"])
        kern = cfg.model.kernels if label == "mhc" else "–"
        name = f"{label} {kern} {remat}"
        if p.over_budget(name):
            continue
        p.log(f"compile and time {name}")
        out = p.guard(name, lambda: _run_variant(build, cfg, baseline, rounds, steps))
        if out is None:
            continue
        (r, run), out = out, None
        if label == "residual" and remat == "none":
            baseline = run  # kept compiled for the side-by-side timing of every other variant
        run = None  # the others' state is freed before the next compile: two models at a time
        results[label, kern, remat] = r
        if "unfit" in r:  # memory only
            p.skipped.append(f"{name} {r['unfit']}")
            p.log(f"{name}: temp {_size(r['temp'])}, {r['unfit']}")
            continue
        p.check(f"{name}: finite loss", math.isfinite(r["loss"]))
        p.log(f"{name}: {r['ms']:.1f} ms, temp {_size(r['temp'])}, compile {r['compile_s']:.1f} s")
    base_r = results.get(("residual", "–", "none"), {})
    if baseline:  # it ran beside every variant: its median over all those rounds
        base_r["ms"] = 1e3 * float(np.median(baseline[3]))
    for (label, kern, remat), r in results.items():
        same = results.get(("residual", "–", remat), {})
        p.lines.append(
            f"| {label} | {kern} | {remat} | {_fmt(r['ms'], '.1f')} | "
            f"{_ratio(r['ratio'], 1.0) if baseline else '–'} | {_size(r['temp'])} | "
            f"{_ratio(r['temp'], base_r.get('temp'))} | {_ratio(r['temp'], same.get('temp'))} | "
            f"{_size(r['args'])} | {r['compile_s']:.1f} | {_fmt(r['loss'], '.4f')} |")
    # same initial model and batch: neither the kernels nor the recompute may change the loss
    # (a sanity check; part a compares the kernels exactly)
    pairs = [(("mhc", "pallas", remat), ("mhc", "xla", remat)) for remat in ("none", "streams")]
    pairs += [(key, (*key[:2], "none")) for key in results if key[2] == "streams"]
    for a, b in pairs:
        if results.get(a, {}).get("loss") and results.get(b, {}).get("loss"):
            p.check(f"first loss {' '.join(a)} = {' '.join(b)} within 1%",
                    _rel(results[a]["loss"], results[b]["loss"]) <= 1e-2)
    stats = jax.devices()[0].memory_stats() or {}
    peak, limit = stats.get("peak_bytes_in_use"), stats.get("bytes_limit", 0)
    if peak is not None:
        p.lines += ["", f"Device memory peak of the process so far: {_size(peak)} of "
                        f"{_size(limit)}."]


# ----------------------------------------------------------------------------------- (c)
def part_c(p: Part, smoke: bool):
    from mhc.config import apply_overrides

    build = step_time().build
    base, variants = moe_variants(smoke)
    m, t = base.model, base.train
    drop_free = m.n_routed_experts / m.n_active_experts
    rounds, steps = (1, 1) if smoke else (5, 3)
    p.lines += [f"Model: mHC, d_model {m.d_model}, {m.n_layers} layers ({m.n_dense_layers} "
                f"dense), {m.n_routed_experts} routed experts ({m.n_active_experts} active) + "
                f"{m.n_shared_experts} shared, expert_ff {m.expert_ff}, seq {t.seq_len}, batch "
                f"{t.batch_size}, dtype {m.compute_dtype}. capacity uses capacity_factor "
                f"{m.capacity_factor} (may drop assignments, so its loss is listed, not checked); "
                f"drop-free capacity uses {drop_free:g} = E/K, under which the two dispatches "
                "compute the same function: its losses are checked against ragged (1%). Step "
                f"ms: median of {rounds} rounds of {steps} steps, alternating with ragged.", "",
                "| dispatch | step ms | vs ragged | loss step 1 | loss step 2 | compile s |",
                "|---|---|---|---|---|---|"]
    ragged, results = None, {}
    for name, overrides in variants.items():
        if p.over_budget(f"moe {name}"):
            continue
        p.log(f"compile and time moe {name}")
        out = p.guard(f"moe {name}", lambda: _run_variant(
            build, apply_overrides(base, overrides), ragged, rounds, steps, n_losses=2))
        if out is None:
            continue
        (r, run), out = out, None
        ragged = run if name == "ragged" else ragged
        if "unfit" in r:
            p.skipped.append(f"moe {name} {r['unfit']}")
            continue
        results[name] = r
        p.check(f"moe {name}: finite losses", all(map(math.isfinite, r["losses"])))
    if ragged:  # it ran beside every variant: its median over all those rounds
        results["ragged"]["ms"] = 1e3 * float(np.median(ragged[3]))
    for name, r in results.items():
        p.lines.append(f"| {name} | {r['ms']:.1f} | {_ratio(r['ratio'], 1.0) if ragged else '–'}"
                       f" | {r['losses'][0]:.5f} | {r['losses'][1]:.5f} | {r['compile_s']:.1f} |")
    if "ragged" in results and "capacity, drop-free" in results:
        a, b = results["ragged"]["losses"], results["capacity, drop-free"]["losses"]
        for i in range(2):
            p.check(f"moe ragged vs drop-free capacity loss step {i + 1} within 1%",
                    _rel(a[i], b[i]) <= 1e-2)


# ----------------------------------------------------------------------------------- (d)
def ngram_batches(n_batches: int, batch: int, seq: int, vocab: int, seed: int = 0) -> dict:
    """[n_batches, B, T] inputs/targets: sequences of n-grams drawn from a fixed random pool
    (64 n-grams of 8 tokens), so all but the first token of each n-gram is predictable: the loss
    can fall from ln(vocab) towards ln(64)/8."""
    rng = np.random.default_rng(seed)
    pool = rng.integers(0, vocab, (64, 8))
    picks = rng.integers(0, len(pool), (n_batches, batch, -(-(seq + 1) // 8)))
    tokens = pool[picks].reshape(n_batches, batch, -1)[..., :seq + 1]
    return {"inputs": jnp.asarray(tokens[..., :-1], jnp.int32),
            "targets": jnp.asarray(tokens[..., 1:], jnp.int32)}


def part_d(p: Part, smoke: bool):
    from study.runs import make_config
    from mhc import recipes, train_step

    cfg = make_config("tiny", TRAIN_SMOKE if smoke else TRAIN_100M)
    m, t, cpu = cfg.model, cfg.train, jax.devices()[0].platform == "cpu"
    if p.over_budget(f"{t.steps} training steps"):
        return
    active, total = recipes.count_params(cfg)
    step, state, _ = step_time().build(cfg, "mhc")
    data = ngram_batches(8, t.batch_size, t.seq_len, m.vocab_size)
    batch = jax.tree.map(lambda a: a[0], data)
    p.log(f"compile: {total:,} parameters")
    start = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    state, loss = compiled(state, batch)
    losses = [jax.block_until_ready(loss)]
    begin, done = time.perf_counter(), 1
    for i in range(1, t.steps):
        if i % 25 == 0:  # a sync bounds how far dispatch runs ahead of the budget check
            p.log(f"step {i}: loss {float(losses[-1]):.4f}")
            if p.over_budget(f"training steps {i + 1}..{t.steps}"):
                break
        state, loss = compiled(state, jax.tree.map(lambda a, i=i: a[i % 8], data))
        losses.append(loss)
        done += 1
    jax.block_until_ready(loss)
    seconds = time.perf_counter() - begin
    losses = [float(v) for v in jax.device_get(losses)]
    k = max(1, done // 20)  # means over 5 % of the steps at each end: less noisy than one step
    first, last = float(np.mean(losses[:k])), float(np.mean(losses[-k:]))
    tok_s = (done - 1) * t.batch_size * t.seq_len / seconds if done > 1 else math.nan
    # peak_flops is the job's (per device x devices on an accelerator); every part runs on one
    peak = train_step.peak_flops(t.peak_flops) / (1 if cpu else jax.device_count())
    mfu = tok_s * train_step.flops_per_token(cfg) / peak
    p.lines += [f"Model: mHC (n = {m.n_streams}, Sinkhorn {m.sinkhorn_iters} its, kernels "
                f"{m.kernels}), d_model {m.d_model}, {m.n_layers} layers, d_ff {m.d_ff}, "
                f"{total:,} parameters ({active:,} active), seq {t.seq_len}, "
                f"batch {t.batch_size}, dtype {m.compute_dtype}, lr {t.lr:g}, warmup "
                f"{t.warmup_steps}. Data: repeated random 8-grams from a pool of 64 (a loss "
                f"floor near ln(64)/8 = {math.log(64) / 8:.2f}). First / last loss: means over "
                f"the first / last {k} step(s). Tokens/s over steps 2..{done} (device-synced "
                "every 25 steps); MFU = tokens/s x `mhc.train_step.flops_per_token` / "
                f"`peak_flops` of one device ({peak:.3g} FLOP/s).", "",
                "| steps | first loss | last loss | fell? | tokens/s | step ms | MFU | compile s |",
                "|---|---|---|---|---|---|---|---|",
                f"| {done}/{t.steps} | {first:.4f} | {last:.4f} | "
                f"{'yes' if last < first else 'NO'} | {tok_s:,.0f} | "
                f"{1e3 * seconds / max(done - 1, 1):.1f} | {100 * mfu:.1f} % | {compile_s:.1f} |"]
    p.check("training losses finite", all(map(math.isfinite, losses)))
    p.check(f"loss fell ({first:.3f} -> {last:.3f})", last < first)


# --------------------------------------------------------------------------------- report
def _version(name: str) -> str:
    try:
        return f"{name} {importlib.metadata.version(name)}"
    except importlib.metadata.PackageNotFoundError:
        return f"{name} –"


def device_slug() -> str:
    """`device_kind` as a file name: "NVIDIA H200" -> "nvidia_h200"."""
    return re.sub(r"[^a-z0-9]+", "_", jax.devices()[0].device_kind.lower()).strip("_") or "unknown"


def report(parts: list[Part], header: list[str]) -> str:
    lines = [*header, "", "| part | status | detail |", "|---|---|---|"]
    lines += [f"| {p.key} | {p.status()} | {p.detail()} |" for p in parts]
    for p in parts:
        lines += ["", f"## {TITLES[p.key]}: {p.status()}", "", *p.lines]
        lines += ["", *(f"- ERROR {e}" for e in p.errors)] if p.errors else []
        lines += ["", "Skipped: " + "; ".join(p.skipped) + "."] if p.skipped else []
    return "\n".join(lines) + "\n"


def parse_parts(text: str) -> list[str]:
    items = [s.strip() for s in text.split(",")]
    if not text.strip() or any(s not in PARTS for s in items) or len(set(items)) < len(items):
        raise SystemExit(f"--parts {text!r}: expected a comma list of distinct parts from "
                         f"{', '.join(PARTS)} (e.g. a,c)")
    return sorted(items)


FLAGS = (flags.flag("smoke", help="tiny shapes on any backend (CPU test)"),
         flags.flag("out", help="report path (default: benchmarks/results/accelerator_<device>"
                                ".md; with --smoke nothing is written without --out)"),
         flags.flag("--parts", default="a,b,c,d", help="comma list of a, b, c, d"),
         flags.flag("--budget-s", type=float, default=None,
                    help="wall-clock budget; parts skip what is left once their share is spent "
                         "(default 420; --smoke: none, a wiring check runs every part however "
                         "loaded the machine is)"),
         flags.flag("--compile-only", action="store_true",
                    help="compile every program for --target on this machine, run nothing"),
         flags.flag("--target", default=None, help="with --compile-only: h100x1, v5e-1, ... "
                    "(mhc compile --list-targets)"))


def compile_only(args, keys) -> int:
    """--compile-only: every program of the parts compiled for --target here, nothing run."""
    from benchmarks import accelerator_compile
    from mhc import targets
    try:
        target = targets.parse(args.target or "cpu").name
    except ValueError as e:
        raise SystemExit(f"--target: {e}") from None
    out = args.out or os.path.join(HERE, "results", f"accelerator_compile_{target}.md")
    check = types.SimpleNamespace(**globals())  # this module, also when loaded by path
    return accelerator_compile.compile_all(check, target, keys, args.smoke,
                                           None if args.smoke and not args.out else out)


def header(args, keys, argv) -> list[str]:
    """The report's title and provenance: device, date, commit, versions and the command."""
    from mhc import rundir
    version, command = rundir.source_version(), sys.argv[1:] if argv is None else argv
    versions = ", ".join(map(_version, ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint")))
    return [f"# Accelerator check: {jax.devices()[0].device_kind}"
            f"{' (smoke: tiny shapes, XLA optimisations off)' if args.smoke else ''}", "",
            f"Date {datetime.datetime.now().isoformat(timespec='seconds')}; commit "
            f"{version['commit']}{' (dirty)' if version['dirty'] else ''}; {versions}.",
            f"Device: {rundir.machine()}; backend `{jax.default_backend()}`. Command: "
            f"`python -m benchmarks.accelerator_check {' '.join(command)}`; "
            f"parts {','.join(keys)}, budget {args.budget_s:g} s."]


def run_parts(keys, args, out, head: list[str]) -> tuple[list[Part], float]:
    """(the parts, their start time): each part run within its share of the budget left, the
    report at `out` rewritten after every part (a run cut short keeps what it measured)."""
    # smoke: XLA's optimisations off: 40 % less compile time on CPU (it checks wiring, not speed)
    disabled = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", disabled or args.smoke)
    t0, parts = time.perf_counter(), []
    for i, key in enumerate(keys):
        start = time.perf_counter()
        left = max(t0 + args.budget_s - start, 0.0)
        p = Part(key, t0, start + left * SHARES[key] / sum(SHARES[k] for k in keys[i:]))
        parts.append(p)
        p.log(f"start {TITLES[key]} (deadline in {p.deadline - start:.0f} s)")
        p.guard(f"part {key}", lambda: globals()[f"part_{key}"](p, args.smoke))
        p.seconds = time.perf_counter() - start
        p.log(f"{p.status()}: {p.detail()}")
        if out:  # after every part: a run cut short keeps what it measured
            os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
            with open(out, "w") as f:
                f.write(report(parts, head + [f"Total {time.perf_counter() - t0:.0f} s."]))
    jax.config.update("jax_disable_most_optimizations", disabled)  # parts catch their errors
    if args.smoke and not disabled:
        # programs compiled without optimisations stay in JAX's in-memory caches, whose keys do
        # not hold the flag: a later caller in this process (the test suite) would reuse them
        # and round differently from a fresh process
        jax.clear_caches()
    return parts, t0


def main(argv=None) -> int:
    args = flags.parser(__doc__, *FLAGS).parse_args(argv)
    keys = parse_parts(args.parts)
    if args.compile_only:
        return compile_only(args, keys)
    if args.budget_s is None:
        args.budget_s = math.inf if args.smoke else 420.0
    if not args.budget_s > 0:
        raise SystemExit(f"--budget-s {args.budget_s!r}: expected a number of seconds > 0")
    out = args.out or (None if args.smoke else
                       os.path.join(HERE, "results", f"accelerator_{device_slug()}.md"))
    parts, t0 = run_parts(keys, args, out, header(args, keys, argv))
    summary = ", ".join(f"{p.key} {p.status()}" for p in parts)
    failed = any(p.status() == "FAIL" for p in parts)
    print(f"accelerator_check: {summary} in {time.perf_counter() - t0:.0f} s"
          f"{f' -> {out}' if out else ''}{' (FAILED)' if failed else ''}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
