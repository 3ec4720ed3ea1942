# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · The geometry of the mHC constraint
#
# mHC (DeepSeek-AI, arXiv 2512.24880) keeps Hyper-Connections' n parallel residual streams but
# forces the stream-mixing map `H_res` onto the **Birkhoff polytope**: non-negative matrices whose
# rows and columns each sum to 1. This notebook looks at that constraint from three sides:
#
# 1. **Sinkhorn-Knopp**: how the projection is computed, how fast it converges, and where it does
#    not (large logits), in the paper's convention and in DeepSeek-V4's production ordering.
# 2. **The Birkhoff polytope**: doubly stochastic matrices are exactly the convex combinations of
#    permutation matrices; mHC-lite uses that fact as its parametrisation.
# 3. **Why depth cannot blow up**: products of doubly stochastic maps stay doubly stochastic, so
#    the composite gain over 60 layers is 1, while unconstrained near-identity maps (HC-like)
#    compound.
#
# Runs on a CPU in well under a minute. Set `MHC_NOTEBOOK_SMOKE=1` in the environment for the
# smallest setting (fewer samples and iteration counts; the CI test uses it).

# %%
import os

SMOKE = os.environ.get("MHC_NOTEBOOK_SMOKE", "0") == "1"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import mhc
from mhc import manifolds
from mhc.plot import show  # inline in Jupyter; saved to ./figures when run as a script

N = 4  # streams, as in every experiment of the paper
SAMPLES = 64 if SMOKE else 512  # random logit matrices per setting
ITERS = [1, 3, 10, 20] if SMOKE else [1, 2, 3, 5, 10, 20, 30, 50, 100, 200]
DEPTH = 60  # the paper counts 30 blocks x 2 sites = 60 layers in its 27B plots
print(f"smoke={SMOKE}  jax {jax.__version__}  devices: {jax.devices()[0].platform}")

# %% [markdown]
# ## 1. Sinkhorn-Knopp
#
# The paper (Eq. 9) starts from `M₀ = exp(H̃_res)` and alternately normalises columns and then
# rows, `t_max = 20` times. Because rows are normalised last, every **row** sum is exactly 1;
# the **column** sums carry whatever error is left after a finite number of iterations.
# DeepSeek-V4's implementation starts from a row softmax plus `eps`, alternates in the other
# order and applies the result transposed; `mhc.sinkhorn(..., convention="deepseek_v4")` returns
# that transposed map, so in both conventions the row sums (forward gain) are the exact ones.
#
# The convergence rate depends on how spread out the logits are. We draw standard-normal logits,
# multiply them by a scale and measure the worst row and column error over the batch with
# `mhc.doubly_stochastic_error`.

# %%
key = jax.random.key(0)
z_SxNxN = jax.random.normal(key, (SAMPLES, N, N))
SCALES = [0.5, 2.0, 10.0, 50.0]


def errors(convention):
    """{scale: (row error per iters, column error per iters)}, worst case over the samples."""
    out = {}
    logits = jnp.stack([s * z_SxNxN for s in SCALES])  # [scales, S, N, N]: one call per iters
    rows, cols = [], []
    for t in ITERS:
        row, col = mhc.doubly_stochastic_error(mhc.sinkhorn(logits, t, convention=convention))
        rows.append(row.max(-1))
        cols.append(col.max(-1))
    rows, cols = np.array(rows), np.array(cols)  # [iters, scales]
    for i, s in enumerate(SCALES):
        out[s] = (rows[:, i], cols[:, i])
    return out


err = {conv: errors(conv) for conv in ("paper", "deepseek_v4")}

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
for ax, conv in zip(axes, err):
    for s, color in zip(SCALES, plt.cm.viridis(np.linspace(0, 0.9, len(SCALES)))):
        row, col = err[conv][s]
        ax.loglog(ITERS, np.maximum(col, 1e-8), "-o", color=color, ms=3,
                  label=f"column error, logit scale {s:g}")
        ax.loglog(ITERS, np.maximum(row, 1e-8), ":", color=color)
    ax.axvline(20, color="grey", lw=0.8, ls="--")
    ax.set(title=f"convention = {conv!r} (dotted: row error)", xlabel="Sinkhorn iterations",
           ylabel="max |sum - 1| over samples")
    ax.grid(alpha=0.3)
