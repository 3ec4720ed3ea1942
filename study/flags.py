"""The command-line flags the scripts share, declared once, and the parsers of their values.

A script names the shared flags it takes and declares its own with `flag`, in one call:

    FLAGS = ("seeds", "out", "smoke", flag("--axis", default="all", help="..."), "overrides")
    args = parser(__doc__, *FLAGS, out="experiments/results/x").parse_args(argv)

`flag("seeds", help=...)` is the shared flag with some settings changed; keyword arguments of
`parser` set defaults by destination (`only_finished=...`). Values that need checking are parsed
by argparse itself (`type=`): a bad value exits with one line naming the flag and the value,
before anything runs or is written.
"""
from __future__ import annotations

import argparse


# ------------------------------------------------------------ parsers of values (argparse types)
def parse_seeds(text: str) -> tuple[int, ...]:
    """"0,1,2" -> (0, 1, 2); exits naming the value unless it is a comma list of integers >= 0."""
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        seeds = ()
    if not seeds or min(seeds) < 0:
        raise SystemExit(f"--seeds {text!r}: expected a comma list of non-negative integers, "
                         "e.g. 0,1,2")
    return seeds


def parse_numbers(text: str, name: str, cast=float) -> tuple:
    """The comma list `text` of flag --`name` as a tuple of `cast` (exits naming it if not)."""
    try:
        values = tuple(cast(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise SystemExit(f"--{name} {text!r}: expected comma-separated numbers") from None
    if not values:
        raise SystemExit(f"--{name} is empty")
    return values


def parse_kinds(text: str, allowed) -> list[str]:
    """The comma list `text` of --kinds, each one of `allowed` (exits naming the value if not)."""
    kinds = [k for k in text.split(",") if k]
    bad = [k for k in kinds if k not in allowed]
    if bad or not kinds:
        raise SystemExit(f"--kinds {text!r}: expected a comma list of {', '.join(allowed)} "
                         f"(unknown: {', '.join(bad) or 'none given'})")
    return kinds


def numbers(name: str, cast=float):
    """`parse_numbers` of flag --`name` as an argparse `type`."""
    return lambda text: parse_numbers(text, name, cast)


def kinds(allowed, **settings):
    """The --kinds flag over `allowed` (default: all of them, in that order), parsed to a list."""
    settings = {"default": ",".join(allowed), **settings}
    return flag("kinds", type=lambda text: parse_kinds(text, allowed), **settings)


# ----------------------------------------------------------------------------- the shared flags
# name: (option strings, add_argument settings); the flags two or more scripts take
FLAGS = {
    "out": (("--out",), dict(default=None)),
    "smoke": (("--smoke",), dict(action="store_true", help="tiny model, 4 steps: wiring check")),
    "seeds": (("--seeds",), dict(default=None, type=parse_seeds, help="comma list")),
    "depths": (("--depths",), dict(type=numbers("depths", int), help="blocks per model")),
    "kinds": (("--kinds",), dict(default=None)),
    "runs": (("--runs",), dict(default=None, help="where the runs train")),
    "only-finished": (("--only-finished",), dict(
        action="store_true",
        help="train nothing: tabulate the finished runs and list the missing ones")),
    "dry-run": (("--dry-run",), dict(action="store_true", help="print the runs, train nothing")),
    "scale": (("--scale",), dict(choices=("small", "paper"), default="small")),
    # the compile-only paper tables (2, 3, 5): the default shapes or the paper's
    "table-scale": (("--scale",), dict(choices=("default", "paper"), default="default")),
    "mesh": (("--mesh",), dict(default="", help="paper scale: e.g. fsdp=64,expert=8")),
    "recipe": (("--recipe",), dict(default=None)),
    "token-steps": (("--token-steps",), dict(type=int, default=None)),
    "no-train": (("--no-train",), dict(
        action="store_true", help="read the metrics of the finished runs in --runs even without "
                                  "their checkpoints (not committed); exit instead of training")),
    "rounds": (("--rounds",), dict(type=int, default=5)),
    "reps": (("--reps",), dict(type=int, default=3)),
    "tokens": (("--tokens",), dict(type=int, default=4096)),
    "overrides": (("overrides",), dict(nargs="*", metavar="key=value")),
}


def flag(*names: str, **settings) -> tuple[tuple[str, ...], dict]:
    """A flag spec: a shared flag (`flag("seeds", help=...)`, its settings updated) or a script's
    own (`flag("--axis", default="all")`, the arguments of `add_argument`)."""
    if len(names) == 1 and names[0] in FLAGS:
        options, base = FLAGS[names[0]]
        return options, {**base, **settings}
    return names, settings


def parser(doc: str, *flags, **defaults) -> argparse.ArgumentParser:
    """An argument parser described by the first line of `doc` with `flags` (names of shared
    flags or `flag` specs, in help order); `defaults`: {destination: default}."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    for spec in flags:
        options, settings = flag(spec) if isinstance(spec, str) else spec
        dest = settings.get("dest") or options[0].lstrip("-").replace("-", "_")
        if dest in defaults:
            settings = {**settings, "default": defaults.pop(dest)}
        p.add_argument(*options, **settings)
    if defaults:
        raise TypeError(f"defaults for flags the parser does not have: {', '.join(defaults)}")
    return p
