"""The lasting-gain study (`experiments/lasting.py`): its late-surge criterion on hand-built
loss curves, its --lr parsing, and a smoke run end to end."""
import math

import pytest

from test_scripts import _load

lasting = _load("experiments/lasting.py")


def _rows(losses, every=10):
    return [{"step": every * (i + 1), "loss": v} for i, v in enumerate(losses)]


def test_late_surge_flags_a_rise_after_the_grid_length_only():
    steady = [3.0 - 0.01 * i for i in range(60)]  # 600 steps, falling
    assert not lasting.late_surge(_rows(steady))
    early = [*steady[:5], 4.0, *steady[6:]]  # a rise at step 60: the grid saw it already
    assert not lasting.late_surge(_rows(early))
    late = [*steady[:40], steady[39] + 0.3, *steady[41:]]  # +0.3 nat at step 410
    assert lasting.late_surge(_rows(late))
    small = [*steady[:40], steady[39] + 0.2, *steady[41:]]  # under the grid's 0.25 nat
    assert not lasting.late_surge(_rows(small))
    assert lasting.late_surge(_rows([*steady[:40], math.nan, *steady[41:]]))


@pytest.mark.parametrize("bad", ["mhc", "mhc=0", "mhc=-1", "mhc=x", "gpt=0.01"])
def test_a_bad_lr_is_one_line(bad):
    with pytest.raises(SystemExit, match=f"--lr {bad}: expected KIND=LR"):
        lasting.parse_lrs([bad], lasting.KINDS)


@pytest.mark.slow  # trains 2 tiny runs
def test_lasting_smoke(tmp_path):
    assert lasting.main(["--smoke", "--out", str(tmp_path), "--kinds", "residual,mhc",
                         "--seeds", "0", "--lr", "residual=0.01", "mhc=0.01"]) == 0
    text = (tmp_path / "summary.md").read_text()
    assert "| residual | 0.01 | 1 |" in text and "| mhc | 0.01 | 1 |" in text
    assert "mHC's final eval loss below residual's" in text
    assert (tmp_path / "lasting.png").stat().st_size > 0