axes[0].legend(fontsize=8)
plt.tight_layout()
show("sinkhorn-convergence")

# %%
for conv in err:
    print(conv)
    i20 = ITERS.index(20)
    for s in SCALES:
        row, col = err[conv][s]
        print(f"  scale {s:5g}: after 20 iterations row error {row[i20]:.1e}, "
              f"column error {col[i20]:.1e}")

# %% [markdown]
# What the plot shows:
#
# * With logits of order 1, 20 iterations are exact to float32 rounding (about 1e-7; V4's `eps`
#   leaves about 1e-6).
# * With larger logits convergence slows sharply: at scale 10 the column error after 20 iterations
#   is still of order 0.1, and at scale 50 it is of order 1. the mHC-lite paper (arXiv 2601.05732) notes that
#   mHC-lite (arXiv 2601.05732) reports such logits during training and column-sum deviations of
#   up to 100 % per layer. This is why training runs in this project log the doubly-stochastic error.
# * DeepSeek-V4's `eps` floor (no entry starts below 1e-6) caps the effective logit range, which
#   is why its error at scale 50 is smaller than the paper convention's in our measurement.
# * The row error stays at rounding level in both conventions: the *forward* gain of a truncated
#   Sinkhorn map is exact, the *backward* gain (column sums) is not. The paper's Fig. 7 shows the
#   same asymmetry: single-layer forward gain ≈ 1, backward slightly off.
#
# Sinkhorn of a matrix with rows and columns already normalised is a fixed point. One check of the
# implementation: in the paper convention, one more iteration is the same as calling `sinkhorn`
# with `iters=1` on the log of the previous result.

# %%
x = 2.0 * z_SxNxN[:8]
h5 = mhc.sinkhorn(x, 5)
h6 = mhc.sinkhorn(x, 6)
h5_plus_1 = mhc.sinkhorn(jnp.log(h5), 1)
print("max |sinkhorn(x, 6) - sinkhorn(log sinkhorn(x, 5), 1)| =",
      float(jnp.abs(h6 - h5_plus_1).max()))

# %% [markdown]
# ## 2. The Birkhoff polytope
#
# Birkhoff-von Neumann theorem: the doubly stochastic n×n matrices are exactly the convex
# combinations of the n! permutation matrices. For n = 2 that is the segment between `I` and the
# swap; for n = 3 it is a 4-dimensional polytope with 6 vertices. The 3×3 permutations split into
# 3 even and 3 odd ones, and both triples average to the uniform matrix `J/3`. That is the only
# affine relation among them, so one linear map sends the 6 vertices to a regular hexagon with
# even and odd permutations alternating. Every doubly stochastic 3×3 matrix then lands inside the
# hexagon, and the uniform matrix lands at its centre.

# %%
perms_3 = manifolds.permutation_matrices(3)  # [6, 3, 3], identity first
parity = np.array([round(np.linalg.det(p)) for p in perms_3])
even, odd = np.where(parity > 0)[0], np.where(parity < 0)[0]
angles = np.empty(6)
angles[even] = np.deg2rad([90, 210, 330])
angles[odd] = np.deg2rad([150, 270, 30])
hexagon = np.stack([np.cos(angles), np.sin(angles)], 1)  # target vertex positions [6, 2]
design = np.concatenate([perms_3.reshape(6, 9), np.ones((6, 1))], 1)
proj, *_ = np.linalg.lstsq(design, hexagon, rcond=None)  # affine map R^9 -> R^2


def to_plane(h_xNxN):
    h = np.asarray(h_xNxN).reshape(-1, 9)
    return np.concatenate([h, np.ones((len(h), 1))], 1) @ proj


print("vertices reproduced exactly:", np.allclose(to_plane(perms_3), hexagon, atol=1e-6))
print("uniform J/3 maps to", to_plane(np.full((3, 3), 1 / 3)).round(6))

