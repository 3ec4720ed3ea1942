"""The decoder: shapes per residual kind, HC-at-init equals a pre-norm residual network, the maps
are used, stacked in depth order, and the model jits and differentiates."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mhc.config import ConfigError, ModelConfig
from mhc.model import Decoder

TINY = ModelConfig(d_model=32, n_layers=3, n_heads=2, d_ff=64, max_seq_len=64)
TOKENS = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 16)), jnp.int32)


def _model(**kw):
    return Decoder(dataclasses.replace(TINY, **kw), rngs=nnx.Rngs(0))


@pytest.mark.parametrize("kind", ["residual", "hc", "mhc", "mhc_lite"])
def test_shapes_and_maps(kind):
    logits, maps = _model(residual=kind)(TOKENS)
    n = 1 if kind == "residual" else 4
    assert logits.shape == (2, 16, 256) and logits.dtype == jnp.float32
    assert maps.res.shape == (2 * TINY.n_layers, 2, 16, n, n)
    assert maps.pre.shape == maps.post.shape == (2 * TINY.n_layers, 2, 16, n)
    assert bool(jnp.isfinite(logits).all())


def test_hc_at_init_equals_prenorm_residual_network():
    """HC paper: with b_pre one-hot, b_post = 1, b_res = I and zero dynamic weights, HC with copied
    streams the network is the residual network (collapse by mean: with a sum, the final RMSNorm's
    eps sees a 4x larger input, a ~1e-3 difference that is not the connection's)."""
    residual_logits, _ = _model(residual="residual")(TOKENS)
    hc_logits, _ = _model(residual="hc", collapse="mean")(TOKENS)
    np.testing.assert_allclose(hc_logits, residual_logits, atol=1e-5, rtol=1e-5)
    hc_sum_logits, _ = _model(residual="hc")(TOKENS)
    np.testing.assert_allclose(hc_sum_logits, residual_logits, atol=3e-3)
    mhc_logits, _ = _model(residual="mhc", res_init="uniform")(TOKENS)
    assert float(jnp.abs(mhc_logits - residual_logits).max()) > 1e-3  # the comparison can fail


def test_hc_pre_one_hot_follows_site_index():
    _, maps = _model(residual="hc")(TOKENS)
    reads = np.asarray(maps.pre[:, 0, 0])  # [2L, N]
    np.testing.assert_array_equal(reads.argmax(-1), np.arange(2 * TINY.n_layers) % 4)


def test_changing_h_res_changes_the_output():
    model = _model(residual="mhc")
    before, _ = model(TOKENS)
    bias = model.dense_blocks.attn_hc.params["bias"]
    bias[...] = bias[...].at[..., 8:].set(0.0)  # res logits -> uniform mixing in every block
    after, maps = model(TOKENS)
    assert float(jnp.abs(after - before).max()) > 1e-3
    np.testing.assert_allclose(maps.res[0], 0.25, atol=1e-5)


def test_mhc_at_init_is_near_identity_and_bounded():
    _, maps = _model(residual="mhc")(TOKENS)
    eye = np.eye(4)
    assert float(jnp.abs(maps.res - eye).max()) < 2e-3
    np.testing.assert_allclose(maps.res.sum(-1), 1.0, atol=1e-5)


def test_grad_and_jit_for_every_kind():
    for kind in ["residual", "hc", "mhc"]:
        model = _model(residual=kind)

        @nnx.jit
        def loss_and_grad(model):
            return nnx.value_and_grad(lambda m: jnp.mean(m(TOKENS)[0] ** 2))(model)

        loss, grads = loss_and_grad(model)
        leaves = jax.tree.leaves(grads)
        assert np.isfinite(float(loss)) and all(bool(jnp.isfinite(g).all()) for g in leaves)


def test_bfloat16_compute_and_remat():
    logits32, _ = _model(residual="mhc")(TOKENS)
    logits16, maps16 = _model(residual="mhc", dtype="bfloat16", remat="full")(TOKENS)
    assert maps16.res.dtype == jnp.float32  # coefficient path stays fp32
    assert float(jnp.abs(logits16 - logits32).max()) < 0.1


def test_hyper_head_collapse():
    logits, _ = _model(residual="mhc", collapse="head")(TOKENS)
    assert logits.shape == (2, 16, 256)


@pytest.mark.parametrize("bad, message", [
    (dict(d_model=30, n_heads=4), "d_model=30 is not divisible by n_heads=4"),
    (dict(n_streams=0), "n_streams=0"),
    (dict(residual="highway"), "residual='highway'"),
    (dict(manifold="sphere"), "manifold='sphere'"),
    (dict(res_init="random"), "res_init='random'"),
])
def test_bad_model_config_names_the_field(bad, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        dataclasses.replace(TINY, **bad)


def test_remat_policies_keep_gradients_and_cut_memory():
    """Every named policy (and grouped recompute, paper Eq. 20) gives the same gradients; full
    recompute compiles to less temporary memory than storing everything."""
    tokens = jnp.zeros((2, 64), jnp.int32)
    grads, memory = {}, {}
    for remat, group in [("none", 1), ("full", 1), ("dots", 1), ("mhc", 1), ("mhc", 2),
                         ("full", 0), ("streams", 1)]:
        model = _model(residual="mhc", n_layers=4, remat=remat, remat_group=group)
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)

        def loss(p):
            return jnp.mean(nnx.merge(graphdef, p, rest)(tokens)[0] ** 2)

        fn = jax.jit(jax.grad(loss))
        memory[remat, group] = fn.lower(params).compile().memory_analysis().temp_size_in_bytes
        grads[remat, group] = jnp.concatenate([g.ravel() for g in jax.tree.leaves(fn(params))])
    for key, g in grads.items():
        np.testing.assert_allclose(g, grads["none", 1], atol=1e-7, err_msg=str(key))
    assert memory["full", 1] < 0.6 * memory["none", 1], memory


@pytest.mark.parametrize("kind", ["mhc", "hc"])
def test_streams_policy_keeps_only_the_block_input_streams(kind):
    """Paper Section 4.3: the "streams" policy stores F's activations but no stream-shaped value
    [..., N, C] computed inside the block (the FFN site's input is re-run from the block input),
    while "none" stores it."""
    import contextlib
    import io

    from jax.ad_checkpoint import print_saved_residuals

    from mhc.model.transformer import Block, remat_policy
    cfg = dataclasses.replace(TINY, residual=kind)
    graphdef, state = nnx.split(Block(cfg, 0, rngs=nnx.Rngs(0)))
    streams = jnp.ones((2, 16, 4, cfg.d_model))

    def saved(policy):  # one line per saved residual: "f32[2,16,4,32] output of ... from ..."
        def loss(state, streams):
            return jnp.sum(nnx.merge(graphdef, state)(streams)[0])
        fn = loss if policy is None else jax.checkpoint(loss, policy=policy)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            print_saved_residuals(fn, state, streams)
        return [ln for ln in out.getvalue().splitlines() if "from the argument" not in ln]

    stream_shape = f",4,{cfg.d_model}]"
    assert any(stream_shape in ln for ln in saved(None))  # the FFN site's input is stored
    kept = saved(remat_policy("streams", 4, cfg.d_model))
    assert not [ln for ln in kept if stream_shape in ln]
    assert any("branch_out" in ln for ln in kept)  # F's output is kept, F is not re-run


def test_remat_group_size_follows_eq20():
    from mhc.model.transformer import remat_group_size
    cfg = dataclasses.replace(TINY, remat="mhc", remat_group=0)
    assert remat_group_size(cfg, 30) == 3  # 60 sites: sqrt(4*60/6) = 6.3 sites = 3.2 blocks
    assert remat_group_size(cfg, 12) == 2  # 24 sites: sqrt(16) = 4 sites = 2 blocks
    assert remat_group_size(dataclasses.replace(cfg, remat_group=4), 6) == 3
