"""Paper-vs-ours tables shared by every `paper_repro/` script, and the one verdict rule they use.

A row is `Row(quantity, paper, ours, agrees)`: what the paper (arXiv 2512.24880) says, with its
figure/table, what this repository measured, and a verdict with its evidence. A verdict comes from
one of two helpers, so the two kinds cannot be confused:

- `seeded_verdict(values, sign)`: a measured claim, one value per seed (`RULE`);
- `exact_verdict(ok, tolerance)`: a check that does not depend on a seed (a formula against
  XLA's cost analysis, a parameter count, a compile-time memory fit, an identity that holds by
  construction), yes/no against a stated tolerance.

"n/a" is for rows where the paper gives no number. `write` saves the rows as Markdown and CSV next
to the figure, with the date, commit, device, the runs read and the commits they were trained at,
the exact command, and `RULE` beside the verdicts.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from scipy import stats

from experiments.common import provenance, runs_commits

RESULTS = os.path.join(REPO, "paper_repro", "results")

MIN_SEEDS = 3       # a paired t-test needs a spread; fewer seeds decide nothing
HEADLINE_SEEDS = 5  # the 30-block rows, Fig. 5 and the variants' gaps against mHC
ALPHA = 0.05        # two-sided
RULE = ("Verdict rule: a measured claim is a paired t-test over seeds (one paired difference per "
        "seed; t = mean / (sd / sqrt(n)), df = n - 1): \"yes\" when the two-sided p < 0.05 and "
        "the mean has the sign the paper claims, \"no\" when p < 0.05 with the opposite sign, "
        "else \"inconclusive\"; t, df, p and n are printed beside the verdict. Fewer than 3 "
        "seeds (5 for the headline claims: the 30-block rows, Fig. 5, the variants' gaps against "
        "mHC), no spread (sd = 0, e.g. equal grid LRs) or a non-finite value are "
        "\"inconclusive\". A claim made of parts is \"no\" if one part is \"no\", \"yes\" "
        "if every part is, and names the part that decided. Checks that do not depend on a seed "
        "(formulas vs XLA cost analysis, parameter counts, compile-time memory fits, identities "
        "that hold by construction) are \"yes\" or \"no\" (deterministic) against the "
        "tolerance the cell states. \"n/a\": the paper gives no number to compare with.")
VERDICTS = ("yes", "no", "inconclusive", "n/a")


@dataclasses.dataclass
class Row:
    quantity: str
    paper: str
    ours: str
    agrees: str


def paired_t(values) -> tuple[float, int, float]:
    """(t, df, two-sided p) of a one-sample t-test of `values` (paired differences) against 0.
    Needs >= 2 finite values with sd > 0."""
    v = [float(x) for x in values]
    n = len(v)
    mean = sum(v) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in v) / (n - 1))
    t = mean / (sd / math.sqrt(n))
    return t, n - 1, float(2 * stats.t.sf(abs(t), n - 1))


def seeded_verdict(values, sign: int, headline: bool = False) -> str:
    """`RULE` applied to one measured claim: `values` holds one paired difference per seed,
    signed so that `sign` (+1 or -1) is what the paper claims (e.g. loss gaps with sign -1 for
    "mHC is below the baseline", `bound - peak` with +1 for "the peak stays under the bound").
    `headline` claims need `HEADLINE_SEEDS` seeds. Returns the verdict with its evidence, e.g.
    "yes (t = 6.12, df = 4, p = 0.0036, n = 5)" or "inconclusive (2 seeds; needs >= 3)"."""
    if sign not in (1, -1):
        raise ValueError(f"sign={sign!r}; must be +1 or -1")
    v = [float(x) for x in values]
    n, need = len(v), HEADLINE_SEEDS if headline else MIN_SEEDS
    if n < need:
        return f"inconclusive ({seeds_note(n)}; needs >= {need}" + \
            (" for a headline claim)" if headline else ")")
    bad = sum(not math.isfinite(x) for x in v)
    if bad:
        return f"inconclusive ({bad} of {n} seeds not finite)"
    if max(v) == min(v):  # no spread: a t-test cannot separate this from seed noise
        return (f"inconclusive ({n} seeds, no difference on any seed)" if v[0] == 0 else
                f"inconclusive ({n} seeds, all {v[0]:+.3g}: sd = 0, no spread to test)")
    t, df, p = paired_t(v)
    evidence = f"t = {t:+.2f}, df = {df}, p = {p:.2g}, n = {n}"
    if p >= ALPHA:
        return f"inconclusive ({evidence})"
    return f"{'yes' if t * sign > 0 else 'no'} ({evidence})"


def exact_verdict(ok: bool, tolerance: str) -> str:
    """A deterministic check (no seed involved): yes/no against `tolerance`, which the cell
    states (e.g. "tolerance 1 %")."""
    return f"{'yes' if ok else 'no'} (deterministic; {tolerance})"


def all_of(parts: dict) -> str:
    """The verdict of a claim made of several parts ({label: verdict}): "no" if any part is "no"
    (the first such part is shown), "yes" if every part is "yes", else the first inconclusive
    part. Parts with the same evidence (e.g. all "inconclusive (1 seed)") collapse to it."""
    if len(set(parts.values())) == 1:
        return next(iter(parts.values()))
    words = {label: verdict_word(v) for label, v in parts.items()}
    for wanted in ("no", "inconclusive"):
        for label, v in parts.items():
            if words[label] == wanted:
                return f"{wanted} ({label}: {v[len(wanted):].strip(' ()')})"
    return "yes (" + "; ".join(f"{label}: {v[3:].strip(' ()')}" for label, v in parts.items()) + ")"


def verdict_word(cell: str) -> str:
    """The verdict of a cell without its evidence ("yes", "no", "inconclusive" or "n/a")."""
    word = cell.split(" ", 1)[0]
    if word not in VERDICTS:
        raise ValueError(f"verdict {cell!r}: must start with one of {', '.join(VERDICTS)}")
    return word


def seeds_note(n: int) -> str:
    """What an "ours" cell adds about its evidence: the number of seeds behind it."""
    return f"{n} seed{'s' * (n != 1)}"


def md_cell(value) -> str:
    """A Markdown table cell (a pipe would split it)."""
    return str(value).replace("|", "\\|")


def write(name: str, title: str, rows: list[Row], out_dir: str, command: str,
          notes: str = "", run_dirs=(), records=()) -> str:
    """Write `<out_dir>/<name>.md` and `.csv`; returns the Markdown text. `run_dirs` and
    `records` (compact run records): the training runs the table read (their count and
    training commits go in the header)."""
    for r in rows:
        verdict_word(r.agrees)  # every verdict comes from the rule's helpers (or is n/a)
    os.makedirs(out_dir, exist_ok=True)
    meta = provenance()
    n_runs = len(run_dirs) + len(records)
    runs = (f"Runs read: {n_runs}, trained at commits: {runs_commits(run_dirs, records)}."
            if n_runs else "Runs read: none.")
    lines = [f"# {title}", "",
             f"Produced by `{command}` on {meta['date']}, commit {meta['commit']}, "
             f"{meta['device']}, jax {meta['jax']}. {runs}", "",
             "| quantity | paper says | we measure | agrees? |", "|---|---|---|---|"]
    lines += ["| " + " | ".join(md_cell(v) for v in dataclasses.astuple(r)) + " |" for r in rows]
    lines += ["", RULE]
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
    """The command that reproduces a table; `argv` None is the script's own command line."""
    args = sys.argv[1:] if argv is None else argv
    return " ".join(["python", "-m", f"paper_repro.{script.removesuffix('.py')}", *args])


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
    --kinds, --out, --smoke, key=value overrides, --runs (where the runs live; a finished
    run of the same config there is reused, so the figures train the study once) and
    --no-train (read the finished runs' metrics, never train)."""
    from experiments import stability
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    stability.add_scale_args(p, RESULTS)
    p.add_argument("--runs", default=None, help="run directories (default: "
                   "experiments/results/stability, or OUT/runs with --smoke)")
    p.add_argument("--no-train", action="store_true",
                   help="read the metrics of the finished runs in --runs even without their "
                        "checkpoints (not committed); exit instead of training")
    return p


def stability_results(args, kinds=None) -> tuple[dict, str]:
    """({kind: {seed: metrics rows}}, runs directory) of the stability study at `args.scale`,
    for the seeds of `args.seeds` (the study's default: 3; --smoke: 1)."""
    from experiments import stability
    # smoke runs keep their (tiny) final checkpoint so Fig. 8 reuses the same runs
    extra = ["checkpoint=true"] if args.smoke else []
    recipe, overrides = stability.scale_setup(args.scale, args.smoke, [*extra, *args.overrides])
    default = "stability" if args.scale == "small" else f"stability_{args.scale}"
    runs = args.runs or (os.path.join(args.out, "runs") if args.smoke else
                         os.path.join(REPO, "experiments", "results", default))
    kinds = kinds or stability.parse_kinds(args.kinds)
    seeds = stability.parse_seeds(args.seeds, args.smoke)
    if args.no_train:
        return {kind: {seed: logged_rows(stability.config(recipe, kind, seed, overrides),
                                         stability.run_dir(runs, kind, seed))
                       for seed in seeds} for kind in kinds}, runs
    return stability.run_all(recipe, kinds, seeds, overrides, runs, verbose=not args.smoke), runs


def logged_rows(cfg, run_dir: str) -> list[dict]:
    """The metrics rows of a finished run of `cfg` in `run_dir`, read without training (exits
    naming the run otherwise). The final checkpoint is not asked for: checkpoints are not
    committed, and Figs. 2, 3, 5 and 7 read only metrics."""
    from experiments.common import finished
    from mhc.metrics import read_jsonl
    if not finished(cfg, run_dir, need_checkpoint=False):
        raise SystemExit(f"--no-train: {run_dir} holds no finished run of this config "
                         f"({cfg.train.steps} steps); run without --no-train to train it")
    return read_jsonl(os.path.join(run_dir, "metrics.jsonl"))


def stability_run_dirs(runs: str, results: dict) -> list[str]:
    """The run directories behind {kind: {seed: rows}}."""
    from experiments import stability
    return stability.run_dirs(runs, results)


def paired_seeds(results: dict) -> list[int]:
    """The seeds every kind of {kind: {seed: rows}} has, in order: the pairs a verdict uses."""
    return sorted(set.intersection(*(set(by_seed) for by_seed in results.values())))


def per_seed(results: dict, fn) -> list:
    """[fn({kind: rows of seed s})] over `paired_seeds(results)`: the paired per-seed values a
    verdict needs."""
    return [fn({kind: by_seed[seed] for kind, by_seed in results.items()})
            for seed in paired_seeds(results)]


def values_cell(values, fmt: str = "+.4f") -> str:
    """Per-seed values and their number, e.g. "+0.012, -0.003, +0.020 (3 seeds)"."""
    return ", ".join(f"{v:{fmt}}" for v in values) + f" ({seeds_note(len(values))})"


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


def peak_record(rows) -> dict:
    """The logged per-site record with the largest composite gain (forward or backward)."""
    return max(layer_records(rows),
               key=lambda r: max(max(r["composite_fwd"]), max(r["composite_bwd"])))


def amax_figure(rows, kind: str, title: str, path: str) -> dict:
    """Per-site Amax gain of `kind`'s H_res: (a) single site, (b) composite from the first site,
    forward and backward, at the logged step where the composite peaked and at the end. Returns
    {"peak": record, "end": record}."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    peak, end = peak_record(rows), layer_records(rows)[-1]
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
