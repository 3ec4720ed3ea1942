"""mHC in a user's own Flax NNX model (issue 24): a jitted train step traces once, `nnx.state`
checkpoints restore bit-for-bit, the maps are recorded only on request, the one-line wrapper
(`mhc.Sites`), clear errors at the site, named diagnostics and logical axes of the parameters."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

import mhc
from mhc import sharding

B, T, IN, C, N, HIDDEN, CLASSES, BLOCKS = 4, 6, 3, 16, 4, 32, 3, 3


class Mlp(nnx.Module):
    """The user's own branch, with its pre-norm (no attention needed)."""

    def __init__(self, *, rngs):
        self.norm = nnx.RMSNorm(C, rngs=rngs)
        self.up = nnx.Linear(C, HIDDEN, rngs=rngs)
        self.down = nnx.Linear(HIDDEN, C, rngs=rngs)

    def __call__(self, h):
        return self.down(jax.nn.gelu(self.up(self.norm(h))))


class Block(nnx.Module):
    def __init__(self, index, *, rngs):
        self.mix, self.ffn = Mlp(rngs=rngs), Mlp(rngs=rngs)
        self.hc_mix = mhc.HyperConnection(C, n_streams=N, layer_index=2 * index, rngs=rngs)
        self.hc_ffn = mhc.HyperConnection(C, n_streams=N, layer_index=2 * index + 1, rngs=rngs)

    def __call__(self, streams):
        return self.hc_ffn(self.hc_mix(streams, self.mix), self.ffn)


class OwnModel(nnx.Module):
    def __init__(self, *, rngs):
        self.embed = nnx.Linear(IN, C, rngs=rngs)
        self.blocks = nnx.List([Block(i, rngs=rngs) for i in range(BLOCKS)])
        self.collapse = mhc.HyperHead(C, N, rngs=rngs)
        self.out = nnx.Linear(C, CLASSES, rngs=rngs)

    def __call__(self, x_BxTxI):
        streams = mhc.expand_streams(self.embed(x_BxTxI), N)
        for block in self.blocks:
            streams = block(streams)
        return self.out(self.collapse(streams).mean(1))


def _batch(seed, batch=B):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.normal(size=(batch, T, IN)), jnp.float32),
            jnp.asarray(rng.integers(0, CLASSES, size=(batch,)), jnp.int32))


def _trainer():
    traces = []

    @nnx.jit
    def train_step(model, optimizer, x, y):
        traces.append(1)  # runs once per trace, not per call

        def loss_fn(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    return train_step, traces


def _train(model, steps=3):
    optimizer = nnx.Optimizer(model, optax.adamw(1e-2), wrt=nnx.Param)
    train_step, traces = _trainer()
    losses = [float(train_step(model, optimizer, *_batch(s))) for s in range(steps)]
    return optimizer, train_step, traces, losses


def _leaves(tree):
    return jax.tree_util.tree_flatten_with_path(tree)[0]


# ------------------------------------------------------------------------ jit and checkpoints
@pytest.fixture(scope="module")
def trained():
    """A user's model after 3 jitted steps (one compilation shared by the tests below)."""
    model = OwnModel(rngs=nnx.Rngs(0))
    optimizer, train_step, traces, losses = _train(model)
    return model, optimizer, train_step, traces, losses


def test_train_step_traces_once_across_steps_and_after_other_shapes(trained):
    model, optimizer, train_step, traces, losses = trained
    assert len(traces) == 1 and all(np.isfinite(losses)) and losses[-1] != losses[0]
    model(_batch(9, batch=3)[0])  # an eager eval at another batch shape
    nnx.jit(lambda m, x: m(x))(model, _batch(9, batch=5)[0])  # and a jitted one
    mhc.capture_maps(model)(_batch(9, batch=2)[0])  # recording the maps leaves nothing behind
    train_step(model, optimizer, *_batch(3))
    assert len(traces) == 1
    assert not jax.tree.leaves(nnx.state(model, nnx.Intermediate))


def test_checkpoint_with_nnx_state_restores_bit_for_bit(trained, tmp_path):
    model = trained[0]
    model(_batch(5, batch=2)[0])  # a forward at another shape before saving (kept state before)
    path = tmp_path / "ckpt"
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path, nnx.state(model))
    checkpointer.wait_until_finished()
    fresh = OwnModel(rngs=nnx.Rngs(1))  # other weights, same structure
    restored = checkpointer.restore(path, nnx.state(nnx.eval_shape(
        lambda: OwnModel(rngs=nnx.Rngs(1)))))
    nnx.update(fresh, restored)
    got, want = _leaves(nnx.state(fresh)), _leaves(nnx.state(model))
    assert [p for p, _ in got] == [p for p, _ in want] and len(got) > 20
    for (path, a), (_, b) in zip(got, want):
        assert a.dtype == b.dtype and a.shape == b.shape, path
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path))
    x = _batch(6)[0]
    np.testing.assert_array_equal(fresh(x), model(x))


