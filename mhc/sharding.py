"""Device meshes, the logical-axis rules table, and sharded compilation of a training step.

Mesh axes (always all four, size 1 when unused):
  data    pure data parallelism (parameters replicated)
  fsdp    data parallelism with parameters and optimizer state sharded along `embed`
  expert  routed experts split across devices (tokens are data-parallel over it too)
  tensor  heads / FFN width / vocabulary split across devices
Parameters carry logical axis names (set where they are created, see `model/attention.py`);
`RULES` maps each logical name to mesh axes. Activations: the batch is split over
data x fsdp x expert.
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "expert", "tensor")
BATCH_AXES = ("data", "fsdp", "expert")
RULES: dict[str, str | tuple[str, ...] | None] = {
    "batch": BATCH_AXES,
    "expert_batch": ("data", "fsdp"),  # tokens grouped for experts leave the expert axis free
    "layers": None,
    "vocab": "tensor",
    "embed": "fsdp",
    "heads": "tensor",
    "mlp": "tensor",
    "expert": "expert",
    # the MLA latents: the up-projections [rank, heads x dims] are split over fsdp along their
    # rank (the down-projections [embed, rank] already are along embed, which claims fsdp first)
    "kv_lora": "fsdp",
    "q_lora": "fsdp",
}


def _mesh_axes(name: str | None, mesh, rules=RULES) -> tuple[str, ...]:
    """The mesh axes (of size > 1) that the logical axis `name` is split over."""
    axes = rules.get(name) if name is not None else None
    axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    return tuple(a for a in axes if mesh.shape.get(a, 1) > 1)


def logical_spec(shape: tuple[int, ...], names: tuple[str | None, ...], mesh,
                 rules=RULES) -> P:
    """The PartitionSpec of an activation of `shape` by logical names on `mesh` (abstract or
    concrete). Mesh axes of size 1 and axes that do not divide the dimension are left out."""
    spec, used = [], set()
    for dim, name in zip(shape, names):
        axes = tuple(a for a in _mesh_axes(name, mesh, rules) if a not in used)
        while axes and dim % math.prod(mesh.shape[a] for a in axes):
            axes = axes[:-1]
        used.update(axes)
        spec.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return P(*spec)


def constrain(x: jax.Array, names: tuple[str | None, ...], rules=RULES) -> jax.Array:
    """Sharding constraint by logical names when a mesh is set (`jax.set_mesh`); else a no-op."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_spec(x.shape, names, mesh, rules))


def token_axes(n_tokens: int, mesh) -> tuple[str, ...]:
    """The batch mesh axes that split a leading dimension of `n_tokens` (those that divide it)."""
    axes = logical_spec((n_tokens,), ("batch",), mesh)[0]
    return () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)


