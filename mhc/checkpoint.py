"""Orbax checkpoints under `RUN_DIR/checkpoints/<step>/`.

Each step holds the items `model` (every model variable), `optimizer` (step count + optax state),
`data` (the grain iterator state), `meta` (step, fault-detector state) and `config` (the
resolved config). Saves are asynchronous: `save` returns once the arrays are copied off the
device and a background thread writes them; the next save (or `wait`) waits for it.

Atomic: orbax writes `<step>.orbax-checkpoint-tmp/` and renames it to `<step>/` only when every
item is on disk, so a crash or SIGKILL during a save leaves the previous checkpoints untouched;
the half-written temp directory is never listed as a step and `manager` removes it.

Resharding: `restore` reads every array straight into the sharding of the corresponding array in
the `model`/`optimizer` you pass (via `jax.ShapeDtypeStruct(..., sharding=...)` targets), so a
checkpoint written on 8 devices restores onto 4 or 1, or onto another mesh, without a gather.
"""
from __future__ import annotations

import contextlib
import glob
import logging
import os
import shutil
import typing

import jax
import orbax.checkpoint as ocp
from flax import nnx


class Restored(typing.NamedTuple):
    step: int
    config: dict
    data: dict | None  # the data iterator state
    meta: dict | None  # step, fault-detector state


def directory(run_dir: str) -> str:
    return os.path.abspath(os.path.join(run_dir, "checkpoints"))


def manager(run_dir: str, *, keep_last: int = 3, keep_every: int = 0, async_save: bool = True,
            read_only: bool = False) -> ocp.CheckpointManager:
    """Keeps the newest `keep_last` steps plus every step divisible by `keep_every` (0 = none).
    A writing manager first removes the temp directories of saves that never finished
    (synchronously: orbax's own cleanup runs in a thread that can outlive a failed run's
    directory). `read_only` touches nothing, so it is safe next to a live run."""
    path = directory(run_dir)
    if read_only:
        # save_interval_steps=0 and max_to_keep=None are what read_only implies (orbax warns when
        # it has to set them itself); its "Given directory is read only" note has no option
        with _quiet_read_only_note():
            return ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(
                read_only=True, create=False, save_interval_steps=0, max_to_keep=None))
    if jax.process_index() == 0:
        for partial in glob.glob(os.path.join(glob.escape(path), "*.orbax-checkpoint-tmp*")):
            shutil.rmtree(partial, ignore_errors=True)
    return ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(
        max_to_keep=keep_last, keep_period=keep_every or None, create=True,
        enable_async_checkpointing=async_save))


class _DropReadOnlyNote(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Given directory is read only")


@contextlib.contextmanager
def _quiet_read_only_note():
    """Drop orbax's warning that a read-only manager is read-only, and nothing else (other
    warnings of the load still show), for the duration of the block."""
    logger, note = logging.getLogger("absl"), _DropReadOnlyNote()
    logger.addFilter(note)
    try:
        yield
    finally:
        logger.removeFilter(note)


def _abstract(state):
    """Restore targets: shape, dtype and the current sharding of every array in `state`."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                        state)


def save(mngr: ocp.CheckpointManager, step: int, model: nnx.Module,
         optimizer: nnx.Module | None, config: dict, *, data: dict | None = None,
         meta: dict | None = None, wait: bool = False) -> str:
    """Start saving `step` (async unless the manager is synchronous); `wait` blocks until done."""
    items = {"model": ocp.args.StandardSave(nnx.state(model)),
             "config": ocp.args.JsonSave(config),
             "meta": ocp.args.JsonSave({"step": int(step), **(meta or {})})}
    if optimizer is not None:
        items["optimizer"] = ocp.args.StandardSave(nnx.state(optimizer))
    if data is not None:
        items["data"] = ocp.args.JsonSave(data)
    mngr.save(step, args=ocp.args.Composite(**items), force=True)
    if wait:
        mngr.wait_until_finished()
    return os.path.join(str(mngr.directory), str(step))


def restore(run_dir: str | ocp.CheckpointManager, model: nnx.Module,
            optimizer: nnx.Module | None = None, step: int | None = None) -> Restored:
    """Restore into `model` (and `optimizer`) in place, onto their current shardings.

    `step` defaults to the latest complete checkpoint."""
    own = not isinstance(run_dir, ocp.CheckpointManager)
    mngr = manager(run_dir, read_only=True) if own else run_dir
    try:
        step = mngr.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint under {mngr.directory}")
        present = set(os.listdir(os.path.join(str(mngr.directory), str(step))))
        items = {"model": ocp.args.StandardRestore(_abstract(nnx.state(model))),
                 "config": ocp.args.JsonRestore()}
        if optimizer is not None:
            items["optimizer"] = ocp.args.StandardRestore(_abstract(nnx.state(optimizer)))
        items.update({k: ocp.args.JsonRestore() for k in ("data", "meta") if k in present})
        restored = mngr.restore(step, args=ocp.args.Composite(**items))
    finally:
        if own:
            mngr.close()
    nnx.update(model, restored["model"])
    if optimizer is not None:
        nnx.update(optimizer, restored["optimizer"])
    return Restored(step, restored["config"], restored.get("data"), restored.get("meta"))


def load_model(run_dir: str, step: int | None = None):
    """(model, config, step): the run's model built from `RUN_DIR/config.json` and restored from
    its latest (or the given) checkpoint, for evaluation and inspection (no optimizer state)."""
    from mhc.model import Decoder
    from mhc.rundir import load_run_config

    cfg = load_run_config(run_dir)
    model = Decoder(cfg.model, rngs=nnx.Rngs(cfg.train.seed))
    return model, cfg, restore(run_dir, model, step=step).step
