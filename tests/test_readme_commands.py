"""Every command the READMEs show runs as written.

Extraction rule (`readme_commands`):
- every line of a ```bash block is a command (a trailing backslash continues it, a `#` comment
  is dropped);
- an inline code span in the prose is a command when it starts with `python <file>.py`,
  `python -m <package>.<script>` (a study, paper or benchmark script), or with
  `mhc <subcommand>` (or `python -m mhc <subcommand>`) followed by arguments; a bare `mhc train`
  or `python -m mhc` names a command rather than showing one, except `mhc info`, which takes no
  arguments. Flag fragments such as `--part ladder` are not commands.

Checks, all in this process (one JAX start-up) and cheap, since the smoke runs of every script
live in tests/test_scripts.py, test_studies.py, test_repro_tables.py and test_evaluate.py:
- repository paths a command names (a script, `tests/fixtures/...`) exist;
- `python <script>.py ARGS`: the script's own parser accepts ARGS + `--smoke`, and its key=value
  overrides are config fields; a script with `--dry-run` then plans ARGS for real (it validates
  what argparse does not, e.g. `--axis`). A notebook script is executed as its .ipynb twin by
  tests/test_notebooks.py, so here it only has to compile and read the environment it is given;
- `mhc ARGS`: `mhc.cli.main`'s own parsing with the subcommand's work stubbed out, overrides
  checked against the recipe; the commands in RUN are run for real.
Commands outside these rules fail until they get a rule or a SKIP entry.
"""
import argparse
import os
import re
import shlex
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from mhc import cli, recipes
from mhc.config import apply_overrides
from study.runs import SMOKE_OVERRIDES
from test_scripts import _load

READMES = ("README.md", "experiments/README.md", "paper_repro/README.md", "notebooks/README.md",
           "benchmarks/README.md")
# Not checked at all: (text in the command, why). Each entry must still match a command.
SKIP = (
    ("pip install", "installs packages"),
    ("python -m pytest", "the whole test suite, of which this test is part"),
    ("jupyter lab", "starts an interactive server"),
    ("jupyter nbconvert", "executes a notebook (tests/test_notebooks.py runs one this way)"),
    ("jupytext --sync", "rewrites the notebooks; their pairing is tests/test_notebooks.py's"),
    ("--coordinator", "a multi-host launch ($RANK comes from the launcher); the one-host 27b "
                      "line beside it is checked"),
)
# Run for real with these arguments appended (everything else is parsed only): the first two
# commands a new user types. The train run gets the studies' smoke overrides (seconds).
RUN = {"mhc info": (), "mhc train --recipe tiny --residual mhc": SMOKE_OVERRIDES}
# Scripts without --smoke: parsed with the README's arguments alone.
NO_SMOKE = {"paper_repro/collect.py": "trains nothing: it rebuilds paper_repro/README.md from the "
                                      "result tables (tests/test_scripts.py runs it)",
            "benchmarks/param_counts.py": "trains nothing: it counts from abstract shapes "
                                          "(tests/test_dsv3.py checks the README's table)"}
REPO_DIRS = ("mhc/", "study/", "experiments/", "paper_repro/", "benchmarks/", "notebooks/",
             "tests/")
SCRIPT_PACKAGES = ("experiments", "paper_repro", "benchmarks")  # run as `python -m <pkg>.<script>`
INLINE = re.compile(r"python \S+\.py( .+)?|(python -m )?mhc (\w+ .+|info)|"
                    r"python -m (%s)\.\w+( .+)?" % "|".join(SCRIPT_PACKAGES))
ENV = re.compile(r"[A-Z_][A-Z0-9_]*=")


def readme_commands(relative_path):
    """(line number, command) of every command in one README (the rule in the module docstring)."""
    text = open(os.path.join(REPO, relative_path)).read()
    commands = []
    fence = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
    for block in fence.finditer(text):
        if block.group(1) != "bash":
            continue
        for line in re.finditer(r"(?:.*\\\n)*.*", block.group(2)):  # with its continuations
            command = " ".join(shlex.split(line.group(0).replace("\\\n", " "), comments=True))
            if command:
                commands.append((text.count("\n", 0, block.start(2) + line.start()) + 1, command))
    # blank out the fences (keeping their newlines) so their backticks do not pair with prose
    prose = fence.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    for span in re.finditer(r"`([^`]+)`", prose):
        command = " ".join(span.group(1).split())
        if INLINE.fullmatch(command):
            commands.append((prose.count("\n", 0, span.start()) + 1, command))
    return sorted(commands)


CASES = [(readme, lineno, command) for readme in READMES
         for lineno, command in readme_commands(readme)]


def _skip_reason(command):
    return next((why for text, why in SKIP if text in command), None)


def test_extraction_finds_commands_and_every_skip_is_used():
    for readme in READMES:  # a README whose format the rule no longer reads would pass silently
        assert any(r == readme for r, _, _ in CASES), f"no command found in {readme}"
    for text, _ in SKIP:
        assert any(text in c for *_, c in CASES), f"SKIP entry {text!r} matches no command"
    assert set(RUN) <= {c for *_, c in CASES}, "a RUN command is no longer in any README"
    for path in NO_SMOKE:
        module = path.removesuffix(".py").replace("/", ".")
        assert any(module in c for *_, c in CASES), f"NO_SMOKE entry {path} matches no command"


