"""Writing down what a script measured, with where the numbers came from.

- `provenance` / `runs_commits`: date, commit (dirty flag), device and JAX version of the numbers,
  and the commits the runs they read were trained at;
- `write`: a paper-vs-ours table (`study.verdict.Row`s) as `<name>.md` and `.csv`, with that
  provenance, the exact command (`command_line`) and the verdict rule;
- `write_report` / `write_json` / `write_summary`: a study's Markdown summary (printed too) and its
  JSON twin;
- `region` / `write_region`: a README's generated region between two marker comments.
"""
from __future__ import annotations

import csv
import dataclasses
import datetime
import os
import sys

from study import REPO
from study.verdict import RULE, Row, verdict_word

RESULTS = os.path.join(REPO, "paper_repro", "results")  # where the paper_repro tables go


def provenance(run_dirs=()) -> dict:
    """Date, commit (with the dirty flag), device and JAX version (compiled memory and cost depend
    on the XLA release) of the numbers a script writes, and the commits the runs it reads were
    trained at (`runs_commits`; "unrecorded" for old runs)."""
    import jax

    from mhc import rundir
    version = rundir.source_version()
    commit = version["commit"] + ("+dirty" if version["dirty"] else "")
    meta = {"date": datetime.date.today().isoformat(), "commit": commit,
            "device": rundir.machine(), "jax": jax.__version__}
    if run_dirs:
        meta["runs_commits"] = runs_commits(run_dirs)
    return meta


def runs_commits(run_dirs=(), records=()) -> str:
    """The distinct training commits of `run_dirs` and of compact `records`
    (`study.runs.compact_run`) with how many runs each, e.g. "abc123 (6)"."""
    from collections import Counter

    from mhc import rundir
    counts = Counter([rundir.run_commit(d) for d in run_dirs]
                     + [rundir.provenance_commit(r["provenance"]) for r in records])
    return ", ".join(f"{c} ({n})" for c, n in sorted(counts.items()))


def write_json(path: str, obj) -> None:
    """Write `obj` as JSON, atomically (a reader - or a copy taken while a study runs - never
    sees half a file); NumPy scalars become floats."""
    from mhc.rundir import write_json_atomic
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    write_json_atomic(path, obj, default=float)


def write_report(path: str, lines, missing=()) -> str:
    """Write a Markdown report (lines joined by newlines) to `path`, print it, return the text.
    `missing`: runs an `--only-finished` table left out, listed under it."""
    if missing:
        lines = [*lines, "Not run yet (`--only-finished`): " + ", ".join(missing) + ".", ""]
    text = "\n".join(lines) + "\n"
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    print(text)
    return text


def region(text: str, markers: tuple[str, str]) -> str:
    """What lies between `markers` (start, end) in `text` (ValueError unless each occurs once)."""
    start, end = markers
    if text.count(start) != 1 or text.count(end) != 1:
        raise ValueError(f"expected one {start} and one {end}")
    return text.split(start, 1)[1].split(end, 1)[0]


def write_region(path: str, markers: tuple[str, str], content: str) -> None:
    """Replace what lies between `markers` in the file `path` with `content`, nothing else
    (ValueError, file untouched, unless each marker occurs once)."""
    with open(path) as f:
        text = f.read()
    old = region(text, markers)
    start, end = markers
    with open(path, "w") as f:
        f.write(text.replace(start + old + end, start + content + end))


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


def publish(name: str, title: str, rows: list[Row], out_dir: str, argv, notes: str = "",
            run_dirs=(), records=()) -> int:
    """`write` the table of `paper_repro/<name>.py` run with `argv` (None: this process's own
    arguments) and print it; returns 0, the script's exit status."""
    print(write(name, title, rows, out_dir, command_line(name, argv), notes, run_dirs, records))
    return 0


def runs_line(meta: dict, n_runs: int) -> str:
    """The provenance sentence of a study summary: date, commit, device and the runs read."""
    return (f"{meta['date']}, commit {meta['commit']}, {meta['device']}; {n_runs} runs "
            f"trained at commits {meta['runs_commits']}.")


def write_summary(out: str, meta: dict, data: dict, lines, missing=()) -> str:
    """A study's `<out>/summary.json` ({"meta": meta, **data}) and `<out>/summary.md` (`lines`,
    printed, with the `missing` runs under them: `write_report`); returns the Markdown text."""
    write_json(os.path.join(out, "summary.json"), {"meta": meta, **data})
    return write_report(os.path.join(out, "summary.md"), lines, missing)
