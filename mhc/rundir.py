"""The run directory: everything a run needs to continue lives in it, so the process may be
killed at any time.

    RUN_DIR/config.json         the resolved config (written atomically)
    RUN_DIR/provenance.json     who made the run: commit, dirty flag, date, command, machine, versions
                                (one entry per process start: the first is the run's origin,
                                later ones are resumes)
    RUN_DIR/metrics.jsonl       one line per step; on resume cut back to the restored step
    RUN_DIR/events.jsonl        skipped non-finite steps, loss spikes, checkpoints, stops, resumes
    RUN_DIR/checkpoints/<step>  orbax: model, optimizer, data iterator, RNG, config
    RUN_DIR/wandb/              the wandb run (offline unless wandb=online), its id in `run_id`

A finished run a study commits keeps its step log as `metrics.jsonl.xz` (`mhc.results`; readers
take the plain name, and a resume makes it plain again).

A run directory is never overwritten without `overwrite`, is checked before anything is written,
and is removed again when a run fails before its first step.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import platform
import shutil
import subprocess
import sys

from mhc import metrics
from mhc.config import RESUME_SAFE, Config, ConfigError, config_from_dict, extend

PROVENANCE = "provenance.json"
_SOURCE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the checkout holding mhc/


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=_SOURCE, text=True, capture_output=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


# What the studies and tables write: changes there do not change the code that runs, and a
# study that rewrote its own summary must not mark the next run or table "dirty"
OUTPUTS = (":(exclude,glob)**/results/**", ":(exclude)README.md", ":(exclude)paper_repro/README.md")


def source_version() -> dict:
    """{"commit": short hash or "unknown", "dirty": bool or None} of the code that is running:
    the git checkout that holds this `mhc` package (an installed copy has no commit). "dirty":
    a tracked file outside the outputs (`OUTPUTS`: results folders, generated READMEs) differs
    from the commit."""
    commit = _git("rev-parse", "--short=10", "HEAD")
    if commit is None:
        return {"commit": "unknown", "dirty": None}
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ".", *OUTPUTS)
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def machine() -> str:
    """The device, core count and architecture this process runs on, in words."""
    import jax
    dev = jax.devices()[0]
    return (f"{dev.platform} ({dev.device_kind}, {jax.device_count()} device(s), "
            f"{os.cpu_count()} cores, {platform.machine()})")


def _command_argv() -> list[str]:
    """The process's command line as typed (interpreter path reduced to its name)."""
    argv = list(getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv])
    return [os.path.basename(argv[0]), *argv[1:]]


def provenance_entry(command: str | None = None) -> dict:
    """What made this process's numbers: code version, UTC date, command line, machine."""
    import jax
    return {**source_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": command if command is not None else " ".join(_command_argv()),
            "machine": machine(), "python": platform.python_version(), "jax": jax.__version__}


def record_provenance(run_dir: str, resume: bool) -> dict:
    """Append this process's entry to RUN_DIR/provenance.json (a new run starts the list)."""
    path = os.path.join(run_dir, PROVENANCE)
    entries = read_provenance(run_dir) if resume else []
    entry = provenance_entry()
    write_json_atomic(path, [*entries, {**entry, "resume": bool(resume and entries)}])
    return entry


def read_provenance(run_dir: str) -> list[dict]:
    """The run's provenance entries (first = origin); [] for runs made before it was recorded."""
    path = os.path.join(run_dir, PROVENANCE)
    try:
        with open(path) as f:
            entries = json.load(f)
    except (OSError, ValueError):
        return []
    return entries if isinstance(entries, list) else []


def run_commit(run_dir: str) -> str:
    """The commit a run was trained at ("+dirty" when the tree had changes; "unrecorded" for runs
    older than provenance; several commits joined by "," when resumed on other code)."""
    return provenance_commit(read_provenance(run_dir))


def provenance_commit(entries: list[dict]) -> str:
    """`run_commit` of a provenance list (a run directory's or a compact record's)."""
    if not entries:
        return "unrecorded"
    seen = []
    for e in entries:
        label = e.get("commit", "unknown") + ("+dirty" if e.get("dirty") else "")
        if label not in seen:
            seen.append(label)
    return ",".join(seen)


class RunDirError(ValueError):
    """The run directory cannot be used (exists, missing for --resume, not writable)."""