def per_token_shard(fn: Callable, n_tokens: int, in_ranks: tuple[int | None, ...],
                    out_ranks: tuple[int, ...]) -> Callable:
    """`fn` run per shard of the leading (batch / token) dimension under `jax.shard_map` when a
    multi-device mesh is in context, else `fn` itself: how a Pallas kernel meets a mesh (Mosaic
    kernels cannot be partitioned automatically, and XLA would gather a GPU kernel's operands).
    Arrays of rank r (in_ranks / out_ranks) are split over the batch axes that divide
    `n_tokens` on their first dimension; rank None is replicated (weights: their cotangents are
    summed over the shards). Other dims are whole in each shard (a width sharded over `tensor`
    is gathered at the boundary)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return fn
    axes = token_axes(n_tokens, mesh) or None

    def spec(rank):
        return P() if rank is None else P(axes, *(None,) * (rank - 1))

    return jax.shard_map(fn, in_specs=tuple(spec(r) for r in in_ranks),
                         out_specs=tuple(spec(r) for r in out_ranks), check_vma=False)


def embed_tokens(embed: nnx.Embed, tokens_BxT: jax.Array) -> jax.Array:
    """`embed(tokens_BxT)` -> `[B, T, C]`. On a mesh that splits the batch over `fsdp` (the
    table is split along C over it, rule "embed"), each device looks up the token ids of its
    fsdp group (all-gathered, [fsdp x B_local, T]) in its own C slice, and an all-to-all over
    `fsdp` returns whole rows for its own tokens: the traffic of one activation. XLA's
    partitioner instead replicates the whole `[B, T, C]` to reshard it (for the gradient of
    the table): 120 GB per device for one sequence per H100 on 2048 of them at C = 7168.
    Elsewhere (no mesh, or a batch not split over fsdp) `embed(tokens_BxT)` itself."""
    mesh = jax.sharding.get_abstract_mesh()
    axes = () if mesh.empty else token_axes(tokens_BxT.shape[0], mesh)
    if "fsdp" not in axes or embed.features % mesh.shape["fsdp"]:
        return embed(tokens_BxT)

    def local(table_VxCf, tokens):
        rows = jnp.take(table_VxCf, jax.lax.all_gather(tokens, "fsdp", tiled=True), axis=0)
        return jax.lax.all_to_all(rows, "fsdp", 0, 2, tiled=True)  # [B_local, T, C]

    table = embed.embedding[...].astype(embed.dtype or embed.embedding.dtype)
    return jax.shard_map(local, in_specs=(P(None, "fsdp"), P(axes)), out_specs=P(axes),
                         check_vma=False)(table, tokens_BxT)


class ShardingError(ValueError):
    """The mesh does not fit the devices or does not divide the model."""


def parse_mesh(text: str | dict | None) -> dict[str, int]:
    """'fsdp=8,expert=4' -> {'data': 1, 'fsdp': 8, 'expert': 4, 'tensor': 1}."""
    sizes = dict.fromkeys(MESH_AXES, 1)
    if not text:
        return sizes
    items = text.items() if isinstance(text, dict) else (
        part.split("=", 1) if "=" in part else (part, None) for part in text.split(",") if part)
    for name, value in items:
        name = name.strip()
        if name not in sizes:
            raise ShardingError(f"unknown mesh axis {name!r}; allowed: {', '.join(MESH_AXES)}")
        try:
            size = int(value)
        except (TypeError, ValueError):
            raise ShardingError(f"mesh axis {name}={value!r}; expected a positive integer") \
                from None
        if size < 1:
            raise ShardingError(f"mesh axis {name}={size}; must be >= 1")
        sizes[name] = size
    return sizes


def make_mesh(spec: str | dict | None = None, devices=None) -> jax.sharding.Mesh:
    """A 4-axis mesh (Auto axis types) over `devices` (default: all); sizes must multiply to
    the device count. With no spec, every device goes to `data`. On a TPU torus the mesh axes
    follow the physical ones where they can, and split them where they must."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = parse_mesh(spec)
    if not spec:
        sizes["data"] = len(devices)
    total = math.prod(sizes.values())
    if total != len(devices):
        shape = ",".join(f"{k}={v}" for k, v in sizes.items() if v > 1) or "1"
        raise ShardingError(f"mesh {shape} needs {total} devices but {len(devices)} are "
                            f"available")
    shape, types = tuple(sizes[a] for a in MESH_AXES), (AxisType.Auto,) * len(MESH_AXES)
    try:
        return jax.make_mesh(shape, MESH_AXES, axis_types=types, devices=devices)
    except NotImplementedError:  # a TPU torus whose physical axes the mesh axes must split
        from jax.experimental import mesh_utils
        grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
        return jax.sharding.Mesh(grid, MESH_AXES, axis_types=types)


def logical_to_mesh(spec: P, shape: tuple[int, ...], mesh, *, where: str = "",
                    rules=RULES) -> P:
    """Map one PartitionSpec of logical names to mesh axes; check every sharded dim divides. A
    mesh axis splits one dimension only: the first that claims it (e.g. `embed` before `q_lora`
    in [embed, q_lora]; the later one is then whole)."""
    out, used = [], set()
    for dim, name in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        axes = tuple(a for a in _mesh_axes(name, mesh, rules) if a not in used)
        used.update(axes)
        size = math.prod(mesh.shape[a] for a in axes)
        if axes and dim % size:
            raise ShardingError(f"{where or 'array'}: dimension {dim} ({name}) is not divisible "
                                f"by mesh {'x'.join(axes)}={size}")
        out.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return P(*out)


def state_shardings(state, mesh, rules=RULES):
    """NamedShardings for an nnx State (or abstract State) from its logical axis metadata."""
    specs = nnx.get_partition_spec(state)

    def one(path, spec, leaf):
        names = (str(getattr(k, "key", getattr(k, "name", k))) for k in path)
        where = "/".join(n for n in names if n != "value")
        shape = getattr(leaf, "shape", ())
        if not isinstance(spec, P):
            spec = P()
        return NamedSharding(mesh, logical_to_mesh(spec, shape, mesh, where=where, rules=rules))

    return jax.tree_util.tree_map_with_path(one, specs, state)


