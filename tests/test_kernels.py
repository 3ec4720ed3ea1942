"""Pallas kernels (interpret mode on CPU) against the pure-JAX reference: Sinkhorn and the fused
mHC site, values and gradients, both Sinkhorn conventions, N = 1/2/3/4, C not a multiple of the
chunk, M not a multiple of the token tile, fp32 and bf16 streams; a whole Decoder with
kernels="pallas" equals kernels="xla"; selection; GPU (Triton) and TPU (Mosaic) lowering.
Shapes and iteration counts are small: interpret mode compiles every kernel body into XLA."""
import contextlib
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mhc import connections as cx
from mhc import kernels, manifolds
from mhc.kernels import backends
from mhc.config import ConfigError, ModelConfig
from mhc.model import Decoder


def _close(a, b, rtol):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    scale = max(float(np.abs(b).max()), 1e-6)
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=0, atol=rtol * scale)


MOSAIC_GPU = pytest.mark.skipif(not kernels.available("mosaic_gpu"),
                                reason="Mosaic GPU's kernel entry point and interpret mode: jax >= 0.12")
# every CPU row of the backend table (Pallas' interpret mode, Mosaic GPU's own interpret mode
# where this JAX has it, ...): a new backend with a CPU mode is tested here without an edit
INTERPRET_TARGETS = [pytest.param(t.name, marks=pytest.mark.skipif(
    not t.available(), reason=f"{t.name} needs {t.requires}")) for t in backends.TABLE
    if t.platform == "cpu"]


@pytest.mark.parametrize("target", INTERPRET_TARGETS)
@pytest.mark.parametrize("convention,n,m", [("paper", 3, 37), ("deepseek_v4", 2, 20)])
def test_sinkhorn_kernel_values_and_grad(convention, n, m, target):
    x = 2.0 * jax.random.normal(jax.random.key(n), (m, n, n))
    g = jax.random.normal(jax.random.key(7), (m, n, n))

    def loss(fn, x):
        h = fn(x)
        return jnp.sum(h * g), h

    ref = jax.value_and_grad(lambda x: loss(lambda x: manifolds.sinkhorn(
        x, 6, convention=convention), x), has_aux=True)(x)
    ker = jax.value_and_grad(lambda x: loss(lambda x: kernels.sinkhorn(
        x, 6, convention=convention, block_m=16, target=target), x),
        has_aux=True)(x)  # 3 tiles, 11 padded rows
    (_, h_ref), dx_ref = ref
    (_, h), dx = ker
    _close(h, h_ref, 1e-6)
    _close(dx, dx_ref, 1e-5)
    np.testing.assert_allclose(h.sum(-1), 1.0, atol=1e-5)  # exact row sums in both conventions


def test_sinkhorn_kernel_backward_holds_only_the_logits():
    """What the forward leaves for the backward does not grow with the iteration count: the
    padded logits `[Qp, Mp]` (plus a scalar), for 2 and for 40 iterations."""
    x = jnp.ones((8, 3, 3))

    def held(iters):
        _, f_vjp = jax.vjp(lambda x: kernels.sinkhorn(x, iters, block_m=8), x)
        return sorted((a.shape, str(a.dtype)) for a in jax.tree.leaves(f_vjp))

    assert held(2) == held(40)
    assert max(held(40))[0] == (16, 8)  # N*N = 9 -> 16 rows, 8 tokens


CASES = [  # n, width, batch, convention, dtype
    (4, 24, (37,), "paper", jnp.float32),         # C pads 24 -> 32, M pads 37 -> 40
    (2, 32, (2, 5), "deepseek_v4", jnp.float32),  # two batch dims, M = 10 -> 16
    (1, 16, (9,), "paper", jnp.float32),          # a single stream
    (4, 32, (20,), "deepseek_v4", jnp.bfloat16),  # bf16 streams, fp32 coefficients
]


