"""Knowledge distillation (`teacher=RUN_DIR`, mhc.distill): the loss against an independent NumPy
formulation of Hinton et al. 2015, weight 0 = the plain step exactly, a frozen teacher, exact
resume with the teacher step pinned, and bad input rejected in one line before anything is
written."""
import dataclasses
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mhc import checkpoint, distill, train, train_step
from mhc.cli import main
from mhc.model import Decoder
from trainkit import TINY, column, events, stop_at_first_eval, tiny_config


# ----------------------------------------------------------------- golden: Hinton et al. 2015
def _softmax_np(z, temperature):
    """softmax(z / T) over the last axis, float64, max-shifted."""
    z = np.asarray(z, np.float64) / temperature
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _kl_np(student, teacher, temperature):
    """Mean over tokens of sum_v p_v (log p_v - log q_v), p = teacher's, q = student's at T."""
    p, q = _softmax_np(teacher, temperature), _softmax_np(student, temperature)
    return float((p * (np.log(p) - np.log(q))).sum(-1).mean())


def _ce_np(logits, targets):
    q = _softmax_np(logits, 1.0)
    return float(-np.log(np.take_along_axis(q, targets[..., None], -1)).mean())


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0, 8.0])
def test_loss_matches_an_independent_numpy_formulation(temperature):
    rng = np.random.default_rng(int(temperature * 10))
    student = rng.normal(0, 3, (2, 5, 17)).astype(np.float32)
    teacher = rng.normal(0, 3, (2, 5, 17)).astype(np.float32)
    targets = rng.integers(0, 17, (2, 5))
    kl = float(distill.kl_divergence(jnp.asarray(student), jnp.asarray(teacher), temperature))
    assert kl == pytest.approx(_kl_np(student, teacher, temperature), rel=1e-5, abs=1e-7)
    ce = float(train_step.cross_entropy(jnp.asarray(student), jnp.asarray(targets)))
    assert ce == pytest.approx(_ce_np(student, targets), rel=1e-6)
    for weight in (0.0, 0.3, 1.0):
        want = (1 - weight) * _ce_np(student, targets) + weight * temperature ** 2 * _kl_np(
            student, teacher, temperature)
        got = float(distill.objective(ce, kl, weight, temperature))
        assert got == pytest.approx(want, rel=1e-5)
    assert float(distill.kl_divergence(jnp.asarray(teacher), jnp.asarray(teacher),
                                       temperature)) == pytest.approx(0, abs=1e-6)
    # large logits stay finite (log-softmax, not log of a softmax)
    assert np.isfinite(float(distill.kl_divergence(jnp.asarray(student * 1e3),
                                                   jnp.asarray(teacher * 1e3), temperature)))


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_soft_term_gradient_is_hintons(temperature):
    """d/dz of T^2 KL(p^T || q^T) = T (q^T - p^T) per token (Hinton et al. 2015, eq. 2), here
    divided by the number of tokens the loss averages over: the gradient keeps its scale as T
    changes."""
    rng = np.random.default_rng(3)
    student = rng.normal(0, 2, (3, 4, 11)).astype(np.float32)
    teacher = rng.normal(0, 2, (3, 4, 11)).astype(np.float32)
    grad = jax.grad(lambda z: distill.objective(0.0, distill.kl_divergence(
        z, jnp.asarray(teacher), temperature), 1.0, temperature))(jnp.asarray(student))
    want = temperature * (_softmax_np(student, temperature) - _softmax_np(teacher, temperature))
    np.testing.assert_allclose(np.asarray(grad), want / 12, rtol=1e-4, atol=1e-7)
    teacher_grad = jax.grad(lambda v: distill.kl_divergence(jnp.asarray(student), v,
                                                            temperature))(jnp.asarray(teacher))
    assert not np.any(np.asarray(teacher_grad))  # the teacher's logits get no gradient


