"""Training: the fault-tolerant loop around the pure step of `mhc.train_step`.

    result = mhc.train.run(cfg, "runs/tiny-mhc")               # a new run
    result = mhc.train.run(cfg, "runs/tiny-mhc", resume=True)  # continue exactly where it stopped

The run directory holds everything needed to continue, so the process may be killed at any time
(layout and checks in `mhc.rundir`; checkpoints in `mhc.checkpoint`).

Every step logs loss, grad norm, lr, tokens/s, MFU and the stability diagnostics of the stream maps
(Amax gain of the full-depth composite H_res, forward and backward, H statistics, and how far
H_res has moved from its initial map); per-site statistics every `log_every` steps and at every
eval; eval loss every `eval_every` steps. Faults: a step whose loss or gradients are not
finite changes nothing (the update is dropped inside the jitted step) and is logged;
`nan_patience` such steps in a row save a checkpoint and raise `TrainingDiverged`. SIGTERM/SIGINT
finish the current step, save a checkpoint and raise `TrainingInterrupted`.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import math
import os
import signal
import threading
import time

import jax
import numpy as np
from flax import nnx

from mhc import checkpoint, data, distill, metrics, results, rundir, sharding
from mhc.config import Config, ConfigError
from mhc.model import Decoder
from mhc.train_step import (evaluate, flops_per_token, lr_schedule, make_optimizer, peak_flops,
                            train_step_body)


class Stepper:
    """Runs training steps and owns the training state: the (model, optimizer) state pytree,
    placed on a mesh (`train.mesh`; without one, this process's first device as a one-device
    mesh) and advanced by `mhc.sharding.shard_step` (explicit shardings, state donated;
    multi-process when `jax.distributed` was initialised: each process feeds its own rows of the
    batch). `modules()` gives a model and optimizer that hold the current state, for eval and
    checkpoints; `restore` reads a checkpoint straight into the state's shardings. With a
    `teacher` (`mhc.distill.Teacher`) every step distils it: its model is placed once, read by
    the same jitted step and never updated, donated or saved."""

    def __init__(self, model: Decoder, optimizer: nnx.Optimizer, cfg: Config,
                 teacher: distill.Teacher | None = None):
        t = cfg.train
        if t.mesh:
            self.mesh = sharding.make_mesh(t.mesh)
        elif jax.process_count() > 1:  # every process's devices, data-parallel
            self.mesh = sharding.make_mesh(None)
        else:
            self.mesh = sharding.make_mesh(None, devices=jax.local_devices()[:1])
        sharding.check_batch(t.batch_size, self.mesh)
        self._graphdef = nnx.graphdef((model, optimizer))
        body = functools.partial(train_step_body, microbatches=t.microbatches,
                                 schedule=lr_schedule(cfg),
                                 distill_args=(t.distill_weight, t.distill_temperature))
        self.teacher_step = None if teacher is None else teacher.step
        self._step, self.state = sharding.shard_step(
            lambda model, optimizer, batch, *frozen: body(model, optimizer, batch,
                                                          teacher=frozen[0] if frozen else None),
            model, optimizer, self.mesh, frozen=None if teacher is None else teacher.model)

    def __call__(self, batch: dict, poison: bool | None = None):
        """One step on this process's rows of `batch` -> (metrics, per-layer stats). `poison`
        (debug only, `debug_nan_steps`) rides in the batch as one flag per row."""
        rows = batch["inputs"].shape[0] // jax.process_count()
        local = {k: v[jax.process_index() * rows:(jax.process_index() + 1) * rows]
                 for k, v in batch.items()}
        if poison is not None:
            local["poison"] = np.full((rows,), bool(poison))
        self.state, out = self._step(self.state, sharding.global_batch(local, self.mesh))
        return out

    def modules(self) -> tuple[Decoder, nnx.Optimizer]:
        """(model, optimizer) holding the current state (valid until the next step, which
        donates it)."""
        return nnx.merge(self._graphdef, self.state)

    def restore(self, mngr, step: int | None = None) -> checkpoint.Restored:
        """Continue from a checkpoint: read it onto the state's shardings and take it."""
        modules = self.modules()
        restored = checkpoint.restore(mngr, *modules, step=step)
        self.state = nnx.state(modules)
        return restored


