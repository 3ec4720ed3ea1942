"""Test configuration: CPU-only JAX with 8 fake devices and one intra-op thread, no network/UI
side effects, and a persistent compilation cache. Environment is set at import time, before jax
is imported."""
import os
import tempfile

_TMP = tempfile.mkdtemp(prefix="mhc-tests-")
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One intra-op thread: XLA:CPU's multi-threaded Eigen kernels can sum in a different order from
# call to call when the cores are busy (jax-ml/jax#39741), which breaks the bitwise-resume tests
# under load (pytest -n 2 on 2 cores); one thread per process is bit-identical run to run.
# LLVM at -O0 (--xla_backend_optimization_level=0): the tests' tiny programs spend most of their
# time compiling, not running, and the CPU backend's LLVM passes are most of a compile (half of
# one's CPU seconds: 65 -> 32 for test_remat_policies_keep_gradients_and_cut_memory). The
# optimized HLO (fusion, buffer assignment: the compiled memory) is the same at -O0 and at the
# default, and so were the values (the smoke mHC step's HLO, temp bytes and loss, bit for bit).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                                   "--xla_cpu_multi_thread_eigen=false "
                                   "--xla_backend_optimization_level=0")
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["WANDB_MODE"] = "disabled"
os.environ["MPLBACKEND"] = "Agg"
for _var, _sub in (("MPLCONFIGDIR", "mpl"), ("WANDB_DIR", "wandb"),
                   ("JUPYTER_CONFIG_DIR", "jupyter/config"), ("JUPYTER_DATA_DIR", "jupyter/data"),
                   ("JUPYTER_RUNTIME_DIR", "jupyter/runtime"), ("IPYTHONDIR", "ipython")):
    _path = os.path.join(_TMP, _sub)
    os.makedirs(_path, exist_ok=True)
    os.environ[_var] = _path

import jax  # noqa: E402

# The tests' own persistent compilation cache, apart from the studies' (.jax_cache): programs
# compiled in other processes and configurations never mix into a bitwise comparison.
# Subprocesses get it via MHC_TEST_JAX_CACHE.
os.environ["MHC_TEST_JAX_CACHE"] = os.path.join(_REPO, ".jax_cache", "tests")
os.makedirs(os.environ["MHC_TEST_JAX_CACHE"], exist_ok=True)
jax.config.update("jax_compilation_cache_dir", os.environ["MHC_TEST_JAX_CACHE"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
