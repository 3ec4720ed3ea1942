"""Committed results stored compressed (`mhc.results`): one loader for plain and .xz files,
deterministic and lossless compression, records rewritten byte-identically, and the size of the
committed results folders."""
import lzma
import math
import os
import shutil
import subprocess

import pytest

from mhc import metrics, results, train
from mhc.config import extend
from study import runs
from trainkit import REPO, column, events, tiny_config

LIMIT_TOTAL = 15_000_000  # bytes: the working tree's committed results (issue 26)
LIMIT_PLAIN = 200_000  # bytes: a committed .json/.jsonl left plain (summaries people read)



def _log(path, steps=300):
    with metrics.JsonlSink(path) as sink:
        for step in range(1, steps + 1):
            sink.write(step, {"loss": 1.0 / step, "grad_norm": math.pi * step, "bad": math.nan})


def test_the_loader_reads_plain_and_compressed_alike_and_prefers_plain(tmp_path):
    path = tmp_path / "metrics.jsonl"
    _log(path)
    rows = metrics.read_jsonl(path)
    assert results.compress(tmp_path) == [f"{path}.xz"] and not path.exists()
    again = metrics.read_jsonl(path)  # the plain name finds the .xz
    assert [r["step"] for r in again] == list(range(1, 301)) and math.isnan(again[0]["bad"])
    assert [r["loss"] for r in again] == [r["loss"] for r in rows]
    path.write_text('{"step": 1, "loss": 2.0}\n')  # a run in progress writes plain: it wins
    assert metrics.read_jsonl(path) == [{"step": 1, "loss": 2.0}]
    record = tmp_path / runs.RECORDS / "r.json"
    runs.write_record(str(record), {"overrides": ["a=1"], "rows": [{"x": 0.5}]})
    assert not record.exists() and results.read_json(record)["rows"] == [{"x": 0.5}]
    assert runs.recorded(str(record), ["a=1"]) and runs.recorded(str(record), ["a=2"]) is None
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        metrics.read_jsonl(tmp_path / "missing.jsonl")


