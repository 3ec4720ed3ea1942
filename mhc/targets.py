"""Compile targets, and the one place that decides which platform a program is built for.

`mhc compile --target T` compiles the training step with the target's own compiler, on this
machine, without the device: the accelerator compilers run from a *topology description*
(compile-only devices; `jax.devices()` stays the host's).

  cpu       XLA:CPU on simulated CPU devices (as many as the mesh needs); the default
  v5e-N     TPU v5e (v5 lite), N chips: 1, 4, 8, 16, 32, 64, 128 or 256        16 GiB HBM each
  v6e-N     TPU v6e (Trillium), N chips: the same sizes                         32 GiB
  v5p-N     TPU v5p, N TensorCores = 2 per chip (Google Cloud's naming): v5p-8 is 4 chips,
            N a power of two >= 8; one JAX device per chip (megacore)            95 GiB
  h100xN    NVIDIA H100 SXM 80GB, N GPUs, 8 per host (N = 1, 2, 4, 8 or a multiple of 8)
  h200xN    NVIDIA H200 141GB, the same counts

The TPU targets need libtpu and the GPU targets jax's CUDA plugin: `pip install -e ".[aot]"`
(Python >= 3.12). What a deviceless compile cannot tell: speed (no device to time or autotune
on), numerics on the device, and whether XLA:GPU picks the same algorithms with a GPU present.

`current_platform()` is what every "auto" choice reads (compute dtype, MoE dispatch, the Pallas
target, `kernels="auto"`): the platform of the mesh set with `jax.set_mesh` (compile-only
devices included), else JAX's default backend. Never the host's backend for a mesh of others.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import importlib.util
import math
import os
import re

import jax

# per-generation facts: (platform, device kind, HBM bytes per device, TPU chip config)
_TPU = {
    "v5e": ("TPU v5 lite", 16 * 2**30, "v5e", "default"),
    "v6e": ("TPU v6 lite", 32 * 2**30, "v6e", "default"),
    "v5p": ("TPU v5", 95 * 2**30, "v5", "megacore"),
}
_TPU_2D_CHIPS = (1, 4, 8, 16, 32, 64, 128, 256)  # v5e / v6e slice sizes
_GPU = {  # GpuTargetConfig device facts (sm 9.0, 132 SMs): memory bytes, bandwidth B/s, name
    "h100": (84_929_347_584, 3_352_320_000_000, "NVIDIA H100 80GB HBM3"),
    "h200": (143_771 * 2**20, 4_800_000_000_000, "NVIDIA H200"),
}
GPUS_PER_HOST = 8
NAMES = ("cpu", *(f"{g}-N" for g in _TPU), *(f"{g}xN" for g in _GPU))


class TargetError(ValueError):
    """An unknown target name, a size the generation does not come in, or a missing compiler."""


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    platform: str  # "cpu" | "tpu" | "gpu" (what current_platform() returns under its mesh)
    n_devices: int  # JAX devices (TPU chips, GPUs); 0 for cpu: as many as the mesh needs
    device_kind: str
    hbm_bytes: int | None  # per device; None for cpu
    topology: str  # the topology description's name ("" for cpu)

    @property
    def compiler(self) -> str:
        """Which compiler makes this target's plans, with its version."""
        if self.platform == "tpu":
            return f"libtpu {_version('libtpu')} (jax {jax.__version__})"
        if self.platform == "gpu":
            return f"XLA:GPU, jax-cuda12-plugin {_version('jax-cuda12-plugin')} " \
                   f"(jaxlib {_version('jaxlib')})"
        return f"XLA:CPU (jaxlib {_version('jaxlib')})"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _v5p_shape(chips: int) -> tuple[int, int, int]:
    """A v5p slice's 3-D torus: 4 chips 2x2x1, then the smallest dimension doubles (2x2x2,
    2x2x4, 2x4x4, 4x4x4, 4x4x8, ...), as Google Cloud's v5p topologies grow."""
    dims = [2, 2, 1]
    while math.prod(dims) < chips:
        dims[dims.index(min(dims))] *= 2
        dims.sort()
    return tuple(dims)


