"""Compile targets (`mhc.targets`), the platform every "auto" follows, kernels on a mesh, and
plans from the real TPU (libtpu) and H100 (XLA:GPU) compilers when `.[aot]` is installed."""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

import mhc
from mhc import aot, connections, sharding, targets
from mhc.config import ModelConfig

HAS_TPU = targets._has_libtpu()
HAS_GPU = targets._has_cuda_plugin()
needs_tpu = pytest.mark.skipif(not HAS_TPU, reason="needs libtpu (pip install -e '.[aot]')")
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="needs jax's CUDA plugin ('.[aot]')")


@pytest.mark.parametrize("name,platform,n,topology", [
    ("cpu", "cpu", 0, ""), ("v5p-8", "tpu", 4, "v5:2x2x1"), ("v5p-16", "tpu", 8, "v5:2x2x2"),
    ("v5p-32", "tpu", 16, "v5:2x2x4"), ("v5p-128", "tpu", 64, "v5:4x4x4"),
    ("v5p-256", "tpu", 128, "v5:4x4x8"), ("v5e-1", "tpu", 1, "v5e:1x1"),
    ("v5e-8", "tpu", 8, "v5e:2x4"), ("v6e-16", "tpu", 16, "v6e:4x4"),
    ("v6e-256", "tpu", 256, "v6e:16x16"), ("h100x1", "gpu", 1, "1x1x1"),
    ("h100x8", "gpu", 8, "1x1x8"), ("H200x16", "gpu", 16, "1x2x8"),
])
def test_target_names(name, platform, n, topology):
    t = targets.parse(name)
    assert (t.platform, t.n_devices, t.topology) == (platform, n, topology)
    assert (t.hbm_bytes is None) == (platform == "cpu")


@pytest.mark.parametrize("name,message", [
    ("v5p-6", "power of two >= 8"), ("v5p-4", "power of two >= 8"), ("v5e-3", "counts chips"),
    ("h100x3", "8 GPUs per host"), ("h100x12", "8 GPUs per host"), ("tpu", "unknown target"),
    ("a100x8", "unknown target"), ("v5p-08x", "unknown target"),
])
def test_bad_target_names_one_line(name, message):
    with pytest.raises(targets.TargetError, match=message) as e:
        targets.parse(name)
    assert "\n" not in str(e.value) and repr(name) in str(e.value)


def test_list_targets_names_every_generation():
    text = targets.list_targets()
    for word in ("v5e-8", "v6e-16", "v5p-8", "h100x8", "h200x16", "TensorCores", "8 per host"):
        assert word in text


def test_missing_compiler_is_one_line(monkeypatch):
    monkeypatch.setattr(targets, "_has_libtpu", lambda: False)
    monkeypatch.setattr(targets, "_has_cuda_plugin", lambda: False)
    targets.devices.cache_clear()
    try:
        for name in ("v5p-8", "h100x8"):
            with pytest.raises(targets.TargetError, match=r"pip install -e \"\.\[aot\]\""):
                targets.devices(name)
    finally:
        targets.devices.cache_clear()


def test_gpu_target_config_is_a_hopper():
    text = targets._gpu_target_config("h100")
    assert "cuda_compute_capability { major: 9 }" in text and "core_count: 132" in text
    assert f"device_memory_size: {targets.parse('h100x1').hbm_bytes}" in text


# ---------------------------------------------------------------- one place decides the platform
def test_mesh_platform_wins_over_the_default_backend(monkeypatch):
    """Every "auto" reads targets.current_platform(): the mesh's devices, not the host's
    backend (here the host pretends to be a GPU while the mesh is of CPU devices)."""
    from mhc.kernels import backend_targets
    from mhc.model import moe

    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert targets.current_platform() == "gpu"
    assert ModelConfig(dtype="auto").compute_dtype == "bfloat16"
    assert moe.AUTO_DISPATCH[targets.current_platform()] == "capacity"
    with jax.set_mesh(sharding.make_mesh("fsdp=2", jax.devices()[:2])):
        assert targets.current_platform() == "cpu"
        assert ModelConfig(dtype="auto").compute_dtype == "float32"
        assert backend_targets()[0] == "interpret"
        seen = []
        jax.jit(lambda x: seen.append(targets.current_platform()) or x)(1.0)
        assert seen == ["cpu"]  # also inside a trace


