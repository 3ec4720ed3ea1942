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
# # 04 · Inspecting the learned maps of a trained checkpoint
#
# The paper (DeepSeek-AI, arXiv 2512.24880) looks inside trained models in two ways: the Amax gain
# of each layer's `H_res` and of their product over depth (Figs. 3 and 7), and heatmaps of the
# maps themselves, single layer and composite, with row and column sums on the axes (Fig. 8). For
# HC the composite entries reach the hundreds; for mHC they stay bounded. This notebook does the
# same for a checkpoint of this library:
#
# 1. `mhc.load_run(run_dir)` gives the run's model (weights of its latest checkpoint), config and
#    step;
# 2. `mhc.inspect_run.run_maps` runs held-out windows of the run's corpus through
#    `Decoder.forward`, which returns the maps of every connection site (`pre [2L, B, T, N]`,
#    `post [2L, B, T, N]`, `res [2L, B, T, N, N]`, site `2l` = attention of block `l`, `2l + 1` =
#    its FFN), and `mhc.inspect_run.map_report` averages them over tokens, with the composite
#    formed per token first, and adds the per-site statistics of `mhc.map_stats`;
# 3. we plot `H_res` for one layer and for the composite, `H_pre` / `H_post` per layer, the Amax
#    gain per layer and the doubly-stochastic error.
#
# The command `mhc inspect RUN_DIR [--step N]` draws all of this for one run (last section).
#
# Which runs: by default the stability study's runs `experiments/results/stability/mhc` and `.../hc`
# (`python -m experiments.stability`; `small` recipe, 12 blocks = 24 sites, with checkpoints, kept
# locally only) when they hold a checkpoint. Otherwise, and always with `MHC_NOTEBOOK_SMOKE=1` in
# the environment (the setting the CI test uses), the notebook first trains two tiny 10-step runs
# (HC and mHC) with checkpoints into a temporary directory; that takes seconds. To look at your
# own run, set `RUN_DIRS` below to its directory (the one holding `config.json` and
# `checkpoints/`).

# %%
import os

SMOKE = os.environ.get("MHC_NOTEBOOK_SMOKE", "0") == "1"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("WANDB_MODE", "disabled")

import json
import tempfile

import matplotlib.pyplot as plt
import numpy as np

import mhc
from mhc import inspect_run, recipes, train
from mhc.config import apply_overrides
from mhc.plot import show  # inline in Jupyter; saved to ./figures when run as a script

STUDY = "experiments/results/stability"  # relative to the repository root
RUN_DIRS = {"hc": f"{STUDY}/hc", "mhc": f"{STUDY}/mhc"}

if SMOKE or not all(inspect_run.saved_steps(d) for d in RUN_DIRS.values()):
    # Tiny runs with checkpoints. The overrides match notebook 02's smoke runs (plus
    # checkpoint=true), so with a persistent compilation cache the two share compiled steps.
    tiny = ["n_layers=2", "d_model=32", "n_heads=2", "d_ff=64", "seq_len=32", "batch_size=4",
            "steps=10", "warmup_steps=2", "eval_every=5", "eval_batches=1", "log_every=5",
            "wandb=disabled", "checkpoint=true"]
    out = tempfile.mkdtemp(prefix="mhc-nb04-")
    for kind in RUN_DIRS:
        RUN_DIRS[kind] = os.path.join(out, kind)
        train.run(apply_overrides(recipes.get("tiny"), tiny + [f"residual={kind}"]),
                  RUN_DIRS[kind], verbose=False)
print("smoke:", SMOKE, "| runs:", RUN_DIRS)

# %% [markdown]
# ## Restore the model
# A run directory holds `config.json` (the resolved config) and `checkpoints/<step>/` (orbax).
# `mhc.load_run` builds a `Decoder` from the config and restores the weights of the latest
# checkpoint into it (or of `step=...`; the optimizer state is not needed for inspection).

