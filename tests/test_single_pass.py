"""Single-pass mHC (DeepSeek-V4.1, `single_pass=true`): the config's rules, where each site's
pre-mix gets its gradient, remat / sharding / MTP / exact resume with the carried pre-mix. The
forward against a NumPy reference is in test_golden.py."""
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mhc import recipes, sharding, train, train_step
from mhc.config import ConfigError, apply_overrides
from mhc.model import Decoder
from trainkit import TINY, column, events

SMALL = ["single_pass=true", "n_layers=2", "d_model=32", "n_heads=2", "d_ff=64", "seq_len=16",
         "batch_size=8", "warmup_steps=0", "dtype=float32"]
_tokens = np.random.default_rng(0).integers(0, 256, (8, 17))
BATCH = {"inputs": jnp.asarray(_tokens[:, :-1], jnp.int32),
         "targets": jnp.asarray(_tokens[:, 1:], jnp.int32)}


def _cfg(*overrides):
    return apply_overrides(recipes.get("tiny"), [*SMALL, *overrides])


@pytest.mark.parametrize("bad, needle", [
    (["residual=hc"], "single_pass=true needs residual=mhc"),
    (["residual=residual"], "single_pass=true needs residual=mhc"),
    (["collapse=head"], "collapse='head' with single_pass=true"),
    (["learned_maps=post,res"], "carried pre-mix must be learned"),
    (["single_pass=maybe"], "single_pass"),
])
def test_bad_single_pass_configs_name_the_field(bad, needle):
    with pytest.raises(ConfigError, match=needle):
        _cfg(*bad)


def _xent(model):
    logits = model(BATCH["inputs"])[0]
    logp = jax.nn.log_softmax(logits)
    return -jnp.take_along_axis(logp, BATCH["targets"][..., None], -1).mean()


def test_each_pre_mix_gets_its_gradient_from_the_next_site():
    """Site k's pre logits reach the loss only through site k + 1's read (the last site's
    through the final merge), so every site's pre bias has a gradient, including the last
    FFN site's, which the sum collapse of plain mHC leaves without one."""
    cfg = _cfg()
    grads = nnx.grad(_xent)(Decoder(cfg.model, rngs=nnx.Rngs(0)))
    for site in ("attn_hc", "ffn_hc"):
        g = np.asarray(grads.dense_blocks[site].params["bias"][...])  # [L, 2N + N²]
        assert (np.abs(g[:, :4]).max(-1) > 0).all(), (site, g[:, :4])
    plain = apply_overrides(cfg, ["single_pass=false"])
    g_plain = nnx.grad(_xent)(Decoder(plain.model, rngs=nnx.Rngs(0)))
    assert np.abs(np.asarray(g_plain.dense_blocks.ffn_hc.params["bias"][...])[-1, 4:8]).max() > 0


@pytest.mark.parametrize("remat", [["remat=streams"], ["remat=full", "remat_group=2"],
                                   ["remat=mhc"]])
def test_remat_keeps_the_carried_pre_mix_and_its_gradients(remat):
    cfg = _cfg("n_layers=4")
    want = nnx.grad(_xent)(Decoder(cfg.model, rngs=nnx.Rngs(0)))
    got = nnx.grad(_xent)(Decoder(apply_overrides(cfg, remat).model, rngs=nnx.Rngs(0)))
    for a, b in zip(jax.tree.leaves(nnx.state(got)), jax.tree.leaves(nnx.state(want))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-5)


def test_carried_pre_mix_is_fp32_under_bfloat16():
    cfg = _cfg("dtype=bfloat16")
    model = Decoder(cfg.model, rngs=nnx.Rngs(0))
    carry = model._first_carry(jnp.zeros((2, 3, 4, 32), jnp.bfloat16))
    assert carry[1].dtype == jnp.float32
    out = model.forward(BATCH["inputs"])
    assert out.maps.pre.dtype == jnp.float32 and bool(jnp.isfinite(out.logits).all())


def test_mtp_head_carries_its_own_pre_mix():
    cfg = _cfg("mtp_depth=1")
    model = Decoder(cfg.model, rngs=nnx.Rngs(0))
    out = model.forward(BATCH["inputs"])
    assert out.mtp_logits.shape == out.logits.shape

    def mtp_loss(model):
        return model.forward(BATCH["inputs"]).mtp_logits.std()

    g = np.asarray(nnx.grad(mtp_loss)(model).mtp_block.ffn_hc.params["bias"][...])
    assert np.abs(g[:4]).max() > 0  # its last pre reaches the MTP head's merge


@pytest.mark.slow  # a whole multi-step or sharded run
def test_sharded_single_pass_step_matches_one_device():
    assert len(jax.devices()) == 8
    cfg = _cfg()
    step1 = nnx.jit(train_step.train_step_body)
    model = Decoder(cfg.model, rngs=nnx.Rngs(0))
    optimizer = train_step.make_optimizer(model, cfg)
    want = [float(step1(model, optimizer, BATCH)[0]["loss"]) for _ in range(2)]
    mesh = sharding.make_mesh("fsdp=2,tensor=4")
    model = Decoder(cfg.model, rngs=nnx.Rngs(0))
    optimizer = train_step.make_optimizer(model, cfg)
    step, state = sharding.shard_step(lambda m, o, b: train_step.train_step_body(m, o, b)[0],
                                      model, optimizer, mesh)
    got = []
    for _ in range(2):
        state, metrics = step(state, sharding.place_batch(BATCH, mesh))
        got.append(float(metrics["loss"]))
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_single_pass_checkpoint_resume_is_exact(tmp_path):
    """6 steps straight through, and the same run resumed from its step-3 checkpoint, give the
    same losses bit for bit."""
    cfg = apply_overrides(recipes.get("tiny"), [*TINY, "single_pass=true", "steps=6",
                                                "checkpoint_every=3", "eval_every=3",
                                                "log_every=1", "async_checkpoint=false"])
    full = str(tmp_path / "full")
    train.run(cfg, full, verbose=False)
    part = str(tmp_path / "part")
    shutil.copytree(full, part)
    shutil.rmtree(os.path.join(part, "checkpoints", "6"))
    train.run(cfg, part, verbose=False, resume=True)
    assert [e["step"] for e in events(part, "resume")] == [3]
    assert column(part) == column(full) and len(column(full)) == 6
