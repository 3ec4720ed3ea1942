"""Every committed training run says who made it, from a clean tree, with a command that runs on
HEAD (issue 25, item 7).

Entries recorded before `RULE_SINCE` are legacy: until then a study that rewrote its own summary
marked its later runs "dirty" (the flag counted result files), and stored commands had the
`python experiments/<script>.py` form, which fails on HEAD (the scripts run as modules). From
`RULE_SINCE` on, both hold for every entry, so a run trained from a dirty tree or with a command
that does not run cannot be committed unnoticed. The dirty flag is the rule of the commit a run was
trained at: a run from a worktree at a commit before `RULE_COMMIT` (which made the flag leave
outputs out) counted its study's own result files, so its flag is legacy too."""
import glob
import importlib.util
import json
import os
import shlex
import subprocess

import pytest

from mhc import results

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RULE_SINCE = "2026-12-06T05:00:00+00:00"  # `rundir.source_version` excludes outputs from then on
RULE_COMMIT = "88a8815"  # the commit from which `rundir.source_version` leaves outputs out
FIELDS = {"commit", "dirty", "date", "command", "machine"}


def _dirty_rule_of(commit: str) -> str:
    """"outputs excluded", "legacy" (trained at a commit before RULE_COMMIT) or "unknown" (no
    git history here that holds the commit)."""
    ancestor = subprocess.run(["git", "-C", REPO, "merge-base", "--is-ancestor", commit,
                               RULE_COMMIT + "^"], capture_output=True)
    return {0: "legacy", 1: "outputs excluded"}.get(ancestor.returncode, "unknown")


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
    if entry["dirty"]:
        rule = _dirty_rule_of(entry["commit"])
        if rule == "unknown":
            pytest.skip(f"commit {entry['commit']} is not in this checkout's history")
        assert rule == "legacy", f"{path}: trained from a dirty tree ({entry['commit']})"
    argv = shlex.split(entry["command"])
    assert argv[:2] == ["python", "-m"] or argv[0] == "mhc", f"{path}: {entry['command']!r}"
    module = argv[2] if argv[0] == "python" else "mhc"
    assert importlib.util.find_spec(module) is not None, f"{path}: no module {module} on HEAD"


def test_the_dirty_rule_of_a_commit():
    if _dirty_rule_of("HEAD") == "unknown":
        pytest.skip("not a git checkout")
    assert _dirty_rule_of(RULE_COMMIT) == "outputs excluded" == _dirty_rule_of("HEAD")
    assert _dirty_rule_of(RULE_COMMIT + "^") == "legacy"
    assert _dirty_rule_of("0123456789abcdef0123") == "unknown"