# %%
loaded = {kind: mhc.load_run(run_dir) for kind, run_dir in RUN_DIRS.items()}
for kind, (model, cfg, step) in loaded.items():
    m = cfg.model
    print(f"{kind}: step {step}, residual={m.residual}, {m.n_layers} blocks "
          f"({2 * m.n_layers} sites), width {m.d_model}, n = {m.streams}, "
          f"res_init={m.res_init}, sinkhorn_iters={m.sinkhorn_iters}")

# %% [markdown]
# ## The maps on one held-out sequence
# The same split the training loop evaluates on (`mhc.data.train_val_split` with the run's
# `val_fraction`): here the first `seq_len` tokens of the validation split (`batch=1`; `mhc
# inspect` averages over 4 such windows by default).

# %%
reports = {}
for kind, (model, cfg, step) in loaded.items():
    maps, source = inspect_run.run_maps(model, cfg, batch=1)
    reports[kind] = inspect_run.map_report(maps)
    print(f"{kind}: maps.res {maps.res.shape} on the {source}")
cfg0 = loaded["mhc"].config

# %% [markdown]
# ## H_res heatmaps: one layer and the composite
# As in the paper's Fig. 8, maps are averaged over the tokens of the sequence; the composite is the
# product of all sites' `H_res` in application order (`mhc.composite`), formed per token and then
# averaged. Each row label carries the row sum (forward gain of that output stream) and each
# column label the column sum (backward gain of that input stream). We show the site whose own
# forward gain is largest.

# %%
def heatmap(ax, h_NxN, title):
    n = h_NxN.shape[0]
    lim = max(1.0, float(np.abs(h_NxN).max()))
    ax.imshow(h_NxN, cmap="RdBu_r", vmin=-lim, vmax=lim)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{h_NxN[i, j]:.2f}", ha="center", va="center", fontsize=7)
    ax.set_yticks(range(n), [f"{s:.2f}" for s in h_NxN.sum(1)], fontsize=7)
    ax.set_xticks(range(n), [f"{s:.2f}" for s in h_NxN.sum(0)], fontsize=7)
    ax.set(title=title, ylabel="row sums (output streams)", xlabel="column sums (input streams)")


fig, axes = plt.subplots(len(reports), 2, figsize=(8, 4 * len(reports)), squeeze=False)
chosen = {}
for row, (kind, r) in zip(axes, reports.items()):
    site = int(np.argmax(r["amax_fwd"]))
    chosen[kind] = site
    heatmap(row[0], r["res"][site], f"{kind}: H_res of site {site}")
    heatmap(row[1], r["composite"][-1], f"{kind}: composite of all {len(r['res'])} sites")
plt.tight_layout()
show("h-res")

# %% [markdown]
# For mHC every row sum is exactly 1 and every column sum is 1 up to Sinkhorn's truncation error,
# in the single layer and in the composite: the product of doubly stochastic maps is doubly
# stochastic (notebook 01). HC's maps are unconstrained: entries can be negative and sums drift
# from 1, and the drift multiplies through the composite. How far it drifts depends on training
# length and scale; the paper's 27B HC composite reaches gains near 3000 (Fig. 3).
#
# ## H_pre and H_post per layer
# `H_pre` decides how much of each stream the branch reads, `H_post` how much of the branch's
# output each stream receives. mHC keeps both non-negative (`sigmoid` and `2·sigmoid`, paper Eq. 8);
# HC's are `tanh`-gated and unconstrained.

# %%
fig, axes = plt.subplots(len(reports), 2, figsize=(9, 0.25 * 2 * cfg0.model.n_layers + 2.5 * len(reports)),
                         squeeze=False)
for row, (kind, r) in zip(axes, reports.items()):
    for ax, name in zip(row, ("pre", "post")):
        im = ax.imshow(r[name], aspect="auto", cmap="viridis")  # [2L, N]
        ax.set(title=f"{kind}: H_{name} (mean over tokens)", xlabel="stream",
               ylabel="connection site (2 per block)", xticks=range(r[name].shape[1]))
        plt.colorbar(im, ax=ax, fraction=0.05)
