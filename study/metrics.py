"""The numbers the studies read out of one run's metrics rows (`metrics.jsonl`, one dict per
logged step: "step", "loss", "eval_loss" on eval steps, the H_res diagnostics of `mhc.metrics`),
and the mean ± spread over seeds that every summary table shows."""
from __future__ import annotations

import numpy as np


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


H_RES_MOVEMENT = ("offdiag_start", "offdiag_end", "offdiag_end_max", "dist_init_end",
                  "entropy_end", "token_std_end")


def h_res_movement(rows: list[dict]) -> dict:
    """Did H_res learn? Depth-mean off-diagonal mass (1 - mean diagonal) at the first and last
    logged step, the worst site's at the end, distance from the initial map, row entropy and
    token spread at the end (NaN where the run predates these metrics)."""
    def value(row, key):
        if key == "h_res_offdiag" and key not in row and "h_res_diag_mean" in row:
            return 1.0 - row["h_res_diag_mean"]  # the same quantity, logged by older runs
        return row.get(key, np.nan)
    first, last = rows[0], rows[-1]
    return {"offdiag_start": value(first, "h_res_offdiag"),
            "offdiag_end": value(last, "h_res_offdiag"),
            "offdiag_end_max": value(last, "h_res_offdiag_max"),
            "dist_init_end": value(last, "h_res_dist_init"),
            "entropy_end": value(last, "h_res_entropy"),
            "token_std_end": value(last, "h_res_token_std")}


def mean_spread(values) -> tuple[float, float]:
    """(mean, sample standard deviation; 0 for a single value)."""
    v = np.asarray(list(values), float)
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0