# ------------------------------------------------------------------------- recording the maps
def test_capture_maps_records_every_site_on_request(trained):
    model = trained[0]
    x = _batch(7)[0]
    out, maps = mhc.capture_maps(model)(x)
    np.testing.assert_array_equal(out, model(x))
    assert list(maps) == [f"blocks.{i}.{site}" for i in range(BLOCKS)
                          for site in ("hc_ffn", "hc_mix")]
    for name, m in maps.items():
        assert isinstance(m, mhc.Maps) and m.res.shape == (B, T, N, N), name
        # Sinkhorn's 20 iterations: columns exact, rows to ~1e-4
        assert float(mhc.doubly_stochastic_error(m.res).max()) < 1e-3, name
        assert float(m.res.min()) >= 0.0
    # the same maps as the site's own (hc.apply returns them without recording)
    streams = mhc.expand_streams(model.embed(x), N)
    np.testing.assert_allclose(maps["blocks.0.hc_mix"].res,
                               model.blocks[0].hc_mix.apply(streams, model.blocks[0].mix)[1].res,
                               atol=1e-6)
    # inside jit too, and nothing is left on the module
    _, jitted = nnx.jit(lambda m, x: mhc.capture_maps(m)(x))(model, x)
    np.testing.assert_allclose(jitted["blocks.2.hc_ffn"].res, maps["blocks.2.hc_ffn"].res,
                               atol=1e-6)
    assert not jax.tree.leaves(nnx.state(model, nnx.Intermediate))
    with pytest.raises(AttributeError, match="capture_maps"):
        model.blocks[0].hc_mix.last_maps


def test_call_with_has_aux_returns_aux_and_records_maps():
    hc = mhc.HyperConnection(C, n_streams=N)
    streams = jax.random.normal(jax.random.key(0), (2, T, N, C))
    new, aux = hc(streams, lambda h: (jnp.tanh(h), {"norm": jnp.sum(h * h)}), has_aux=True)
    want, maps = hc.apply(streams, jnp.tanh)
    np.testing.assert_array_equal(new, want)
    assert set(aux) == {"norm"}
    _, captured = mhc.capture_maps(lambda hc, s: hc(s, jnp.tanh))(hc, streams)
    np.testing.assert_array_equal(captured[""].res, maps.res)


# ---------------------------------------------------------------------- the one-line wrapper
class SitesModel(nnx.Module):
    """The same network written with `mhc.Sites`: one line per site, indices assigned."""

    def __init__(self, sites, *, rngs):
        self.embed = nnx.Linear(IN, C, rngs=rngs)
        self.layers = nnx.List([sites.wrap(Mlp(rngs=rngs)) for _ in range(2 * BLOCKS)])
        self.sites = sites
        self.out = nnx.Linear(C, CLASSES, rngs=rngs)

    def __call__(self, x_BxTxI):
        streams = self.sites.expand(self.embed(x_BxTxI))
        for layer in self.layers:
            streams = layer(streams)
        return self.out(self.sites.reduce(streams).mean(1))


def test_sites_number_the_sites_and_train_under_jit():
    sites = mhc.Sites(C, n_streams=N, kind="mhc")
    model = SitesModel(sites, rngs=nnx.Rngs(0))
    # mHC's pre logits are +1 on stream layer_index mod n: 0, 1, 2, 3, 0, 1
    reads = [int(jnp.argmax(layer.hc.params["bias"][...][:N])) for layer in model.layers]
    assert reads == [0, 1, 2, 3, 0, 1] and sites.count == 2 * BLOCKS
    assert sites.wrap(Mlp(rngs=nnx.Rngs(1)), layer_index=9).hc.params["bias"][...][1] == 1.0
    assert sites.count == 10  # continues after an explicit index
    _, _, traces, losses = _train(model)
    assert len(traces) == 1 and losses[-1] != losses[0]
    _, maps = mhc.capture_maps(model)(_batch(1)[0])
    assert sorted(maps) == sorted(f"layers.{i}.hc" for i in range(2 * BLOCKS))
    hc_sites = mhc.Sites(C, n_streams=N, kind="hc")
    reads = [int(jnp.argmax(hc_sites.wrap(Mlp(rngs=nnx.Rngs(0))).hc.params["b_pre"][...]))
             for _ in range(5)]
    assert reads == [0, 1, 2, 3, 0]


