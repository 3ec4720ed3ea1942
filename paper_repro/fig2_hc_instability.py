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

from mhc.metrics import read_jsonl
from mhc.results import exists
from study import REPO, plots, stability
from study.metrics import final_metrics
from study.report import publish
from study.verdict import Row, all_of, paired_seeds, seeded_verdict, seeds_note, values_cell

# what the paper shows and the runtime on 2 CPU cores: the paper_repro page lists every
# script that declares them (paper_repro/collect.py)
TITLE = "Fig. 2: HC instability, loss gap and grad norm"
RUNTIME = "~2.5 h to train the shared stability runs (5 seeds) once, then seconds"


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
    smoothed = plots.smooth(gap, window)
    return {"steps": [r["step"] for r in hc], "gap": gap, "smoothed": smoothed,
            "g_hc": g_hc, "g_mhc": g_mhc,
            "spikes": (len(spikes(hc_dir)), len(spikes(mhc_dir))),
            "train_gap": float(gap[-tail:].mean()),
            "eval_gap": final_metrics(hc)["eval_loss"] - final_metrics(mhc)["eval_loss"],
            "max_gap": float(smoothed.max()), "max_gap_step": hc[int(np.argmax(smoothed))]["step"],
            "grad_max_ratio": float(g_hc.max() / g_mhc.max()),
            "grad_median_ratio": float(np.median(g_hc[half:]) / np.median(g_mhc[half:]))}


def plot(per: list[dict], seeds, path: str) -> None:
    """(a) the smoothed HC - mHC loss gap, (b) both grad norms; the first seed drawn full."""
    fig, (ax_a, ax_b) = plots.pyplot().subplots(1, 2, figsize=(11, 4))
    for i, (seed, m) in enumerate(zip(seeds, per)):
        alpha, tag = (1.0, f", seed {seed}") if i == 0 else (0.35, None)
        ax_a.plot(m["steps"], m["smoothed"], color="tab:red", alpha=alpha,
                  label=tag and f"HC - mHC (smoothed){tag}")
        ax_b.plot(m["steps"], m["g_hc"], color="tab:red", lw=0.8, alpha=alpha,
                  label=tag and f"HC{tag}")
        ax_b.plot(m["steps"], m["g_mhc"], color="tab:blue", lw=0.8, alpha=alpha,
                  label=tag and f"mHC{tag}")
    plots.gap_and_grad(fig, ax_a, ax_b,
                       f"(a) training loss gap, HC relative to mHC ({len(seeds)} seeds)", path)


def rows(per: list[dict]) -> list[Row]:
    """Paper-vs-ours rows from the per-seed numbers (`seed_numbers`)."""
    cell = values_cell
    spike_text = ", ".join(f"{h} vs {m}" for h, m in (p["spikes"] for p in per))
    return [
        Row("HC loss surge during training (loss-spike events, HC minus mHC, per seed)",
            "HC's loss surges near step 12k of 50k (27B)",
            f"HC vs mHC events {spike_text} ({seeds_note(len(per))})",
            seeded_verdict([h - m for h, m in (p["spikes"] for p in per)], +1)),
        Row("loss gap HC - mHC at the end (train: mean of last 10 % of steps; eval: "
            "final), per seed", "positive after the surge (HC worse)",
            f"train {cell([p['train_gap'] for p in per])}; eval "
            f"{cell([p['eval_gap'] for p in per])}",
            all_of({"train": seeded_verdict([p["train_gap"] for p in per], +1),
                    "eval": seeded_verdict([p["eval_gap"] for p in per], +1)})),
        Row("largest smoothed gap HC - mHC (step), per seed", "a surge (plot)",
            "; ".join(f"{p['max_gap']:+.4f} ({p['max_gap_step']})" for p in per), "n/a"),
        Row("grad norm: largest HC / largest mHC, per seed (claim: above 2); median "
            "ratio over the second half", "HC spikes with the loss surge",
            f"{cell([p['grad_max_ratio'] for p in per], '.2f')}; median "
            f"{cell([p['grad_median_ratio'] for p in per], '.2f')}",
            seeded_verdict([p["grad_max_ratio"] - 2 for p in per], +1)),
    ]


def main(argv=None) -> int:
    args = stability.parser(__doc__).parse_args(argv)
    results, runs = stability.results(args, ["hc", "mhc"])
    seeds = paired_seeds(results)
    per = [seed_numbers(results["hc"][s], results["mhc"][s], stability.run_dir(runs, "hc", s),
                        stability.run_dir(runs, "mhc", s)) for s in seeds]
    plot(per, seeds, os.path.join(args.out, "fig2_hc_instability.png"))
    notes = (f"Runs: `{os.path.relpath(runs, REPO)}` ({len(per[0]['steps'])} steps, seeds "
             f"{', '.join(map(str, seeds))}, paired by seed: the same seed gives both kinds the "
             "same data order; gradient clipping off). The paper's surge is a 27B, 50k-step "
             "event; a small model over a few hundred steps may not show it, and the table says "
             "so rather than reading a surge into noise. The long deep run "
             "(`experiments/long_run.py`) and the LR-sensitivity proxy (`lr_proxy.md`) push "
             "further.")
    return publish("fig2_hc_instability", "Fig. 2: HC instability (loss gap and grad norm)",
                   rows(per), args.out, argv, notes, stability.run_dirs(runs, results))


if __name__ == "__main__":
    sys.exit(main())