@dataclasses.dataclass
class RunResult:
    run_dir: str
    final_loss: float
    final_eval_loss: float
    first_loss: float
    steps: int
    checkpoint: str | None
    start_step: int = 0  # > 0 when resumed


class TrainingDiverged(RuntimeError):
    pass


class TrainingInterrupted(RuntimeError):
    """SIGTERM/SIGINT: the run stopped after a step and saved a checkpoint (resume with it)."""

    def __init__(self, message: str, signum: int, step: int, checkpoint: str | None):
        super().__init__(message)
        self.signum, self.step, self.checkpoint = signum, step, checkpoint


class SpikeDetector:
    """`detector(loss)` -> (mean, std) when `loss` > mean + sigma x std of the trailing `window`
    losses (at least 10 of them; sigma 0 = off), else None. Every loss joins the window."""

    def __init__(self, window: int, sigma: float):
        self.sigma, self.losses = sigma, collections.deque(maxlen=window)

    def __call__(self, loss: float) -> tuple[float, float] | None:
        spike = None
        if self.sigma > 0 and len(self.losses) >= min(10, self.losses.maxlen):
            mean, std = float(np.mean(self.losses)), float(np.std(self.losses))
            if std > 0 and loss > mean + self.sigma * std:
                spike = (mean, std)
        self.losses.append(loss)
        return spike


