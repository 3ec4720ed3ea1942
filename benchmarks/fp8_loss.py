"""fp8=deepseek against bf16: recipe tiny (residual mhc) trained both ways on the same data.

Both runs compute in bf16 (`dtype=bfloat16`); the second adds DeepSeek-V3's FP8 GEMMs
(`mhc/fp8.py`). Reported: the per-step training loss of both, the largest per-step |Δloss|, the
|Δ| of the mean loss over the last 50 steps and of the final eval loss (the distances
tests/test_fp8.py bounds). On CPU the e4m3 products are accumulated in fp32; a GPU's tensor cores
accumulate them in limited precision, which only a device run measures. Writes
benchmarks/results/fp8_loss.md and its .json beside it.

    python -m benchmarks.fp8_loss            # 2 x 200 steps (about 2 min on 2 idle cores)
    python -m benchmarks.fp8_loss --smoke    # 4 steps, tiny shapes: wiring check
"""
from __future__ import annotations

import json
import os
import tempfile

import numpy as np

from study import flags
from study.report import provenance, write_report
from study.runs import SMOKE_OVERRIDES

FLAGS = ("smoke", "out")
BASE = ("residual=mhc", "dtype=bfloat16", "wandb=disabled", "checkpoint=false")


def train_pair(overrides) -> dict:
    """{"bf16" | "fp8": {"loss": [...], "eval": final eval loss}} for recipe tiny + overrides."""
    from mhc import recipes, train
    from mhc.config import apply_overrides
    from mhc.metrics import read_jsonl

    out = {}
    for name, extra in (("bf16", ()), ("fp8", ("fp8=deepseek",))):
        cfg = apply_overrides(recipes.get("tiny"), [*BASE, *overrides, *extra])
        with tempfile.TemporaryDirectory() as d:
            result = train.run(cfg, d, verbose=False)
            rows = read_jsonl(os.path.join(d, "metrics.jsonl"))
        out[name] = {"loss": [r["loss"] for r in rows], "eval": result.final_eval_loss}
    return out


def distances(runs: dict, last: int = 50) -> dict:
    a, b = np.array(runs["bf16"]["loss"]), np.array(runs["fp8"]["loss"])
    return {"max_step_abs": float(np.abs(b - a).max()),
            "last_mean_abs": float(abs(b[-last:].mean() - a[-last:].mean())),
            "eval_abs": float(abs(runs["fp8"]["eval"] - runs["bf16"]["eval"])), "last": last}


def report(runs: dict, out: str, last: int = 50) -> dict:
    """Write the table (and the curves as JSON beside it); return the distances."""
    d = distances(runs, last)
    meta = provenance()
    with open(os.path.splitext(out)[0] + ".json", "w") as f:
        json.dump({**meta, "distances": d, "runs": runs}, f)
    lines = [f"fp8=deepseek vs bf16, recipe tiny, residual mhc, {len(runs['bf16']['loss'])} "
             f"steps (CPU: e4m3 products accumulated in fp32). {meta['date']}, commit "
             f"{meta['commit']}, {meta['device']}, jax {meta['jax']}.", "",
             f"| | first loss | last-{last} mean | final eval |", "|---|---|---|---|",
             *(f"| {k} | {r['loss'][0]:.4f} | {np.mean(r['loss'][-last:]):.4f} | "
               f"{r['eval']:.4f} |" for k, r in runs.items()), "",
             f"max per-step |Δloss| {d['max_step_abs']:.4f}; |Δ last-{last} mean| "
             f"{d['last_mean_abs']:.4f}; |Δ final eval| {d['eval_abs']:.4f}", ""]
    write_report(out, lines)
    return d


def main(argv=None) -> int:
    args = flags.parser(__doc__, *FLAGS, out="benchmarks/results/fp8_loss.md").parse_args(argv)
    runs = train_pair(SMOKE_OVERRIDES if args.smoke else ())
    report(runs, args.out, 2 if args.smoke else 50)
    return 0 if np.all(np.isfinite(runs["fp8"]["loss"])) else 1


if __name__ == "__main__":
    raise SystemExit(main())