@pytest.mark.parametrize("target", INTERPRET_TARGETS)
@pytest.mark.parametrize("n,c,batch,convention,dtype", CASES)
def test_fused_site_values_and_grads(n, c, batch, convention, dtype, target):
    spec = cx.ConnectionSpec(width=c, n_streams=n, sinkhorn_iters=5,
                             sinkhorn_convention=convention, kernels="xla")
    k = jax.random.split(jax.random.key(n * c), 6)
    init = cx.init_params(spec, 1)
    params = {"phi": 0.3 * jax.random.normal(k[0], init["phi"].shape),  # away from init's zeros
              "bias": init["bias"] + 0.5 * jax.random.normal(k[1], init["bias"].shape),
              "alpha": jnp.array([0.7, 0.5, 1.3])}
    streams = (2.0 * jax.random.normal(k[2], (*batch, n, c))).astype(dtype)
    w = jax.random.normal(k[3], (c, c)) / c ** 0.5
    z = jnp.zeros((*batch, c), jnp.float32)  # added to F's output: its grad is d branch output
    cot = jax.random.normal(k[4], (*batch, n, c))

    def loss(apply, params, streams, z):
        branch = lambda h: (jnp.tanh(h.astype(jnp.float32) @ w) + z).astype(h.dtype)  # noqa: E731
        new, maps = apply(params, streams, branch, spec)
        # every output carries a cotangent: new streams, and all three maps
        return (jnp.sum(new.astype(jnp.float32) * cot) + jnp.sum(maps.res ** 2)
                + jnp.sum(maps.pre * maps.post)), (new, maps)

    def fused(*a):  # Mosaic GPU takes 64 rows per program (wgmma's M)
        return kernels.apply_site(*a, block_m=None if target.startswith("mosaic_gpu") else 8,
                                  target=target)

    grad = jax.value_and_grad(loss, argnums=(1, 2, 3), has_aux=True)
    (_, (new_r, maps_r)), g_r = jax.jit(lambda *a: grad(cx.apply_site, *a))(params, streams, z)
    (_, (new_k, maps_k)), g_k = jax.jit(lambda *a: grad(fused, *a))(params, streams, z)

    bf16 = dtype == jnp.bfloat16
    assert new_k.dtype == dtype and maps_k.res.dtype == jnp.float32
    _close(new_k, new_r, 1e-2 if bf16 else 1e-5)  # bf16: one rounding of the streams
    for a, b in zip(maps_k, maps_r):  # the coefficient path is fp32 in both
        _close(a, b, 1e-5)
    g_params_r, g_streams_r, g_z_r = g_r
    g_params_k, g_streams_k, g_z_k = g_k
    for name in ("phi", "bias", "alpha"):
        _close(g_params_k[name], g_params_r[name], 1e-3 if bf16 else 2e-5)
    assert g_streams_k.dtype == dtype
    _close(g_streams_k, g_streams_r, 1e-2 if bf16 else 2e-5)
    _close(g_z_k, g_z_r, 1e-2 if bf16 else 1e-5)


def test_decoder_with_pallas_kernels_equals_xla():
    cfg = ModelConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64, max_seq_len=16, n_streams=2,
                      sinkhorn_iters=4, sinkhorn_convention="deepseek_v4", dtype="float32")
    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 8)), jnp.int32)

    def loss_and_grads(kernels_choice):
        model = Decoder(dataclasses.replace(cfg, kernels=kernels_choice), rngs=nnx.Rngs(0))
        # move phi off its zero init so the dynamic path matters
        for path, param in nnx.iter_graph(model):
            if path and path[-1] == "phi":
                param[...] = 0.05 * jax.random.normal(jax.random.key(len(path)), param.shape)

        @nnx.jit
        def step(model):
            def loss(model):
                logits, maps = model(tokens)
                return jnp.mean(jax.nn.log_softmax(logits)[..., 0]), (logits, maps)
            return nnx.value_and_grad(loss, has_aux=True)(model)
        return step(model)

    (l_x, (logits_x, maps_x)), g_x = loss_and_grads("xla")
    (l_p, (logits_p, maps_p)), g_p = loss_and_grads("pallas")
    _close(logits_p, logits_x, 1e-5)
    _close(maps_p.res, maps_x.res, 1e-5)
    flat_x, flat_p = jax.tree.leaves(g_x), jax.tree.leaves(g_p)
    assert len(flat_x) == len(flat_p)
    for a, b in zip(flat_p, flat_x):
        _close(a, b, 1e-4)