def test_auto_dispatch_covers_every_platform():
    from mhc.model import moe
    assert set(moe.AUTO_DISPATCH) == {"cpu", "gpu", "tpu"}
    assert set(moe.AUTO_DISPATCH.values()) <= set(moe.DISPATCH) - {"auto"}


# ---------------------------------------------------------------------- kernels on a mesh
def _site_grads(spec, params, x, w):
    def loss(params, x):
        new, maps = connections.apply_site(params, x, lambda h: jnp.tanh(h @ w), spec)
        return jnp.sum(new ** 2) + jnp.sum(maps.res ** 2) + jnp.sum(maps.pre)
    return jax.jit(jax.grad(loss, argnums=(0, 1)))


def _site_inputs(c=32, n=4, batch=8):
    spec = connections.ConnectionSpec(width=c, n_streams=n, kind="mhc", kernels="pallas")
    params = connections.init_params(spec)
    keys = jax.random.split(jax.random.key(0), 4)
    params = jax.tree.map(lambda p, k: p + 0.05 * jax.random.normal(k, p.shape), params,
                          dict(zip(params, keys[:len(params)])))
    x = jax.random.normal(keys[-1], (batch, 8, n, c))
    w = 0.2 * jax.random.normal(jax.random.key(9), (c, c))
    return spec, params, x, w


@pytest.mark.parametrize("mesh_spec", ["fsdp=4", "data=2,fsdp=2", "fsdp=2,tensor=2"])
def test_fused_site_per_shard_matches_xla_without_gathering_streams(mesh_spec):
    """Under a mesh the fused kernels run per token shard (shard_map): values and gradients
    (weights' summed over the shards) match the XLA path, and the compiled program gathers
    nothing (the weights of a lone site are replicated, so any all-gather would be the
    streams')."""
    spec, params, x, w = _site_inputs()
    want = _site_grads(dataclasses.replace(spec, kernels="xla"), params, x, w)(params, x)
    mesh = sharding.make_mesh(mesh_spec, jax.devices()[:4])
    x_sharded = jax.device_put(x, sharding.batch_sharding(mesh))
    with jax.set_mesh(mesh):
        fn = _site_grads(spec, params, x, w)
        got = fn(params, x_sharded)
        text = fn.lower(params, x_sharded).compile().as_text()
    for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, r, rtol=2e-5, atol=2e-6)
    assert "all-gather" not in text


def test_sinkhorn_kernel_per_shard_matches_reference():
    from mhc.kernels import sinkhorn
    logits = jax.random.normal(jax.random.key(1), (8, 6, 4, 4))
    want = mhc.manifolds.sinkhorn(logits, 20)
    with jax.set_mesh(sharding.make_mesh("fsdp=4", jax.devices()[:4])):
        got = jax.jit(sinkhorn)(logits)
        grad = jax.jit(jax.grad(lambda z: jnp.sum(sinkhorn(z) ** 3)))(logits)
    np.testing.assert_allclose(got, want, atol=1e-6)
    ref = jax.grad(lambda z: jnp.sum(mhc.manifolds.sinkhorn(z, 20) ** 3))(logits)
    np.testing.assert_allclose(grad, ref, rtol=1e-4, atol=1e-6)


def test_mosaic_tpu_chunks_are_whole_vregs():
    from mhc.kernels import chunk_width
    for c in (64, 96, 256, 2560):
        assert chunk_width(c, "mosaic") == 128
    assert chunk_width(64) == 64 and chunk_width(96) == 32


