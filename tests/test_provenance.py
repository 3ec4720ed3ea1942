"""Every committed training run says who made it, from a clean tree, with a command that runs on
HEAD (issue 25, item 7).

Entries recorded before `RULE_SINCE` are legacy: until then a study that rewrote its own summary
marked its later runs "dirty" (the flag counted result files), and stored commands had the
`python experiments/<script>.py` form, which fails on HEAD (the scripts run as modules). From
`RULE_SINCE` on, both hold for every entry, so a run trained from a dirty tree or with a command
that does not run cannot be committed unnoticed."""
import glob
import importlib.util
import json
import os
import shlex

import pytest

from mhc import results

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RULE_SINCE = "2026-12-06T05:00:00+00:00"  # `rundir.source_version` excludes outputs from then on
FIELDS = {"commit", "dirty", "date", "command", "machine"}


def _entries() -> list[tuple[str, dict]]:
    """(path, provenance entry) of every committed run directory and compact run record."""
    out = []
    base = os.path.join(REPO, "experiments", "results")
    for path in glob.glob(os.path.join(base, "**", "provenance.json"), recursive=True):
        with open(path) as f:
            out += [(path, e) for e in json.load(f)]
    for path in glob.glob(os.path.join(base, "**", "records", "*.json*"), recursive=True):
        plain = path.removesuffix(".xz")
        out += [(path, e) for e in results.read_json(plain).get("provenance", [])]
    return out


ENTRIES = _entries()
RECENT = [(p, e) for p, e in ENTRIES if e.get("date", "") >= RULE_SINCE]


def test_there_are_committed_runs_to_check():
    assert len(ENTRIES) > 100 and all(FIELDS <= set(e) for _, e in ENTRIES if
                                      e.get("date", "") >= "2026-12-01")


@pytest.mark.parametrize("path,entry", RECENT, ids=[os.path.basename(p) for p, _ in RECENT])
def test_recent_runs_are_clean_and_their_command_runs_on_head(path, entry):
    assert entry["dirty"] is False, f"{path}: trained from a dirty tree ({entry['commit']})"
    argv = shlex.split(entry["command"])
    assert argv[:2] == ["python", "-m"] or argv[0] == "mhc", f"{path}: {entry['command']!r}"
    module = argv[2] if argv[0] == "python" else "mhc"
    assert importlib.util.find_spec(module) is not None, f"{path}: no module {module} on HEAD"
