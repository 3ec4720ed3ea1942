"""Fig. 5: mHC stability - (a) loss gap of mHC and HC relative to the residual baseline,
(b) grad norms of all three.

Paper (27B, arXiv 2512.24880 Fig. 5): mHC ends 0.021 below the baseline and its gradient norm stays
comparable to the baseline's; HC's does not. Here: the stability study's runs (small scale by
default; trained once and shared with Figs. 2/3/7/8).

    python paper_repro/fig5_mhc_stability.py               # small scale
    python paper_repro/fig5_mhc_stability.py --smoke       # seconds (wiring check)
    python paper_repro/fig5_mhc_stability.py --scale paper mesh=fsdp=64,expert=8
"""
from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from paper_repro import common  # noqa: E402

from experiments.common import final_metrics  # noqa: E402

PAPER_GAP = -0.021  # mHC final loss gap vs baseline, 27B (Fig. 5a)
COLORS = {"hc": "tab:red", "mhc": "tab:blue", "residual": "tab:gray"}


def main(argv=None) -> int:
    args = common.stability_parser(__doc__).parse_args(argv)
    results, runs = common.stability_results(args, ["residual", "hc", "mhc"])
    base = results["residual"]
    steps = [r["step"] for r in base]
    window = max(1, len(steps) // 20)
    tail = max(1, len(steps) // 10)
    half = len(steps) // 2

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax_a, ax_b) = plt.subplots(1, 2, figsize=(11, 4))
    gaps, grads = {}, {}
    for kind, rows in results.items():
        grads[kind] = np.array([r["grad_norm"] for r in rows])
        ax_b.plot(steps, grads[kind], color=COLORS[kind], lw=0.8, label=kind)
        if kind == "residual":
            continue
        gaps[kind] = np.array([a["loss"] - b["loss"] for a, b in zip(rows, base)])
        ax_a.plot(steps, common.smooth(gaps[kind], window), color=COLORS[kind],
                  label=f"{kind} - residual")
    ax_a.axhline(0, color="k", lw=0.6)
    ax_a.axhline(PAPER_GAP, color="tab:blue", ls=":", lw=1, label="paper mHC final (27B)")
    ax_a.set(title="(a) training loss gap vs residual (smoothed)", xlabel="step",
             ylabel="loss difference (nats/token)")
    ax_b.set(title="(b) gradient norm (before clipping)", xlabel="step", yscale="log")
    for ax in (ax_a, ax_b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    common.savefig(fig, os.path.join(args.out, "fig5_mhc_stability.png"))

    final = {k: final_metrics(r) for k, r in results.items()}
    mhc_gap = gaps["mhc"][-tail:].mean()
    eval_gap = final["mhc"]["eval_loss"] - final["residual"]["eval_loss"]
    ratio = {k: float(np.median(grads[k][half:]) / np.median(grads["residual"][half:]))
             for k in ("hc", "mhc")}
    one = common.seeds_note(1)  # the stability study trains one seed per kind
    rows = [
        common.Row("mHC training loss gap vs residual at the end (mean of last 10 % of steps; "
                   "claim: negative)", f"{PAPER_GAP}", f"{mhc_gap:+.4f}; {one}",
                   common.seeded_verdict([mhc_gap], -1)),
        common.Row("mHC eval loss gap vs residual (claim: negative)",
                   "(final gap -0.021, training loss)", f"{eval_gap:+.4f}; {one}",
                   common.seeded_verdict([eval_gap], -1)),
        common.Row("HC training loss gap vs residual at the end", "negative until its surge",
                   f"{gaps['hc'][-tail:].mean():+.4f}; {one}", "n/a"),
        common.Row("mHC grad norm / residual (median over the second half; claim: within 2x)",
                   "comparable to the baseline", f"{ratio['mhc']:.2f}; {one}",
                   common.all_of({"above 0.5": common.seeded_verdict([ratio["mhc"] - 0.5], +1),
                                  "below 2": common.seeded_verdict([2 - ratio["mhc"]], +1)})),
        common.Row("HC grad norm / residual (median over the second half)",
                   "departs from the baseline around its surge", f"{ratio['hc']:.2f}; {one}",
                   "n/a"),
    ]
    notes = (f"Runs: `{os.path.relpath(runs, common.REPO)}`, one seed; seed-to-seed spread at "
             "this scale is in experiments/results/ablations. The paper's -0.021 is a 27B "
             "number; the claim judged here is its sign.")
    text = common.write("fig5_mhc_stability", "Fig. 5: mHC stability (loss gap and grad norm)",
                        rows, args.out, common.command_line("fig5_mhc_stability.py", argv), notes,
                        common.stability_run_dirs(runs, results))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