class _StopOnSignal:
    """SIGTERM/SIGINT set `signum` (the loop stops after the step); a second one acts as usual."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __enter__(self):
        self.signum, self.previous = None, {}
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum, _frame):
        self.signum = signum
        self._restore()

    def _restore(self):
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def __exit__(self, *exc):
        self._restore()


def _load_data(cfg: Config):
    """(train pipeline, val tokens), validated against the model and batch shape; no side
    effects. Each process reads its own shard of every global batch."""
    t = cfg.train
    tokens, meta = data.load_tokens(t.corpus, t.token_dtype)
    data.check_vocab(tokens, meta, cfg.model.vocab_size, t.corpus)
    train_tokens, val_tokens = data.train_val_split(tokens, t.val_fraction)
    if t.batch_size % jax.process_count():
        raise ConfigError(f"batch_size={t.batch_size} is not divisible by the "
                          f"{jax.process_count()} processes")
    train_ds = data.batches(
        train_tokens, batch_size=t.batch_size // jax.process_count(), seq_len=t.seq_len,
        seed=t.seed, shard_index=jax.process_index(), shard_count=jax.process_count())
    val_batches = data.num_windows(len(val_tokens), t.seq_len) // t.batch_size
    if val_batches < t.eval_batches:
        raise ValueError(f"eval_batches={t.eval_batches} but the held-out split has only "
                         f"{val_batches} batches of {t.batch_size}x{t.seq_len}")
    return train_ds, val_tokens


class _Loop:
    """The training loop's host side: logging, fault detection, checkpoints."""

    def __init__(self, cfg: Config, run_dir: str, stepper: Stepper, train_iter, val_tokens,
                 mngr, sink, events, verbose: bool):
        self.cfg, self.t, self.run_dir = cfg, cfg.train, run_dir
        self.stepper, self.train_iter, self.val_tokens = stepper, train_iter, val_tokens
        self.mngr, self.sink, self.events, self.verbose = mngr, sink, events, verbose
        self.tokens_per_step = self.t.batch_size * self.t.seq_len
        self.flops = flops_per_token(cfg) * self.tokens_per_step
        self.peak = peak_flops(self.t.peak_flops)
        self.bad_in_a_row, self.spikes = 0, SpikeDetector(self.t.spike_window, self.t.spike_sigma)
        self.step_times: collections.deque = collections.deque(maxlen=20)
        self.last_time = time.perf_counter()
        self.checkpoint_path: str | None = None
        self.abort: str | None = None
        self.logged = 0  # steps logged by this process
        self.data_state = train_iter.get_state()

    # -- state that must survive a restart besides model/optimizer/data -------------------------
    def meta(self) -> dict:
        teacher = ({} if self.stepper.teacher_step is None
                   else {distill.META_KEY: self.stepper.teacher_step})
        return {"bad_in_a_row": self.bad_in_a_row,
                "loss_window": list(self.spikes.losses), **teacher}

    def load_meta(self, meta: dict | None) -> None:
        # checkpoints written before 2026-12 also carry an "rng" entry that nothing read
        # (the model's randomness is in its state); it is ignored
        if meta:
            self.bad_in_a_row = meta.get("bad_in_a_row", 0)
            self.spikes.losses.extend(meta.get("loss_window", []))

    def event(self, step: int, kind: str, message: str, **fields) -> None:
        self.events.write(step, {"event": kind, "message": message, **fields})
        if self.verbose:
            print(f"[step {step}] {kind}: {message}", flush=True)

    def save(self, step: int, wait: bool = False) -> None:
        if self.mngr is None:
            return
        start = time.perf_counter()
        self.checkpoint_path = checkpoint.save(
            self.mngr, step, *self.stepper.modules(), self.cfg.to_dict(),
            data=self.data_state, meta=self.meta(), wait=wait)
        self.events.write(step, {"event": "checkpoint", "path": self.checkpoint_path,
                                 "blocking_s": time.perf_counter() - start})

    # -- per-step logging and fault detection ---------------------------------------------------
    def finish(self, step: int, out, per_layer, extra: dict) -> None:
        out = jax.device_get(out)
        now = time.perf_counter()
        elapsed, self.last_time = now - self.last_time, now
        if self.logged:  # the first step of a process includes compilation
            self.step_times.append(elapsed)
        step_s = float(np.median(self.step_times)) if self.step_times else elapsed
        finite = bool(out.pop("finite"))
        record = {k: float(v) for k, v in out.items()}
        record["tokens"] = step * self.tokens_per_step
        record["step_time_s"] = elapsed
        record["tokens_per_s"] = self.tokens_per_step / step_s  # median of the last 20 steps
        record["mfu"] = self.flops / step_s / self.peak
        loss = record["loss"]
        if not finite:
            record["skipped"] = 1
            self.bad_in_a_row += 1
            self.event(step, "nonfinite", f"loss {loss}, grad norm {record['grad_norm']}; update "
                       f"skipped ({self.bad_in_a_row} in a row, abort at {self.t.nan_patience})",
                       loss=loss, grad_norm=record["grad_norm"])
            if self.bad_in_a_row >= self.t.nan_patience:
                self.abort = (f"{self.bad_in_a_row} non-finite steps in a row (nan_patience="
                              f"{self.t.nan_patience}) at step {step}")
        else:
            self.bad_in_a_row = 0
            spike = self.spikes(loss)
            if spike:
                mean, std = spike
                self.event(step, "loss_spike", f"loss {loss:.4g} > mean {mean:.4g} + "
                           f"{self.t.spike_sigma:g} x std {std:.3g} of the previous "
                           f"{len(self.spikes.losses) - 1}", loss=loss, mean=mean, std=std)
        record.update(extra)
        if extra or step % self.t.log_every == 0:  # per-site arrays at the logged interval
            record["layers"] = {k: np.asarray(v).tolist()
                                for k, v in jax.device_get(per_layer).items()}
        self.sink.write(step, record)
        self.logged += 1

    def run(self, start: int, stop: _StopOnSignal) -> None:
        t = self.t
        poison_steps = set(t.debug_nan_steps)
        batch = next(self.train_iter)
        self.last_time = time.perf_counter()
        for step in range(start + 1, t.steps + 1):
            poison = step in poison_steps if poison_steps else None
            out, per_layer = self.stepper(batch, poison)
            self.data_state = self.train_iter.get_state()  # the position after this step
            if step < t.steps:  # load the next batch while the device computes this step
                batch = next(self.train_iter)
            extra = {}
            if step % t.eval_every == 0 or step == t.steps:
                extra["eval_loss"] = evaluate(self.stepper.modules()[0], self.val_tokens,
                                              self.cfg)
            self.finish(step, out, per_layer, extra)
            if self.abort:
                self.save(step, wait=True)
                self.event(step, "abort", self.abort, checkpoint=self.checkpoint_path)
                raise TrainingDiverged(f"{self.abort}; saved {self.checkpoint_path} (lower lr="
                                       f"{t.lr} or check the data)")
            if stop.signum:
                name = signal.Signals(stop.signum).name
                self.save(step, wait=True)
                self.event(step, "stop", f"{name}: stopped after step {step}",
                           checkpoint=self.checkpoint_path)
                raise TrainingInterrupted(
                    f"stopped by {name} after step {step}; checkpoint "
                    f"{self.checkpoint_path or 'disabled'}; continue with --resume",
                    stop.signum, step, self.checkpoint_path)
            if t.checkpoint_every and step % t.checkpoint_every == 0 and step != t.steps:
                self.save(step)


