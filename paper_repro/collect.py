"""Build paper_repro/README.md from the tables the scripts wrote (nothing typed in by hand), and
the "what reproduced" table of the top-level README.md from the same tables.

    python -m paper_repro.collect              # after running the scripts
    python -m paper_repro.collect --results DIR --readme PATH [--top-readme PATH]

Each entry names the script, its exact command, the expected runtime on 2 CPU cores, and shows the
figure and the paper-vs-ours rows with the date, commit and device they came from. A script whose
results are missing is listed as "not run yet" with its command. The top-level table takes one row
per paper claim (`CLAIMS`) from the results tables and is written between the markers
`REGION_START` / `REGION_END` of README.md; the rest of that file is left alone.
"""
from __future__ import annotations

import collections
import csv
import os
import sys

from study import REPO, flags, report
from study.report import RESULTS, md_cell
from study.verdict import RULE, verdict_word

SCRIPTS = os.path.dirname(os.path.abspath(__file__))


def entries(folder: str = SCRIPTS) -> list[tuple[str, str, str]]:
    """[(result name, what the paper shows, expected runtime on 2 CPU cores)] of every script in
    `folder` that declares the module constants `TITLE` and `RUNTIME` (read from its source, not
    imported), in file-name order: a new paper figure is its own file and nothing else."""
    import ast
    found = []
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".py"):
            continue
        with open(os.path.join(folder, name)) as f:
            tree = ast.parse(f.read())
        consts = {t.id: node.value.value for node in tree.body if isinstance(node, ast.Assign)
                  for t in node.targets if isinstance(t, ast.Name)
                  and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)}
        if "TITLE" in consts and "RUNTIME" in consts:
            found.append((name[:-3], consts["TITLE"], consts["RUNTIME"]))
    return found


# The top-level README's table: (paper claim, result name, start of the quantity of the row that
# measures it). The numbers and verdicts come from that row; only the claim's wording is typed here.
CLAIMS = (
    ("HC's composite Amax gain explodes (60 sites)", "lr_proxy",
     "30 blocks: HC's largest composite Amax gain"),
    ("HC's composite map entries reach hundreds", "fig8_heatmaps", "largest absolute entry"),
    ("mHC's composite gain stays bounded", "fig7_mhc_amax", "composite backward gain"),
    ("mHC ends below the baseline (eval loss)", "fig5_mhc_stability", "mHC eval loss gap"),
    ("HC's loss surges with a grad-norm spike", "fig2_hc_instability", "HC loss surge"),
    ("mHC is less LR-sensitive than HC at 60 sites (small-scale proxy)", "lr_proxy",
     "30 blocks: LR sensitivity"),
    ("HC's composite gain grows with depth (6 to 30 blocks, each at its best LR)", "lr_proxy",
     "HC's composite Amax gain grows"),
    ("mHC trains at learning rates where HC diverges (60 sites)", "lr_proxy",
     "30 blocks: log10 largest stable LR"),
    ("mHC reaches a lower loss than HC, each at its best LR (60 sites)", "lr_proxy",
     "30 blocks: best eval loss over the grid, mHC minus HC"),
    ("mHC reaches a lower loss than the residual, each at its best LR (60 sites)", "lr_proxy",
     "30 blocks: best eval loss over the grid, mHC minus residual"),
    ("control: mHC's constrained H_res is more stable than H_res = I (60 sites)", "lr_proxy",
     "30 blocks, control: log10 largest stable LR, mHC minus identity-HC"),
    ("control: an unconstrained learned H_res alone costs stability (60 sites)", "lr_proxy",
     "30 blocks, control: log10 largest stable LR, HC with only H_res"),
    ("H_res gives most of HC's gain", "table1_hc_ablation", "H_res alone gives most"),
    ("the mHC gain holds across model sizes", "fig6_scaling", "(a) the gain holds"),
    ("the mHC gain persists over training tokens", "fig6_scaling", "(b) the gap persists"),
    ("stream I/O per token formulas", "table2_io", "total unfused"),
    ("Eq. 20's optimum recompute block", "table3_recompute", "optimum L_r*"),
    ("Eq. 20's memory coefficients, connection stack", "table3_recompute", "A: fit"),
    ("Eq. 20's memory coefficients, full training step", "table3_recompute", "B: fit"),
    ("parameter counts", "table5_configs", "all parameter counts"),
    ("downstream benchmarks (MMLU shown; all alike)", "table4_downstream", "MMLU"),
)
REGION_START, REGION_END = "<!-- reproduced:start -->", "<!-- reproduced:end -->"
FLAGS = (flags.flag("--results", default=RESULTS),
         flags.flag("--readme", default=os.path.join(REPO, "paper_repro", "README.md")),
         flags.flag("--top-readme", default=None,
                    help="file whose reproduced:start/end region gets the claims table (default: "
                         "the top-level README.md, only when --results is the committed results)"))