# %% [markdown]
# Now the projections. Sinkhorn of random logits: small logits give matrices near the centre
# (close to uniform mixing), large logits push the result towards a vertex (a permutation: pure
# routing of one stream to another). mHC-lite (`mhc.manifolds.mhc_lite`) builds the matrix directly
# as `Σ_k softmax(a)_k P_k` over all n! permutations: exactly doubly stochastic with no iterations.
# Its identity-like initialisation (logit 0 for `I`, −8 for the others, as in mHC-lite's code)
# sits next to the identity vertex. An unconstrained HC-like map `I + 0.3·G` can leave the polygon.

# %%
k1, k2, k3 = jax.random.split(jax.random.key(1), 3)
n_pts = 150 if SMOKE else 600
sink_small = mhc.sinkhorn(0.5 * jax.random.normal(k1, (n_pts, 3, 3)), 20)
sink_large = mhc.sinkhorn(4.0 * jax.random.normal(k2, (n_pts, 3, 3)), 20)
lite = manifolds.mhc_lite(1.5 * jax.random.normal(k3, (n_pts, 6)), 3)
lite_init = manifolds.mhc_lite(jnp.asarray(manifolds.get("mhc_lite").init_logits(3, "identity")), 3)
hc_like = np.eye(3) + 0.3 * np.random.default_rng(0).standard_normal((n_pts, 3, 3))

fig, ax = plt.subplots(figsize=(6.5, 6))
order = np.argsort(angles)
poly = hexagon[np.r_[order, order[0]]]
ax.plot(poly[:, 0], poly[:, 1], "k-", lw=1)
for i in range(6):  # B_3 is neighbourly: every pair of vertices is joined by an edge
    for j in range(i + 1, 6):
        ax.plot(*hexagon[[i, j]].T, color="0.85", lw=0.6, zorder=0)
for pts, label, style in [
        (to_plane(hc_like), "HC-like I + 0.3·G (unconstrained)", dict(c="tab:red", s=6, alpha=0.35)),
        (to_plane(sink_small), "Sinkhorn, logit scale 0.5", dict(c="tab:blue", s=6)),
        (to_plane(sink_large), "Sinkhorn, logit scale 4", dict(c="tab:orange", s=6)),
        (to_plane(lite), "mHC-lite, random logits", dict(c="tab:green", s=6, marker="x")),
        (to_plane(lite_init), "mHC-lite identity init", dict(c="k", s=60, marker="*"))]:
    ax.scatter(pts[:, 0], pts[:, 1], label=label, **style)
for p, (u, v) in zip(perms_3, hexagon):
    ax.annotate("\n".join("".join(str(int(e)) for e in row) for row in p), (u, v),
                fontsize=7, ha="center", va="center", xytext=(u * 1.17, v * 1.17),
                family="monospace")
ax.set(aspect="equal", xlim=(-1.9, 1.9), ylim=(-1.9, 1.9),
       title="3×3 Birkhoff polytope (affine projection)",
       xlabel="projection coordinate 1", ylabel="projection coordinate 2")
ax.legend(fontsize=7, loc="lower left")
show("birkhoff")

# %%
print("mHC-lite: max row/column error",
      [float(e.max()) for e in mhc.doubly_stochastic_error(lite)])
print("HC-like: fraction with some row sum off by > 0.1:",
      float(np.mean(np.abs(hc_like.sum(-1) - 1).max(-1) > 0.1)))

# %% [markdown]
# The converse direction is the Birkhoff-von Neumann decomposition: any doubly stochastic matrix
# can be peeled into permutations. A greedy version: find a permutation whose entries in `H` are
# all positive (the theorem guarantees one), subtract the smallest of those entries times the
# permutation, repeat. Here for a 4×4 Sinkhorn output; the weights sum to 1 and rebuild `H`.

# %%
from itertools import permutations


