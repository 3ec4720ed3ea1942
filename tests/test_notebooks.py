"""The notebooks in notebooks/: each `.ipynb` matches its jupytext `.py`, is committed without
outputs, and runs top to bottom (MHC_NOTEBOOK_SMOKE=1, repository root as working directory) in a
kernel of this interpreter, producing its figures and a SUMMARY line whose numbers we check."""
import json
import os
import sys

import jupytext
import nbformat
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = ("01_constraint_geometry", "02_training_dynamics", "03_mhc_in_your_model",
             "04_inspect_learned_maps")


def _path(name, ext):
    return os.path.join(REPO, "notebooks", f"{name}.{ext}")


def _cells(nb):
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_ipynb_in_sync_with_py(name):
    py = jupytext.read(_path(name, "py"))
    ipynb = jupytext.read(_path(name, "ipynb"))
    assert _cells(py) == _cells(ipynb), (
        f"notebooks/{name}.ipynb differs from its .py; run `jupytext --to ipynb "
        f"notebooks/{name}.py` (or `jupytext --sync`)")
    raw = nbformat.read(_path(name, "ipynb"), as_version=4)
    assert all(not c.get("outputs") and c.get("execution_count") is None
               for c in raw.cells if c.cell_type == "code"), f"{name}.ipynb holds outputs"
    assert raw.metadata["kernelspec"]["name"] == "python3"
    first_code = next(c.source for c in raw.cells if c.cell_type == "code")
    assert 'os.environ.get("MHC_NOTEBOOK_SMOKE"' in first_code  # the switch is read up front


@pytest.fixture(scope="module")
def kernel_env():
    """A `python3` kernel spec for this interpreter, placed first on the Jupyter path (conftest
    points JUPYTER_DATA_DIR at a temp dir), and the environment the kernel inherits."""
    from jupyter_client.kernelspec import KernelSpecManager

    mp = pytest.MonkeyPatch()
    mp.setenv("JUPYTER_PREFER_ENV_PATH", "0")  # in a venv the env's specs would come first
    spec_dir = os.path.join(os.environ["JUPYTER_DATA_DIR"], "kernels", "python3")
    os.makedirs(spec_dir, exist_ok=True)
    with open(os.path.join(spec_dir, "kernel.json"), "w") as f:
        json.dump({"argv": [sys.executable, "-m", "ipykernel_launcher", "-f",
                            "{connection_file}"], "display_name": "Python 3 (mhc tests)",
                   "language": "python"}, f)
    assert KernelSpecManager().get_kernel_spec("python3").argv[0] == sys.executable
    mp.setenv("MHC_NOTEBOOK_SMOKE", "1")
    mp.setenv("JAX_PLATFORMS", "cpu")
    mp.delenv("MPLBACKEND", raising=False)  # ipykernel then selects the inline backend
    # the same persistent compilation cache as the test process (tests/conftest.py)
    mp.setenv("JAX_COMPILATION_CACHE_DIR", os.environ["MHC_TEST_JAX_CACHE"])
    mp.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
    yield
    mp.undo()


def _execute(name):
    from nbclient import NotebookClient

    nb = nbformat.read(_path(name, "ipynb"), as_version=4)
    NotebookClient(nb, kernel_name="python3", timeout=300,
                   resources={"metadata": {"path": REPO}}).execute()
    return nb


def _outputs(nb):
    text, images = [], 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.output_type == "stream" and out.name == "stdout":
                text.append(out.text)
            elif out.output_type in ("display_data", "execute_result"):
                images += "image/png" in out.get("data", {})
    return "".join(text), images


def _summary(text):
    lines = [ln for ln in text.splitlines() if ln.startswith("SUMMARY ")]
    assert len(lines) == 1, "the notebook must print exactly one SUMMARY line"
    return json.loads(lines[0][len("SUMMARY "):])


def _check_01(s):
    assert s["paper_col_err_20_scale0.5"] < 1e-5  # small logits: 20 iterations are exact
    assert s["paper_col_err_20_scale50"] > 0.1  # large logits: far from converged
    assert s["paper_row_err_max"] < 1e-5  # rows are normalised last: exact
    assert s["lite_ds_err"] < 1e-5 and s["birkhoff_rebuild_err"] < 1e-4
    assert abs(s["mhc_composite_fwd"] - 1) < 1e-4 and abs(s["mhc_composite_bwd"] - 1) < 1e-2
    assert s["hc_composite_fwd"] > 100  # unconstrained products compound over 60 layers
    assert s["sinkhorn_sigma_max"] <= 1 + 1e-5


