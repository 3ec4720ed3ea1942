"""The `mhc` command: a real (short) training run, `data prepare`, `plot`, and bad inputs that must
exit non-zero with one clear line naming the bad value, before anything is written."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mhc.cli import main
from trainkit import TINY

FAST = [*TINY, "eval_every=3", "log_every=1"]


def test_train_tiny_runs_and_refuses_to_overwrite(tmp_path, capsys):
    run_dir = str(tmp_path / "run")
    assert main(["train", "--recipe", "tiny", "--residual", "mhc", "--steps", "3",
                 "--run-dir", run_dir, *FAST]) == 0
    out = capsys.readouterr().out
    assert "step 3/3" in out and "done: loss" in out and "ETA" in out
    for name in ("metrics.jsonl", "events.jsonl", "config.json"):
        assert os.path.exists(os.path.join(run_dir, name)), name
    assert os.path.isdir(os.path.join(run_dir, "checkpoints", "3"))
    assert main(["train", "--steps", "1", "--run-dir", run_dir, *FAST]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", "--steps", "1", "--run-dir", run_dir, "--overwrite", *FAST]) == 0
    # resuming a finished run does nothing and says so
    assert main(["train", "--resume", "--run-dir", run_dir]) == 0
    assert "done: loss" in capsys.readouterr().out


def test_wandb_unavailable_is_a_warning_not_an_error(tmp_path, capsys, monkeypatch):
    import wandb

    def no_wandb(**kwargs):
        raise RuntimeError("wandb is not reachable")

    monkeypatch.setattr(wandb, "init", no_wandb)
    monkeypatch.setenv("WANDB_MODE", "offline")
    run_dir = str(tmp_path / "run")
    args = ["train", "--steps", "1", "--run-dir", run_dir, *FAST, "wandb=online"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert err.count("warning: wandb unavailable") == 1 and "wandb is not reachable" in err


def _text_file(path, text):
    path.write_text(text)
    return str(path)


def _write_tokens(path, ids, dtype=np.uint16, meta=None):
    np.asarray(ids, dtype).tofile(path)
    if meta is not None:
        path.with_suffix(".json").write_text(meta if isinstance(meta, str) else json.dumps(meta))
    return str(path)


def _existing_run(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    return run


def _saved_run(tmp_path, config="{}"):
    run = _existing_run(tmp_path)
    (run / "config.json").write_text(config)
    return run


def _tiny_run_config(tmp_path):
    from trainkit import tiny_config

    return _saved_run(tmp_path, json.dumps(tiny_config().to_dict()))


def _not_a_dir(tmp_path):
    (tmp_path / "file").write_text("x")
    return str(tmp_path / "file" / "run")


# (args for `mhc train` after --run-dir R --steps 1 FAST, or a callable tmp_path -> args; the
# expected substring of the one-line message)
TRAIN_BAD = [
    (["--recipe", "giant"], "unknown recipe 'giant'"),
    (["--residual", "highway"], "residual='highway'; allowed:"),
    (["n_streams=0"], "n_streams=0; must be an integer >= 1"),
    (["d_model=130", "n_heads=4"], "d_model=130 is not divisible by n_heads=4"),
    (["lr=abc"], "lr='abc'; expected float"),
    (["warp=9"], "unknown config key 'warp'; allowed:"),
    (["lr"], "override 'lr' is not key=value"),
    (["seq_len=1024"], "seq_len=1024 exceeds max_seq_len=512"),
    (["wandb=cloud"], "wandb='cloud'; allowed: offline, online, disabled"),
    (["--steps", "0"], "steps=0; must be an integer >= 1"),
    (["--steps", "x"], "argument --steps: invalid int value: 'x'"),
    (["keep_last=0"], "keep_last=0; must be an integer >= 1"),
    (["debug_nan_steps=x"], "debug_nan_steps='x'; expected comma-separated integers"),
    (["vocab_size=100"], "'kjv' was tokenized with vocab_size=256 but the model has vocab_size=100"),
    (["eval_batches=100000"], "eval_batches=100000 but the held-out split has only"),
    (["corpus=/nonexistent/text.txt"], "corpus file '/nonexistent/text.txt' does not exist"),
    (["corpus=nofile.txt"], "corpus file 'nofile.txt' does not exist"),  # not "unknown name"
    (["corpus=kjb"], "unknown corpus 'kjb': expected one of ('kjv', 'shakespeare')"),
    (["lrr=1e-3"], "unknown config key 'lrr'; did you mean lr? (`mhc keys` lists every key)"),
    (["sinkhorn_iter=3"], "did you mean sinkhorn_iters or"),
    (["connection.manifod=kromhc"], "did you mean connection.manifold?"),
    (["--recipe", "tinny"], "unknown recipe 'tinny'; did you mean tiny?"),
    (["schedule_steps=-1"], "schedule_steps=-1; must be an integer >= 0 (0 = steps)"),
    (lambda p: [f"corpus={_text_file(p / 'empty.txt', '')}"], "empty.txt' is empty"),
    (lambda p: [f"corpus={_text_file(p / 'short.txt', 'ab' * 40)}"], "corpus too small"),
    (lambda p: [f"corpus={p / 'missing.bin'}"], "missing.bin' does not exist"),
    (lambda p: [f"corpus={_write_tokens(p / 'empty.bin', [])}"], "empty.bin' is empty"),
    (lambda p: [f"corpus={_write_tokens(p / 'odd.bin', [1, 2, 3], np.uint8)}"],
     "has 3 bytes, not a multiple of 2 (uint16)"),
    (lambda p: [f"corpus={_write_tokens(p / 'meta.bin', [1] * 9000, meta='{oops')}"],
     "meta.json' is corrupt"),
    (lambda p: [f"corpus={_write_tokens(p / 'cut.bin', [1] * 9000, meta={'dtype': 'uint16', 'n_tokens': 9001})}"],
     "holds 9000 tokens but cut.json says 9001: truncated or corrupt"),
    (lambda p: [f"corpus={_write_tokens(p / 'big.bin', np.arange(9000) % 301)}"],
     "token id 300 in"),
    (lambda p: [f"corpus={_write_tokens(p / 'gpt2.bin', [1] * 9000, meta={'dtype': 'uint16', 'vocab_size': 50257})}"],
     "was tokenized with vocab_size=50257 but the model has vocab_size=256; set vocab_size=50257"),
]
RUN_DIR_BAD = [
    (lambda p: ["--run-dir", str(_existing_run(p))], "already holds a run; pass --overwrite"),
    (lambda p: ["--run-dir", _not_a_dir(p)], "cannot write run directory"),
    (lambda p: ["--resume", "--run-dir", str(p / "nothing")], "nothing to resume"),
    (lambda p: ["--resume"], "--resume needs --run-dir RUN_DIR"),
    (lambda p: ["--resume", "--run-dir", str(_saved_run(p, "{not json"))],
     "config.json is unreadable"),
    (lambda p: ["--resume", "--run-dir", str(_tiny_run_config(p)), "n_layers=2"],
     "cannot change model.n_layers on resume"),
    (lambda p: ["--resume", "--run-dir", str(_tiny_run_config(p)), "--steps", "100"],
     "steps=100 is less than the run's steps=200: a resumed run can only be extended"),
    (lambda p: ["--resume", "--run-dir", str(_tiny_run_config(p)), "--steps", "300",
                "schedule_steps=300"], "cannot change train.schedule_steps on resume"),
]


def _check_one_line(code, capsys, message):
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("mhc: error:") and message in err, err


@pytest.mark.parametrize("args, message", TRAIN_BAD)
def test_bad_train_inputs_exit_2_with_one_line_and_no_files(args, message, tmp_path, capsys):
    args = args(tmp_path) if callable(args) else args
    before = sorted(os.listdir(tmp_path))
    code = main(["train", "--run-dir", str(tmp_path / "r"), "--steps", "1", *FAST, *args])
    _check_one_line(code, capsys, message)
    assert sorted(os.listdir(tmp_path)) == before  # no run directory, no partial files


@pytest.mark.parametrize("make_args, message", RUN_DIR_BAD)
def test_bad_run_directories(make_args, message, tmp_path, capsys):
    args = make_args(tmp_path)
    before = {p: os.path.getsize(p) for p in map(str, tmp_path.rglob("*"))}
    code = main(["train", *FAST, *args])
    _check_one_line(code, capsys, message)
    assert {p: os.path.getsize(p) for p in map(str, tmp_path.rglob("*"))} == before


@pytest.mark.slow  # a whole multi-step or sharded run
def test_resume_with_more_steps_extends_a_finished_run_at_its_final_lr(tmp_path, capsys):
    """--resume --steps N trains a finished run on to step N; the LR schedule keeps the length it
    was laid out over (schedule_steps pinned), so the LR stays at its final value (x0.1 lr)
    instead of jumping back to lr as a schedule re-laid over N steps would."""
    from trainkit import column

    run_dir = str(tmp_path / "run")
    args = ["train", "--run-dir", run_dir, *FAST, "warmup_steps=1", "lr=1e-3"]
    assert main([*args, "--steps", "4"]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", "--run-dir", run_dir, "--steps", "6"]) == 0
    out = capsys.readouterr().out
    assert "resume to step 6 (LR schedule of 4 steps, then its final LR)" in out
    assert "step 6/6" in out
    lrs = column(run_dir, "lr")
    # a 4-step schedule after 1 warmup step: x0.316 at step 4 and x0.1 from step 5 on (a
    # schedule re-laid over 6 steps would still be at x0.316 at step 5)
    assert len(lrs) == 6 and lrs[3] == pytest.approx(3.16e-4)
    assert lrs[4] == lrs[5] == pytest.approx(1e-4)
    saved = json.loads(open(os.path.join(run_dir, "config.json")).read())["train"]
    assert (saved["steps"], saved["schedule_steps"]) == (6, 4)
    assert os.path.isdir(os.path.join(run_dir, "checkpoints", "6"))
    # extending again keeps the first schedule
    assert main(["train", "--resume", "--run-dir", run_dir, "--steps", "7"]) == 0
    assert column(run_dir, "lr")[6] == pytest.approx(1e-4)


def test_run_dir_and_header_name_the_connection_variant(tmp_path, capsys, monkeypatch):
    """The default directory names the connection overrides (a go_mhc run does not collide
    with a kromhc run) and the header shows the manifold and every override."""
    from mhc import recipes, train
    from mhc.config import apply_overrides, default_run_dir

    tiny = recipes.get("tiny")
    assert default_run_dir(tiny, "tiny", tiny) == os.path.join("runs", "tiny-mhc-s0")
    assert default_run_dir(apply_overrides(tiny, ["n_layers=2", "lr=1e-3"]), "tiny", tiny) == \
        os.path.join("runs", "tiny-mhc-s0")  # scale and optimisation keep the recipe's name
    names = {default_run_dir(apply_overrides(tiny, [o]), "tiny", tiny)
             for o in ("manifold=go_mhc", "manifold=kromhc", "n_streams=2", "kernels=xla")}
    assert names == {os.path.join("runs", n) for n in (
        "tiny-mhc-manifold=go_mhc-s0", "tiny-mhc-manifold=kromhc-s0", "tiny-mhc-n_streams=2-s0",
        "tiny-mhc-s0")}  # kernels: the same math, the same run
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(train, "run", lambda *a, **k: (_ for _ in ()).throw(
        train.TrainingInterrupted("stub", 15, 0, None)))
    main(["train", "--steps", "1", "manifold=go_mhc", *FAST])
    header = capsys.readouterr().out.splitlines()[0]
    assert header.startswith("mhc train: recipe=tiny residual=mhc manifold=go_mhc streams=4 "
                             "overrides: d_model=32 n_layers=1 n_heads=2")
    assert " steps=1 " in header and " wandb=disabled " in header
    assert header.endswith(f"run_dir={os.path.join('runs', 'tiny-mhc-manifold=go_mhc-s0')}")


def test_keys_are_listed_by_mhc_keys_and_train_help(capsys):
    assert main(["keys", "sinkhorn"]) == 0
    out = capsys.readouterr().out
    assert "model sinkhorn_iters" in out and "int" in out and " 20" in out
    assert "train" not in out.split("\n", 1)[1]  # only the matching keys
    assert main(["keys", "--recipe", "small", "n_layers"]) == 0
    assert "12" in capsys.readouterr().out
    _check_one_line(main(["keys", "zzz"]), capsys, "no config key contains 'zzz'")
    assert main(["train", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "model keys: n_streams, dynamic, manifold" in out and " d_model," in out
    assert "train keys: steps" in out and "`mhc keys [TEXT]`" in out


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_directory(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    code = main(["train", "--run-dir", str(locked / "run"), "--steps", "1", *FAST])
    _check_one_line(code, capsys, "cannot write run directory")


@pytest.mark.parametrize("args, message", [
    (["/nonexistent.txt", "--out", "{p}/t.bin"], "input '/nonexistent.txt' does not exist"),
    (["kjv", "--out", "{p}/t.txt"], "must end in .bin"),
    (["kjv", "--out", "{p}/exists.bin"], "already exists; pass --overwrite"),
    (["kjv", "--out", "{p}/t.bin", "--dtype", "int8"], "dtype='int8'; allowed: auto"),
    (["{p}/blank.txt", "--out", "{p}/t.bin"], "hold no text"),
    (["kjv", "--out", "{p}/t.bin", "--tokenizer", "{p}/tok.json"],
     "needs the Hugging Face 'tokenizers' package (pip install tokenizers)"),
])
def test_bad_data_prepare_inputs(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # as if not installed
    (tmp_path / "exists.bin").write_bytes(b"\0\0")
    (tmp_path / "blank.txt").write_text("")
    before = sorted(os.listdir(tmp_path))
    code = main(["data", "prepare", "--quiet", *[a.format(p=tmp_path) for a in args]])
    _check_one_line(code, capsys, message)
    assert sorted(os.listdir(tmp_path)) == before


def test_data_prepare_then_train_on_the_token_file(tmp_path, capsys):
    text = tmp_path / "corpus"
    text.mkdir()
    (text / "a.txt").write_text("In the beginning was the word. " * 300)
    (text / "b.txt").write_text("And the word was with God. " * 300)
    out = tmp_path / "data" / "train.bin"
    assert main(["data", "prepare", str(text), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "tokenizing 2 document(s) 100%" in captured.err and "ETA" in captured.err
    assert f"wrote {out}: 17,401 tokens (uint16, tokenizer bytes" in captured.out
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["n_tokens"] == 17401 and meta["max_token"] == ord("w")
    run_dir = str(tmp_path / "run")
    assert main(["train", "--run-dir", run_dir, "--steps", "2", *FAST, f"corpus={out}"]) == 0
    assert main(["plot", run_dir]) == 0
    assert os.path.getsize(os.path.join(run_dir, "curves.png")) > 10_000
    assert main(["plot", str(tmp_path)]) == 2
    assert "has no metrics.jsonl" in capsys.readouterr().err


@pytest.mark.slow  # a whole script or several processes: left out of the oldest-stack CI run
def test_python_dash_m_entry_point():
    proc = subprocess.run([sys.executable, "-m", "mhc", "train", "--recipe", "nope"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("mhc: error: unknown recipe 'nope'; allowed: tiny")
    proc = subprocess.run([sys.executable, "-m", "mhc", "info"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "sinkhorn" in proc.stdout and "tiny" in proc.stdout


@pytest.mark.slow  # a whole script or several processes: left out of the oldest-stack CI run
def test_compile_reduced_paper_recipe_for_64_simulated_devices():
    """AOT: the 3b recipe at 2 blocks, full width/vocab/batch, for a 64-device mesh, in a fresh
    process (the test process has 8 fake devices)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run([sys.executable, "-m", "mhc", "compile", "--recipe", "3b", "--layers",
                           "2", "--mesh", "fsdp=16,expert=4", "--hbm", "1TiB"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "mesh fsdp=16,expert=4 (64 devices), batch 320x4096" in out
    for field in ("per device: params", "optimizer", "temporaries", "peak", "FLOPs/token",
                  "remat: none", "fits in 1,024.00 GiB"):
        assert field in out, field
    proc = subprocess.run([sys.executable, "-m", "mhc", "compile", "--recipe", "3b", "--mesh",
                           "fsdp=3"], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "mhc: error: batch_size=320 is not divisible by the data-parallel mesh size "
        "data*fsdp*expert=3")
    # the same --residual flag as `mhc train`, validated where the value is defined
    proc = subprocess.run([sys.executable, "-m", "mhc", "compile", "--recipe", "3b", "--mesh",
                           "fsdp=2", "--residual", "nope"], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "mhc: error: residual='nope'; allowed: residual, hc")


@pytest.mark.slow  # a whole script or several processes: left out of the oldest-stack CI run
def test_train_on_a_mesh(tmp_path, capsys):
    """The same command on 8 fake devices: MLA + MoE recipe, experts split over `expert`."""
    run_dir = str(tmp_path / "mesh")
    assert main(["train", "--recipe", "moe-xs", "--mesh", "fsdp=4,expert=2", "--steps", "2",
                 "--run-dir", run_dir, "batch_size=8", "seq_len=32", "eval_every=2",
                 "eval_batches=1", "wandb=disabled", "checkpoint=false"]) == 0
    assert "step 2/2" in capsys.readouterr().out
    assert main(["train", "--mesh", "fsdp=3", "--steps", "1", "--run-dir",
                 str(tmp_path / "bad"), *FAST]) == 2
    assert "mesh fsdp=3 needs 3 devices but 8 are available" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "bad")
