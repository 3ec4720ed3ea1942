"""Fault handling: non-finite steps are skipped inside the jitted step and reported, K in a row
abort with a checkpoint, loss spikes are logged, SIGTERM/SIGINT save and stop cleanly, and a run
that fails before its first step leaves nothing behind."""
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mhc import checkpoint, train, train_step
from mhc.cli import main
from mhc.model import Decoder
from trainkit import TINY, column, events, tiny_config


def _state(*modules):
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(modules))]


def test_nonfinite_step_leaves_parameters_and_optimizer_untouched():
    cfg = tiny_config()
    model = Decoder(cfg.model, rngs=nnx.Rngs(0))
    optimizer = train_step.make_optimizer(model, cfg)
    batch = {"inputs": jnp.zeros((2, 8), jnp.int32), "targets": jnp.ones((2, 8), jnp.int32)}
    before = _state(model, optimizer)
    step = train.Stepper(model, optimizer, cfg)
    out, _ = step(batch, poison=True)
    assert not out["finite"] and np.isnan(out["loss"])
    for a, b in zip(before, _state(*step.modules()), strict=True):
        np.testing.assert_array_equal(a, b)  # bitwise: nothing moved, not even Adam's count
    assert int(step.modules()[1].step[...]) == 0
    out, _ = step(batch, poison=False)
    assert out["finite"] and int(step.modules()[1].step[...]) == 1
    assert any(not np.array_equal(a, b) for a, b in zip(before, _state(*step.modules())))


def test_injected_nan_steps_are_skipped_and_reported(tmp_path):
    run_dir = str(tmp_path / "run")
    result = train.run(tiny_config("steps=6", "debug_nan_steps=3,4", "eval_every=6"), run_dir,
                       verbose=False)
    losses, skipped = column(run_dir), column(run_dir, "skipped")
    assert np.isnan(losses[2]) and np.isnan(losses[3]) and np.isfinite(losses[4:]).all()
    assert skipped == [None, None, 1, 1, None, None]
    bad = events(run_dir, "nonfinite")
    assert [e["step"] for e in bad] == [3, 4] and "skipped (2 in a row" in bad[1]["message"]
    assert np.isfinite(result.final_loss)
    # the lr schedule counts applied updates only: step 5 uses the lr of the 3rd update
    lrs = column(run_dir, "lr")
    assert lrs[2] == lrs[3] == lrs[4] and lrs[4] > lrs[1]


def test_nan_patience_in_a_row_aborts_with_a_checkpoint(tmp_path, capsys):
    run_dir = str(tmp_path / "run")
    code = main(["train", "--run-dir", run_dir, "--steps", "10", *TINY, "eval_every=10",
                 "debug_nan_steps=3,4,5", "nan_patience=3", "checkpoint_every=100"])
    err = capsys.readouterr().err.strip()
    assert code == 3 and len(err.splitlines()) == 1, err
    assert err.startswith("mhc: error: 3 non-finite steps in a row (nan_patience=3) at step 5")
    assert [e["step"] for e in events(run_dir, "abort")] == [5]
    model = Decoder(tiny_config().model, rngs=nnx.Rngs(0))
    optimizer = train_step.make_optimizer(model, tiny_config())
    restored = checkpoint.restore(run_dir, model, optimizer)
    assert restored.step == 5 and int(optimizer.step[...]) == 2  # the good state of step 2
    assert restored.meta["bad_in_a_row"] == 3 and len(column(run_dir)) == 5


def test_spike_detector():
    detect = train.SpikeDetector(window=20, sigma=6.0)
    rng = np.random.default_rng(0)
    assert not any(detect(2.0 + 0.01 * x) for x in rng.standard_normal(30))
    mean, std = detect(2.5)
    assert mean == pytest.approx(2.0, abs=0.01) and 0 < std < 0.02
    assert train.SpikeDetector(window=20, sigma=0.0)(100.0) is None  # 0 = off


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_a_checkpoint_and_stops_cleanly(signum, tmp_path, monkeypatch, capsys):
    """The signal arrives during step 2 (sent from the eval of step 2); the run finishes that
    step, saves it and exits 128 + signum; --resume then completes the run."""
    evaluate = train.evaluate

    def evaluate_then_signal(model, val_tokens, cfg):
        os.kill(os.getpid(), signum)
        return evaluate(model, val_tokens, cfg)

    monkeypatch.setattr(train, "evaluate", evaluate_then_signal)
    handler_before = signal.getsignal(signal.SIGINT)  # SIG_IGN when run in the background
    run_dir = str(tmp_path / "run")
    code = main(["train", "--run-dir", run_dir, "--steps", "4", *TINY, "eval_every=2",
                 "checkpoint_every=100"])
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert code == 128 + signum
    assert f"stopped by {signal.Signals(signum).name} after step 2" in err
    assert checkpoint.manager(run_dir, read_only=True).all_steps() == [2]
    assert [e["step"] for e in events(run_dir, "stop")] == [2]
    assert signal.getsignal(signal.SIGINT) is handler_before  # handlers restored
    assert main(["train", "--resume", "--run-dir", run_dir]) == 0
    assert [r for r in range(1, 5)] == [int(s) for s in column(run_dir, "step")]


def test_failure_before_the_first_step_leaves_no_files(tmp_path, monkeypatch):
    def broken(self, batch, poison=None):
        raise RuntimeError("compile failed")

    monkeypatch.setattr(train.Stepper, "__call__", broken)
    run_dir = tmp_path / "runs" / "run"
    with pytest.raises(RuntimeError, match="compile failed"):
        train.run(tiny_config("steps=2"), str(run_dir), verbose=False)
    assert not list(tmp_path.iterdir())  # neither the run nor the parent it created
    run_dir.mkdir(parents=True)  # a directory the user made stays, emptied
    with pytest.raises(RuntimeError, match="compile failed"):
        train.run(tiny_config("steps=2"), str(run_dir), verbose=False)
    assert run_dir.is_dir() and not list(run_dir.iterdir())
