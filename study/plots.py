"""Figure helpers of the scripts: a headless pyplot, the one way a figure is saved, smoothing and
series of metrics rows, and the per-site Amax records and figure of Figs. 3 and 7.

Metrics rows are those of `metrics.jsonl` (one dict per logged step); on some steps a row also
holds `layers`, the per-site arrays (`amax_fwd`, `composite_fwd`, ...: one value per site, 2 sites
per block).
"""
from __future__ import annotations

import os


def pyplot():
    """matplotlib.pyplot on the Agg backend: the scripts draw files, with no display."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def style(axes, fontsize: int = 8, loc=None, **grid) -> None:
    """A light grid (`grid`: e.g. which="both", axis="y") and a legend of `fontsize` (at `loc`,
    default matplotlib's choice) on each of `axes`."""
    for ax in axes:
        ax.grid(alpha=0.3, **grid)
        ax.legend(fontsize=fontsize, loc=loc)


def smooth(values, window: int = 10):
    """Trailing moving average (same length; the first points average what exists)."""
    import numpy as np
    v = np.asarray(values, float)
    return np.array([v[max(0, i - window + 1):i + 1].mean() for i in range(v.size)])


def series(rows, key):
    """(steps, values) of `key` over the rows that have it."""
    pts = [(r["step"], r[key]) for r in rows if key in r]
    return [p[0] for p in pts], [p[1] for p in pts]


def seed_means(records: dict, key: str) -> dict:
    """{kind: (steps, mean over seeds)} of `key` from {(kind, seed): compact record}, over the
    steps the kind's first record logs it at."""
    import numpy as np
    out = {}
    for kind in dict.fromkeys(k for k, _ in records):
        runs = [r["rows"] for (k, _), r in records.items() if k == kind]
        steps = [r["step"] for r in runs[0] if key in r]
        values = np.array([[r[key] for r in rows if key in r][:len(steps)] for rows in runs])
        out[kind] = (steps, values.mean(0))
    return out


def savefig(fig, path: str) -> str:
    """Lay out `fig`, write it to `path` (110 dpi, folders made) and close it; returns `path`."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path


def gap_and_grad(fig, ax_a, ax_b, title: str, path: str) -> str:
    """Finish and save the two panels of Figs. 2 and 5: (a) training-loss gaps over the steps,
    titled `title`, with the zero line; (b) gradient norms on a log scale."""
    ax_a.axhline(0, color="k", lw=0.6)
    ax_a.set(title=title, xlabel="step", ylabel="loss difference (nats/token)")
    ax_b.set(title="(b) gradient norm", xlabel="step", yscale="log")
    style((ax_a, ax_b))
    return savefig(fig, path)


def layer_records(rows) -> list[dict]:
    """The per-site arrays logged during training (`layers`: amax_fwd/bwd, composite_fwd/bwd,
    ...), with their step."""
    return [{"step": r["step"], **r["layers"]} for r in rows if "layers" in r]


def peak_record(rows) -> dict:
    """The logged per-site record with the largest composite gain (forward or backward)."""
    return max(layer_records(rows),
               key=lambda r: max(max(r["composite_fwd"]), max(r["composite_bwd"])))


def amax_figure(rows, kind: str, title: str, path: str) -> dict:
    """Per-site Amax gain of `kind`'s H_res: (a) single site, (b) composite from the first site,
    forward and backward, at the logged step where the composite peaked and at the end. Returns
    {"peak": record, "end": record}."""
    import numpy as np
    peak, end = peak_record(rows), layer_records(rows)[-1]
    fig, axes = pyplot().subplots(1, 2, figsize=(11, 4))
    for ax, prefix, name in ((axes[0], "amax", "(a) single site"),
                             (axes[1], "composite", "(b) composite from site 1")):
        for rec, line in ((peak, "-"), (end, ":")):
            sites = np.arange(1, len(rec[f"{prefix}_fwd"]) + 1)
            ax.plot(sites, rec[f"{prefix}_fwd"], line, color="tab:blue", marker="o", ms=3,
                    label=f"forward, step {rec['step']}")
            ax.plot(sites, rec[f"{prefix}_bwd"], line, color="tab:orange", marker="s", ms=3,
                    label=f"backward, step {rec['step']}")
        ax.axhline(1, color="k", lw=0.6)
        ax.set(title=f"{title} {name}", xlabel="site (2 per block)", ylabel="Amax gain",
               yscale="log")
    style(axes, 7, which="both")
    savefig(fig, path)
    return {"peak": peak, "end": end}


STEP_PEAKS = ("amax_fwd_max", "amax_bwd_max", "layer_amax_fwd_max", "layer_amax_bwd_max")


def step_peaks(rows) -> dict:
    """Largest Amax gains over training from the per-step scalars every metrics row has:
    `amax_{fwd,bwd}_max` (composite, max over depth) and `layer_amax_{fwd,bwd}_max` (worst single
    site), with the step of each peak. The per-site `layers` arrays exist only on some steps
    and can miss the peak (HC's small run: 20.6 there against 23.0 per step)."""
    out = {}
    for key in STEP_PEAKS:
        top = max(rows, key=lambda r: r[key])
        out[key], out[f"{key}_step"] = top[key], top["step"]
    return out
