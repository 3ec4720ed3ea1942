"""Sinkhorn on N x N entry lists: the math both ops' kernels run on their per-token values.

An entry list is `entries[i][j]`, N x N same-shaped fp32 arrays, one matrix per element: the
standalone Sinkhorn passes `[1, TM]` rows of its token-minor `[N*N, M]` layout, the fused site
`[TM, 1]` (or `[TM]`) columns picked out of its logit tiles. Every normalisation is then a handful
of elementwise ops over whole vregs / warps instead of a tiny `[N, N]` reduction per token.

Conventions are those of `mhc.manifolds` (paper: log domain, columns then rows, `iters` times,
exp at the end; deepseek_v4: softmax + eps, columns, (iters - 1) x (rows, columns), eps in every
denominator, returned transposed). The VJP stores nothing: it walks the iterations in reverse
and recomputes iterate k-1 from the logits for every k (t²/2 steps of N² vector ops per token for
t iterations; for N = 4, t = 20 about 200 cheap steps, far below the cost of reading the streams).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


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