def batch_sharding(mesh) -> NamedSharding:
    """Batch dimension over data x fsdp x expert, the rest replicated."""
    return NamedSharding(mesh, P(tuple(a for a in BATCH_AXES if mesh.shape[a] > 1) or None))


def check_batch(batch_size: int, mesh):
    size = math.prod(mesh.shape[a] for a in BATCH_AXES)
    if batch_size % size:
        raise ShardingError(f"batch_size={batch_size} is not divisible by the data-parallel "
                            f"mesh size data*fsdp*expert={size}")


def shard_step(step_fn: Callable, model: nnx.Module, optimizer: nnx.Optimizer, mesh,
               frozen: nnx.Module | None = None):
    """Compile `step_fn(model, optimizer, batch) -> metrics` (which updates both in place) as a
    pure jitted function with explicit in/out shardings and donated state (metrics: any pytree,
    returned replicated).

    Returns (step, state): call `state, metrics = step(state, batch)`; `state` starts as the
    placed (model, optimizer) state, and `nnx.update((model, optimizer), state)` brings it back.
    `frozen`: a module the step only reads (a distillation teacher), placed once on its own
    shardings and passed as `step_fn(model, optimizer, batch, frozen)`; it is an argument of
    every call, neither donated nor returned, so nothing the step does to it is kept.
    """
    graphdef, state = nnx.split((model, optimizer))
    shardings = state_shardings(state, mesh)
    extra, frozen_spec = (), None
    if frozen is not None:
        frozen_def, frozen_state = nnx.split(frozen)
        frozen_shardings = state_shardings(frozen_state, mesh)
        extra, frozen_spec = ((jax.device_put(frozen_state, frozen_shardings),),
                              (frozen_def, frozen_shardings))
    jitted = jit_state_step(step_fn, graphdef, shardings, mesh, frozen_spec)

    def step(state, batch):
        with jax.set_mesh(mesh):  # activation constraints (`constrain`) see the mesh
            return jitted(state, batch, *extra)

    return step, jax.device_put(state, shardings)


def jit_state_step(step_fn: Callable, graphdef, shardings, mesh, frozen=None):
    """`jax.jit` of `(state, batch) -> (new state, step_fn's output)` for the (model, optimizer)
    pair described by `graphdef`, with state shardings `shardings`, the batch split as
    `batch_sharding`, the output replicated and the state donated. Trace or lower it under
    `jax.set_mesh(mesh)` so that activation constraints see the mesh. `frozen`: (graphdef,
    shardings) of a read-only module, then the function is `(state, batch, frozen state)` and
    `step_fn` gets the module as its fourth argument (`shard_step`)."""
    in_shardings = (shardings, batch_sharding(mesh))
    if frozen is not None:
        frozen_def, frozen_shardings = frozen
        in_shardings += (frozen_shardings,)

    def pure(state, batch, *frozen_state):
        model, optimizer = nnx.merge(graphdef, state)
        modules = (nnx.merge(frozen_def, *frozen_state),) if frozen_state else ()
        out = step_fn(model, optimizer, batch, *modules)
        return nnx.state((model, optimizer)), out

    return jax.jit(pure, in_shardings=in_shardings,
                   out_shardings=(shardings, NamedSharding(mesh, P())), donate_argnums=0)


def place_batch(batch: dict, mesh) -> dict:
    sharding = batch_sharding(mesh)
    return {k: jax.device_put(np.asarray(v), sharding) for k, v in batch.items()}


def initialize_distributed(coordinator: str, num_processes: int, process_id: int,
                           local_devices: int | None = None):
    """Join a multi-process (multi-host) run: `jax.distributed.initialize` with the given
    coordinator `host:port`. On CPU, collectives go through gloo, and `local_devices` simulated
    devices per process can be requested (must run before JAX creates its backend)."""
    import os

    if not 0 <= process_id < num_processes:
        raise ShardingError(f"process_id={process_id}; must be in [0, {num_processes})")
    if local_devices:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform"
                                   f"_device_count={local_devices}").strip()
    if jax.config.jax_platforms in (None, "", "cpu"):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)


def global_batch(local_batch: dict, mesh) -> dict:
    """Assemble this process's rows of the batch into global arrays sharded like
    `batch_sharding` (each process passes its own consecutive slice of the global batch)."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in local_batch.items()}
