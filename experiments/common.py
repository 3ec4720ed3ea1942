"""Shared plumbing of the studies: train a config once (or reuse a finished run with the same
config), seeds, mean and spread, provenance of the numbers.

Scripts in `experiments/` and `paper_repro/` import this as `experiments.common`; they put the
repository root on `sys.path` themselves, so `python experiments/<study>.py` works from anywhere.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import subprocess

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Few-second wiring check used by every study's --smoke (tiny widths, 4 steps, no checkpoint).
SMOKE_OVERRIDES = ("n_layers=2", "d_model=32", "n_heads=2", "d_ff=64", "seq_len=32",
                   "batch_size=4", "steps=4", "eval_every=2", "eval_batches=1", "log_every=2",
                   "warmup_steps=1", "wandb=disabled", "checkpoint=false")


def make_config(recipe: str, overrides) -> "Config":
    from mhc import recipes
    from mhc.config import apply_overrides
    return apply_overrides(recipes.get(recipe), list(overrides))


def finished(cfg, run_dir: str) -> bool:
    """True when `run_dir` holds a completed run of exactly `cfg`."""
    from mhc.metrics import read_jsonl
    from mhc.rundir import RunDirError, load_run_config
    metrics_path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.isfile(metrics_path):
        return False
    try:
        same = load_run_config(run_dir) == cfg
    except RunDirError:
        return False
    rows = read_jsonl(metrics_path)
    return same and bool(rows) and rows[-1]["step"] == cfg.train.steps


def train_or_reuse(cfg, run_dir: str, *, verbose: bool = True, label: str = "") -> list[dict]:
    """Metrics rows of `cfg` trained into `run_dir`; a finished run of the same config is reused
    (so figures that share runs train them once), anything else there is replaced."""
    from mhc import train
    from mhc.metrics import read_jsonl
    if finished(cfg, run_dir):
        if verbose:
            print(f"== {label or run_dir}: reusing the finished run in {run_dir}", flush=True)
    else:
        if os.path.isdir(run_dir):
            shutil.rmtree(run_dir)
        if verbose:
            m, t = cfg.model, cfg.train
            print(f"== {label or run_dir}: {m.residual}, {m.n_layers} blocks, d_model {m.d_model}, "
                  f"{t.steps} steps, seed {t.seed}", flush=True)
        train.run(cfg, run_dir, verbose=verbose)
    return read_jsonl(os.path.join(run_dir, "metrics.jsonl"))


def final_metrics(rows: list[dict]) -> dict:
    """Last training loss, last eval loss (NaN if none) and the step of both."""
    evals = [r for r in rows if "eval_loss" in r]
    return {"loss": rows[-1]["loss"], "eval_loss": evals[-1]["eval_loss"] if evals else np.nan,
            "step": rows[-1]["step"]}


def tail_loss(rows: list[dict], fraction: float = 0.1) -> float:
    """Mean training loss over the last `fraction` of logged steps (less noisy than the last)."""
    losses = [r["loss"] for r in rows]
    k = max(1, int(round(len(losses) * fraction)))
    return float(np.mean(losses[-k:]))


def mean_spread(values) -> tuple[float, float]:
    """(mean, sample standard deviation; 0 for a single value)."""
    v = np.asarray(list(values), float)
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def provenance() -> dict:
    """Date, commit and device of the numbers a script writes."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, text=True,
                                capture_output=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    import jax
    dev = jax.devices()[0]
    return {"date": datetime.date.today().isoformat(), "commit": commit,
            "device": f"{dev.platform} ({dev.device_kind}, {os.cpu_count()} cores, "
                      f"{platform.machine()})"}


def write_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, default=float)