# --------------------------------------------------------------------- the step with a teacher
def _model(cfg, seed):
    return Decoder(cfg.model, rngs=nnx.Rngs(seed))


@nnx.jit
def _step(model, optimizer, batch, teacher=None, distill_args=(0.5, 2.0)):
    """One step; `distill_args` are traced, so every weight and temperature share one program."""
    return train_step.train_step_body(model, optimizer, batch, teacher=teacher,
                                      distill_args=distill_args)


# the step tests share these configs (and so their compiled programs): an mHC teacher, a
# residual student
STUDENT, TEACHER = ("residual=residual",), ("residual=mhc",)


def _batch(cfg, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, cfg.model.vocab_size, (cfg.train.batch_size, cfg.train.seq_len + 1))
    return {"inputs": jnp.asarray(tokens[:, :-1], jnp.int32),
            "targets": jnp.asarray(tokens[:, 1:], jnp.int32)}


def _params(module):
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(module, nnx.Param))]


def test_weight_zero_trains_exactly_like_no_teacher():
    """distill_weight=0: the KL is computed and logged, but loss, gradients and the update are
    the plain step's, bit for bit (here an mHC teacher and a residual student)."""
    student_cfg = tiny_config(*STUDENT)
    teacher = _model(tiny_config(*TEACHER), 5)
    plain, distilled = _model(student_cfg, 0), _model(student_cfg, 0)
    opt_plain = train_step.make_optimizer(plain, student_cfg)
    opt_distilled = train_step.make_optimizer(distilled, student_cfg)
    for seed in range(2):
        batch = _batch(student_cfg, seed)
        out_plain, _ = _step(plain, opt_plain, batch)
        out_distilled, _ = _step(distilled, opt_distilled, batch, teacher, (0.0, 2.0))
        assert float(out_distilled["loss"]) == float(out_plain["loss"])
        assert float(out_distilled["distill_objective"]) == float(out_plain["loss"])
        assert float(out_distilled["grad_norm"]) == float(out_plain["grad_norm"])
        assert float(out_distilled["distill_kl"]) > 0
    for a, b in zip(_params(plain), _params(distilled)):
        np.testing.assert_array_equal(a, b)


def test_teacher_is_frozen_and_outside_the_optimizer():
    cfg = tiny_config(*STUDENT)
    teacher = _model(tiny_config(*TEACHER), 5)
    before = [np.copy(p) for p in _params(teacher)]
    student = _model(cfg, 0)
    optimizer = train_step.make_optimizer(student, cfg)
    structure = jax.tree.structure(nnx.state(optimizer))
    losses = []
    for seed in range(3):
        out, _ = _step(student, optimizer, _batch(cfg, seed), teacher, (1.0, 2.0))
        losses.append(float(out["distill_objective"]))
    assert all(np.isfinite(losses)) and float(out["distill_kl"]) > 0
    for a, b in zip(before, _params(teacher)):
        np.testing.assert_array_equal(a, b)
    assert jax.tree.structure(nnx.state(optimizer)) == structure  # no teacher leaves in it
    # the student moves towards the teacher: its KL falls over steps on a fixed batch
    kls = [float(_step(student, optimizer, _batch(cfg, 0), teacher, (1.0, 2.0))[0]["distill_kl"])
           for _ in range(4)]
    assert kls[-1] < kls[0]


# ------------------------------------------------------------------------- run directories
def _fake_teacher(run_dir, *overrides):
    """A run directory holding an untrained model (config.json + a step-0 checkpoint): what a
    teacher needs, without training one."""
    cfg = tiny_config(*overrides)
    os.makedirs(run_dir)
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        json.dump(cfg.to_dict(), f)
    mngr = checkpoint.manager(run_dir, async_save=False)
    checkpoint.save(mngr, 0, _model(cfg, 1), None, cfg.to_dict(), wait=True)
    mngr.close()
    return run_dir


@pytest.mark.parametrize("case", ["missing", "no_checkpoint", "vocab", "weight", "weight_nan",
                                  "temperature", "itself"])
