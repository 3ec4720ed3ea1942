"""Paper-vs-ours tables shared by every `paper_repro/` script.

A row is `Row(quantity, paper, ours, agrees)`: what the paper says (with its figure/table), what
this run measured, and a verdict ("yes", "no", "partly", or "n/a" where the paper gives no number).
`write` saves the rows as Markdown and CSV next to the figure, with the date, commit, device and
exact command that produced them.
"""
from __future__ import annotations

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
    lines += [f"| {r.quantity} | {r.paper} | {r.ours} | {r.agrees} |" for r in rows]
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
