"""`mhc.load_run` and `mhc inspect RUN_DIR`: a trained run's model back in one call with no
warnings, and its learned maps as text + PNG at the latest or a chosen checkpoint."""
import logging
import os

import numpy as np
import pytest

import mhc
from mhc import inspect_run
from mhc.cli import main
from mhc.rundir import RunDirError
from trainkit import TINY


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A 4-step mHC run with checkpoints at steps 2 and 4 (2 sites: 1 block)."""
    from mhc import recipes, train
    from mhc.config import apply_overrides

    path = str(tmp_path_factory.mktemp("inspect") / "run")
    cfg = apply_overrides(recipes.get("tiny"), [*TINY, "steps=4", "checkpoint_every=2",
                                                "eval_every=4", "warmup_steps=1"])
    train.run(cfg, path, verbose=False)
    return path


def test_load_run_gives_model_config_step_without_warnings(run_dir, caplog, capfd):
    caplog.set_level(logging.DEBUG, logger="absl")
    model, cfg, step = mhc.load_run(run_dir)
    assert step == 4 and cfg.model.n_layers == 1 and cfg.model.residual == "mhc"
    assert type(model).__name__ == "Decoder"
    assert mhc.load_run(run_dir, step=2).step == 2
    notes = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not notes, notes  # orbax's "Given directory is read only" / "setting ..." notes
    assert "read only" not in capfd.readouterr().err
    # the filter is scoped to the load: absl's other warnings still show afterwards
    logging.getLogger("absl").warning("Given directory is read only: a later, unrelated note")
    assert any("later, unrelated" in r.getMessage() for r in caplog.records)


def test_load_run_names_what_is_missing(run_dir, tmp_path):
    with pytest.raises(RunDirError, match="has no checkpoint at step 3; saved steps: 2, 4"):
        mhc.load_run(run_dir, step=3)
    with pytest.raises(RunDirError, match="does not exist"):
        mhc.load_run(str(tmp_path / "nope"))
    with pytest.raises(RunDirError, match="has no config.json"):
        mhc.load_run(str(tmp_path))


def test_inspect_writes_text_and_png_at_a_chosen_step(run_dir, tmp_path, capsys):
    png = str(tmp_path / "maps.png")
    assert main(["inspect", run_dir, "--step", "2", "--out", png, "--batch", "2"]) == 0
    out = capsys.readouterr().out
    assert "run step 2: residual=mhc manifold=sinkhorn n=4, 1 blocks (2 sites)" in out
    assert "maps on the held-out split of corpus 'kjv', 2 x 32 tokens" in out
    for text in ("0.attn", "0.ffn", "composite of all 2 sites' H_res", "column sums",
                 f"wrote {png} and {tmp_path / 'maps.txt'}"):
        assert text in out, text
    assert os.path.getsize(png) > 20_000
    assert (tmp_path / "maps.txt").read_text() in out  # the printed text, kept beside the PNG
    assert main(["inspect", run_dir]) == 0  # latest step, PNG beside the run
    assert os.path.isfile(os.path.join(run_dir, "inspect-4.png"))


def test_inspect_report_of_an_mhc_run_is_doubly_stochastic(run_dir):
    result = inspect_run.inspect(run_dir, out=os.path.join(run_dir, "r.png"), batch=1)
    r = result.report
    assert result.step == 4 and r["res"].shape == (2, 4, 4) and r["pre"].shape == (2, 4)
    np.testing.assert_allclose(r["composite"][-1].sum(-1), 1, atol=1e-5)
    np.testing.assert_allclose(r["composite"][-1].sum(-2), 1, atol=1e-3)
    assert (r["res_entropy"] >= 0).all() and (r["res"] >= 0).all()
    assert abs(r["composite_fwd"][-1] - 1) < 1e-4


@pytest.mark.parametrize("args, message", [
    (["--step", "3"], "has no checkpoint at step 3; saved steps: 2, 4"),
    (["--seq-len", "9999"], "seq_len=9999; must be in 1..512"),
    (["--batch", "0"], "batch=0; must be >= 1"),
])
def test_bad_inspect_inputs_exit_2_with_one_line(run_dir, args, message, capsys):
    assert main(["inspect", run_dir, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("mhc: error:") and message in err, err


def test_inspect_refuses_runs_without_maps_or_checkpoints(tmp_path, capsys):
    import json

    from trainkit import tiny_config

    run = tmp_path / "plain"
    (run / "checkpoints" / "1").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(tiny_config("residual=residual").to_dict()))
    assert main(["inspect", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "nockpt").mkdir()
    (tmp_path / "nockpt" / "config.json").write_text("{}")
    assert main(["inspect", str(tmp_path / "nockpt")]) == 2
    assert "has no checkpoint (trained with checkpoint=false" in capsys.readouterr().err