def test_a_study_runs_as_a_module_from_the_repository_root():
    """What the READMEs show, in a fresh interpreter: `python -m experiments.<study>` finds the
    `experiments` package and `mhc` with no sys.path edits in the script."""
    done = subprocess.run([sys.executable, "-m", "experiments.ablations", "--axis", "dynamic",
                           "--seeds", "0", "--dry-run"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "dynamic" in done.stdout and "static" in done.stdout


class _Parsed(Exception):
    """Raised in place of a script's work once its parser has accepted the arguments."""


def _check_overrides(ns):
    """argparse takes any key=value string; the config must know the key and accept the value."""
    if getattr(ns, "overrides", None):
        apply_overrides(recipes.get(getattr(ns, "recipe", None) or "tiny"), list(ns.overrides))


def _check_script(path, args, env, monkeypatch, tmp_path):
    source = open(os.path.join(REPO, path)).read()
    for name in env:  # e.g. MHC_NOTEBOOK_SMOKE=1 must be a switch the script reads
        assert name in source, f"{path} does not read {name}"
    if path.startswith("notebooks/"):
        compile(source, path, "exec")  # plain Python as a script too (no bare IPython magics)
        return
    module = _load(path)
    if path not in NO_SMOKE:
        args = [*args, "--smoke"]
    real_parse_known_args = argparse.ArgumentParser.parse_known_args

    def parse_then_stop(self, argv=None, namespace=None):
        # parse_args and parse_known_args both come here, so no script gets past its parser
        # (and writes into the committed results, its default --out)
        ns, extra = real_parse_known_args(self, argv, namespace)
        if extra:
            self.error(f"unrecognized arguments: {' '.join(extra)}")
        raise _Parsed(ns)

    with monkeypatch.context() as m:
        m.setattr(argparse.ArgumentParser, "parse_known_args", parse_then_stop)
        try:
            module.main(args)
        except _Parsed as parsed:
            ns = parsed.args[0]
        except SystemExit as e:
            pytest.fail(f"{path} rejects {args} (exit {e.code})")
        else:
            pytest.fail(f"{path}: main() has no argparse parser")
    _check_overrides(ns)
    if hasattr(ns, "dry_run"):
        assert module.main([*args, "--dry-run", "--out", str(tmp_path)]) == 0


def _parse_mhc(args, monkeypatch):
    """(exit status, parsed args) of `mhc.cli.main(args)` with the subcommand's function replaced
    by a stub, so main's own parsing (one-line errors, key=value after options) is what runs."""
    parsed = []
    real_parse_known_args = argparse.ArgumentParser.parse_known_args

    def parse_and_stub(self, argv=None, namespace=None):
        ns, extra = real_parse_known_args(self, argv, namespace)
        if hasattr(ns, "func"):
            ns.func = lambda a: parsed.append(a) or 0
        return ns, extra

    with monkeypatch.context() as m:
        m.setattr(argparse.ArgumentParser, "parse_known_args", parse_and_stub)
        status = cli.main(list(args))
    return status, parsed[-1] if parsed else None


@pytest.mark.parametrize("readme,lineno,command", CASES,
                         ids=[f"{r}:{n}" for r, n, _ in CASES])
def test_readme_command_runs(readme, lineno, command, monkeypatch, tmp_path, capsys):
    if why := _skip_reason(command):
        pytest.skip(why)
    words = shlex.split(command)
    env = []  # the names of leading NAME=value settings
    while ENV.match(words[0]):
        env.append(words.pop(0).split("=")[0])
    if words[:3] == ["python", "-m", "mhc"]:
        words = ["mhc", *words[3:]]
    paths = [word.split("=")[-1] for word in words]  # also the PATH of NAME=PATH
    missing = [p for p in paths if p.startswith(REPO_DIRS) and not os.path.exists(
        os.path.join(REPO, p))]
    assert not missing, f"{readme}:{lineno}: no such file in the repository: {missing}"

    if words[0] == "mhc":
        status, ns = _parse_mhc(words[1:], monkeypatch)
        assert status == 0, f"{readme}:{lineno}: {capsys.readouterr().err.strip()}"
        _check_overrides(ns)
        if command in RUN:
            monkeypatch.chdir(tmp_path)  # relative outputs (runs/...) land in the temp dir
            assert cli.main([*words[1:], *RUN[command]]) == 0, capsys.readouterr().err
            if words[1] == "train":  # the directory the README says it writes
                assert (tmp_path / "runs" / "tiny-mhc-s0" / "metrics.jsonl").is_file()
    elif words[:2] == ["python", "-m"] and words[2].partition(".")[0] in SCRIPT_PACKAGES:
        path = words[2].replace(".", "/") + ".py"
        assert os.path.exists(os.path.join(REPO, path)), f"{readme}:{lineno}: no module {path}"
        _check_script(path, words[3:], env, monkeypatch, tmp_path)
    elif words[0] == "python" and words[1].endswith(".py"):
        assert words[1].startswith(REPO_DIRS), f"{readme}:{lineno}: not a repository script"
        # a study script run by path has no repository root on sys.path: its imports fail
        assert not words[1].startswith(tuple(f"{p}/" for p in SCRIPT_PACKAGES)), \
            f"{readme}:{lineno}: run it as python -m {words[1][:-3].replace('/', '.')}"
        _check_script(words[1], words[2:], env, monkeypatch, tmp_path)
    else:
        pytest.fail(f"{readme}:{lineno}: no rule for {command!r}: add one or a SKIP entry")