def _parse(path: str) -> tuple[str, list[str], str]:
    """(provenance line, the paper-vs-ours table's lines, everything after it but the rule) of a
    file written by `study.report.write` (scripts may append more tables after the first)."""
    with open(path) as f:
        lines = f.read().splitlines()
    produced = next((ln for ln in lines if ln.startswith("Produced by")), "")
    start = next(i for i, ln in enumerate(lines) if ln.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    notes = "\n".join(ln for ln in lines[end:] if ln != RULE)  # printed once, on top
    return produced, lines[start:end], notes.strip()


def read_table(results: str, name: str) -> tuple[list[dict], bool] | None:
    """(the rows of `<results>/<name>.csv`, whether `<name>.md` was judged under the current
    `RULE`); None if the script has not run. A table written before the rule (or under
    other wording of it) must be rerun before its verdicts are quoted."""
    path = os.path.join(results, name)
    if not (os.path.isfile(f"{path}.csv") and os.path.isfile(f"{path}.md")):
        return None
    with open(f"{path}.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(f"{path}.md") as f:
        return rows, RULE in f.read().splitlines()


def tally(rows: list[dict]) -> str:
    """"2 yes, 1 no, 4 inconclusive" over the rows with a verdict (n/a left out)."""
    counts = collections.Counter(verdict_word(r["agrees"]) for r in rows)
    shown = [f"{counts[w]} {w}" for w in ("yes", "no", "inconclusive") if counts[w]]
    return ", ".join(shown) or "none judged (all n/a)"


def stale(name: str) -> str:
    return f"judged before the verdict rule: rerun `python -m paper_repro.{name}`"


def build(results: str, readme: str) -> str:
    rel = os.path.relpath(results, os.path.dirname(os.path.abspath(readme)))
    out = ["# paper_repro", "",
           "One script per figure and table of the mHC paper (arXiv 2512.24880). Each runs a "
           "small version on a CPU by default, the paper's configuration with `--scale paper` "
           "(on hardware, with `mesh=...`), and `--smoke` in seconds (the test suite runs every "
           "script that way). Each writes a PNG and a Markdown/CSV table with the columns "
           "*paper says / we measure / agrees?* under `paper_repro/results/`.", "",
           "This page is generated by `python -m paper_repro.collect` from those tables; the "
           "numbers below are what the scripts measured, with the date and commit they ran at "
           "and the commits their training runs were made at. Figs. 2, 3, 5, 7 and 8 share the "
           "residual/HC/mHC runs of `python -m experiments.stability` (5 seeds, trained once, "
           "then reused).", "",
           "A new paper figure is one file, `paper_repro/<name>.py`, built on the study layer "
           "`study/` and never on `experiments/` or `benchmarks/` (`tests/test_layout.py`): "
           "`study.verdict` for its rows and the rule's verdicts (`seeded_verdict`, "
           "`exact_verdict`), `study.report.publish` for the table with its provenance and exact "
           "command, `study.flags` for its flags (the shared ones by name, its own with `flag`) "
           "and a plan such as `study.stability` for the runs it reads. It declares its flags, "
           "keeps `main` to at most 40 lines, and declares `TITLE` and `RUNTIME` (what the paper "
           "shows, the runtime on 2 CPU cores): this page lists every script that does (a claim "
           "of the top-level README also needs a line in `CLAIMS` of `paper_repro/collect.py`).",
           "",
           RULE, ""]
    index = ["| item | command | runtime (2 CPU cores) | verdicts |", "|---|---|---|---|"]
    sections = []
    for name, title, runtime in entries():
        command = f"`python -m paper_repro.{name}`"
        md = os.path.join(results, f"{name}.md")
        if not os.path.isfile(md):
            index.append(f"| {title} | {command} | {runtime} | not run yet |")
            sections += [f"## {title}", "", f"Not run yet: {command}.", ""]
            continue
        produced, table, notes = _parse(md)
        rows, ruled = read_table(results, name) or ([], False)
        index.append(f"| [{title}](#{_anchor(title)}) | {command} | {runtime} | "
                     f"{tally(rows) if ruled else stale(name)} |")
        sections += [f"## {title}", "", produced, ""]
        if os.path.isfile(os.path.join(results, f"{name}.png")):
            sections += [f"![{title}]({rel}/{name}.png)", ""]
        sections += [*table, ""]
        if notes:
            sections += [notes, ""]
    text = "\n".join(out + index + [""] + sections)
    with open(readme, "w") as f:
        f.write(text)
    return text


def reproduced_table(results: str, link: str = "paper_repro/README.md") -> list[str]:
    """The top-level README's "what reproduced" table: one row per entry of CLAIMS, its cells
    taken from the results row that measures the claim, and the rule beneath."""
    titles = {name: title for name, title, _ in entries()}
    cell = md_cell
    lines = ["| paper claim | paper says | we measure | verdict |", "|---|---|---|---|"]
    for claim, name, prefix in CLAIMS:
        source = f"[{titles[name].split(':')[0]}]({link}#{_anchor(titles[name])})"
        table = read_table(results, name)
        if table is None:
            lines.append(f"| {source}: {claim} | | not run yet: `python -m paper_repro.{name}` "
                         "| |")
            continue
        rows, ruled = table
        match = [r for r in rows if r["quantity"].startswith(prefix)]
        if len(match) != 1:  # a renamed quantity must fail loudly, not drop the claim
            raise ValueError(f"{name}: {len(match)} rows start with {prefix!r}")
        r = match[0]
        verdict = r["agrees"] if ruled else f"{r['agrees']} ({stale(name)})"
        lines.append(f"| {source}: {claim} | {cell(r['paper'])} | {cell(r['ours'])} | "
                     f"{cell(verdict)} |")
    return [*lines, "", RULE]


def region(text: str) -> str:
    """What lies between the markers of the generated region (ValueError if they are missing)."""
    return report.region(text, (REGION_START, REGION_END))


def region_text(results: str) -> str:
    """The generated region's content (between the markers)."""
    return "\n" + "\n".join([
        "<!-- generated by `python -m paper_repro.collect` from paper_repro/results; "
        "edits here are overwritten -->", *reproduced_table(results)]) + "\n"


def write_region(path: str, results: str) -> None:
    """Replace the generated region of `path` (the top-level README.md) and nothing else."""
    with open(path) as f:
        region(f.read())  # a README without the markers fails before the tables are read
    report.write_region(path, (REGION_START, REGION_END), region_text(results))


def _anchor(title: str) -> str:
    keep = "".join(ch for ch in title.lower() if ch.isalnum() or ch in " -_")
    return keep.replace(" ", "-")


def main(argv=None) -> int:
    args = flags.parser(__doc__, *FLAGS).parse_args(argv)
    text = build(args.results, args.readme)
    print(f"wrote {args.readme} ({len(text.splitlines())} lines)")
    top = args.top_readme or (os.path.join(REPO, "README.md")
                              if os.path.abspath(args.results) == RESULTS else None)
    if top:
        write_region(top, args.results)
        print(f"wrote the reproduced table of {top}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
