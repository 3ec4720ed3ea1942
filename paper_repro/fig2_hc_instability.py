"""Fig. 2: HC instability - (a) loss gap of HC relative to mHC over training, (b) grad norms.

Paper (27B, arXiv 2512.24880 Fig. 2): HC's loss surges near step 12k, in step with a spike of its
gradient norm; mHC stays smooth. Here: the same comparison on the stability study's runs
(experiments/stability.py; small scale by default, trained once and reused by Figs. 2/3/5/7/8).

    python -m paper_repro.fig2_hc_instability              # small scale (~25 min once, then seconds)
    python -m paper_repro.fig2_hc_instability --smoke      # seconds (wiring check)
    python -m paper_repro.fig2_hc_instability --scale paper mesh=fsdp=64,expert=8
"""
from __future__ import annotations

import os
import sys

import numpy as np

from paper_repro import common

from experiments.common import final_metrics
from mhc.metrics import read_jsonl
from mhc.results import exists


def spikes(run_dir: str) -> list[int]:
    """Steps flagged as loss spikes by the trainer (events.jsonl)."""
    path = os.path.join(run_dir, "events.jsonl")
    rows = read_jsonl(path) if exists(path) else []
    return [r["step"] for r in rows if r.get("event") == "loss_spike"]


def seed_numbers(hc: list[dict], mhc: list[dict], hc_dir: str, mhc_dir: str) -> dict:
    """The per-seed quantities of the table, from one seed's HC and mHC runs."""
    gap = np.array([a["loss"] - b["loss"] for a, b in zip(hc, mhc)])
    window, tail, half = max(1, gap.size // 20), max(1, gap.size // 10), gap.size // 2
    g_hc, g_mhc = (np.array([r["grad_norm"] for r in rows]) for rows in (hc, mhc))
    smoothed = common.smooth(gap, window)
    return {"steps": [r["step"] for r in hc], "gap": gap, "smoothed": smoothed,
            "g_hc": g_hc, "g_mhc": g_mhc,
            "spikes": (len(spikes(hc_dir)), len(spikes(mhc_dir))),
            "train_gap": float(gap[-tail:].mean()),
            "eval_gap": final_metrics(hc)["eval_loss"] - final_metrics(mhc)["eval_loss"],
            "max_gap": float(smoothed.max()), "max_gap_step": hc[int(np.argmax(smoothed))]["step"],
            "grad_max_ratio": float(g_hc.max() / g_mhc.max()),
            "grad_median_ratio": float(np.median(g_hc[half:]) / np.median(g_mhc[half:]))}


def main(argv=None) -> int:
    from experiments import stability
    args = common.stability_parser(__doc__).parse_args(argv)
    results, runs = common.stability_results(args, ["hc", "mhc"])
    seeds = common.paired_seeds(results)
    per = [seed_numbers(results["hc"][s], results["mhc"][s], stability.run_dir(runs, "hc", s),
                        stability.run_dir(runs, "mhc", s)) for s in seeds]

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax_a, ax_b) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (seed, m) in enumerate(zip(seeds, per)):
        alpha, tag = (1.0, f", seed {seed}") if i == 0 else (0.35, None)
        ax_a.plot(m["steps"], m["smoothed"], color="tab:red", alpha=alpha,
                  label=tag and f"HC - mHC (smoothed){tag}")
        ax_b.plot(m["steps"], m["g_hc"], color="tab:red", lw=0.8, alpha=alpha,
                  label=tag and f"HC{tag}")
        ax_b.plot(m["steps"], m["g_mhc"], color="tab:blue", lw=0.8, alpha=alpha,
                  label=tag and f"mHC{tag}")
    ax_a.axhline(0, color="k", lw=0.6)
    ax_a.set(title=f"(a) training loss gap, HC relative to mHC ({len(seeds)} seeds)",
             xlabel="step", ylabel="loss difference (nats/token)")
    ax_b.set(title="(b) gradient norm", xlabel="step", yscale="log")
    for ax in (ax_a, ax_b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    common.savefig(fig, os.path.join(args.out, "fig2_hc_instability.png"))

    cell = common.values_cell
    spike_text = ", ".join(f"{h} vs {m}" for h, m in (p["spikes"] for p in per))
    rows = [
        common.Row("HC loss surge during training (loss-spike events, HC minus mHC, per seed)",
                   "HC's loss surges near step 12k of 50k (27B)",
                   f"HC vs mHC events {spike_text} ({common.seeds_note(len(per))})",
                   common.seeded_verdict([h - m for h, m in (p["spikes"] for p in per)], +1)),
        common.Row("loss gap HC - mHC at the end (train: mean of last 10 % of steps; eval: "
                   "final), per seed", "positive after the surge (HC worse)",
                   f"train {cell([p['train_gap'] for p in per])}; eval "
                   f"{cell([p['eval_gap'] for p in per])}",
                   common.all_of({
                       "train": common.seeded_verdict([p["train_gap"] for p in per], +1),
                       "eval": common.seeded_verdict([p["eval_gap"] for p in per], +1)})),
        common.Row("largest smoothed gap HC - mHC (step), per seed", "a surge (plot)",
                   "; ".join(f"{p['max_gap']:+.4f} ({p['max_gap_step']})" for p in per), "n/a"),
        common.Row("grad norm: largest HC / largest mHC, per seed (claim: above 2); median "
                   "ratio over the second half", "HC spikes with the loss surge",
                   f"{cell([p['grad_max_ratio'] for p in per], '.2f')}; median "
                   f"{cell([p['grad_median_ratio'] for p in per], '.2f')}",
                   common.seeded_verdict([p["grad_max_ratio"] - 2 for p in per], +1)),
    ]
    notes = (f"Runs: `{os.path.relpath(runs, common.REPO)}` ({len(per[0]['steps'])} steps, seeds "
             f"{', '.join(map(str, seeds))}, paired by seed: the same seed gives both kinds the "
             "same data order; gradient clipping off). The paper's surge is a 27B, 50k-step "
             "event; a small model over a few hundred steps may not show it, and the table says "
             "so rather than reading a surge into noise. The long deep run "
             "(`experiments/long_run.py`) and the LR-sensitivity proxy (`lr_proxy.md`) push "
             "further.")
    text = common.write("fig2_hc_instability", "Fig. 2: HC instability (loss gap and grad norm)",
                        rows, args.out, common.command_line("fig2_hc_instability.py", argv),
                        notes, common.stability_run_dirs(runs, results))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