def test_compress_is_lossless_deterministic_and_idempotent(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for run in (a, b):
        _log(run / "metrics.jsonl")
        (run / "events.jsonl").write_text('{"step": 3, "event": "loss_spike"}\n')  # small
        (run / "config.json").write_text("{}")
        (run / "checkpoints" / "3").mkdir(parents=True)
        _log(run / "checkpoints" / "3" / "x.jsonl")
    original = (a / "metrics.jsonl").read_bytes()
    assert results.compress(a) == [str(a / "metrics.jsonl.xz")]
    assert lzma.decompress((a / "metrics.jsonl.xz").read_bytes()) == original  # lossless
    results.compress(b)
    assert (a / "metrics.jsonl.xz").read_bytes() == (b / "metrics.jsonl.xz").read_bytes()
    assert sorted(os.listdir(a)) == ["checkpoints", "config.json", "events.jsonl",
                                     "metrics.jsonl.xz"]  # small logs, configs stay plain
    assert (a / "checkpoints" / "3" / "x.jsonl").exists()  # checkpoints are not walked
    stamp = (a / "metrics.jsonl.xz").stat().st_mtime_ns
    assert results.compress(a) == [] and results.compress(a / "metrics.jsonl") == []
    assert (a / "metrics.jsonl.xz").stat().st_mtime_ns == stamp
    with pytest.raises(FileNotFoundError, match="nowhere"):
        results.compress(tmp_path / "nowhere")


def test_a_step_log_keeps_float32_values_in_float32_text(tmp_path):
    """Device metrics are float32 values: stored with float32's shortest text they read back as
    the same float32 (and the same float64 after widening); float64-only values, NaN, ints,
    strings and nested per-site arrays are kept exactly."""
    import json

    import numpy as np
    rng = np.random.default_rng(0)
    f32 = [float(np.float32(v)) for v in rng.normal(size=64) * 10.0 ** rng.integers(-8, 8, 64)]
    rows = [{"step": i, "loss": v, "time_s": math.pi * (i + 1), "bad": math.nan, "tag": "x",
             "layers": {"amax": [v, -v, 0.0]}} for i, v in enumerate(f32)]
    log = tmp_path / "metrics.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    plain = log.stat().st_size
    results.compress_file(log)
    stored = lzma.decompress((tmp_path / "metrics.jsonl.xz").read_bytes()).decode()
    back = [json.loads(line) for line in stored.splitlines()]
    assert len(stored) < plain - 64 * 3 * 4  # three float32 values a row, digits fewer each
    for r, b in zip(rows, back):
        assert np.float32(b["loss"]) == np.float32(r["loss"])
        assert float(np.float32(b["loss"])) == r["loss"]  # exact after widening back
        assert b["time_s"] == r["time_s"] and math.isnan(b["bad"])  # float64-only: exact
        assert (b["step"], b["tag"]) == (r["step"], r["tag"]) and type(b["step"]) is int
        assert np.array_equal(np.float32(b["layers"]["amax"]), np.float32(r["layers"]["amax"]))
    assert results.compact_line(json.dumps({"x": 2.3096230030059814})) == '{"x": 2.309623}'


def test_a_rewritten_record_keeps_its_bytes(tmp_path):
    """A reused run writes its record again: same content, same file (even one another liblzma
    wrote with other settings), so `git status` stays clean."""
    record = {"overrides": ["lr=0.01"], "provenance": [], "events": {"loss_spike": 0},
              "rows": [{"step": s, "loss": 1.0 / s} for s in range(1, 200)]}
    path = str(tmp_path / runs.RECORDS / "run.json")
    runs.write_record(path, record)
    first = open(path + ".xz", "rb").read()
    runs.write_record(path, record)
    assert open(path + ".xz", "rb").read() == first
    other = lzma.compress(results.json_text(record).encode(), preset=9 | lzma.PRESET_EXTREME)
    open(path + ".xz", "wb").write(other)
    runs.write_record(path, record)
    assert open(path + ".xz", "rb").read() == other
    runs.write_record(path, {**record, "overrides": ["lr=0.1"]})  # new content: rewritten
    assert results.read_json(path)["overrides"] == ["lr=0.1"]


def test_a_compressed_run_resumes_plain(tmp_path):
    """Resume appends to the step log: a compressed one is made plain first, then cut back."""
    run_dir = str(tmp_path / "run")
    cfg = tiny_config("steps=4", "checkpoint_every=2", "log_every=1")
    train.run(cfg, run_dir, verbose=False)
    for name in ("metrics.jsonl", "events.jsonl"):
        results.compress(os.path.join(run_dir, name))
    train.run(extend(cfg, 6), run_dir, verbose=False, resume=True)  # as `mhc train --resume`
    assert len(column(run_dir)) == 6 and len(events(run_dir, "resume")) == 1
    assert not any(name.endswith(results.SUFFIX) for name in os.listdir(run_dir))


def test_cat_prints_a_stored_file(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    _log(path, steps=2)
    text = path.read_text()
    results.compress_file(path)
    assert results.main(["cat", str(path)]) == 0 and capsys.readouterr().out == text
    assert results.main(["cat", f"{path}.xz"]) == 0 and capsys.readouterr().out == text
    assert results.main(["cat", str(tmp_path / "none.jsonl")]) == 1
    assert capsys.readouterr().err.count("\n") == 1


def test_the_studies_records_folder_is_the_one_compressed():
    assert runs.RECORDS == results.RECORDS


def _committed_results() -> list[str]:
    out = None
    if shutil.which("git") is not None:
        out = subprocess.run(["git", "ls-files", "-z", "--", "*/results/*"], cwd=REPO,
                             capture_output=True, text=True)
    if out is None or out.returncode != 0:
        pytest.skip("not a git checkout")
    paths = [os.path.join(REPO, p) for p in out.stdout.split("\0") if p]
    return [p for p in paths if os.path.isfile(p)]  # a file deleted in the work tree: not counted


def test_committed_results_are_stored_compactly():
    """Run logs and records are committed compressed, nothing plain over LIMIT_PLAIN, and all
    committed results together stay under LIMIT_TOTAL (every clone carries them)."""
    paths = _committed_results()
    plain = [os.path.relpath(p, REPO) for p in paths if results.selected(p)]
    assert not plain, f"commit these compressed (python -m mhc.results compress): {plain[:5]}"
    big = [os.path.relpath(p, REPO) for p in paths
           if p.endswith((".json", ".jsonl")) and os.path.getsize(p) > LIMIT_PLAIN]
    assert not big, f"over {LIMIT_PLAIN} bytes uncompressed: {big[:5]}"
    total = sum(os.path.getsize(p) for p in paths)
    assert total <= LIMIT_TOTAL, f"committed results: {total} bytes > {LIMIT_TOTAL}"
