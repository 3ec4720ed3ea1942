"""`mhc plot RUN_DIR`: a run's curves from metrics.jsonl (+ events.jsonl) to one PNG (Agg).

Panels, each drawn only when the run logged its metrics: loss and eval loss (skipped steps and
loss spikes marked), learning rate, gradient norm, throughput and MFU, the composite and
single-layer Amax gains (forward / backward), whether H_res learns (off-diagonal mass and
distance from its initial map, depth mean and worst site), and the per-site composite gain and
off-diagonal mass at the last logged step.
"""
from __future__ import annotations

import math
import os
import sys

from mhc import results
from mhc.metrics import read_jsonl


def _series(rows, key):
    pts = [(r["step"], r[key]) for r in rows
           if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return [p[0] for p in pts], [p[1] for p in pts]


def _lines(ax, rows, specs, log: bool = False, **set_kw) -> bool:
    """Plot `(key, label, style)` series present in `rows`; False when none is. `log`: a log
    y-axis when the values span more than a factor of 20."""
    values = []
    for key, label, style in specs:
        x, y = _series(rows, key)
        if x:
            ax.plot(x, y, style, label=label, lw=1, ms=3)
            values += y
    drawn = bool(values)
    if drawn:
        if log and min(values) > 0 and max(values) > 20 * min(values):
            ax.set_yscale("log")
        ax.set(xlabel="step", **set_kw)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return drawn


def plot_run(run_dir: str, out: str | None = None) -> str:
    """Write the run's curves to `out` (default RUN_DIR/curves.png) and return the path."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not results.exists(path):
        raise FileNotFoundError(f"{run_dir!r} has no metrics.jsonl (not a run directory?)")
    rows = read_jsonl(path)
    if not rows:
        raise ValueError(f"{path!r} is empty: the run has not finished a step yet")
    events_path = os.path.join(run_dir, "events.jsonl")
    events = read_jsonl(events_path) if results.exists(events_path) else []

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(2, 4, figsize=(21, 8))
    ax = axes[0, 0]
    _lines(ax, rows, [("loss", "train", "-"), ("eval_loss", "eval", "o-")],
           title="loss", ylabel="cross-entropy (nats/token)")
    for kind, color in (("nonfinite", "tab:red"), ("loss_spike", "tab:orange")):
        steps = [e["step"] for e in events if e.get("event") == kind]
        for i, s in enumerate(steps):
            ax.axvline(s, color=color, alpha=0.4, lw=0.8, label=kind if i == 0 else None)
    if events:
        ax.legend(fontsize=7)
    _lines(axes[0, 1], rows, [("lr", "lr", "-")], title="learning rate")
    _lines(axes[0, 2], rows, [("grad_norm", "grad norm (before clipping)", "-")],
           log=True, title="gradient norm")
    ax = axes[1, 0]
    if _lines(ax, rows, [("tokens_per_s", "tokens/s", "-")], title="throughput"):
        x, y = _series(rows, "mfu")
        if x:
            twin = ax.twinx()
            twin.plot(x, [100 * v for v in y], "--", color="tab:green", lw=1)
            twin.set_ylabel("MFU (%)", color="tab:green")
    _lines(axes[1, 1], rows, [("amax_fwd", "composite fwd", "-"), ("amax_bwd", "composite bwd", "--"),
                             ("layer_amax_fwd_max", "max single fwd", "-"),
                             ("layer_amax_bwd_max", "max single bwd", "--")],
           log=True, title="Amax gain")
    _lines(axes[0, 3], rows, [("h_res_offdiag", "off-diagonal mass (depth mean)", "-"),
                             ("h_res_offdiag_max", "off-diagonal mass (worst site)", "--"),
                             ("h_res_dist_init", "distance from init (depth mean)", "-"),
                             ("h_res_dist_init_max", "distance from init (worst site)", "--")],
           title="does H_res learn?", ylabel="1 - mean diagonal / ||H - H0||_F")
    ax = axes[1, 2]
    last = [r for r in rows if isinstance(r.get("layers"), dict)]
    if last:
        layers, step = last[-1]["layers"], last[-1]["step"]
        for key, style in (("composite_fwd", "o-"), ("composite_bwd", "s--")):
            if key in layers:
                ax.plot(range(1, len(layers[key]) + 1), layers[key], style, ms=3, label=key)
        ax.set(title=f"composite gain per site (step {step})", xlabel="site")  # last logged
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if max(layers.get("composite_fwd", [1]) + layers.get("composite_bwd", [1])) > 20:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if last and "res_offdiag" in last[-1]["layers"]:
        ax = axes[1, 3]
        layers = last[-1]["layers"]
        sites = range(1, len(layers["res_offdiag"]) + 1)
        ax.plot(sites, layers["res_offdiag"], "o-", ms=3, label="off-diagonal mass")
        if "res_dist_init" in layers:
            ax.plot(sites, layers["res_dist_init"], "s--", ms=3, label="distance from init")
        ax.set(title=f"H_res per site (step {last[-1]['step']})", xlabel="site")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for a in axes.flat:
        if not a.has_data():
            a.set_axis_off()
    fig.suptitle(os.path.basename(os.path.abspath(run_dir)))
    fig.tight_layout()
    out = out or os.path.join(run_dir, "curves.png")
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def show(name: str) -> str | None:
    """`plt.show()` for the notebooks: in a Jupyter kernel the figure shows inline as usual; run as
    a plain script (`python notebooks/NN_x.py`, where Agg's show() draws nothing) the current
    figure is saved to `$MHC_FIGURES_DIR` (default ./figures) as `<script>-<name>.png` and the
    path returned."""
    import matplotlib.pyplot as plt

    shell = sys.modules.get("IPython")
    if shell is not None and shell.get_ipython() is not None:
        plt.show()
        return None
    out_dir = os.environ.get("MHC_FIGURES_DIR", "figures")
    stem = os.path.splitext(os.path.basename(sys.argv[0] or ""))[0] or "figure"
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{stem}-{name}.png")
    fig = plt.gcf()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(f"saved {path}")
    return path