def _2d_shape(chips: int) -> tuple[int, int]:
    x = 2 ** (int(math.log2(chips)) // 2)
    return x, chips // x


def parse(name: str) -> Target:
    """'v5p-8' / 'h100x8' / 'cpu' -> Target; one clear line for anything else."""
    text = str(name).strip().lower()
    if text == "cpu":
        return Target("cpu", "cpu", 0, "cpu", None, "")
    allowed = f"allowed: {', '.join(NAMES)} (mhc compile --list-targets)"
    match = re.fullmatch(r"(v5e|v6e|v5p)-(\d+)", text)
    if match:
        gen, n = match.group(1), int(match.group(2))
        kind, hbm, prefix, _ = _TPU[gen]
        if gen == "v5p":
            if n < 8 or n & (n - 1):
                raise TargetError(f"target {name!r}: v5p-N counts TensorCores (2 per chip); N "
                                  f"must be a power of two >= 8")
            shape = _v5p_shape(n // 2)
        else:
            if n not in _TPU_2D_CHIPS:
                raise TargetError(f"target {name!r}: {gen}-N counts chips; N must be one of "
                                  f"{', '.join(map(str, _TPU_2D_CHIPS))}")
            shape = _2d_shape(n)
        return Target(text, "tpu", math.prod(shape), kind, hbm,
                      f"{prefix}:{'x'.join(map(str, shape))}")
    match = re.fullmatch(r"(h100|h200)x(\d+)", text)
    if match:
        gen, n = match.group(1), int(match.group(2))
        if n < 1 or (n > GPUS_PER_HOST and n % GPUS_PER_HOST) or (
                n < GPUS_PER_HOST and GPUS_PER_HOST % n):
            raise TargetError(f"target {name!r}: {gen}xN needs N = 1, 2, 4, 8 or a multiple of "
                              f"{GPUS_PER_HOST} ({GPUS_PER_HOST} GPUs per host)")
        hosts, per_host = max(1, n // GPUS_PER_HOST), min(n, GPUS_PER_HOST)
        memory, _, kind = _GPU[gen]
        return Target(text, "gpu", n, kind, memory, f"1x{hosts}x{per_host}")
    raise TargetError(f"unknown target {name!r}; {allowed}")


def list_targets() -> str:
    """The `--list-targets` text: the naming rules, examples and which compilers are here."""
    lines = ["targets (name: devices, HBM per device, compiler):"]
    for example in ("cpu", "v5e-8", "v6e-16", "v5p-8", "v5p-128", "h100x1", "h100x8", "h200x16"):
        t = parse(example)
        devices = "as many as --mesh needs" if t.platform == "cpu" else \
            f"{t.n_devices} x {t.device_kind} ({t.topology})"
        hbm = f"{t.hbm_bytes / 2**30:.1f} GiB" if t.hbm_bytes else "host memory"
        lines.append(f"  {example:<9} {devices}, {hbm}; {t.compiler}")
    lines += ["v5e-N / v6e-N: N chips (1, 4, 8, ..., 256); v5p-N: N TensorCores, 2 per chip "
              "(N/2 chips); h100xN / h200xN: N GPUs, 8 per host.",
              f"compilers here: libtpu {'yes' if _has_libtpu() else 'no'}, CUDA plugin "
              f"{'yes' if _has_cuda_plugin() else 'no'} (pip install -e \".[aot]\")"]
    return "\n".join(lines)


def _has_libtpu() -> bool:
    return importlib.util.find_spec("libtpu") is not None


def _has_cuda_plugin() -> bool:
    try:  # find_spec of a submodule raises when its package (jax_plugins) is absent
        return importlib.util.find_spec("jax_plugins.xla_cuda12") is not None
    except ModuleNotFoundError:
        return False


def _gpu_target_config(gen: str) -> str:
    """XLA's GpuTargetConfig text proto for a Hopper GPU (sm 9.0, 132 SMs)."""
    memory, bandwidth, kind = _GPU[gen]
    info = {"threads_per_block_limit": 1024, "threads_per_warp": 32,
            "shared_memory_per_block": 49152, "shared_memory_per_core": 233472,
            "threads_per_core_limit": 2048, "core_count": 132, "fpus_per_core": 128,
            "block_dim_limit_x": 2147483647, "block_dim_limit_y": 65535,
            "block_dim_limit_z": 65535, "memory_bandwidth": bandwidth,
            "l2_cache_size": 52428800, "clock_rate_ghz": 1.98, "device_memory_size": memory,
            "shared_memory_per_block_optin": 232448}
    fields = " ".join(f"{k}: {v}" for k, v in info.items())
    return (f"gpu_device_info {{ {fields} cuda_compute_capability {{ major: 9 }} "
            f"registers_per_core_limit: 65536 registers_per_block_limit: 65536 }} "
            f'platform_name: "CUDA" dnn_version_info {{ major: 9 minor: 8 }} '
            f'runtime_version {{ major: 12 minor: 9 }} device_description_str: "{kind}"')


@functools.lru_cache(maxsize=None)
def devices(name: str) -> tuple:
    """The target's compile-only devices (cpu: the host's devices)."""
    t = parse(name)
    if t.platform == "cpu":
        return tuple(jax.devices("cpu"))
    from jax.experimental import topologies
    if t.platform == "tpu":
        if not _has_libtpu():
            raise TargetError(f"target {name!r} needs libtpu: pip install -e \".[aot]\" "
                              f"(Python >= 3.12)")
        # libtpu otherwise asks a cloud metadata server which slice it runs on, and admits one
        # process at a time (a lock file guarding the chips); compiling touches no chip, so
        # parallel tests and plans may share it
        os.environ.setdefault("TPU_ACCELERATOR_TYPE", name)
        os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
        gen = name.split("-")[0]
        shape = tuple(int(d) for d in t.topology.split(":")[1].split("x"))
        shape3 = shape + (1,) * (3 - len(shape))
        per_host = (2, 4, 1) if t.n_devices == 8 and len(shape) == 2 else tuple(
            min(d, b) for d, b in zip(shape3, (2, 2, 1)))
        found = topologies.get_topology_desc(
            platform="tpu", topology_name=t.topology, chip_config_name=_TPU[gen][3],
            chips_per_host_bounds=per_host, num_slices=1, wrap=(False,) * 3).devices
    else:
        if not _has_cuda_plugin():
            raise TargetError(f"target {name!r} needs jax's CUDA plugin: pip install -e "
                              f"\".[aot]\" (Python >= 3.12)")
        # the plugin otherwise refuses to load without a CUDA driver
        os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
        found = topologies.get_topology_desc(
            platform="cuda", target_config=_gpu_target_config(name.split("x")[0]),
            topology=t.topology).devices
    if len(found) != t.n_devices:
        raise TargetError(f"target {name!r}: the compiler gave {len(found)} devices, expected "
                          f"{t.n_devices}")
    return tuple(found)


def _normalise(platform: str) -> str:
    return "gpu" if platform in ("cuda", "rocm") else platform


def current_platform() -> str:
    """"cpu", "gpu" or "tpu": the devices of the mesh in context (`jax.set_mesh`, also inside
    a trace), else JAX's default backend."""
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh.empty else getattr(mesh, "abstract_device", None)
    if device is not None:
        return _normalise(device.platform)
    return _normalise(jax.default_backend())


def _accelerator_present() -> bool:
    """Whether this host has a GPU or TPU device node (then JAX's plugins must run as usual)."""
    nodes = ("/dev/nvidia0", "/dev/nvidiactl", "/dev/kfd", "/dev/accel0", "/dev/vfio/0")
    return any(os.path.exists(p) for p in nodes) or bool(os.environ.get("TPU_NAME"))


def keep_host_on_cpu() -> None:
    """With the compile-only plugins installed (`.[aot]`) on a host without a GPU or TPU,
    JAX would try each plugin at start-up and print its failure (CUDA's cuDNN check, libtpu's
    metadata probing). Then, unless the user chose platforms, JAX runs on the CPU only; the
    targets' compile-only devices still come from their topologies. Nothing changes on a
    host with an accelerator, without the plugins, or once JAX has chosen its backends."""
    if os.environ.get("JAX_PLATFORMS") or jax.config.jax_platforms:
        return
    if not (_has_libtpu() or _has_cuda_plugin()) or _accelerator_present():
        return
    from jax._src import xla_bridge
    if not xla_bridge.backends_are_initialized():
        jax.config.update("jax_platforms", "cpu")
