"""Fig. 7: Amax gain of mHC's H_res per layer - (a) single layer, (b) composite - forward and
backward.

Paper (27B, arXiv 2512.24880 Fig. 7): single-layer forward gain about 1 and backward slightly off
1 (truncated Sinkhorn); the composite stays at most about 1.6. Here: the mHC run of the stability
study (small scale by default; shared with Figs. 2/3/5/8).

    python -m paper_repro.fig7_mhc_amax                    # small scale
    python -m paper_repro.fig7_mhc_amax --smoke            # seconds (wiring check)
    python -m paper_repro.fig7_mhc_amax --scale paper mesh=fsdp=64,expert=8
"""
from __future__ import annotations

import os
import sys

from paper_repro import common

PAPER_COMPOSITE_MAX = 1.6


def main(argv=None) -> int:
    args = common.stability_parser(__doc__).parse_args(argv)
    results, runs = common.stability_results(args, ["mhc"])
    by_seed = results["mhc"]
    seeds = sorted(by_seed)
    common.amax_figure(by_seed[seeds[0]], "mhc", f"mHC H_res (seed {seeds[0]})",
                       os.path.join(args.out, "fig7_mhc_amax.png"))
    # per-step scalars: the per-site records (logged on some steps) can miss the peak
    peaks = [common.step_peaks(by_seed[s]) for s in seeds]
    col_err = [max(r["ds_col_err_max"] for r in by_seed[s]) for s in seeds]
    fwd_site = max(p["layer_amax_fwd_max"] for p in peaks)
    fwd_comp = max(p["amax_fwd_max"] for p in peaks)
    bwd_site = [p["layer_amax_bwd_max"] for p in peaks]
    bwd_comp = [p["amax_bwd_max"] for p in peaks]
    cell = common.values_cell
    # rows are normalised last, so every forward gain is 1 whatever the seed: a deterministic
    # check of the construction; the backward gains carry the truncation error (seeded)
    exact = common.exact_verdict
    table = [
        common.Row("single-site forward gain (max over steps, sites and seeds)", "about 1",
                   f"{fwd_site:.6f}",
                   exact(abs(fwd_site - 1) < 1e-3, "|gain - 1| < 1e-3; rows normalised last")),
        common.Row("single-site backward gain (max per seed; claim: above 1, below 1.2)",
                   "slightly off 1 (truncated Sinkhorn)", cell(bwd_site, ".4f"),
                   common.all_of({
                       "above 1": common.seeded_verdict([v - 1 for v in bwd_site], +1),
                       "below 1.2": common.seeded_verdict([1.2 - v for v in bwd_site], +1)})),
        common.Row("composite forward gain (max over steps and seeds)", "about 1",
                   f"{fwd_comp:.6f}",
                   exact(abs(fwd_comp - 1) < 1e-3, "|gain - 1| < 1e-3; rows normalised last")),
        common.Row("composite backward gain (max per seed; claim: at most the paper's)",
                   f"at most about {PAPER_COMPOSITE_MAX}",
                   "; ".join(f"{p['amax_bwd_max']:.4f} (step {p['amax_bwd_max_step']})"
                             for p in peaks) + f" ({common.seeds_note(len(peaks))})",
                   common.seeded_verdict([PAPER_COMPOSITE_MAX - v for v in bwd_comp], +1)),
        common.Row("largest column-sum error of one H_res (20 iterations), per seed",
                   "grows with logit size (mHC-lite reports up to 100 %)", cell(col_err, ".3g"),
                   "n/a"),
    ]
    notes = (f"Runs: `{os.path.relpath(runs, common.REPO)}`, seeds {', '.join(map(str, seeds))}"
             " (the plot: the first). Peaks are the per-step scalars of metrics.jsonl (every "
             "step). Rows are normalised last, so the forward gain is exact; the column sums "
             "carry the truncation error.")
    text = common.write("fig7_mhc_amax", "Fig. 7: mHC Amax gain per layer", table, args.out,
                        common.command_line("fig7_mhc_amax.py", argv), notes,
                        common.stability_run_dirs(runs, results))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
