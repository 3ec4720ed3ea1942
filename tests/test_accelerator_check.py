"""benchmarks/accelerator_check.py: its --smoke run (CPU, Pallas in interpret mode, tiny shapes)
passes every part and writes the report with each part's table; bad options exit in one line
before anything runs or is written."""
import re

import pytest
from test_scripts import _load as load_script

from mhc import targets


def _load():
    return load_script("benchmarks/accelerator_check.py")


@pytest.mark.slow  # ~13 step compiles: 30 s on an idle 2-core machine, more under load
def test_smoke_passes_every_part_and_writes_the_report(tmp_path, capsys):
    out = tmp_path / "report.md"
    assert _load().main(["--smoke", "--out", str(out)]) == 0
    text = out.read_text()
    printed = capsys.readouterr().out
    assert text.startswith("# Accelerator check: cpu (smoke: tiny shapes")
    assert "commit " in text and "jax 0." in text and "flax 0." in text
    for part in "abcd":  # the summary table, and each part's section
        assert f"| {part} | PASS |" in text, part
        assert re.search(rf"^## \({part}\) .*: PASS$", text, re.M), part
    assert "ERROR" not in text and "FAIL" not in printed
    # (a) every kernel comparison, values and gradients, against both references
    from mhc import kernels
    for row in ("| sinkhorn paper (interpret) vs mhc.manifolds | grad |",
                "| sinkhorn deepseek_v4 (interpret) vs mhc.manifolds | values |",
                *(["| sinkhorn paper (mosaic_gpu_interpret) vs mhc.manifolds | grad |"]
                  if kernels.available("mosaic_gpu") else []),
                "| fused site (interpret) vs kernels=xla | d phi |",
                "| fused site (interpret) vs kernels=reference | d streams (bf16) |",
                *(["| fused site (mosaic_gpu_interpret) vs kernels=xla | H_res |",
                   "| fused site (mosaic_gpu_interpret) vs kernels=reference | d phi |"]
                  if kernels.available("mosaic_gpu") else [])):
        assert row in text and text.split(row)[1].split("\n")[0].endswith("| yes |"), row
    assert "| mHC site (interpret), F = tanh, [40, 2, 32] bf16 |" in text  # kernel / XLA time
    # (b) the baseline, both mHC implementations and the recompute variant, with ratios
    for row in ("| residual | – | none |", "| mhc | xla | none |", "| mhc | pallas | none |",
                "| mhc | xla | streams |"):
        assert row in text, row
    assert re.search(r"\| mhc \| pallas \| none \| [\d.]+ \| [\d.]+x \| [\d.]+ MiB \|", text)
    # (c) both dispatches ran and their losses agree (the check is in the summary count)
    assert "| ragged |" in text and "| capacity, drop-free |" in text
    # (d) the loss fell on the synthetic n-gram data
    m = re.search(r"^\| 5/5 \| ([\d.]+) \| ([\d.]+) \| yes \|", text, re.M)
    assert m and float(m.group(2)) < float(m.group(1))
    # progress lines name the part and the elapsed time; one final summary line
    assert re.search(r"^\[b\] +[\d.]+s  compile and time mhc pallas none$", printed, re.M)
    assert printed.strip().splitlines()[-1].startswith(
        "accelerator_check: a PASS, b PASS, c PASS, d PASS in ")


@pytest.mark.parametrize("parts", ["a,x", "", "b,b", "abcd"])
def test_bad_parts_exit_in_one_line_naming_the_value(tmp_path, parts):
    out = tmp_path / "report.md"
    with pytest.raises(SystemExit, match=re.escape(f"--parts {parts!r}: expected")):
        _load().main(["--smoke", "--parts", parts, "--out", str(out)])
    assert not out.exists()  # nothing ran or was written


def test_a_failing_part_is_recorded_and_the_next_part_still_runs(tmp_path, capsys):
    module = _load()

    def broken(p, smoke):
        p.check("a passing check", True)
        p.guard("one item", lambda: 1 / 0)  # an item's error: the part goes on
        p.check("a failing check", False)
        raise RuntimeError("the part itself broke\nsecond line of the message")

    module.part_c = broken
    module.part_d = lambda p, smoke: p.check("d ran", True)
    out = tmp_path / "report.md"
    assert module.main(["--smoke", "--parts", "c,d", "--out", str(out)]) == 1
    text = out.read_text()
    assert "| c | FAIL | 1/2 checks passed; failed: a failing check; 2 error(s);" in text
    assert "- ERROR one item: ZeroDivisionError: division by zero" in text
    assert "- ERROR part c: RuntimeError: the part itself broke\n" in text  # one line only
    assert "| d | PASS |" in text
    assert "accelerator_check: c FAIL, d PASS in " in capsys.readouterr().out


def test_a_spent_budget_skips_and_says_so(tmp_path):
    module = _load()
    module.part_d = lambda p, smoke: p.over_budget("all the steps")
    out = tmp_path / "report.md"
    assert module.main(["--smoke", "--parts", "d", "--budget-s", "1e-9", "--out", str(out)]) == 0
    text = out.read_text()
    assert "| d | SKIP | 0/0 checks passed; 1 item(s) skipped;" in text
    assert "Skipped: all the steps (budget spent)." in text


def test_device_name_of_the_report():
    module = _load()
    assert module.device_slug() == "cpu"
    assert module.parse_parts("d, a") == ["a", "d"]  # runs in a..d order


@pytest.mark.slow  # compiles the smoke programs of part a with XLA:GPU (~1 min idle)
@pytest.mark.skipif(not targets._has_cuda_plugin(),
                    reason="needs jax's CUDA plugin (pip install -e '.[aot]')")
def test_compile_only_compiles_every_program_for_an_h100(tmp_path, capsys):
    """--compile-only --target h100x1: every kernel target of the GPU (Mosaic GPU and Triton)
    and the pure-JAX references compile here, nothing runs."""
    out = tmp_path / "compile.md"
    assert _load().main(["--compile-only", "--target", "h100x1", "--smoke", "--parts", "a",
                          "--out", str(out)]) == 0
    text = out.read_text()
    assert "H100" in text and "XLA:GPU" in text and "FAILED" not in text
    for program in ("sinkhorn paper mosaic_gpu", "sinkhorn deepseek_v4 xla", "mHC site mosaic_gpu",
                    "mHC site reference", "mHC site triton"):
        assert f"| {program} | ok |" in text
    assert "mosaic_gpu_v2" in text  # the kernels are in the programs, not silently XLA
    assert "10/10 compiled" in capsys.readouterr().out


def test_compile_only_refuses_a_bad_target_in_one_line():
    with pytest.raises(SystemExit, match="--target: unknown target 'tpu9'"):
        _load().main(["--compile-only", "--target", "tpu9", "--smoke"])