def test_bad_input_is_one_line_and_writes_nothing(case, tmp_path, capsys):
    teacher = _fake_teacher(str(tmp_path / "teacher"), "residual=residual")
    run_dir = str(tmp_path / "student")
    overrides, expected = {
        "missing": ([f"teacher={tmp_path / 'nowhere'}"], "does not exist"),
        "no_checkpoint": ([f"teacher={tmp_path}"], "no config.json"),
        "vocab": ([f"teacher={teacher}", "vocab_size=512"],
                  "vocab_size=256 but the student has vocab_size=512"),
        "weight": ([f"teacher={teacher}", "distill_weight=1.5"], "distill_weight=1.5"),
        "weight_nan": (["distill_weight=nan"], "must be in [0, 1]"),
        "temperature": ([f"teacher={teacher}", "distill_temperature=0"],
                        "distill_temperature=0.0; must be > 0"),
        "itself": ([f"teacher={run_dir}"], "is the run being trained"),
    }[case]
    if case == "itself":
        shutil.copytree(teacher, run_dir)
        run_dir_args = ["--overwrite"]
    else:
        run_dir_args = []
    code = main(["train", "--recipe", "tiny", "--run-dir", run_dir, *run_dir_args, *TINY,
                 "steps=2", *overrides])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and expected in err, err
    if case != "itself":
        assert not os.path.exists(run_dir)


STEPS = 8
RUN = ["log_every=1", "eval_every=4", "checkpoint_every=1", f"steps={STEPS}"]


@pytest.mark.slow  # three short runs and a teacher
def test_distilled_run_resumes_bitwise_with_the_same_teacher(tmp_path, monkeypatch):
    """Stopped after step 4 (SIGTERM at the first eval) and resumed with `mhc train --resume`:
    every step's losses equal an uninterrupted run's, although the teacher run trained on in
    between (the student reloads the teacher step its checkpoint pinned)."""
    teacher_dir = str(tmp_path / "teacher")
    teacher_cfg = tiny_config("residual=residual", "steps=4", "log_every=1")
    train.run(teacher_cfg, teacher_dir, verbose=False)
    cfg = tiny_config("residual=mhc", *RUN, f"teacher={teacher_dir}", "distill_weight=0.7",
                      "distill_temperature=1.5")
    reference = str(tmp_path / "reference")
    train.run(cfg, reference, verbose=False)

    run_dir = str(tmp_path / "run")
    stop_at_first_eval(monkeypatch, cfg, run_dir)
    train.run(dataclasses.replace(teacher_cfg, train=dataclasses.replace(
        teacher_cfg.train, steps=6, schedule_steps=4)), teacher_dir, verbose=False, resume=True)
    assert distill.pinned_step(run_dir) == 4
    assert main(["train", "--resume", "--run-dir", run_dir]) == 0
    for key in ("loss", "distill_kl", "distill_objective", "grad_norm", "eval_loss"):
        assert column(run_dir, key) == column(reference, key), key
    assert events(run_dir, "resume")[0]["step"] == 4
    assert [e["teacher_step"] for e in events(run_dir, "teacher")] == [4, 4]
    assert distill.pinned_step(run_dir) == 4
    # the student's checkpoint holds the student only: the same items and arrays as a plain run
    model, _, _ = checkpoint.load_model(run_dir)
    assert jax.tree.structure(nnx.state(model)) == jax.tree.structure(
        nnx.state(_model(tiny_config("residual=mhc"), 0)))


@pytest.mark.slow  # trains the study's smoke runs
def test_the_study_smoke_runs(tmp_path):
    from experiments import distill as study

    out = str(tmp_path / "distill")
    assert study.main(["--smoke", "--seeds", "0", "--out", out]) == 0
    summary = open(os.path.join(out, "summary.md")).read()
    assert "mhc" in summary and "residual" in summary and "Verdict rule" in summary