def test_selection_and_fallback():
    spec = cx.ConnectionSpec(width=16, n_streams=2)
    assert spec.kernels == "auto" and not kernels.use_fused(spec)  # CPU: pure JAX
    assert kernels.use_fused(dataclasses.replace(spec, kernels="pallas"))
    assert not kernels.use_fused(dataclasses.replace(spec, kernels="xla"))
    for other in (dict(kind="hc"), dict(kind="mhc_lite"), dict(manifold="orthostochastic"),
                  dict(dynamic=False), dict(sinkhorn_grad="implicit"), dict(learned_maps=("res",))):
        fallback = cx.ConnectionSpec(width=16, n_streams=2, kernels="pallas", **other)
        assert not kernels.use_fused(fallback), other
    # a non-fused kind with kernels="pallas" runs the reference path, same result
    hc = cx.ConnectionSpec(width=16, n_streams=2, kind="hc", kernels="pallas")
    x = jax.random.normal(jax.random.key(0), (3, 2, 16))
    a, _ = cx.apply_site(cx.init_params(hc), x, jnp.tanh, hc)
    b, _ = cx.apply_site(cx.init_params(hc), x, jnp.tanh, dataclasses.replace(hc, kernels="xla"))
    np.testing.assert_array_equal(a, b)


def test_auto_takes_the_kernels_only_where_measured_and_not_under_a_mesh(monkeypatch):
    spec = cx.ConnectionSpec(width=16, n_streams=2)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert not kernels.use_fused(spec)  # no accelerator run has measured them ahead of XLA
    monkeypatch.setattr(kernels, "AUTO_PALLAS", ("gpu",))  # as after a check that did
    assert kernels.use_fused(spec)
    mesh = jax.make_mesh((len(jax.devices()),), ("data",),
                         axis_types=(jax.sharding.AxisType.Auto,))
    assert mesh.size > 1  # conftest: 8 fake CPU devices
    with jax.set_mesh(mesh):
        assert not kernels.use_fused(spec)
        assert kernels.use_fused(dataclasses.replace(spec, kernels="pallas"))


def test_bad_kernel_options_are_named():
    with pytest.raises(ValueError, match="kernels='cuda'; allowed: auto, xla, pallas"):
        cx.ConnectionSpec(width=8, kernels="cuda")
    with pytest.raises(ConfigError, match="kernels='triton'"):
        ModelConfig(kernels="triton")
    with pytest.raises(ValueError, match="target='cuda'"):
        kernels.sinkhorn(jnp.zeros((2, 3, 3)), target="cuda")
    with pytest.raises(ValueError, match="block_m=12"):
        kernels.sinkhorn(jnp.zeros((2, 3, 3)), block_m=12)
    with pytest.raises(ValueError, match="not fused"):
        kernels.apply_site({}, jnp.zeros((2, 2, 8)), jnp.tanh,
                           cx.ConnectionSpec(width=8, n_streams=2, kind="hc"))


@pytest.mark.parametrize("target,platform,c", [
    ("triton", "cuda", 256), ("mosaic", "tpu", 256),
    pytest.param("mosaic_gpu", "cuda", 256, marks=MOSAIC_GPU),
    pytest.param("mosaic_gpu", "cuda", 2560, marks=MOSAIC_GPU)])  # the paper's width
def test_kernels_lower_for_gpu_and_tpu(target, platform, c):
    """Lowering only (no hardware here): block shapes, layouts and primitives pass Pallas'
    Triton / Mosaic TPU / Mosaic GPU lowering (Mosaic GPU's includes its layout inference and
    the wgmma shape checks) for the standalone Sinkhorn (forward + backward) and the full site
    (both paths, forward + backward)."""
    n = 4
    spec = cx.ConnectionSpec(width=c, n_streams=n, sinkhorn_iters=20)
    params = cx.init_params(spec, 1)
    streams = jnp.ones((2, 64, n, c), jnp.bfloat16)

    def site(params, streams):
        new, _ = kernels.apply_site(params, streams, lambda h: h * 2, spec, target=target)
        return jnp.sum(new.astype(jnp.float32))

    def sinkhorn(x):
        return jnp.sum(kernels.sinkhorn(x, 20, block_m=128, target=target))

    # the Triton lowering reads the target GPU's compute capability from the device; without a
    # GPU, an abstract mesh names one (Hopper); Mosaic TPU needs no device
    device = {"cuda": jax.sharding.AbstractDevice("NVIDIA H100", None, "gpu")}.get(platform)
    logits = jnp.ones((256, n, n))  # made outside: no op may run eagerly under the mesh
    with contextlib.ExitStack() as stack:
        if device is not None:
            stack.enter_context(jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh(
                (1,), ("x",), (jax.sharding.AxisType.Explicit,), abstract_device=device)))
        jax.jit(jax.grad(sinkhorn)).trace(logits).lower(lowering_platforms=(platform,))
        jax.jit(jax.grad(site, argnums=(0, 1))).trace(params, streams).lower(
            lowering_platforms=(platform,))


