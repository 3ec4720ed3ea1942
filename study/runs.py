"""The run store of the studies: train a config once (or reuse a finished run of the same
config, or resume an interrupted one), one directory per distinct config, the compact committed
record of a finished run, and the configs the studies share (the smoke and micro overrides, the
H_res regimes of the CPU studies).

Run directories hold `config.json`, `provenance.json`, `metrics.jsonl` (one row per logged step;
compressed to `.xz` once finished, `mhc.results`) and, for configs that checkpoint, the final
checkpoint (not committed).
"""
from __future__ import annotations

import json
import math
import os
import shutil

from study import REPO

# Few-second wiring check used by every study's --smoke (tiny widths, 4 steps, no checkpoint).
SMOKE_OVERRIDES = ("n_layers=2", "d_model=32", "n_heads=2", "d_ff=64", "seq_len=32",
                   "batch_size=4", "steps=4", "eval_every=2", "eval_batches=1", "log_every=2",
                   "warmup_steps=1", "wandb=disabled", "checkpoint=false")


def make_config(recipe: str, overrides):
    """The recipe with key=value overrides applied (a `mhc.config.Config`)."""
    from mhc import recipes
    from mhc.config import apply_overrides
    return apply_overrides(recipes.get(recipe), list(overrides))


def _resolved(cfg):
    """`cfg` with dtype "auto" resolved for this machine (a float32 run equals an auto one on CPU)."""
    import dataclasses
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model,
                                                              dtype=cfg.model.compute_dtype))


def finished(cfg, run_dir: str, need_checkpoint: bool = True) -> bool:
    """True when `run_dir` holds a completed run of exactly `cfg` (with its final checkpoint in
    the current format when the config checkpoints and `need_checkpoint`)."""
    from mhc import results
    from mhc.metrics import read_jsonl
    from mhc.rundir import RunDirError, load_run_config
    metrics_path = os.path.join(run_dir, "metrics.jsonl")
    if not results.exists(metrics_path):  # plain, or compressed once finished
        return False
    try:
        same = _resolved(load_run_config(run_dir)) == _resolved(cfg)
    except RunDirError:
        return False
    rows = read_jsonl(metrics_path)
    final_ckpt = os.path.join(run_dir, "checkpoints", str(cfg.train.steps), "model")
    return (same and bool(rows) and rows[-1]["step"] == cfg.train.steps
            and (not (cfg.train.checkpoint and need_checkpoint) or os.path.isdir(final_ckpt)))


def train_or_reuse(cfg, run_dir: str, *, verbose: bool = True, label: str = "") -> list[dict]:
    """Metrics rows of `cfg` trained into `run_dir`; a finished run of the same config is reused
    (so figures that share runs train them once), anything else there is replaced. The finished
    run's step log is stored compressed (`mhc.results`): these run directories are committed."""
    from mhc import results, train
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
    results.compress(run_dir)
    return read_jsonl(os.path.join(run_dir, "metrics.jsonl"))


def train_or_resume(cfg, run_dir: str, *, verbose: bool = True, label: str = "",
                    keep_checkpoints: bool = False) -> list[dict]:
    """Like `train_or_reuse`, for long studies: a run of the same config that was interrupted
    continues from its last checkpoint (exactly, see mhc.train), and with `keep_checkpoints`
    False the checkpoints of a finished run are deleted (its metrics are what the study needs)."""
    from mhc import train
    from mhc.metrics import read_jsonl
    from mhc.rundir import RunDirError, load_run_config
    if finished(cfg, run_dir, need_checkpoint=keep_checkpoints):
        if verbose:
            print(f"== {label or run_dir}: reusing the finished run", flush=True)
        return read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
    try:
        ckpts = os.path.join(run_dir, "checkpoints")
        resumable = (_resolved(load_run_config(run_dir)) == _resolved(cfg) and os.path.isdir(ckpts)
                     and any(name.isdigit() for name in os.listdir(ckpts)))
    except RunDirError:
        resumable = False
    if verbose:
        print(f"== {label or run_dir}: {'resuming' if resumable else 'training'}", flush=True)
    if resumable:
        train.run(cfg, run_dir, verbose=verbose, resume=True)
    else:
        train.run(cfg, run_dir, verbose=verbose, overwrite=True)
    if not keep_checkpoints:
        shutil.rmtree(os.path.join(run_dir, "checkpoints"), ignore_errors=True)
    return read_jsonl(os.path.join(run_dir, "metrics.jsonl"))


def rounded(v):
    """`v` with every finite float (in lists and dicts too) to 6 significant digits: what the
    committed records and summaries store."""
    if isinstance(v, list):
        return [rounded(x) for x in v]
    if isinstance(v, dict):
        return {k: rounded(x) for k, x in v.items()}
    return float(f"{v:.6g}") if isinstance(v, float) and math.isfinite(v) else v


def compact_run(run_dir: str, overrides, keep, layer_keys=(), layer_every: int = 0) -> dict:
    """The committed record of one finished run: its overrides, provenance, event counts and,
    per metrics row, the `keep` keys (6 significant digits); with `layer_keys`, the per-site
    arrays of those stats every `layer_every` steps (`layers`)."""
    from mhc import results, rundir
    from mhc.metrics import read_jsonl
    rows = read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
    events_path = os.path.join(run_dir, "events.jsonl")
    events = read_jsonl(events_path) if results.exists(events_path) else []
    counts = {k: sum(e.get("event") == k for e in events) for k in ("loss_spike", "nonfinite")}

    out_rows = []
    for r in rows:
        row = {k: rounded(r[k]) for k in keep if k in r}
        if layer_keys and layer_every and r["step"] % layer_every == 0 and "layers" in r:
            row["layers"] = {k: rounded(r["layers"][k]) for k in layer_keys if k in r["layers"]}
        out_rows.append(row)
    return {"overrides": list(overrides), "provenance": rundir.read_provenance(run_dir),
            "events": counts, "rows": out_rows}


