"""Committed results stored compressed: a finished run's step log and the studies' compact records
are kept as `<name>.xz` beside where the plain file would be, and read back through the plain name.

    python -m mhc.results compress PATH...   compress the run directories / study folders / files
    python -m mhc.results cat PATH           print a stored file (plain or .xz) to stdout
    xzcat experiments/results/trained/<run>/metrics.jsonl.xz | head    the same with xz-utils

Why xz and not gzip: on these float-heavy logs xz (the standard library's `lzma`) stores about a
sixth less than gzip, within the committed results' size budget (tests/test_results.py). xz
output carries no timestamp or file name, so the same content
compresses to the same bytes; a rewrite that would not change the content leaves the file alone
anyway (`write_compressed`), so a reused run keeps `git status` clean under any liblzma.

A step log's floats are mostly float32 values (the device computed them in float32) written
with float64's 17 digits, of which the last 8 carry no information; the stored log writes each
such value with float32's shortest round-trip text instead (`compact_line`: 2.3096230030059814 ->
2.309623), which reads back as the same float32 and halves the compressed size. A float that is
not a float32 value (host-side timings) keeps its exact text; nothing else changes.

Readers name the plain path (`metrics.jsonl`, `records/<run>.json`); the plain file wins where
both exist (a run in progress, or one resumed, writes plain `metrics.jsonl`).
"""
from __future__ import annotations

import argparse
import io
import json
import lzma
import math
import os
import sys

SUFFIX = ".xz"
RECORDS = "records"  # a study's folder of compact run records (always stored compressed)
COMPRESS_FROM = 4096  # bytes: a smaller step log stays plain (readable on GitHub, saves nothing)
SKIP_DIRS = ("checkpoints", "wandb")  # never walked: orbax and wandb files are not results


def stored(path: str | os.PathLike) -> str | None:
    """The file holding `path`'s content: `path` itself when present, else `path.xz`, else None."""
    path = os.fspath(path)
    for candidate in (path, path + SUFFIX):
        if os.path.isfile(candidate):
            return candidate
    return None


def exists(path: str | os.PathLike) -> bool:
    """True when `path` is stored plain or compressed."""
    return stored(path) is not None


def open_text(path: str | os.PathLike) -> io.TextIOBase:
    """`path` opened for reading text, plain or compressed (FileNotFoundError naming `path`)."""
    found = stored(path)
    if found is None:
        raise FileNotFoundError(f"no such file: {os.fspath(path)!r} (nor {SUFFIX})")
    if found.endswith(SUFFIX):
        return lzma.open(found, "rt", encoding="utf-8")
    return open(found, encoding="utf-8")


def read_json(path: str | os.PathLike):
    """The JSON document stored at `path` (plain or compressed); ValueError when unreadable."""
    with open_text(path) as f:
        try:
            return json.load(f)
        except (lzma.LZMAError, EOFError) as e:  # a cut or corrupt .xz
            raise ValueError(f"{os.fspath(path)!r}: unreadable {SUFFIX} ({e})") from None


def json_text(obj, default=None) -> str:
    """`obj` as the studies write JSON (indented by 2; `default`: json's converter)."""
    return json.dumps(obj, indent=2, default=default)


def _decoded(path: str) -> bytes | None:
    try:
        with lzma.open(path, "rb") as f:
            return f.read()
    except (OSError, lzma.LZMAError, EOFError):
        return None


def write_compressed(path: str | os.PathLike, data: bytes) -> str:
    """Store `data` as `path.xz` (atomically) and remove a plain `path`; returns the .xz path.
    An existing `path.xz` that already holds `data` is left as it is (same bytes on disk)."""
    path = os.fspath(path)
    target = path + SUFFIX
    if not (os.path.isfile(target) and _decoded(target) == data):
        tmp = target + ".tmp"
        with open(tmp, "wb") as f:
            f.write(lzma.compress(data))  # xz container, preset 6, CRC64: no timestamp, no name
        os.replace(tmp, target)
    if os.path.isfile(path):
        os.remove(path)
    return target