def test_disabled_sites_are_the_plain_residual_model():
    model = SitesModel(mhc.Sites(C, n_streams=N, disable=True), rngs=nnx.Rngs(0))
    x = _batch(2)[0]
    # the hand-written residual network with the same weights, bit for bit
    h = model.embed(x)
    for layer in model.layers:
        h = h + layer.branch(h)
    np.testing.assert_array_equal(model(x), model.out(h.mean(1)))
    n_params = sum(a.size for a in jax.tree.leaves(nnx.state(model, nnx.Param)))
    branch_params = sum(a.size for layer in model.layers
                        for a in jax.tree.leaves(nnx.state(layer.branch, nnx.Param)))
    assert n_params == branch_params + (IN + 1) * C + (C + 1) * CLASSES  # nothing added
    assert all(layer.hc is None for layer in model.layers)
    with pytest.raises(ValueError, match=r"\(4, 6, 16\) to shape \(4, 6, 32\)"):
        mhc.Sites(C, disable=True).wrap(lambda h: jnp.concatenate([h, h], -1))(h)
    with pytest.raises(ValueError, match="collapse='max'"):
        mhc.Sites(C, collapse="max")
    with pytest.raises(ValueError, match="n_streams=0"):
        mhc.Sites(C, n_streams=0)


# ------------------------------------------------------------------------ errors at the site
def _one_line_error(fn, match):
    with pytest.raises(ValueError, match=match) as err:
        fn()
    assert "\n" not in str(err.value)


def _streams(shape=(2, 3, N, 8)):
    return jax.random.normal(jax.random.key(1), shape)


@pytest.mark.parametrize("kind, kernels", [("mhc", "xla"), ("mhc", "pallas"), ("hc", "auto"),
                                           ("residual", "auto")])
def test_branch_that_changes_the_width_or_returns_a_tuple(kind, kernels):
    hc = mhc.HyperConnection(8, n_streams=N, kind=kind, kernels=kernels)
    _one_line_error(lambda: hc(_streams(), lambda h: jnp.concatenate([h, h], -1)),
                    r"input of shape \(2, 3, 8\) to shape \(2, 3, 16\).*width C = 8")
    _one_line_error(lambda: hc(_streams(), lambda h: (h, {"aux": 1.0})),
                    r"returned a tuple of 2 \(shape \(2, 3, 8\), dict\).*has_aux=True")
    _one_line_error(lambda: hc.apply(_streams(), jnp.tanh, has_aux=True),
                    r"has_aux=True: the branch must return \(output, aux\); got shape \(2, 3, 8\)")


def test_streams_must_be_rank_4_and_match_the_site():
    hc = mhc.HyperConnection(8, n_streams=N)
    # a [B, T, C] hidden state whose T equals n is not taken as streams
    _one_line_error(lambda: hc(_streams((2, N, 8)), jnp.tanh),
                    r"HyperConnection\(width=8, n_streams=4\): streams shape \(2, 4, 8\); "
                    r"expected \[B, T, n_streams=4, width=8\].*mhc.expand_streams\(x, 4\)")
    _one_line_error(lambda: hc.maps(_streams((2, N, 8))), r"\(2, 4, 8\)")
    _one_line_error(lambda: hc(_streams((2, 3, N, 16)), jnp.tanh), r"\(2, 3, 4, 16\)")
    linen_site = mhc.LinenHyperConnection(8, n_streams=N)
    _one_line_error(lambda: linen_site.init(jax.random.key(0), _streams((2, N, 8)), jnp.tanh),
                    r"LinenHyperConnection\(width=8, n_streams=4\)")
    # the pure function keeps taking any [..., N, C]
    params = {k: p[...] for k, p in hc.params.items()}
    new, _ = mhc.apply_site(params, _streams((N, 8)), jnp.tanh, hc.spec)
    assert new.shape == (N, 8)


