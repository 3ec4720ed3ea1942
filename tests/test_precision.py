"""Low precision: dtype="auto" (bf16 on GPU/TPU, fp32 on CPU), the HC/mHC coefficient path stays
fp32 in bf16 models, bf16 training tracks fp32, and no overflow in the HC path at 27B-like widths
with large activations."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mhc import connections as cx
from mhc import data, kernels, recipes, train_step
from mhc.config import ModelConfig, apply_overrides
from mhc.model import Decoder

jit_step = nnx.jit(train_step.train_step_body)  # one device, state not donated

TOKENS = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 8)), jnp.int32)


def test_auto_dtype_is_fp32_on_cpu_and_bf16_on_accelerators(monkeypatch):
    cfg = ModelConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64)
    assert cfg.dtype == "auto" and cfg.compute_dtype == "float32"  # CPU: unchanged behaviour
    for backend, expected in (("gpu", "bfloat16"), ("tpu", "bfloat16"), ("cpu", "float32")):
        monkeypatch.setattr(jax, "default_backend", lambda b=backend: b)
        assert cfg.compute_dtype == expected
        assert dataclasses.replace(cfg, dtype="float32").compute_dtype == "float32"
        # "auto" takes the kernels only where they were measured ahead of XLA (none yet)
        assert kernels.pallas_selected("auto") == (backend in kernels.AUTO_PALLAS)
        assert kernels.pallas_selected("pallas")


@pytest.mark.parametrize("kind", ["hc", "mhc"])
def test_bf16_model_keeps_fp32_coefficients(kind):
    cfg = ModelConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64, residual=kind, dtype="bfloat16")
    model = Decoder(cfg, rngs=nnx.Rngs(0))
    assert model.embed(TOKENS).dtype == jnp.bfloat16  # the streams are bf16 ...
    _, maps = model(TOKENS)
    assert maps.pre.dtype == maps.post.dtype == maps.res.dtype == jnp.float32  # ... maps fp32


def test_bf16_training_tracks_fp32():
    """30 steps of a reduced tiny recipe (mHC, 1 block, width 64, 8x32 tokens, same seed, init
    and batches) in bf16 and in fp32. Measured on CPU (jax 0.10.2): largest per-step loss gap
    0.0010, mean 0.00035, while the loss falls by ~2.6 nats; a 2-block width-64 variant gave
    0.016 / 0.0028. The bounds (0.02 per step, 0.005 mean) leave ~5-20x margin for other XLA
    versions and CPUs, and are still far below the loss drop; the curves must also differ at
    least once, so bf16 was really used."""
    cfg = apply_overrides(recipes.get("tiny"), [
        "d_model=64", "n_layers=1", "n_heads=4", "d_ff=128", "seq_len=32", "batch_size=8",
        "steps=30", "warmup_steps=5"])
    tokens, _ = data.load_tokens("kjv", "auto")
    train_tokens, _ = data.train_val_split(tokens, 0.05)
    it = iter(data.batches(train_tokens, batch_size=8, seq_len=32, seed=0))
    batches = [next(it) for _ in range(30)]
    curves = {}
    for dtype in ("float32", "bfloat16"):
        c = apply_overrides(cfg, [f"dtype={dtype}"])
        model = Decoder(c.model, rngs=nnx.Rngs(0))
        opt = train_step.make_optimizer(model, c)
        curves[dtype] = np.array([float(jit_step(model, opt, b)[0]["loss"])
                                  for b in batches])
    f32, bf16 = curves["float32"], curves["bfloat16"]
    gap = np.abs(bf16 - f32)
    assert f32[0] - f32[-5:].mean() > 1.5  # it learns, so tracking means something
    assert gap.max() < 0.02 and gap.mean() < 0.005, (gap.max(), gap.mean())
    assert gap.max() > 0  # bf16 compute really differs from fp32


def _site_params(spec, key):
    params = cx.init_params(spec, 0)
    k = jax.random.split(key, 4)
    if spec.kind == "hc":
        c = spec.width
        return params | {"theta_pre": jax.random.normal(k[0], (c,)) / c ** 0.5,
                         "theta_post": jax.random.normal(k[1], (c,)) / c ** 0.5,
                         "theta_res": jax.random.normal(k[2], (spec.n_streams, c)) / c ** 0.5,
                         "alpha": jnp.ones((3,))}
    return params | {"phi": jax.random.normal(k[0], params["phi"].shape)
                     / params["phi"].shape[0] ** 0.5, "alpha": jnp.ones((3,))}


@pytest.mark.parametrize("kind", ["hc", "mhc"])
@pytest.mark.parametrize("scale", [1e3, 1e4])
def test_no_overflow_at_27b_width(kind, scale):
    """C = 2560, N = 4 (the 27B recipe's site), bf16 streams with |x| ~ scale (up to ~4x scale
    in the tails) and a branch that returns activations of the same size. Maps and new streams
    are finite; the maps equal the fp32 computation on the same values (the coefficient path
    is fp32: norm, projection, gates, Sinkhorn) and stay within bf16 input rounding of the fp32
    maps of the unrounded streams; the new streams are within bf16 rounding of fp32."""
    n, c = 4, 2560
    spec = cx.ConnectionSpec(width=c, n_streams=n, kind=kind, kernels="xla")
    params = _site_params(spec, jax.random.key(1))
    x32 = scale * jax.random.normal(jax.random.key(2), (2, 4, n, c))
    x16 = x32.astype(jnp.bfloat16)
    branch = lambda h: 0.5 * h  # noqa: E731  (large output too)
    new16, maps16 = cx.apply_site(params, x16, branch, spec)
    new32, maps32 = cx.apply_site(params, x16.astype(jnp.float32), branch, spec)
    _, maps_exact = cx.apply_site(params, x32, branch, spec)
    assert new16.dtype == jnp.bfloat16 and bool(jnp.isfinite(new16.astype(jnp.float32)).all())
    for m16, m32, exact in zip(maps16, maps32, maps_exact):
        assert m16.dtype == jnp.float32 and bool(jnp.isfinite(m16).all())
        np.testing.assert_allclose(m16, m32, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(m16, exact, atol=2e-2)  # bf16 rounding of the inputs only
    err = jnp.abs(new16.astype(jnp.float32) - new32)
    assert float(err.max()) <= 2 ** -7 * float(jnp.abs(new32).max())


def test_no_overflow_in_fused_kernel_at_27b_width():
    """The fused Pallas site (interpret mode) on bf16 streams with |x| ~ 1e4 at C = 2560."""
    n, c = 4, 2560
    spec = cx.ConnectionSpec(width=c, n_streams=n, kernels="pallas")
    params = _site_params(spec, jax.random.key(1))
    x16 = (1e4 * jax.random.normal(jax.random.key(2), (8, n, c))).astype(jnp.bfloat16)
    new_k, maps_k = jax.jit(lambda p, x: kernels.apply_site(p, x, lambda h: 0.5 * h, spec))(
        params, x16)
    new_x, maps_x = cx.apply_site(params, x16, lambda h: 0.5 * h,
                                  dataclasses.replace(spec, kernels="xla"))
    assert bool(jnp.isfinite(new_k.astype(jnp.float32)).all())
    for a, b in zip(maps_k, maps_x):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    err = jnp.abs(new_k.astype(jnp.float32) - new_x.astype(jnp.float32))
    assert float(err.max()) <= 2 ** -7 * float(jnp.abs(new_x.astype(jnp.float32)).max())
