"""Metric sinks: JSONL file, Weights & Biases (never fatal), console progress, fan-out.

Every sink has ``write(step: int, metrics: dict)`` and ``close()``; metric
values may be Python, numpy or jax scalars (or small arrays).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _to_python(v: Any) -> Any:
    """Convert numpy/jax scalars and arrays (recursively) to Python numbers/lists."""
    if isinstance(v, dict):
        return {str(k): _to_python(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_to_python(x) for x in v]
    if hasattr(v, "__array__") and not isinstance(v, (str, bytes)):
        import numpy as np

        v = np.asarray(v)
        return v.item() if v.ndim == 0 else _to_python(v.tolist())
    return v


def _json_safe(v: Any) -> Any:
    """Replace non-finite floats by the strings "nan" / "inf" / "-inf" (valid JSON)."""
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_json_safe(x) for x in v]
    return v


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


class Sink:
    """Base sink: no-op ``write``/``close``; usable as a context manager."""

    def write(self, step: int, metrics: dict) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class JsonlSink(Sink):
    """Append one JSON object ``{"step": step, **metrics}`` per line to ``path`` (flushed per line).

    Non-finite floats are written as the strings "nan" / "inf" / "-inf";
    ``read_jsonl`` turns them back into floats.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a", encoding="utf-8")

    def write(self, step: int, metrics: dict) -> None:
        record = _json_safe(_to_python({"step": int(step), **metrics}))
        self._f.write(json.dumps(record, allow_nan=False) + "\n")
        self._f.flush()

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a ``JsonlSink`` file back; top-level "nan"/"inf"/"-inf" strings become floats.

    ``path`` or, where it is absent, ``path.xz`` (a finished run stored compressed:
    ``mhc.results``). A last line cut short (the writer was killed mid-line) is ignored."""
    # imported here: `import mhc` loads this module, and `python -m mhc.results` warns when
    # the package has loaded mhc.results before running it
    from mhc import results
    with results.open_text(path) as f:
        lines = [line for line in f if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1 and not line.endswith("\n"):
                break
            raise
        rows.append({k: _NONFINITE.get(v, v) if isinstance(v, str) else v for k, v in row.items()})
    return rows


def truncate_jsonl(path: str | os.PathLike, max_step: int) -> int:
    """Keep only the rows with ``step <= max_step`` (atomic rewrite); returns how many were kept.

    Used on resume: the steps after the restored checkpoint are recomputed and logged again."""
    path = Path(path)
    if not path.exists():
        return 0
    rows = [r for r in read_jsonl(path) if r["step"] <= max_step]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(_json_safe(r), allow_nan=False) + "\n")
    os.replace(tmp, path)
    return len(rows)


WANDB_MODES = ("offline", "online", "disabled")  # the `wandb` option (TrainConfig.wandb)


class WandbSink(Sink):
    """Log to Weights & Biases; any wandb failure prints one warning and turns the sink into a no-op.

    ``mode`` is one of WANDB_MODES; the env var ``WANDB_MODE=disabled`` wins.
    """

    def __init__(
        self,
        project: str,
        run_dir: str | os.PathLike,
        config: dict,
        mode: str = "offline",
        name: str | None = None,
        run_id: str | None = None,
    ):
        if mode not in WANDB_MODES:
            raise ValueError(f"wandb={mode!r}; allowed: {', '.join(WANDB_MODES)}")
        if os.environ.get("WANDB_MODE") == "disabled":
            mode = "disabled"
        self.mode, self.run = mode, None
        try:
            import wandb

            Path(run_dir).mkdir(parents=True, exist_ok=True)
            self.run = wandb.init(
                mode=mode, dir=str(run_dir), project=project, config=_to_python(dict(config)), name=name,
                id=run_id, resume="allow" if run_id else None,
            )
        except Exception as e:  # noqa: BLE001 - logging must never kill training
            _warn(f"wandb unavailable, not logging to it ({type(e).__name__}: {e})")
            self.run = None

    def write(self, step: int, metrics: dict) -> None:
        if self.run is None:
            return
        try:
            self.run.log(_to_python(dict(metrics)), step=int(step))
        except Exception as e:  # noqa: BLE001
            _warn(f"wandb log failed, disabling wandb ({type(e).__name__}: {e})")
            self.run = None

    def close(self) -> None:
        run, self.run = self.run, None
        if run is not None:
            try:
                run.finish()
            except Exception as e:  # noqa: BLE001
                _warn(f"wandb finish failed ({type(e).__name__}: {e})")


def _fmt_duration(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class ConsoleProgress(Sink):
    """Print one progress line every ``every`` steps and at ``step == total_steps``.

    ``step`` counts completed steps (1-based). Shown keys, when present: ``loss``,
    ``eval_loss``, ``tokens_per_s``, ``mfu``, ``amax_fwd``/``amax_bwd``, ``grad_norm``,
    ``h_res_offdiag``; the ETA
    uses the mean wall time per step since the first ``write`` (so a resumed run's ETA counts
    only the steps it has left).
    """

    def __init__(self, total_steps: int, every: int = 1, stream: TextIO | None = None):
        if total_steps < 1 or every < 1:
            raise ValueError(f"total_steps and every must be >= 1, got {total_steps}, {every}")
        self.total_steps, self.every = total_steps, every
        self.stream = stream if stream is not None else sys.stdout
        self._t0: float | None = None
        self._step0 = 0

    def format(self, step: int, metrics: dict, eta_s: float | None = None) -> str:
        """The progress line for ``step`` (no trailing newline)."""
        m = _to_python(dict(metrics))
        parts = [f"step {step}/{self.total_steps} ({100 * step // self.total_steps}%)"]
        if "loss" in m:
            parts.append(f"loss {m['loss']:.3f}")
        if "eval_loss" in m:
            parts.append(f"eval {m['eval_loss']:.3f}")
        if "tokens_per_s" in m:
            parts.append(f"{m['tokens_per_s']:,.0f} tok/s")
        if "mfu" in m and math.isfinite(m["mfu"]):
            parts.append(f"MFU {100 * m['mfu']:.1f}%")
        gain = [f"{d} {m[k]:.2f}" for d, k in (("fwd", "amax_fwd"), ("bwd", "amax_bwd")) if k in m]
        if gain:
            parts.append("gain " + " ".join(gain))
        if "grad_norm" in m:
            parts.append(f"gnorm {m['grad_norm']:.3g}")
        if "h_res_offdiag" in m:  # has H_res learned anything? (0 = still the identity)
            parts.append(f"H_res offdiag {m['h_res_offdiag']:.3f}")
        if eta_s is not None:
            parts.append(f"ETA {_fmt_duration(eta_s)}")
        return " | ".join(parts)

    def write(self, step: int, metrics: dict) -> None:
        now = time.perf_counter()
        if self._t0 is None:
            self._t0, self._step0 = now, step
        if step % self.every and step != self.total_steps:
            return
        eta = None
        if step > self._step0:
            eta = (now - self._t0) / (step - self._step0) * max(0, self.total_steps - step)
        print(self.format(step, metrics, eta), file=self.stream, flush=True)

    def close(self) -> None:
        self.stream.flush()


class MultiSink(Sink):
    """Fan ``write``/``close`` out to several sinks."""

    def __init__(self, *sinks: Sink):
        self.sinks = list(sinks)

    def write(self, step: int, metrics: dict) -> None:
        for s in self.sinks:
            s.write(step, metrics)

    def close(self) -> None:
        for s in self.sinks:
            s.close()
