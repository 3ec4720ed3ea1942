"""Shared pieces of the training tests: a tiny config, subprocess environment, metric readers."""
import os
import sys

from mhc import recipes
from mhc.config import apply_overrides
from mhc.metrics import read_jsonl

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 1 block, width 32: compiles in seconds and runs a step in milliseconds on CPU
TINY = ["n_layers=1", "d_model=32", "n_heads=2", "d_ff=64", "seq_len=32", "batch_size=4",
        "eval_batches=1", "wandb=disabled"]


def tiny_config(*overrides):
    return apply_overrides(recipes.get("tiny"), [*TINY, *overrides])


def column(run_dir, key="loss"):
    """`key` for every step in RUN_DIR/metrics.jsonl (None where a step did not log it)."""
    return [r.get(key) for r in read_jsonl(os.path.join(run_dir, "metrics.jsonl"))]


def events(run_dir, kind=None):
    rows = read_jsonl(os.path.join(run_dir, "events.jsonl"))
    return [r for r in rows if kind is None or r["event"] == kind]


def stop_at_first_eval(monkeypatch, cfg, run_dir):
    """Train `cfg` in `run_dir` until its first eval, then stop it as a SIGTERM would (the run
    checkpoints and raises `TrainingInterrupted`, which this expects)."""
    import signal

    import pytest

    from mhc import train
    evaluate = train.evaluate

    def evaluate_then_sigterm(model, val_tokens, cfg):
        os.kill(os.getpid(), signal.SIGTERM)
        return evaluate(model, val_tokens, cfg)

    monkeypatch.setattr(train, "evaluate", evaluate_then_sigterm)
    with pytest.raises(train.TrainingInterrupted):
        train.run(cfg, run_dir, verbose=False)
    monkeypatch.undo()


def mhc_command(*args):
    return [sys.executable, "-m", "mhc", *args]


def subprocess_env():
    """The test environment (8 fake devices, wandb off) plus the persistent compilation cache,
    caching every program so a child process does not recompile the model's small init ops."""
    env = dict(os.environ)
    env.update(JAX_COMPILATION_CACHE_DIR=os.environ["MHC_TEST_JAX_CACHE"],
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", PYTHONUNBUFFERED="1")
    return env