def test_hyper_head_width_mismatch():
    _one_line_error(lambda: mhc.HyperHead(64, 4)(_streams((2, 3, 4, 32))),
                    r"HyperHead\(width=64, n_streams=4\): streams shape \(2, 3, 4, 32\); "
                    r"expected \[B, T, n_streams=4, width=64\]")
    _one_line_error(lambda: mhc.LinenHyperHead(64, 4).init(jax.random.key(0),
                                                            _streams((2, 3, 4, 32))),
                    r"LinenHyperHead\(width=64, n_streams=4\)")


def test_layer_index_default_reads_stream_zero_and_rngs_are_unused():
    """Documented behaviour: without layer_index every site starts reading stream 0 (give each
    site its own, or let mhc.Sites number them); the init draws no randomness."""
    a = mhc.HyperConnection(8, n_streams=N, kind="hc", rngs=nnx.Rngs(0))
    b = mhc.HyperConnection(8, n_streams=N, kind="hc", rngs=nnx.Rngs(1))
    np.testing.assert_array_equal(a.params["b_pre"][...], np.eye(N)[0])
    for x, y in zip(jax.tree.leaves(nnx.state(a)), jax.tree.leaves(nnx.state(b))):
        np.testing.assert_array_equal(x, y)


# -------------------------------------------------------------------------------- diagnostics
def test_diagnostics_are_named_and_compose_with_jnp():
    h = jnp.array([[[2.0, -1.0], [0.0, 3.0]], [[0.5, 0.5], [0.5, 0.5]]])
    gain = mhc.amax_gain(h)
    fwd, bwd = gain  # unpacks as before
    np.testing.assert_array_equal(gain.forward, fwd)
    np.testing.assert_array_equal(gain.backward, [4.0, 1.0])
    assert float(jnp.max(gain)) == 4.0 and float(gain.max()) == 4.0
    assert float(nnx.jit(jnp.max)(gain)) == 4.0
    err = mhc.doubly_stochastic_error(h)
    np.testing.assert_array_equal(err.row, [2.0, 0.0])
    np.testing.assert_array_equal(err.col, [1.0, 0.0])
    assert float(jnp.max(err)) == 2.0 and float(err.max()) == 2.0
    assert np.asarray(err).shape == (2, 2)


# ------------------------------------------------------------------------- logical axis names
def _specs(module) -> dict:
    return {"/".join(map(str, path)): var.get_value()
            for path, var in nnx.to_flat_state(nnx.get_partition_spec(nnx.state(module)))}


def test_parameters_carry_logical_axes():
    assert _specs(mhc.HyperConnection(8, n_streams=N)) == {
        "params/phi": P("embed", None), "params/bias": P(None), "params/alpha": P(None)}
    hc_specs = _specs(mhc.HyperConnection(8, n_streams=N, kind="hc"))
    assert hc_specs["params/theta_res"] == P(None, "embed")
    assert hc_specs["params/norm_weight"] == P("embed") and hc_specs["params/b_res"] == P(None,
                                                                                         None)
    assert _specs(mhc.HyperHead(8, N)) == {"phi": P("embed", None), "bias": P(None),
                                           "alpha": P()}
    # a user's FSDP rule splits them like the model's weights (8 fake devices, tests/conftest.py)
    model = OwnModel(rngs=nnx.Rngs(0))
    shardings = sharding.state_shardings(nnx.state(model), sharding.make_mesh("fsdp=2,data=4"))
    assert shardings["blocks"][0]["hc_mix"]["params"]["phi"].get_value().spec == P("fsdp", None)
    # the library's own model: stacked over layers
    from mhc.config import ModelConfig
    from mhc.model import Decoder
    decoder = nnx.eval_shape(lambda: Decoder(ModelConfig(d_model=16, n_layers=2, n_heads=2,
                                                         d_ff=32), rngs=nnx.Rngs(0)))
    specs = _specs(decoder)
    assert specs["dense_blocks/attn_hc/params/phi"] == P("layers", "embed", None)



# ----------------------------------------------------------------------------- the README
def test_readme_own_model_snippet_runs():
    """The first code block of README's "Using mHC in your own model" runs as written."""
    import os
    import re
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    section = readme[readme.index("## Using mHC in your own model"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert set(namespace["maps"]) == {f"layers.{i}.hc" for i in range(4)}
    assert os.path.isdir(namespace["path"])
    for a, b in zip(jax.tree.leaves(nnx.state(namespace["fresh"])),
                    jax.tree.leaves(nnx.state(namespace["model"]))):
        np.testing.assert_array_equal(a, b)
    baseline = namespace["Net"](disable=True, rngs=nnx.Rngs(0))
    assert all(layer.hc is None for layer in baseline.layers)