# OUT/<RECORDS>/<run>.json: the committed compact record of each run, stored as <run>.json.xz
# (`write_record`; readers name the .json). The same name as `mhc.results.RECORDS`, which
# compresses what such a folder holds (not imported here: importing mhc loads JAX).
RECORDS = "records"


def recorded(path: str, overrides) -> dict | None:
    """The compact record at `path` if it is of a finished run with exactly `overrides` (so a
    fresh checkout continues a long study without retraining what is committed), else None."""
    from mhc import results
    try:
        record = results.read_json(path)
    except (OSError, ValueError):  # missing or unreadable
        return None
    return record if record.get("overrides") == list(overrides) else None


def write_record(path: str, record: dict) -> None:
    """Store a compact record (`compact_run`) at `path` + ".xz", as `study.report.write_json`
    would write it; a record that would not change is left as it is (a reused run keeps git
    clean)."""
    from mhc import results
    results.write_json(path, record, default=float)


# The "micro" config of the ablation, Table 1 and scaling studies (tiny recipe at width 64, 4 blocks,
# 200 steps of 16x64 bytes: about 20 s residual / 45 s mHC on 2 idle cores). 16 fixed held-out
# batches make the eval loss comparable across runs.
MICRO_OVERRIDES = ("d_model=64", "n_layers=4", "n_heads=4", "d_ff=192", "seq_len=64",
                   "batch_size=16", "steps=200", "lr=3e-3", "warmup_steps=20", "eval_every=100",
                   "eval_batches=16", "log_every=5", "wandb=disabled", "checkpoint=false",
                   "dtype=float32")  # fp32 on any device (dtype=auto would be bf16 on GPU/TPU)
RUNS = os.path.join(REPO, "experiments", "results", "trained")

# The H_res regime of the CPU studies that need H_res to learn (LR sensitivity, the long run):
# chosen by measurement with `python -m experiments.ablations --axis h_res_regime` and the rule
# in `study.ablations.choose_regime` (results and the reason in experiments/README.md).
STUDY_REGIME = ("res_offdiag_logit=-2",)
# where the finite Sinkhorn's column error is large (the ablations of t_max, convention and
# manifold are re-run there): the soft identity with the connections' LR x10
STRESS_REGIME = ("res_offdiag_logit=-2", "connection_lr_mult=10")


def regime_overrides(kind_overrides, regime=STUDY_REGIME) -> tuple[str, ...]:
    """The options of `regime` that apply to the kind given by `kind_overrides` (e.g.
    ("residual=hc",)): one the config refuses for that kind (an off-diagonal logit for HC or
    the unconstrained map, a Sinkhorn range cap for mHC-lite) is left out, a plain residual
    (no connection parameters) gets none, and mHC-lite's and KromHC's off-diagonal logits are
    translated so that they start from Sinkhorn's H_res (mHC-lite) or its diagonal (KromHC):
    each manifold declares that translation (`mhc.manifolds.Manifold.sinkhorn_start`; sHC's
    and go-mHC's inits make it themselves, so theirs returns the logit unchanged).
    """
    from mhc.config import ConfigError
    kind = make_config("tiny", kind_overrides)
    if kind.model.residual == "residual":
        return ()
    kept = []
    for option in regime:
        key, _, value = option.partition("=")
        sinkhorn_start = kind.model.connection_spec().res_manifold.sinkhorn_start
        if key == "res_offdiag_logit" and sinkhorn_start is not None:
            value = sinkhorn_start(kind.model.n_streams, float(value))
            option = f"{key}={value:.6g}"
        try:
            make_config("tiny", [*kind_overrides, *kept, option])
        except ConfigError:
            continue
        kept.append(option)
    return tuple(kept)


def run_dir_for(cfg, root: str = RUNS) -> str:
    """One directory per distinct config (readable prefix + config hash), so every study that
    needs the same run finds it through `train_or_reuse`."""
    import dataclasses
    import hashlib
    # only fields that differ from the dataclass defaults: adding a config field keeps the names
    changed = {f"{section}.{f.name}": getattr(getattr(cfg, section), f.name)
               for section in ("model", "train")
               for f in dataclasses.fields(getattr(cfg, section))
               if getattr(getattr(cfg, section), f.name) != f.default}
    digest = hashlib.sha1(json.dumps(changed, sort_keys=True, default=str).encode())
    m = cfg.model
    return os.path.join(root, f"{m.residual}-d{m.d_model}-L{m.n_layers}-s{cfg.train.seed}-"
                              f"{digest.hexdigest()[:10]}")


def enable_compile_cache() -> None:
    """Persistent XLA cache in `.jax_cache` (gitignored): seeds of one config compile once. A
    cache the process has already chosen (the tests' own, `tests/conftest.py`) is kept."""
    import jax
    if jax.config.jax_compilation_cache_dir:
        return
    os.makedirs(os.path.join(REPO, ".jax_cache"), exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", os.path.join(REPO, ".jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def runs_root(runs: str | None, out: str, smoke: bool, default: str = RUNS) -> str:
    """Where a study's runs train: `--runs` when given, OUT/trained under --smoke (a wiring check
    never touches the committed runs), else the study's `default`."""
    return runs or (os.path.join(out, "trained") if smoke else default)
