"""Sinkhorn as a Pallas kernel: forward and a backward that recomputes the iterates on chip.

Layout (lane-dense, "token-minor"): the logits of M tokens are carried as `[N*N, M]`; block
`(Qp, TM)` with Qp = N*N rounded up to a power of two (Triton needs power-of-two tensors; Mosaic
accepts a block dim equal to the array dim) and TM a multiple of 128 by default (TPU lane width).
Every matrix entry (i, j) is then one `[1, TM]` row, so each normalisation is a handful of
elementwise ops over whole vregs / warps instead of a tiny `[N, N]` reduction per token.

The math works on N x N nested lists of same-shaped arrays (`entries[i][j]`) so the fused site
kernels (`fused_site.py`) reuse it on `[TM, 1]` columns. Conventions are those of
`mhc.manifolds` (`_sinkhorn_paper`: log domain, columns then rows, `iters` times, exp at the end;
`_sinkhorn_deepseek_v4`: softmax + eps, columns, (iters - 1) x (rows, columns), eps in every
denominator, returned transposed).

Backward: nothing is stored between forward and backward but the logits. The backward kernel
walks the iterations in reverse and recomputes iterate k-1 from the logits for every k (t²/2
steps of N² vector ops per token for t iterations; for N = 4, t = 20 about 200 cheap steps, far
below the cost of reading the streams), so no iterate is kept in HBM or in registers.

Targets: "interpret" (CPU; what the tests run, against `mhc.manifolds.sinkhorn`), "triton" (GPU;
deprecated by JAX 0.12; jax 0.10 would otherwise pick Mosaic GPU), "mosaic" (TPU), and on
JAX >= 0.12 "mosaic_gpu" (GPU, JAX's supported GPU backend and then the GPU default: this
Sinkhorn through `mosaic_gpu.py`, the fused site through `fused_site_mgpu.py`) with its CPU twin
"mosaic_gpu_interpret". Every kernel runs in an interpret mode in the tests, and its Triton,
Mosaic TPU and Mosaic GPU lowerings are produced on CPU; none has been compiled or run on a
GPU/TPU here (`benchmarks/accelerator_check.py` does both on one).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from mhc import sharding, targets

F32 = jnp.float32
TARGETS = ("interpret", "triton", "mosaic", "mosaic_gpu", "mosaic_gpu_interpret")
MOSAIC_GPU = ("mosaic_gpu", "mosaic_gpu_interpret")  # Sinkhorn via mosaic_gpu.call, site via
#                                                       fused_site_mgpu


def backend_targets(backend: str | None = None) -> tuple[str, ...]:
    """The targets that run on a platform (default: the one in context,
    `mhc.targets.current_platform`), the default first: on GPU Mosaic GPU
    (JAX's supported GPU backend, JAX >= 0.12) then the deprecated Triton; Mosaic on TPU;
    interpret modes elsewhere (CPU)."""
    from mhc.kernels import mosaic_gpu
    new = mosaic_gpu.available()
    return {"gpu": ("mosaic_gpu", "triton") if new else ("triton",), "tpu": ("mosaic",)}.get(
        backend or targets.current_platform(),
        ("interpret", "mosaic_gpu_interpret") if new else ("interpret",))


def default_target() -> str:
    """Mosaic GPU on GPU (Triton before JAX 0.12), Mosaic on TPU, interpret mode elsewhere."""
    return backend_targets()[0]


def call_options(target: str | None) -> dict:
    """`pallas_call` keyword arguments for a target (None = the default backend's)."""
    target = default_target() if target is None else target
    if target not in TARGETS:
        raise ValueError(f"kernel target={target!r}; allowed: {', '.join(TARGETS)}")
    if target == "triton":  # jax 0.10 defaults GPU pallas_call to Mosaic GPU; we write for Triton
        from jax.experimental.pallas import triton as pltriton
        return {"compiler_params": pltriton.CompilerParams(num_warps=4, num_stages=2)}
    if target in MOSAIC_GPU:
        from mhc.kernels import mosaic_gpu
        if not mosaic_gpu.available():
            raise ValueError(f"kernel target={target!r} needs jax >= 0.12 (this is "
                             f"{jax.__version__}); allowed here: interpret, triton, mosaic")
        return {"interpret": target == "mosaic_gpu_interpret"}
    return {"interpret": target == "interpret"}


def pallas_call(kernel, *, out_shape, grid, in_specs, out_specs, target: str | None, name: str):
    """`pl.pallas_call` for `target` (None = the default backend's); the Mosaic GPU targets go
    through `mhc.kernels.mosaic_gpu.call` (same kernel body, blocks copied through SMEM)."""
    options = call_options(target)
    if target in MOSAIC_GPU:
        from mhc.kernels import mosaic_gpu
        return mosaic_gpu.call(kernel, out_shape=out_shape, grid=grid, in_specs=in_specs,
                               out_specs=out_specs, interpret=options["interpret"])
    return pl.pallas_call(kernel, out_shape=out_shape, grid=grid, in_specs=in_specs,
                          out_specs=out_specs, name=name, **options)


# ------------------------------------------------------------------------ entry-list math
def _tmap(fn, *ents):
    return [[fn(*(e[i][j] for e in ents)) for j in range(len(ents[0][0]))]
            for i in range(len(ents[0]))]


def _lse(values):
    m = functools.reduce(jnp.maximum, values)
    return m + jnp.log(sum(jnp.exp(v - m) for v in values))


def _transpose(e):
    return [list(row) for row in zip(*e)]


def _col_lognorm(y):
    n = len(y)
    lse = [_lse([y[i][j] for i in range(n)]) for j in range(n)]
    return [[y[i][j] - lse[j] for j in range(n)] for i in range(n)]


def _row_lognorm(y):
    out = []
    for row in y:
        lse = _lse(row)  # once per row (the comprehension would re-emit it per entry)
        out.append([v - lse for v in row])
    return out


def _row_lognorm_vjp(w, dw):
    """w = rownorm(z) in the log domain: dz = dw - exp(w) * rowsum(dw)."""
    sums = [sum(row) for row in dw]
    return [[dw[i][j] - jnp.exp(w[i][j]) * sums[i] for j in range(len(w))]
            for i in range(len(w))]


def _col_lognorm_vjp(z, dz):
    return _transpose(_row_lognorm_vjp(_transpose(z), _transpose(dz)))


def _row_divnorm(c, eps):
    out = []
    for row in c:
        denom = sum(row) + eps
        out.append([v / denom for v in row])
    return out


def _row_divnorm_vjp(c, dy, eps):
    """y = c / (rowsum(c) + eps): dc = (dy - rowsum(dy * y)) / (rowsum(c) + eps)."""
    out = []
    for row, drow in zip(c, dy):
        denom = sum(row) + eps
        y = [v / denom for v in row]
        dot = sum(d * v for d, v in zip(drow, y))
        out.append([(d - dot) / denom for d in drow])
    return out


def _col_divnorm(c, eps):
    return _transpose(_row_divnorm(_transpose(c), eps))


def _col_divnorm_vjp(c, dy, eps):
    return _transpose(_row_divnorm_vjp(_transpose(c), _transpose(dy), eps))


def _softmax_rows(x):
    out = []
    for row in x:
        m = functools.reduce(jnp.maximum, row)
        e = [jnp.exp(v - m) for v in row]
        total = sum(e)
        out.append([v / total for v in e])
    return out


def _v4_init(x, eps):
    return _col_divnorm(_tmap(lambda v: v + eps, _softmax_rows(x)), eps)


def _v4_init_vjp(x, d, eps):
    p = _softmax_rows(x)
    dp = _col_divnorm_vjp(_tmap(lambda v: v + eps, p), d, eps)
    out = []
    for prow, drow in zip(p, dp):
        dot = sum(a * b for a, b in zip(drow, prow))
        out.append([pv * (dv - dot) for pv, dv in zip(prow, drow)])
    return out


def _convention(convention, iters, eps):
    """(init, init_vjp, step, step_vjp, n_steps, final, final_vjp) of one convention."""
    if convention == "paper":
        def step(y):
            return _row_lognorm(_col_lognorm(y))

        def step_vjp(y, dw):
            z = _col_lognorm(y)
            return _col_lognorm_vjp(z, _row_lognorm_vjp(_row_lognorm(z), dw))

        return (lambda x: x, lambda x, d: d, step, step_vjp, iters,
                lambda y: _tmap(jnp.exp, y), lambda y, g: _tmap(lambda a, b: jnp.exp(a) * b, y, g))

    def step(c):
        return _col_divnorm(_row_divnorm(c, eps), eps)

    def step_vjp(c, d):
        r = _row_divnorm(c, eps)
        return _row_divnorm_vjp(c, _col_divnorm_vjp(r, d, eps), eps)

    return (lambda x: _v4_init(x, eps), lambda x, d: _v4_init_vjp(x, d, eps), step, step_vjp,
            iters - 1, _transpose, lambda c, g: _transpose(g))


def nested(flat, n):
    """An N x N entry list from its N*N entries in row-major order."""
    return [[flat[i * n + j] for j in range(n)] for i in range(n)]


# lax.select / lax.logistic rather than jnp.where / jax.nn.sigmoid: no nested jit calls, which
# keeps the interpret-mode programs (and their compile time in the tests) small.
def lane_columns(a, count, keepdims: bool = True):
    """Columns 0..count-1 of a `[TM, W]` value as `[TM, 1]` each (`[TM]` without keepdims), by
    masked lane sums: Triton cannot slice register tensors, Mosaic GPU places these reductions
    in the wgmma row layout."""
    lane = jax.lax.broadcasted_iota(jnp.int32, a.shape, 1)
    zero = jnp.zeros_like(a)
    return [jnp.sum(jax.lax.select(lane == k, a, zero), axis=1, keepdims=keepdims)
            for k in range(count)]


def assemble_columns(cols, width):
    """`[TM, width]` fp32 from `[TM, 1]` or `[TM]` columns as its first columns (the rest 0)."""
    shape = (cols[0].shape[0], width)
    lane = jax.lax.broadcasted_iota(jnp.int32, shape, 1)
    out = jnp.zeros(shape, F32)
    for k, col in enumerate(cols):
        out = jax.lax.select(lane == k, jnp.broadcast_to(col if col.ndim == 2 else col[:, None],
                                                         shape), out)
    return out


def _run_steps(step, state, count):
    return jax.lax.fori_loop(0, count, lambda _, s: step(s), state)


def sinkhorn_entries(x, iters: int, convention: str, eps: float):
    """Sinkhorn of an N x N list of same-shaped fp32 arrays (one matrix per element)."""
    init, _, step, _, n_steps, final, _ = _convention(convention, iters, eps)
    return final(_run_steps(step, init(x), n_steps))


def sinkhorn_entries_vjp(x, g, iters: int, convention: str, eps: float):
    """d(sum g * sinkhorn(x))/dx, recomputing iterate k-1 from x for every step k."""
    init, init_vjp, step, step_vjp, n_steps, final, final_vjp = _convention(convention, iters,
                                                                            eps)
    s0 = init(x)
    d = final_vjp(_run_steps(step, s0, n_steps), g)

    def back(r, d):
        k = n_steps - 1 - r  # iterate k feeds step k + 1
        return step_vjp(_run_steps(step, s0, k), d)

    d = jax.lax.fori_loop(0, n_steps, back, d)
    return init_vjp(x, d)


# ------------------------------------------------------------------------------ kernels
def _load_rows(ref, n):
    return [[ref[pl.ds(i * n + j, 1), :].astype(F32) for j in range(n)] for i in range(n)]


def _store_rows(ref, e):
    n = len(e)
    ref[...] = jnp.zeros(ref.shape, ref.dtype)  # padding rows: defined zeros
    for i in range(n):
        for j in range(n):
            ref[pl.ds(i * n + j, 1), :] = e[i][j].astype(ref.dtype)


def _fwd_kernel(x_ref, o_ref, *, n, iters, convention, eps):
    _store_rows(o_ref, sinkhorn_entries(_load_rows(x_ref, n), iters, convention, eps))


def _bwd_kernel(x_ref, g_ref, dx_ref, *, n, iters, convention, eps):
    dx = sinkhorn_entries_vjp(_load_rows(x_ref, n), _load_rows(g_ref, n), iters, convention, eps)
    _store_rows(dx_ref, dx)


def _call(kernel, out_rows, args, block_m, target, **static):
    qp, mp = args[0].shape
    spec = pl.BlockSpec((qp, block_m), lambda m: (0, m))
    return pallas_call(
        functools.partial(kernel, **static),
        out_shape=jax.ShapeDtypeStruct((out_rows, mp), F32),
        grid=(mp // block_m,), in_specs=[spec] * len(args), out_specs=spec,
        target=target, name=kernel.__name__.strip("_"))(*args)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4, 5, 6))
def _sinkhorn_t(x_QxM, n, iters, convention, eps, block_m, target):
    return _call(_fwd_kernel, x_QxM.shape[0], (x_QxM,), block_m, target, n=n, iters=iters,
                 convention=convention, eps=eps)


def _sinkhorn_t_fwd(x_QxM, n, iters, convention, eps, block_m, target):
    return _sinkhorn_t(x_QxM, n, iters, convention, eps, block_m, target), x_QxM


def _sinkhorn_t_bwd(n, iters, convention, eps, block_m, target, x_QxM, g_QxM):
    return (_call(_bwd_kernel, x_QxM.shape[0], (x_QxM, g_QxM), block_m, target, n=n,
                  iters=iters, convention=convention, eps=eps),)


_sinkhorn_t.defvjp(_sinkhorn_t_fwd, _sinkhorn_t_bwd)


def sinkhorn(logits: jax.Array, iters: int = 20, *, convention: str = "paper",
             eps: float = 1e-6, block_m: int = 128, target: str | None = None) -> jax.Array:
    """Pallas Sinkhorn of `logits[..., N, N]` -> fp32 `[..., N, N]`; same values and gradient as
    `mhc.manifolds.sinkhorn(..., grad="recompute")`. `target`: one of TARGETS (None = the
    default of the platform in context: interpret mode on CPU). Under a multi-device mesh it
    runs per shard of the leading dimension (`mhc.sharding.per_token_shard`)."""
    from mhc import manifolds  # validation and conventions shared with the reference
    if convention not in manifolds.CONVENTIONS:
        raise ValueError(f"sinkhorn convention={convention!r}; allowed: "
                         f"{', '.join(manifolds.CONVENTIONS)}")
    if not isinstance(iters, int) or iters < 1:
        raise ValueError(f"sinkhorn iters={iters!r}; must be an integer >= 1")
    if logits.ndim < 2 or logits.shape[-1] != logits.shape[-2]:
        raise ValueError(f"sinkhorn logits shape {logits.shape}; expected [..., N, N]")
    call_options(target)  # validates
    if not isinstance(block_m, int) or block_m < 8 or block_m % 8:
        raise ValueError(f"block_m={block_m!r}; must be a multiple of 8")
    def local(logits):  # one shard's tokens (all of them without a mesh)
        *batch, n, _ = logits.shape
        x = jnp.asarray(logits, F32).reshape(-1, n * n).T  # [N*N, M]
        m = x.shape[1]
        qp, mp = pl.next_power_of_2(n * n), pl.cdiv(m, block_m) * block_m
        x = jnp.pad(x, ((0, qp - n * n), (0, mp - m)))
        h = _sinkhorn_t(x, n, iters, convention, float(eps), block_m, target)
        return (h[:n * n, :m].T.reshape(*batch, n, n),)

    if logits.ndim == 2:
        return local(logits)[0]
    return sharding.per_token_shard(local, logits.shape[0], (logits.ndim,), (logits.ndim,))(
        logits)[0]