def birkhoff_decomposition(h_NxN, tol=1e-6):
    """Greedy Birkhoff-von Neumann decomposition: [(weight, permutation tuple)], largest first."""
    h = np.array(h_NxN, np.float64)
    n = h.shape[0]
    out = []
    while h.max() > tol:
        perm = max(permutations(range(n)), key=lambda p: min(h[i, p[i]] for i in range(n)))
        w = min(h[i, perm[i]] for i in range(n))
        if w <= tol:
            break
        out.append((w, perm))
        for i in range(n):
            h[i, perm[i]] -= w
    return out


h4 = np.asarray(mhc.sinkhorn(1.5 * jax.random.normal(jax.random.key(7), (N, N)), 50))
parts = birkhoff_decomposition(h4)
rebuilt = sum(w * np.eye(N)[list(p)] for w, p in parts)
print(f"{len(parts)} permutations, weights sum to {sum(w for w, _ in parts):.6f}")
for w, p in parts[:5]:
    print(f"  {w:.3f} x permutation {p}")
print("max |H - Σ w P| =", float(np.abs(h4 - rebuilt).max()))

# %% [markdown]
# ## 3. Why the composite gain stays bounded
#
# Over depth, the signal from layer l reaches layer L through the product
# `H_res(L−1)···H_res(l)`. The paper measures it with the **Amax gain**: the largest absolute row
# sum (forward, signal amplification) and the largest absolute column sum (backward, gradient
# amplification), `mhc.amax_gain`. For HC's unconstrained maps the paper reports a composite gain
# that peaks near 3000 in its 27B model (Fig. 3); for mHC at most about 1.6 (Fig. 7), the gap from
# 1 coming from truncated Sinkhorn.
#
# A product of doubly stochastic matrices is doubly stochastic, so both gains of the composite are
# exactly 1 at any depth. Unconstrained near-identity maps compound instead: below, HC-like
# `I + σ·G` with Gaussian G, and the same with only non-negative perturbations (row sums slightly
# above 1, the way a trained HC map can drift).
# `mhc.composite(hs, cumulative=True)` returns the running products layer by layer.

# %%
def composite_gain(hs_LxSxNxN):
    """Mean over samples of the (forward, backward) Amax gain of the running product."""
    fwd, bwd = mhc.amax_gain(mhc.composite(hs_LxSxNxN, cumulative=True))
    return np.asarray(fwd.mean(-1)), np.asarray(bwd.mean(-1))


S = SAMPLES // 4
ks = jax.random.split(jax.random.key(2), 3)
eye = jnp.eye(N)
families = {
    "mHC: Sinkhorn(2·G), 20 iters": mhc.sinkhorn(2.0 * jax.random.normal(ks[0], (DEPTH, S, N, N)), 20),
    "mHC: Sinkhorn(10·G), 20 iters": mhc.sinkhorn(10.0 * jax.random.normal(ks[0], (DEPTH, S, N, N)), 20),
    "HC-like: I + 0.1·G": eye + 0.1 * jax.random.normal(ks[1], (DEPTH, S, N, N)),
    "HC-like: I + 0.05·|G|": eye + 0.05 * jnp.abs(jax.random.normal(ks[2], (DEPTH, S, N, N))),
}
gains = {name: composite_gain(hs) for name, hs in families.items()}

fig, ax = plt.subplots(figsize=(8, 4.5))
for (name, (fwd, bwd)), color in zip(gains.items(), ["tab:blue", "tab:cyan", "tab:red", "tab:orange"]):
    layers = np.arange(1, DEPTH + 1)
    ax.semilogy(layers, fwd, "-", color=color, label=f"{name} (forward)")
    ax.semilogy(layers, bwd, "--", color=color, lw=1, label=f"{name} (backward)")
ax.set(xlabel="layers composed", ylabel="composite Amax gain (mean over samples)",
       title=f"Products of {DEPTH} random mixing maps, n = {N}")
ax.grid(alpha=0.3, which="both")
ax.legend(fontsize=7)
show("composite-gain")

for name, (fwd, bwd) in gains.items():
    print(f"{name:32s} composite gain at depth {DEPTH}: forward {fwd[-1]:9.3g}, "
          f"backward {bwd[-1]:9.3g}")