def write_json_atomic(path: str, obj, default=None) -> None:
    """Write `obj` as JSON through a temporary file, so a reader never sees half a file.
    `default`: json.dump's converter for other types (e.g. float for NumPy scalars)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=default)
    os.replace(tmp, path)


def load_run_config(run_dir: str) -> Config:
    """The resolved config saved with a run (RUN_DIR/config.json)."""
    path = os.path.join(run_dir, "config.json")
    if not os.path.isfile(path):
        raise RunDirError(f"nothing to resume: {run_dir!r} has no config.json")
    try:
        with open(path) as f:
            return config_from_dict(json.load(f))
    except (ValueError, TypeError) as e:  # corrupt JSON, unknown or bad keys
        raise RunDirError(f"cannot resume {run_dir!r}: config.json is unreadable ({e})") from None


def check(run_dir: str, cfg: Config, resume: bool, overwrite: bool) -> None:
    """Raise RunDirError before anything is written (no partial files on bad input)."""
    exists = os.path.isdir(run_dir) and bool(os.listdir(run_dir))
    if resume:
        saved = load_run_config(run_dir)
        if cfg.train.steps != saved.train.steps:  # extending: only as `config.extend` does it
            saved = extend(saved, cfg.train.steps)
        changed = [f"{section}.{k}" for section in ("model", "train")
                   for k, v in dataclasses.asdict(getattr(cfg, section)).items()
                   if v != dataclasses.asdict(getattr(saved, section))[k]
                   and not (section == "train" and k in RESUME_SAFE)]
        if changed:
            raise ConfigError(f"cannot change {', '.join(changed)} on resume (the run would not "
                              f"continue exactly); start a new run instead")
    elif exists and not overwrite:
        raise RunDirError(f"run directory {run_dir!r} already holds a run; pass --overwrite, "
                          f"--resume to continue it, or choose another with --run-dir")
    elif os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise RunDirError(f"run directory {run_dir!r} is a file")


def make(run_dir: str, overwrite: bool) -> str | None:
    """Create (or empty, with `overwrite`) the run directory; returns the outermost directory
    this call created (None if the run directory existed)."""
    if overwrite and os.path.isdir(run_dir):
        shutil.rmtree(run_dir)
    created = None
    if not os.path.isdir(run_dir):
        created = os.path.abspath(run_dir)
        while not os.path.exists(os.path.dirname(created)):
            created = os.path.dirname(created)
    try:
        os.makedirs(run_dir, exist_ok=True)
        probe = os.path.join(run_dir, ".write-test")
        open(probe, "w").close()
        os.remove(probe)
    except OSError as e:
        if created:
            shutil.rmtree(created, ignore_errors=True)
        raise RunDirError(f"cannot write run directory {run_dir!r}: {e.strerror}") from None
    return created


def remove(run_dir: str, created: str | None) -> None:
    """Undo a run that failed before its first step: no partial files left behind."""
    if created:
        shutil.rmtree(created, ignore_errors=True)
    else:
        for name in os.listdir(run_dir):
            path = os.path.join(run_dir, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def summary(run_dir: str) -> tuple[float, float, float]:
    """(first loss, last finite loss, last eval loss) from the run's metrics.jsonl."""
    rows = metrics.read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
    losses = [r["loss"] for r in rows if math.isfinite(r["loss"])]
    evals = [r["eval_loss"] for r in rows if "eval_loss" in r]
    return ((rows[0]["loss"] if rows else math.nan), (losses[-1] if losses else math.nan),
            (evals[-1] if evals else math.nan))


def wandb_sink(cfg: Config, run_dir: str) -> metrics.Sink:
    """wandb for this run; the run id is kept in RUN_DIR/wandb/run_id so a resume continues it."""
    t = cfg.train
    if t.wandb == "disabled" or os.environ.get("WANDB_MODE") == "disabled":
        return metrics.Sink()
    id_path = os.path.join(run_dir, "wandb", "run_id")
    if os.path.exists(id_path):
        run_id = open(id_path).read().strip()
    else:
        os.makedirs(os.path.dirname(id_path), exist_ok=True)
        run_id = f"{os.path.basename(os.path.abspath(run_dir))}-{os.urandom(4).hex()}"
        with open(id_path, "w") as f:
            f.write(run_id)
    return metrics.WandbSink(t.wandb_project, run_dir, cfg.to_dict(), mode=t.wandb,
                             name=os.path.basename(os.path.abspath(run_dir)), run_id=run_id)
