"""Exact resume: SIGKILL at a random step, a crash inside a checkpoint save, the data iterator
after a restore, and restoring a checkpoint written on 8 devices onto 4 and onto 1."""
import os
import random
import shutil
import signal
import subprocess

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from mhc import checkpoint, data, train, train_step
from mhc.cli import main
from mhc.model import Decoder
from trainkit import (TINY, column, events, mhc_command, stop_at_first_eval, subprocess_env,
                      tiny_config)

STEPS = 12
RUN = ["eval_every=4", "log_every=1", "checkpoint_every=1"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of the same length (in this process: same program, same results)."""
    run_dir = str(tmp_path_factory.mktemp("reference"))
    train.run(tiny_config(*RUN, f"steps={STEPS}"), run_dir, verbose=False)
    return {"loss": column(run_dir), "eval_loss": column(run_dir, "eval_loss")}


def test_sigkill_at_a_random_step_then_resume_is_bitwise_exact(reference, tmp_path):
    run_dir = str(tmp_path / "run")
    # from step 3 on, step 1's async save has surely committed (each save waits for the last)
    kill_at = random.randint(3, STEPS - 4)
    proc = subprocess.Popen(mhc_command("train", "--run-dir", run_dir, "--steps", str(STEPS),
                                        *TINY, *RUN), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=subprocess_env())
    for line in proc.stdout:
        if line.startswith(f"step {kill_at}/"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL, f"the run finished before step {kill_at}"
    saved = checkpoint.manager(run_dir, read_only=True).all_steps()
    assert saved and max(saved) < STEPS, saved
    done = subprocess.run(mhc_command("train", "--resume", "--run-dir", run_dir),
                          capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    resumed = events(run_dir, "resume")
    assert len(resumed) == 1 and resumed[0]["step"] == max(saved)
    # bitwise: every per-step loss and eval loss equals the uninterrupted run's (killed at
    # step >= kill_at, restored from step max(saved))
    assert column(run_dir) == reference["loss"], f"killed at step {kill_at}, saved {saved}"
    assert column(run_dir, "eval_loss") == reference["eval_loss"]


def test_crash_inside_a_checkpoint_save_keeps_the_previous_one(reference, tmp_path,
                                                               monkeypatch):
    """The save of step 4 dies after writing its items, before orbax's atomic rename."""
    from orbax.checkpoint._src.path import atomicity

    finalize = atomicity.AtomicRenameTemporaryPath.finalize

    async def crash_at_step_4(self):
        if os.path.basename(str(self.get_final())) == "4":
            raise OSError("simulated crash during the save of step 4")
        return await finalize(self)

    monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", crash_at_step_4)
    run_dir = str(tmp_path / "run")
    with pytest.raises(Exception, match="simulated crash"):
        train.run(tiny_config(*RUN, f"steps={STEPS}", "checkpoint_every=2"), run_dir,
                  verbose=False)
    monkeypatch.undo()
    listing = os.listdir(os.path.join(run_dir, "checkpoints"))
    assert "4.orbax-checkpoint-tmp" in listing and "4" not in listing, listing
    model = Decoder(tiny_config().model, rngs=nnx.Rngs(7))
    assert checkpoint.restore(run_dir, model).step == 2  # the previous checkpoint restores
    assert "4.orbax-checkpoint-tmp" in os.listdir(os.path.join(run_dir, "checkpoints"))
    # ... and the run continues from it exactly (the half-written step 4 is cleaned up)
    assert main(["train", "--resume", "--run-dir", run_dir, "log_every=100"]) == 0
    assert column(run_dir) == reference["loss"]
    assert "4.orbax-checkpoint-tmp" not in os.listdir(os.path.join(run_dir, "checkpoints"))


def test_leftover_temp_directory_is_ignored(tmp_path):
    """What SIGKILL during a save leaves: a half-written `<step>.orbax-checkpoint-tmp`."""
    run_dir = str(tmp_path / "run")
    result = train.run(tiny_config("steps=2", "checkpoint_every=1", "eval_every=2"), run_dir,
                       verbose=False)
    ckpts = os.path.join(run_dir, "checkpoints")
    partial = os.path.join(ckpts, "3.orbax-checkpoint-tmp")
    shutil.copytree(os.path.join(ckpts, "2"), partial)
    for root, _, files in os.walk(partial):  # truncate every file: a torn write
        for name in files:
            open(os.path.join(root, name), "w").close()
    trained, fresh = (Decoder(tiny_config().model, rngs=nnx.Rngs(s)) for s in (1, 2))
    assert checkpoint.restore(run_dir, trained).step == 2
    tokens = np.zeros((1, 8), np.int32)
    assert not np.array_equal(trained(tokens)[0], fresh(tokens)[0])
    assert result.checkpoint.endswith(os.path.join("checkpoints", "2"))


def test_data_iterator_resumes_with_the_same_batches(tmp_path):
    tokens = np.arange(20_001) % 251
    make = lambda: iter(data.batches(tokens, batch_size=3, seq_len=16, seed=5))  # noqa: E731
    it = make()
    for _ in range(7):
        next(it)
    model = Decoder(tiny_config().model, rngs=nnx.Rngs(0))
    with checkpoint.manager(str(tmp_path)) as mngr:
        checkpoint.save(mngr, 7, model, None, {"any": "config"}, data=it.get_state(), wait=True)
    expected = [next(it) for _ in range(5)]
    restored = checkpoint.restore(str(tmp_path), model)
    it2 = make()
    it2.set_state(restored.data)
    for want, got in zip(expected, [next(it2) for _ in range(5)], strict=True):
        np.testing.assert_array_equal(want["inputs"], got["inputs"])
        np.testing.assert_array_equal(want["targets"], got["targets"])


def _shard(tree, n_devices):
    """Shard every array whose leading axis is the vocabulary over a 1-D mesh of n devices."""
    mesh = jax.make_mesh((n_devices,), ("data",), axis_types=(AxisType.Auto,),
                         devices=jax.devices()[:n_devices])
    spec = lambda x: P("data") if x.ndim and x.shape[0] == 256 else P()  # noqa: E731
    return jax.tree.map(lambda x: jax.device_put(x, NamedSharding(mesh, spec(x))), tree)


@pytest.mark.parametrize("n_devices", [4, 1])
def test_restore_8_device_checkpoint_onto_fewer_devices(n_devices, tmp_path):
    assert jax.device_count() >= 8
    cfg = tiny_config()
    model = Decoder(cfg.model, rngs=nnx.Rngs(0))
    optimizer = train_step.make_optimizer(model, cfg)
    nnx.update(model, _shard(nnx.state(model), 8))
    nnx.update(optimizer, _shard(nnx.state(optimizer), 8))
    assert len(model.embed.embedding[...].sharding.device_set) == 8
    with checkpoint.manager(str(tmp_path)) as mngr:
        checkpoint.save(mngr, 1, model, optimizer, cfg.to_dict(), wait=True)

    target = Decoder(cfg.model, rngs=nnx.Rngs(1))
    target_opt = train_step.make_optimizer(target, cfg)
    nnx.update(target, _shard(nnx.state(target), n_devices))
    nnx.update(target_opt, _shard(nnx.state(target_opt), n_devices))
    checkpoint.restore(str(tmp_path), target, target_opt)
    emb = target.embed.embedding[...]
    assert len(emb.sharding.device_set) == n_devices
    assert emb.sharding.spec == P("data") and emb.addressable_shards[0].data.shape[0] == 256 // n_devices
    for a, b in zip(jax.tree.leaves(nnx.state((model, optimizer))),
                    jax.tree.leaves(nnx.state((target, target_opt))), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_keep_last_and_keep_every(tmp_path):
    model = Decoder(tiny_config().model, rngs=nnx.Rngs(0))
    with checkpoint.manager(str(tmp_path), keep_last=2, keep_every=3) as mngr:
        for step in range(1, 9):
            checkpoint.save(mngr, step, model, None, {})
        mngr.wait_until_finished()
        assert mngr.all_steps() == [3, 6, 7, 8]  # the last 2, and every multiple of 3


@pytest.mark.slow  # a whole multi-step or sharded run
def test_resume_on_an_8_device_mesh(reference, tmp_path, monkeypatch):
    """Stop a one-device run after step 4 (SIGTERM), continue it on 8 devices (data=4 x tensor=2):
    the checkpoint is restored straight onto the mesh and training goes on (not bitwise: the
    sharded program sums in another order)."""
    run_dir = str(tmp_path / "run")
    stop_at_first_eval(monkeypatch, tiny_config(*RUN, f"steps={STEPS}"), run_dir)
    assert main(["train", "--resume", "--run-dir", run_dir, "--mesh", "data=4,tensor=2",
                 "log_every=100"]) == 0
    assert column(run_dir)[:4] == reference["loss"][:4]
    np.testing.assert_allclose(column(run_dir)[4:], reference["loss"][4:], rtol=1e-6)
    assert events(run_dir, "resume")[0]["step"] == 4
