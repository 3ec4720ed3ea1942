"""Paper-vs-ours tables shared by every `paper_repro/` script.

A row is `Row(quantity, paper, ours, agrees)`: what the paper says (with its figure/table), what
this run measured, and a verdict ("yes", "no", "partly", or "n/a" where the paper gives no number).
`write` saves the rows as Markdown and CSV next to the figure, with the date, commit, device and
exact command that produced them.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from experiments.common import provenance  # noqa: E402

RESULTS = os.path.join(REPO, "paper_repro", "results")


@dataclasses.dataclass
class Row:
    quantity: str
    paper: str
    ours: str
    agrees: str


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("yes" if ok else "no")


def write(name: str, title: str, rows: list[Row], out_dir: str, command: str,
          notes: str = "") -> str:
    """Write `<out_dir>/<name>.md` and `.csv`; returns the Markdown text."""
    os.makedirs(out_dir, exist_ok=True)
    meta = provenance()
    lines = [f"# {title}", "",
             f"Produced by `{command}` on {meta['date']}, commit {meta['commit']}, "
             f"{meta['device']}.", "",
             "| quantity | paper says | we measure | agrees? |", "|---|---|---|---|"]
    cell = lambda v: str(v).replace("|", "\\|")  # noqa: E731 (a pipe would split the cell)
    lines += ["| " + " | ".join(cell(v) for v in dataclasses.astuple(r)) + " |" for r in rows]
    if notes:
        lines += ["", notes]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out_dir, f"{name}.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out_dir, f"{name}.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["quantity", "paper", "ours", "agrees"])
        w.writerows([dataclasses.astuple(r) for r in rows])
    return text


def command_line(script: str, argv) -> str:
    return " ".join(["python", f"paper_repro/{script}", *(argv or [])])


def table_parser(doc: str, smoke_help: str) -> argparse.ArgumentParser:
    """Arguments of the compile-only tables (2, 3, 5): --scale default|paper, --smoke, --out."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--scale", choices=("default", "paper"), default="default")
    p.add_argument("--smoke", action="store_true", help=smoke_help)
    p.add_argument("--out", default=RESULTS)
    return p


# ------------------------------------------------------ figures built on the stability study
def stability_parser(doc: str) -> argparse.ArgumentParser:
    """Arguments shared by the figures that read the residual/HC/mHC stability runs: --scale,
    --kinds, --out, --smoke, key=value overrides, and --runs (where the runs live; a finished
    run of the same config there is reused, so the figures train the study once)."""
    from experiments import stability
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    stability.add_scale_args(p, RESULTS)
    p.add_argument("--runs", default=None, help="run directories (default: "
                   "experiments/results/stability, or OUT/runs with --smoke)")
    return p


def stability_results(args, kinds=None) -> tuple[dict, str]:
    """({kind: metrics rows}, runs directory) of the stability study at `args.scale`."""
    from experiments import stability
    # smoke runs keep their (tiny) final checkpoint so Fig. 8 reuses the same runs
    extra = ["checkpoint=true"] if args.smoke else []
    recipe, overrides = stability.scale_setup(args.scale, args.smoke, [*extra, *args.overrides])
    default = "stability" if args.scale == "small" else f"stability_{args.scale}"
    runs = args.runs or (os.path.join(args.out, "runs") if args.smoke else
                         os.path.join(REPO, "experiments", "results", default))
    kinds = kinds or [k for k in args.kinds.split(",") if k]
    return stability.run_all(recipe, kinds, None, overrides, runs, verbose=not args.smoke), runs


def smooth(values, window: int = 10):
    """Trailing moving average (same length; the first points average what exists)."""
    import numpy as np
    v = np.asarray(values, float)
    return np.array([v[max(0, i - window + 1):i + 1].mean() for i in range(v.size)])


def series(rows, key):
    """(steps, values) of `key` over the rows that have it."""
    pts = [(r["step"], r[key]) for r in rows if key in r]
    return [p[0] for p in pts], [p[1] for p in pts]


def savefig(fig, path: str) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return path


def layer_records(rows) -> list[dict]:
    """The per-site arrays logged during training (`layers`: amax_fwd/bwd, composite_fwd/bwd,
    ...), with their step."""
    return [{"step": r["step"], **r["layers"]} for r in rows if "layers" in r]


def amax_figure(rows, kind: str, title: str, path: str) -> dict:
    """Per-site Amax gain of `kind`'s H_res: (a) single site, (b) composite from the first site,
    forward and backward, at the logged step where the composite peaked and at the end. Returns
    {"peak": record, "end": record}."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    records = layer_records(rows)
    peak = max(records, key=lambda r: max(max(r["composite_fwd"]), max(r["composite_bwd"])))
    end = records[-1]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, prefix, name in ((axes[0], "amax", "(a) single site"),
                             (axes[1], "composite", "(b) composite from site 1")):
        for rec, style in ((peak, "-"), (end, ":")):
            sites = np.arange(1, len(rec[f"{prefix}_fwd"]) + 1)
            ax.plot(sites, rec[f"{prefix}_fwd"], style, color="tab:blue", marker="o", ms=3,
                    label=f"forward, step {rec['step']}")
            ax.plot(sites, rec[f"{prefix}_bwd"], style, color="tab:orange", marker="s", ms=3,
                    label=f"backward, step {rec['step']}")
        ax.axhline(1, color="k", lw=0.6)
        ax.set(title=f"{title} {name}", xlabel="site (2 per block)", ylabel="Amax gain",
               yscale="log")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    savefig(fig, path)
    return {"peak": peak, "end": end}


def amax_extremes(rows) -> dict:
    """Largest single-site and composite Amax gains (fwd/bwd) over every logged step and site."""
    records = layer_records(rows)
    return {key: max(max(r[key]) for r in records)
            for key in ("amax_fwd", "amax_bwd", "composite_fwd", "composite_bwd")}
