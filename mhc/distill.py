"""Knowledge distillation (Hinton, Vinyals & Dean 2015, arXiv 1503.02531): a student trains on
the data and on a frozen teacher's softened distribution.

    mhc train --recipe tiny --residual mhc teacher=runs/tiny-residual-s0 distill_weight=0.5

The objective of a step is

    (1 - a) * CE(data) + a * T^2 * KL(p_teacher^T || p_student^T),   p^T = softmax(logits / T),

with a = `distill_weight` in [0, 1] and T = `distill_temperature` > 0 (the T^2 keeps the soft
term's gradients at the scale of the hard term's as T changes). The KL is summed over the
vocabulary and averaged over tokens, on the next-token head only (an MTP head keeps its own data
loss). The metrics log `loss` (the data CE, as in every run), `distill_kl` (the KL at T,
unscaled) and `distill_objective` (the weighted sum the gradients come from).

The teacher is the model of a run directory (`teacher=RUN_DIR`: its config.json and latest
checkpoint, loaded by `mhc.inspect_run.load_run`), of any residual kind; it shares the student's
vocabulary. It is frozen: its state enters the jitted step as an argument that is neither
donated, nor differentiated, nor returned (`mhc.sharding.shard_step`'s `frozen`), it is not in
the optimizer and the student's checkpoints name it only by path (config) and by the checkpoint
step it was loaded at (`meta["teacher_step"]`), so `--resume` loads the same weights even if the
teacher run trained on since.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp

from mhc.config import ConfigError

META_KEY = "teacher_step"  # the teacher checkpoint a distilled run trains with, in its meta


def kl_divergence(student_logits, teacher_logits, temperature: float) -> jax.Array:
    """Mean over tokens of KL(softmax(teacher / T) || softmax(student / T)), in fp32; no
    gradient flows into the teacher's logits."""
    teacher_logits = jax.lax.stop_gradient(teacher_logits)
    log_q = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
    log_p = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
    return (jnp.exp(log_p) * (log_p - log_q)).sum(-1).mean()


def objective(data_ce, kl, weight: float, temperature: float) -> jax.Array:
    """(1 - weight) x data CE + weight x T^2 x KL: Hinton et al.'s weighted sum."""
    return (1.0 - weight) * data_ce + weight * temperature ** 2 * kl


class Teacher:
    """A loaded teacher: its model (a `Decoder`), config, run directory and checkpoint step."""

    def __init__(self, model, config, run_dir: str, step: int):
        self.model, self.config, self.run_dir, self.step = model, config, run_dir, step

    def describe(self) -> str:
        m = self.config.model
        return (f"teacher {self.run_dir} step {self.step}: residual={m.residual}, "
                f"{m.n_layers} blocks, d_model {m.d_model}")


def load_teacher(cfg, step: int | None = None, student_dir: str | None = None) -> Teacher | None:
    """The teacher of `cfg` (None when `teacher` is empty) at its latest checkpoint, or at `step`
    (a resumed run's pinned one). Raises a one-line ValueError naming the bad value: a missing
    or checkpoint-less run directory, the student's own directory, another vocabulary, or a
    context longer than the teacher's."""
    from mhc.inspect_run import load_run
    from mhc.rundir import RunDirError

    path = cfg.train.teacher
    if not path:
        return None
    if student_dir and os.path.abspath(path) == os.path.abspath(student_dir):
        raise ConfigError(f"teacher={path!r} is the run being trained; give another run")
    try:
        model, teacher_cfg, loaded = load_run(path, step)
    except RunDirError as e:
        raise ConfigError(f"teacher={path!r}: {e}") from None
    v_t, v_s = teacher_cfg.model.vocab_size, cfg.model.vocab_size
    if v_t != v_s:
        raise ConfigError(f"teacher={path!r} has vocab_size={v_t} but the student has "
                          f"vocab_size={v_s}; teacher and student must share the vocabulary")
    if cfg.train.seq_len > teacher_cfg.model.max_seq_len:
        raise ConfigError(f"seq_len={cfg.train.seq_len} exceeds the teacher's max_seq_len="
                          f"{teacher_cfg.model.max_seq_len} (teacher={path!r})")
    return Teacher(model, teacher_cfg, path, loaded)


def pinned_step(run_dir: str) -> int | None:
    """The teacher step recorded in the latest checkpoint of the distilled run `run_dir` (None
    when it has no checkpoint, or one without the record)."""
    import orbax.checkpoint as ocp

    from mhc import checkpoint

    if not os.path.isdir(checkpoint.directory(run_dir)):
        return None
    mngr = checkpoint.manager(run_dir, read_only=True)
    try:
        latest = mngr.latest_step()
        if latest is None:
            return None
        meta = mngr.restore(latest, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    finally:
        mngr.close()
    return (meta["meta"] or {}).get(META_KEY)