def _check_02(s):
    assert set(s) == {"residual", "hc", "mhc", "mhc + sinkhorn_iters=1"}
    for run in s.values():
        assert 0 < run["final_loss"] < run["first_loss"] < 6.0  # byte vocab: log 256 = 5.55
    assert abs(s["mhc"]["amax_fwd"] - 1) < 1e-4 and abs(s["mhc"]["amax_bwd"] - 1) < 1e-2
    assert s["mhc"]["ds_col_err_max"] < 1e-2


def _check_03(s):
    assert s["params_mhc"] > s["params_plain"] > 0
    assert s["last_loss_plain"] < s["first_loss_plain"] and s["last_loss_mhc"] < s["first_loss_mhc"]
    assert s["acc_plain"] > 0.3 and s["acc_mhc"] > 0.3  # above chance (0.25) on 1024 signals
    assert abs(s["composite_fwd"] - 1) < 1e-4
    assert s["linen_out_shape"] == [2, 16, 4, 32]


def _check_04(s):
    assert set(s) == {"hc", "mhc"}
    assert s["mhc"]["sites"] == s["hc"]["sites"] == 4  # smoke: 2 blocks x 2 sites
    assert abs(s["mhc"]["composite_fwd"] - 1) < 1e-4 and s["mhc"]["ds_row_err_max"] < 1e-5
    assert s["mhc"]["res_min"] >= 0
    assert s["hc"]["ds_row_err_max"] > s["mhc"]["ds_row_err_max"]  # HC is unconstrained


CHECKS = dict(zip(NOTEBOOKS, (_check_01, _check_02, _check_03, _check_04)))
MIN_FIGURES = dict(zip(NOTEBOOKS, (4, 3, 3, 3)))


# 01 runs through `jupyter nbconvert` below, with the same checks
@pytest.mark.parametrize("name", NOTEBOOKS[1:])
def test_notebook_runs(name, kernel_env):
    nb = _execute(name)
    text, images = _outputs(nb)
    assert images >= MIN_FIGURES[name], f"{name}: {images} figures"
    CHECKS[name](_summary(text))


def test_notebooks_show_figures_through_mhc_plot_show():
    """A bare plt.show() draws nothing when a notebook runs as a script (Agg); `mhc.plot.show`
    saves the figure there instead, and shows it inline in a kernel."""
    for name in NOTEBOOKS:
        source = open(_path(name, "py")).read()
        assert "plt.show()" not in source and "show(" in source, name


def test_show_saves_the_figure_outside_a_kernel(tmp_path, monkeypatch):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mhc.plot import show

    monkeypatch.setenv("MHC_FIGURES_DIR", str(tmp_path / "figs"))
    monkeypatch.setattr(sys, "argv", ["notebooks/09_example.py"])
    plt.plot([0, 1], [1, 0])
    path = show("line")
    assert path == str(tmp_path / "figs" / "09_example-line.png")
    assert os.path.getsize(path) > 1000 and not plt.get_fignums()  # saved and closed


@pytest.mark.slow  # a whole notebook in a fresh process
def test_a_notebook_run_as_a_script_saves_its_figures(tmp_path):
    import subprocess

    env = {**os.environ, "MHC_NOTEBOOK_SMOKE": "1", "JAX_PLATFORMS": "cpu", "MPLBACKEND": "Agg",
           "MHC_FIGURES_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, _path("01_constraint_geometry", "py")], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    saved = sorted(os.listdir(tmp_path))
    assert saved == sorted(f"01_constraint_geometry-{n}.png" for n in (
        "sinkhorn-convergence", "birkhoff", "composite-gain", "spectral-norm")), saved


@pytest.mark.slow  # a whole notebook in a kernel
def test_jupyter_nbconvert_executes_a_notebook(kernel_env, tmp_path):
    """What notebooks/README.md shows: the notebooks extra brings nbconvert."""
    import subprocess

    pytest.importorskip("nbconvert")
    done = subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook",
                           "--execute", _path("01_constraint_geometry", "ipynb"),
                           "--output-dir", str(tmp_path)], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    nb = nbformat.read(str(tmp_path / "01_constraint_geometry.ipynb"), as_version=4)
    text, images = _outputs(nb)
    assert images >= MIN_FIGURES["01_constraint_geometry"]
    _check_01(_summary(text))