# %% [markdown]
# The Sinkhorn families stay at 1: the forward gain exactly (rows are normalised last), the
# backward gain within the truncation error of the factors. With large logits (scale 10) each
# factor's column sums are off by up to ~0.1, yet in our samples the 60-layer product is off by
# only a few percent: a product of non-negative, nearly doubly stochastic matrices mixes towards
# the uniform matrix instead of compounding the error. The unconstrained families grow
# geometrically with depth; with a small positive drift the gain reaches the thousands, the order
# of magnitude the paper reports for HC.
#
# **Spectral norm ≤ 1.** For a doubly stochastic H, `‖H‖₂ ≤ √(‖H‖₁‖H‖∞) = 1` (max column sum
# times max row sum), and the all-ones vector is a fixed point, so the largest singular value is
# exactly 1: mixing can never amplify the energy of the streams. It also preserves the mean
# across streams, because every column sums to 1. We check both on converged maps (logit scale 1,
# 100 iterations); a truncated map satisfies them only up to its column error.

# %%
h_many = mhc.sinkhorn(1.0 * jax.random.normal(jax.random.key(3), (SAMPLES, N, N)), 100)
sigma_max = np.linalg.svd(np.asarray(h_many), compute_uv=False)[:, 0]
hc_sigma = np.linalg.svd(np.asarray(families["HC-like: I + 0.1·G"][0]), compute_uv=False)[:, 0]
streams = jax.random.normal(jax.random.key(4), (SAMPLES, N, 8))
mixed = jnp.einsum("sij,sjc->sic", h_many, streams)
print(f"Sinkhorn maps: largest singular value in [{sigma_max.min():.6f}, {sigma_max.max():.6f}]")
print(f"HC-like maps:  largest singular value in [{hc_sigma.min():.3f}, {hc_sigma.max():.3f}]")
print("stream mean preserved: max |mean(Hx) - mean(x)| =",
      float(jnp.abs(mixed.mean(1) - streams.mean(1)).max()))

fig, ax = plt.subplots(figsize=(6, 3.5))
bins = np.linspace(0.95, hc_sigma.max() + 0.02, 40)
ax.hist(hc_sigma, bins=bins, alpha=0.6, color="tab:red", label="HC-like I + 0.1·G")
ax.hist(sigma_max, bins=bins, alpha=0.6, color="tab:blue", label="Sinkhorn (doubly stochastic)")
ax.set(xlabel="largest singular value ‖H‖₂", ylabel="count", title="Spectral norm of single maps")
ax.legend(fontsize=8)
show("spectral-norm")

# %% [markdown]
# ## Summary
# The last cell checks the claims above numerically and prints them as one JSON line (the CI test
# reads it).

# %%
import json

summary = {
    "paper_col_err_20_scale0.5": float(err["paper"][0.5][1][ITERS.index(20)]),
    "paper_col_err_20_scale50": float(err["paper"][50.0][1][ITERS.index(20)]),
    "paper_row_err_max": float(max(err["paper"][s][0].max() for s in SCALES)),
    "lite_ds_err": float(max(e.max() for e in mhc.doubly_stochastic_error(lite))),
    "birkhoff_rebuild_err": float(np.abs(h4 - rebuilt).max()),
    "mhc_composite_fwd": float(gains["mHC: Sinkhorn(2·G), 20 iters"][0][-1]),
    "mhc_composite_bwd": float(gains["mHC: Sinkhorn(2·G), 20 iters"][1][-1]),
    "hc_composite_fwd": float(gains["HC-like: I + 0.05·|G|"][0][-1]),
    "sinkhorn_sigma_max": float(sigma_max.max()),
}
assert summary["paper_col_err_20_scale0.5"] < 1e-5 < summary["paper_col_err_20_scale50"]
assert summary["paper_row_err_max"] < 1e-5 and summary["lite_ds_err"] < 1e-5
assert abs(summary["mhc_composite_fwd"] - 1) < 1e-4 and summary["hc_composite_fwd"] > 10
assert summary["sinkhorn_sigma_max"] < 1 + 1e-5
print("SUMMARY " + json.dumps(summary))