# ------------------------------------------------------------------------------ plans
def test_plan_without_cost_analysis_formats(monkeypatch):
    """XLA:GPU gives no cost analysis without a device: the plan says so instead of failing."""
    cfg = aot.reduced_depth(mhc.recipes.get("tiny"), 1)
    p = aot.plan(cfg, None, devices=jax.devices()[:1])
    p["flops_per_token_xla"] = math.nan
    text = aot.format_plan("tiny", cfg, p)
    assert "no cost analysis from this compiler" in text
    assert "compiled by XLA:CPU" in text and "kernels=auto (Pallas calls: none)" in text


def test_plan_reports_does_not_fit_against_the_target_memory():
    cfg = aot.reduced_depth(mhc.recipes.get("tiny"), 1)
    p = aot.plan(cfg, None, devices=jax.devices()[:1])
    p["hbm_bytes"] = p["peak_bytes"] - 1
    assert "DOES NOT FIT" in aot.format_plan("tiny", cfg, p)


def _plan(target, overrides=(), recipe="tiny", layers=None, mesh=None):
    cfg = mhc.config.apply_overrides(mhc.recipes.get(recipe), list(overrides))
    if layers:
        cfg = aot.reduced_depth(cfg, layers)
    n = targets.parse(target).n_devices
    return aot.plan(cfg, mesh or f"fsdp={n}", target=target)


@pytest.mark.slow
@needs_tpu
@pytest.mark.parametrize("kernels", ["xla", "pallas"])
def test_tiny_compiles_for_tpu_v5p(kernels):
    """The Done-when command of the targets issue, through aot.plan: libtpu's compiler, a
    4-chip mesh, bf16 from "auto", Mosaic TPU kernels per shard."""
    p = _plan("v5p-8", [f"kernels={kernels}", "n_layers=1"])
    assert p["device_kind"] == "TPU v5" and p["compute_dtype"] == "bfloat16"
    assert p["compiler"].startswith("libtpu") and p["devices"] == 4
    calls = p["kernel_calls"].get("tpu_custom_call", 0)
    assert (calls > 0) == (kernels == "pallas")
    assert 0 < p["peak_bytes"] < p["hbm_bytes"] and math.isfinite(p["flops_per_token_xla"])


@pytest.mark.slow
@needs_gpu
@pytest.mark.parametrize("kernels", ["pallas"])  # the XLA path's H100 programs: accelerator_check
def test_tiny_compiles_for_h100x8(kernels):
    p = _plan("h100x8", [f"kernels={kernels}", "n_layers=1"])
    assert p["device_kind"] == "NVIDIA H100 80GB HBM3" and p["compute_dtype"] == "bfloat16"
    assert p["compiler"].startswith("XLA:GPU") and p["devices"] == 8
    calls = p["kernel_calls"].get("mosaic_gpu_v2", 0)
    assert (calls > 0) == (kernels == "pallas")
    assert 0 < p["peak_bytes"] < p["hbm_bytes"] and math.isnan(p["flops_per_token_xla"])


def _compile_site(target, c, mesh_spec=None, n_tokens=256):
    spec = connections.ConnectionSpec(width=c, n_streams=4, kind="mhc", kernels="pallas")
    params = connections.init_params(spec)
    w = jnp.zeros((c, c), jnp.bfloat16)
    devices = targets.devices(target)
    mesh = sharding.make_mesh(mesh_spec or f"fsdp={len(devices)}", devices)
    x = jax.ShapeDtypeStruct((n_tokens // 8, 8, 4, c), jnp.bfloat16,
                             sharding=sharding.batch_sharding(mesh))
    p = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=NamedSharding(
        mesh, P())), params)

    def loss(params, x):
        new, _ = connections.apply_site(params, x, lambda h: h @ w, spec)
        return jnp.sum(new.astype(jnp.float32) ** 2)

    with jax.set_mesh(mesh):
        lowered = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(p, x)
    return aot.kernel_calls(lowered.as_text()), lowered.compile().as_text()