@MOSAIC_GPU
def test_mosaic_gpu_site_rows_and_smem_budget():
    """Mosaic GPU: 64 token rows per program (one warpgroup's wgmma), a bad block_m is named,
    and every kernel's pipeline buffers fit the SMEM budget at the paper's shape."""
    from mhc.kernels import mosaic_gpu_pipeline as fm, site_mosaic_gpu
    from mhc.kernels.site_layout import Static
    spec = cx.ConnectionSpec(width=32, n_streams=2)
    with pytest.raises(ValueError, match="block_m=8.*64 token rows"):
        kernels.apply_site(cx.init_params(spec, 1), jnp.zeros((4, 2, 32)), jnp.tanh, spec,
                           block_m=8, target="mosaic_gpu_interpret")
    with pytest.raises(ValueError, match="n_streams=16.*at most 256 logits"):
        spec16 = cx.ConnectionSpec(width=16, n_streams=16)
        kernels.apply_site(cx.init_params(spec16, 1), jnp.zeros((4, 16, 16)), jnp.tanh, spec16,
                           target="mosaic_gpu_interpret")
    c = 2560
    s = Static(n=4, c=c, cp=c, tc=kernels.chunk_width(c), block_m=site_mosaic_gpu.ROWS, iters=20,
               convention="paper", eps=1e-6, pre_eps=0.0, norm_eps=1e-6, target="mosaic_gpu")
    for chunks in (2, 5, 13, 14):  # the kernels' [TM, TC] buffers per pipeline step
        tc = fm.chunk_lanes(s, chunks, 2)
        assert s.cp % tc == 0 and tc >= 16
        assert chunks * fm.STEPS_IN_FLIGHT * fm.TM * tc * 2 <= fm.SMEM_BUDGET


def test_tensor_core_operand_split_keeps_16_bits():
    """bf16 hi + lo parts of an fp32 array reconstruct it to 2^-16 relative (the Mosaic GPU
    site's phi and d proj operands); fp32 operands pass through whole (tf32 on the GPU)."""
    from mhc.kernels.mosaic_gpu_pipeline import split_operands
    a = jax.random.normal(jax.random.key(0), (64, 32)) * jnp.logspace(-3, 3, 32)
    hi, lo = split_operands(a, jnp.bfloat16)
    assert hi.dtype == lo.dtype == jnp.bfloat16
    back = hi.astype(jnp.float32) + lo.astype(jnp.float32)
    assert float(jnp.max(jnp.abs(back - a) / jnp.abs(a))) <= 2.0 ** -16
    assert float(jnp.max(jnp.abs(hi.astype(jnp.float32) - a) / jnp.abs(a))) > 2.0 ** -10
    (whole,) = split_operands(a, jnp.float32)
    assert whole is a


def test_kernel_benchmark_exits_cleanly_on_cpu(capsys):
    import importlib.util
    import os
    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks", "kernels.py")
    module_spec = importlib.util.spec_from_file_location("bench_kernels", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    assert module.main([]) == 0
    assert "needs a GPU or TPU" in capsys.readouterr().out


@pytest.mark.parametrize("kind,kernels_", [("residual", "xla"), ("mhc", "xla"),
                                           ("mhc", "reference"), ("mhc", "pallas")])
def test_a_branch_with_aux_returns_it_beside_the_same_streams(kind, kernels_):
    """`has_aux`: the branch returns (output, aux) -- an MoE layer's router statistics -- and the
    site returns (new streams, maps, aux) with the streams and maps of the plain call."""
    spec = cx.ConnectionSpec(kind=kind, width=16, n_streams=1 if kind == "residual" else 4,
                             kernels=kernels_)
    params = cx.init_params(spec, 0)
    streams = jax.random.normal(jax.random.key(0), (3, spec.n_streams, 16))

    def branch(h):
        return jnp.tanh(h)

    def with_aux(h):
        return jnp.tanh(h), {"load": jnp.sum(h, -1)}

    new, maps = cx.apply_site(params, streams, branch, spec)
    new_a, maps_a, aux = cx.apply_site(params, streams, with_aux, spec, has_aux=True)
    np.testing.assert_array_equal(new_a, new)
    for a, b in zip(maps_a, maps):
        np.testing.assert_array_equal(a, b)
    assert aux["load"].shape == (3,)
    np.testing.assert_allclose(aux["load"], jnp.sum(cx.read_streams(maps.pre, streams), -1),
                               rtol=1e-5, atol=1e-6)  # the aux saw the site's branch input