plt.tight_layout()
show("pre-post")

# %% [markdown]
# ## Amax gain and doubly-stochastic error per layer
# `mhc.map_stats` (in the report) gives, per site: the single-layer Amax gain (forward: max row
# sum, backward: max column sum, averaged over tokens), the same for the composite up to that
# site, and the worst row and column error over tokens. These are the numbers the training loop
# logs at every evaluation.

# %%
colors = {"hc": "tab:red", "mhc": "tab:blue"}

fig, axes = plt.subplots(1, 3, figsize=(15, 4))
for kind, s in reports.items():
    c = colors.get(kind, "k")
    sites = np.arange(1, len(s["amax_fwd"]) + 1)
    axes[0].plot(sites, s["amax_fwd"], "o-", color=c, ms=3, label=f"{kind} forward")
    axes[0].plot(sites, s["amax_bwd"], "s--", color=c, ms=3, label=f"{kind} backward")
    axes[1].plot(sites, s["composite_fwd"], "o-", color=c, ms=3, label=f"{kind} forward")
    axes[1].plot(sites, s["composite_bwd"], "s--", color=c, ms=3, label=f"{kind} backward")
    if kind != "hc":  # HC's maps are not meant to be doubly stochastic
        axes[2].semilogy(sites, np.maximum(s["ds_col_err"], 1e-9), "s--", color=c,
                         label=f"{kind} column error")
        axes[2].semilogy(sites, np.maximum(s["ds_row_err"], 1e-9), "o-", color=c,
                         label=f"{kind} row error")
axes[0].set(title="single-layer Amax gain", ylabel="gain (mean over tokens)")
axes[1].set(title="composite Amax gain up to the site", ylabel="gain (mean over tokens)")
axes[1].set_yscale("log")
axes[2].set(title="doubly-stochastic error", ylabel="max |sum − 1| over tokens")
for ax in axes:
    ax.set_xlabel("connection site (2 per block)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
plt.tight_layout()
show("gain")

for kind, s in reports.items():
    print(f"{kind:4s} composite gain at the last site: forward {s['composite_fwd'][-1]:.4g}, "
          f"backward {s['composite_bwd'][-1]:.4g}; worst single layer "
          f"{s['amax_fwd'].max():.4g} / {s['amax_bwd'].max():.4g}; smallest H_res entry "
          f"{s['res_min'].min():.3g}")

# %% [markdown]
# ## The same as a command
# `mhc inspect RUN_DIR [--step N] [--out PNG]` does all of the above for one run: the text below
# (per-site gains, diversity of H_res over depth, H_pre / H_post, the composite) and one PNG with
# every site's H_res, the composite up to each site, H_pre / H_post, the gains and the diversity.

# %%
result = inspect_run.inspect(RUN_DIRS["mhc"], out=os.path.join(tempfile.mkdtemp(), "mhc.png"))
print(result.text)
print("PNG:", result.png)

# %% [markdown]
# ## Summary
# One JSON line (the CI test reads it).

# %%
summary = {kind: {"sites": int(len(s["amax_fwd"])), "chosen_site": chosen[kind],
                  "composite_fwd": float(s["composite_fwd"][-1]),
                  "composite_bwd": float(s["composite_bwd"][-1]),
                  "layer_amax_fwd_max": float(s["amax_fwd"].max()),
                  "ds_row_err_max": float(s["ds_row_err"].max()),
                  "ds_col_err_max": float(s["ds_col_err"].max()),
                  "res_min": float(s["res_min"].min())}
           for kind, s in reports.items()}
assert abs(summary["mhc"]["composite_fwd"] - 1) < 1e-4 and summary["mhc"]["res_min"] >= 0
print("SUMMARY " + json.dumps(summary))