@pytest.mark.slow
@needs_tpu
@pytest.mark.parametrize("c", [64, 96, 256, 2560])
def test_mosaic_tpu_site_compiles_at_any_width(c):
    """libtpu proves every lane offset a multiple of 128 (width 64 failed with E2003 before)."""
    calls, _ = _compile_site("v5e-1", c)
    assert calls == {"tpu_custom_call": 4}  # input/output paths, forward and backward


@pytest.mark.slow
@needs_tpu
@needs_gpu
@pytest.mark.parametrize("target", ["v5p-8", "h100x8"])
def test_site_kernels_partition_without_gathering_the_streams(target):
    """Mosaic TPU kernels cannot be partitioned automatically, and XLA gathered the operands
    of Mosaic GPU calls: per shard, neither happens."""
    calls, text = _compile_site(target, 256)
    assert sum(calls.values()) == 4
    assert "all-gather" not in text


@pytest.mark.slow
@needs_gpu
def test_initial_res_inside_a_trace_on_compile_only_devices():
    """`connections.initial_res` is a constant even when first asked inside a jit lowered for a
    mesh of compile-only devices (no eager evaluation on them)."""
    spec = connections.ConnectionSpec(width=48, n_streams=4, kind="mhc")
    connections.initial_res.cache_clear()
    mesh = sharding.make_mesh("fsdp=8", targets.devices("h100x8"))
    x = jax.ShapeDtypeStruct((8, 4), jnp.float32, sharding=sharding.batch_sharding(mesh))
    with jax.set_mesh(mesh):
        jax.jit(lambda x: x * connections.initial_res(spec)[0, 0]).lower(x).compile()
    res = connections.initial_res(spec)
    np.testing.assert_allclose(res.sum(-1), 1.0, atol=1e-5)


@pytest.mark.slow
@needs_tpu
def test_tpu_out_of_memory_is_a_one_line_does_not_fit():
    cfg = mhc.config.apply_overrides(mhc.recipes.get("tiny"), [
        "n_layers=1", "batch_size=2048", "seq_len=512", "d_model=1024", "n_heads=8",
        "d_ff=4096", "dtype=float32"])
    with pytest.raises(aot.DoesNotFit, match="does not fit .*libtpu") as e:
        aot.plan(cfg, None, target="v5e-1")
    assert "\n" not in str(e.value)


def test_compile_cli_lists_targets_and_refuses_bad_ones(capsys):
    from mhc import cli
    assert cli.main(["compile", "--list-targets"]) == 0
    assert "v5p-8" in capsys.readouterr().out
    assert cli.main(["compile", "--recipe", "tiny", "--target", "v5p-7"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "v5p-N counts TensorCores" in err[0]


def test_bare_import_stays_on_the_cpu_and_quiet():
    """`import mhc` on this CPU-only host: JAX's default backend stays the CPU and nothing is
    printed, with or without the `.[aot]` plugins (whose failed start-up would print pages)."""
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    proc = subprocess.run([sys.executable, "-c", "import mhc, jax; print(jax.default_backend(),"
                           " len(jax.devices()))"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.split()[0] == "cpu"
    assert proc.stderr.strip() == ""


def test_keep_host_on_cpu_leaves_a_users_choice(monkeypatch):
    monkeypatch.setenv("JAX_PLATFORMS", "cuda")
    before = jax.config.jax_platforms
    targets.keep_host_on_cpu()
    assert jax.config.jax_platforms == before


def test_kernel_calls_are_counted_by_backend():
    text = ("stablehlo.custom_call @tpu_custom_call(%0) stablehlo.custom_call @mosaic_gpu_v2(%1)"
            " stablehlo.custom_call @__gpu$xla.gpu.triton(%2) stablehlo.custom_call "
            "@__gpu$xla.gpu.triton(%3) stablehlo.custom_call @Sharding(%4)")
    assert aot.kernel_calls(text) == {"__gpu$xla.gpu.triton": 2, "mosaic_gpu_v2": 1,
                                      "tpu_custom_call": 1}