def run(cfg: Config, run_dir: str, *, verbose: bool = True, resume: bool = False,
        overwrite: bool = False) -> RunResult:
    """Train `cfg` into `run_dir`; with `resume`, continue from its latest checkpoint exactly.

    Bad input (data, vocabulary, run directory, teacher) raises before anything is written; a
    run that fails before its first step leaves no files behind. A distilled run (`teacher`)
    loads its teacher here: the latest checkpoint, or on resume the step its checkpoint
    recorded (`mhc.distill`)."""
    t = cfg.train
    train_ds, val_tokens = _load_data(cfg)
    rundir.check(run_dir, cfg, resume, overwrite)
    teacher = distill.load_teacher(cfg, distill.pinned_step(run_dir) if resume and t.teacher
                                   else None, student_dir=run_dir)
    teacher_note = teacher.describe() if teacher else ""
    created = None if resume else rundir.make(run_dir, overwrite)
    main = jax.process_index() == 0
    mngr, sink, events, loop = None, metrics.Sink(), metrics.Sink(), None
    ok = False
    try:
        model = Decoder(cfg.model, rngs=nnx.Rngs(t.seed))
        optimizer = make_optimizer(model, cfg)
        train_iter = iter(train_ds)
        if t.checkpoint:
            mngr = checkpoint.manager(run_dir, keep_last=t.keep_last, keep_every=t.keep_every,
                                      async_save=t.async_checkpoint)
        stepper = Stepper(model, optimizer, cfg, teacher)
        del model, optimizer, teacher  # the stepper owns the state from here on
        start, restored = 0, None
        if resume and mngr is not None and mngr.latest_step() is not None:
            restored = stepper.restore(mngr)
            start = restored.step
            if restored.data is not None:
                train_iter.set_state(restored.data)
        if main:
            rundir.write_json_atomic(os.path.join(run_dir, "config.json"), cfg.to_dict())
            rundir.record_provenance(run_dir, resume)
            metrics_path = os.path.join(run_dir, "metrics.jsonl")
            events_path = os.path.join(run_dir, "events.jsonl")
            if resume:
                for path in (metrics_path, events_path):  # a compressed log grows plain again
                    results.to_plain(path)
                metrics.truncate_jsonl(metrics_path, start)
            events = metrics.JsonlSink(events_path)
            sinks = [metrics.JsonlSink(metrics_path), rundir.wandb_sink(cfg, run_dir)]
            if verbose:
                sinks.append(metrics.ConsoleProgress(t.steps, every=t.log_every))
            sink = metrics.MultiSink(*sinks)
        loop = _Loop(cfg, run_dir, stepper, train_iter, val_tokens, mngr, sink, events,
                     verbose and main)
        if resume:
            loop.load_meta(restored.meta if restored else None)
            loop.event(start, "resume", f"continuing after step {start}" if restored
                       else "no checkpoint yet: starting from step 0")
        if t.teacher:
            loop.event(start, "teacher", f"distilling the {teacher_note} (weight "
                       f"{t.distill_weight:g}, temperature {t.distill_temperature:g})",
                       path=t.teacher,
                       teacher_step=stepper.teacher_step)
        if start < t.steps:
            with _StopOnSignal() as stop:
                loop.run(start, stop)
            loop.save(t.steps, wait=True)
        elif mngr is not None:
            loop.checkpoint_path = os.path.join(str(mngr.directory), str(start))
        ok = True
    finally:
        if mngr is not None:
            mngr.close()  # waits for an in-flight save
        sink.close()
        events.close()
        if not ok and not resume and not (loop and loop.logged):
            rundir.remove(run_dir, created)  # failed before its first step: leave nothing behind
    first_loss, last_loss, eval_loss = rundir.summary(run_dir) if main else (math.nan,) * 3
    return RunResult(run_dir, last_loss, eval_loss, first_loss, t.steps, loop.checkpoint_path,
                     start)