def write_json(path: str | os.PathLike, obj, default=None) -> str:
    """`obj` as JSON (`json_text`) stored compressed at `path.xz`; returns the .xz path."""
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    return write_compressed(path, json_text(obj, default).encode())


def to_plain(path: str | os.PathLike) -> None:
    """Make `path` a plain file again where only `path.xz` exists (a run about to append to its
    log: resume); nothing to do otherwise."""
    path = os.fspath(path)
    if os.path.isfile(path) or not os.path.isfile(path + SUFFIX):
        return
    data = _decoded(path + SUFFIX)
    if data is None:
        raise ValueError(f"{path + SUFFIX!r} is not a readable .xz file")
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    os.remove(path + SUFFIX)


def _float_text(x: float) -> str:
    """JSON text of `x`: float32's shortest round-trip text where `x` is a float32 value."""
    import numpy as np  # here: `import mhc.results` stays light for its command line
    if math.isfinite(x) and float(np.float32(x)) == x:
        return str(np.float32(x))
    return json.dumps(x)  # float64-only values exact; NaN / Infinity as json writes them


def _json_compact(obj) -> str:
    if isinstance(obj, float):
        return _float_text(obj)
    if isinstance(obj, list):
        return "[" + ", ".join(_json_compact(v) for v in obj) + "]"
    if isinstance(obj, dict):
        return "{" + ", ".join(f"{json.dumps(k)}: {_json_compact(v)}" for k, v in obj.items()) + "}"
    return json.dumps(obj)


def compact_line(line: str) -> str:
    """One JSONL line as stored: the same JSON with float32 values in float32's shortest text
    (`json.loads` of the result equals the input's as float32; other values are unchanged)."""
    return _json_compact(json.loads(line))


def compress_file(path: str | os.PathLike) -> str:
    """Compress one plain file in place (`path` -> `path.xz`); returns the .xz path. A step log
    (`.jsonl`) is stored with `compact_line`."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    if path.endswith(".jsonl"):
        data = "".join(compact_line(line) + "\n"
                       for line in data.decode("utf-8").splitlines() if line.strip()).encode()
    return write_compressed(path, data)


def selected(path: str) -> bool:
    """Is `path` (a plain file in a results tree) stored compressed? Compact records always; step
    logs (`*.jsonl`: metrics, events) from COMPRESS_FROM bytes. Configs, provenance, summaries,
    tables and figures stay plain: people read them on GitHub."""
    if os.path.basename(os.path.dirname(path)) == RECORDS and path.endswith(".json"):
        return True
    return path.endswith(".jsonl") and os.path.getsize(path) >= COMPRESS_FROM


def compress(path: str | os.PathLike) -> list[str]:
    """Compress `path`: a file as it is, a directory's `selected` files (all levels, checkpoints
    and wandb left out). Returns the .xz paths written; a second call writes nothing new."""
    path = os.fspath(path)
    if path.endswith(SUFFIX) or (not os.path.exists(path) and os.path.isfile(path + SUFFIX)):
        return []  # compressed already
    if os.path.isfile(path):
        return [compress_file(path)]
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no such file or directory: {path!r}")
    done = []
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        for name in sorted(files):
            file = os.path.join(root, name)
            if selected(file):
                done.append(compress_file(file))
    return done


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mhc.results", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compress", help="compress run directories, study folders or files")
    c.add_argument("paths", nargs="+")
    r = sub.add_parser("cat", help="print a stored file, plain or .xz (name either)")
    r.add_argument("path")
    args = p.parse_args(argv)
    try:
        if args.command == "compress":
            for path in args.paths:
                print(f"{path}: {len(compress(path))} files compressed")
        else:
            with open_text(args.path) as f:
                for line in f:
                    sys.stdout.write(line)
    except BrokenPipeError:  # `... cat PATH | head` closed the pipe: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, lzma.LZMAError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
