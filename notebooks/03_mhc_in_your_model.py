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
# # 03 · Drop mHC into your own Flax model
#
# `mhc` is not tied to its transformer. Any network built from residual blocks
# `x = x + F(x)` can carry n streams instead and let a `HyperConnection` read, write and mix them:
#
# ```python
# streams = mhc.expand_streams(x_BxTxC, 4)             # copy x into 4 streams   [B, T, 4, C]
# streams = hc(streams, F)                              # H_res·x + H_postᵀ·F(H_pre·x)
# x = mhc.collapse_streams(streams)                     # or mhc.HyperHead(C, 4, rngs=...)
# ```
#
# Here the model is a small **MLP-Mixer** (Tolstikhin et al., 2021), written in plain Flax NNX
# for a synthetic 1-D signal task: tell which of four frequencies a noisy sinusoid has. It has two
# residual sites per block (token mixing and channel mixing), exactly like the two sites
# (attention, FFN) of a transformer block. We train it with plain residuals and with mHC (optax
# AdamW), compare the parameter overhead, and look at the learned maps. At the end, the same
# thing from Linen with `mhc.LinenHyperConnection`.
#
# Default: 300 training steps per model, under a minute or two on a CPU. `MHC_NOTEBOOK_SMOKE=1` in
# the environment selects the smallest setting (40 steps) used by the CI test.

# %%
import os

SMOKE = os.environ.get("MHC_NOTEBOOK_SMOKE", "0") == "1"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from flax import linen, nnx

import mhc
from mhc.plot import show  # inline in Jupyter; saved to ./figures when run as a script

STEPS = 40 if SMOKE else 300
BATCH = 64
SAMPLES, PATCH = 64, 4           # a signal of 64 samples is cut into 16 patches ("tokens") of 4
TOKENS = SAMPLES // PATCH
WIDTH, HIDDEN = 32, 64
BLOCKS = 2 if SMOKE else 3  # mixer blocks, 2 residual sites each
FREQS = np.array([2.0, 3.0, 5.0, 7.0])  # cycles per signal; the class is the index
print(f"smoke={SMOKE}: {BLOCKS} blocks, {STEPS} steps of {BATCH} signals")

# %% [markdown]
# ## Data: noisy sinusoids
# Each example is `sin(2π f t + φ) + noise` with a random phase φ and f one of four frequencies;
# the label is which one. The noise (σ = 1, same size as the signal) makes single patches
# uninformative, so the model has to combine information across tokens.

# %%
def make_batch(rng, size):
    """(signals [size, TOKENS, PATCH] float32, labels [size] int32)."""
    label = rng.integers(0, len(FREQS), size)
    phase = rng.uniform(0, 2 * np.pi, (size, 1))
    t = np.arange(SAMPLES) / SAMPLES
    x = np.sin(2 * np.pi * FREQS[label][:, None] * t + phase) + rng.normal(0, 1.0, (size, SAMPLES))
    return x.reshape(size, TOKENS, PATCH).astype(np.float32), label.astype(np.int32)


rng = np.random.default_rng(0)
test_x, test_y = make_batch(np.random.default_rng(123), 1024)
fig, ax = plt.subplots(figsize=(8, 2.5))
for k in range(len(FREQS)):
    i = int(np.argmax(test_y == k))
    ax.plot(test_x[i].ravel(), lw=1, label=f"class {k}: {FREQS[k]:g} cycles")
ax.set(xlabel="sample", ylabel="signal", title="one example per class")
ax.legend(fontsize=7, ncol=4)
show("signals")

# %% [markdown]
# ## The model with plain residuals
# Nothing here knows about `mhc`. `token_mix` and `channel_mix` are the two branches `F` (each with
# its own pre-norm).

# %%
class MLP(nnx.Module):
    def __init__(self, dim, hidden, *, rngs):
        self.up = nnx.Linear(dim, hidden, rngs=rngs)
        self.down = nnx.Linear(hidden, dim, rngs=rngs)

    def __call__(self, x):
        return self.down(nnx.gelu(self.up(x)))


class MixerBlock(nnx.Module):
    def __init__(self, *, rngs):
        self.norm1 = nnx.LayerNorm(WIDTH, rngs=rngs)
        self.token_mlp = MLP(TOKENS, HIDDEN, rngs=rngs)
        self.norm2 = nnx.LayerNorm(WIDTH, rngs=rngs)
        self.channel_mlp = MLP(WIDTH, HIDDEN, rngs=rngs)

    def token_mix(self, h_BxTxC):  # mixes across the T axis
        return jnp.swapaxes(self.token_mlp(jnp.swapaxes(self.norm1(h_BxTxC), -1, -2)), -1, -2)

    def channel_mix(self, h_BxTxC):
        return self.channel_mlp(self.norm2(h_BxTxC))

    def __call__(self, x_BxTxC):
        x_BxTxC = x_BxTxC + self.token_mix(x_BxTxC)
        return x_BxTxC + self.channel_mix(x_BxTxC)


class Mixer(nnx.Module):
    def __init__(self, *, rngs):
        self.embed = nnx.Linear(PATCH, WIDTH, rngs=rngs)
        self.blocks = nnx.List([MixerBlock(rngs=rngs) for _ in range(BLOCKS)])
        self.norm = nnx.LayerNorm(WIDTH, rngs=rngs)
        self.head = nnx.Linear(WIDTH, len(FREQS), rngs=rngs)

    def __call__(self, signals_BxTxP):
        x = self.embed(signals_BxTxP)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(axis=1))  # [B, classes]

# %% [markdown]
# ## The same model with mHC
# Three changes, marked `# mHC`: each block gets one `HyperConnection` per residual site (its
# `layer_index` sets which stream the site starts by reading, as in the paper's initialisation),
# the embedding is copied into 4 streams, and the streams are merged at the end by a learned
# `HyperHead` (DeepSeek-V4's collapse; `mhc.collapse_streams(streams)` would sum them instead,
# as HC does). The branches are the same methods as before: a branch sees `[B, T, C]`, so the
# token-mixing MLP works unchanged.

# %%
N_STREAMS = 4


class MixerBlockMHC(MixerBlock):
    def __init__(self, index, *, rngs):
        super().__init__(rngs=rngs)
        self.hc_token = mhc.HyperConnection(WIDTH, n_streams=N_STREAMS, kind="mhc",  # mHC
                                            layer_index=2 * index, rngs=rngs)
        self.hc_channel = mhc.HyperConnection(WIDTH, n_streams=N_STREAMS, kind="mhc",  # mHC
                                              layer_index=2 * index + 1, rngs=rngs)

    def __call__(self, streams_BxTxNxC):
        streams_BxTxNxC = self.hc_token(streams_BxTxNxC, self.token_mix)  # mHC
        return self.hc_channel(streams_BxTxNxC, self.channel_mix)  # mHC


class MixerMHC(Mixer):
    def __init__(self, *, rngs):
        super().__init__(rngs=rngs)
        self.blocks = nnx.List([MixerBlockMHC(i, rngs=rngs) for i in range(BLOCKS)])
        self.collapse = mhc.HyperHead(WIDTH, N_STREAMS, rngs=rngs)  # mHC

    def __call__(self, signals_BxTxP):
        streams = mhc.expand_streams(self.embed(signals_BxTxP), N_STREAMS)  # mHC: [B, T, N, C]
        for block in self.blocks:
            streams = block(streams)
        x = self.collapse(streams)  # mHC: [B, T, C]
        return self.head(self.norm(x).mean(axis=1))

# %% [markdown]
# ## Parameter overhead
# mHC adds, per site, one linear head from the flattened streams (n·C) to 2n + n² logits plus
# biases and three gates (paper Eqs. 7–9). Relative to this toy model that is noticeable; in the
# paper's 27B model the same heads are a negligible fraction of the weights.

# %%
def n_params(model):
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


plain, with_mhc = Mixer(rngs=nnx.Rngs(0)), MixerMHC(rngs=nnx.Rngs(0))
p_plain, p_mhc = n_params(plain), n_params(with_mhc)
print(f"plain residual: {p_plain:,} parameters")
print(f"mHC:            {p_mhc:,} parameters (+{p_mhc - p_plain:,}, "
      f"+{100 * (p_mhc - p_plain) / p_plain:.1f} %)")
print("one site:", {name: p[...].shape for name, p in with_mhc.blocks[0].hc_token.params.items()})

# %% [markdown]
# At initialisation mHC's maps are (close to) those of a plain residual network with copied
# streams: `H_res ≈ I`, and the dynamic terms start at zero. The two models are not numerically
# equal at step 0 (mHC's read weights are sigmoids of ±1 logits, not one-hot), but both start from
# the same branch weights (same seed).
#
# ## Training both with optax
# One jitted step for any model: `nnx.Optimizer` holds AdamW's state; `nnx.value_and_grad`
# differentiates the cross-entropy with respect to the parameters.

# %%
@nnx.jit
def train_step(model, optimizer, x, y):
    def loss_fn(model):
        logits = model(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def predict(model, x):
    return model(x)


def fit(model, steps=STEPS, seed=0):
    optimizer = nnx.Optimizer(model, optax.adamw(3e-3, weight_decay=1e-4), wrt=nnx.Param)
    data_rng = np.random.default_rng(seed)  # same batches for every model
    # The sites hold parameters only, so `train_step` compiles once for all steps, whatever
    # shapes `predict` sees in between (it compiles once per batch shape it is given).
    losses, start = [], time.perf_counter()
    for _ in range(steps):
        x, y = make_batch(data_rng, BATCH)
        losses.append(float(train_step(model, optimizer, x, y)))
    acc = float(np.mean(np.concatenate([np.argmax(predict(model, test_x[i:i + BATCH]), -1)
                                        for i in range(0, len(test_x), BATCH)]) == test_y))
    print(f"{type(model).__name__:9s} loss {losses[0]:.3f} -> {np.mean(losses[-10:]):.3f}, "
          f"test accuracy {acc:.3f} ({time.perf_counter() - start:.1f} s)")
    return np.array(losses), acc


curves = {"plain residual": fit(plain), "mHC (4 streams)": fit(with_mhc)}

# %%
fig, ax = plt.subplots(figsize=(7, 3.5))
for (name, (losses, acc)), c in zip(curves.items(), ["tab:gray", "tab:blue"]):
    smooth = np.convolve(losses, np.ones(5) / 5, mode="valid")
    ax.plot(np.arange(len(smooth)) + 5, smooth, color=c, label=f"{name}: test acc {acc:.2f}")
ax.axhline(np.log(len(FREQS)), color="k", lw=0.7, ls=":", label="chance (log 4)")
ax.set(xlabel="step", ylabel="training loss (5-step mean)", title="both models learn")
ax.legend(fontsize=8)
ax.grid(alpha=0.3)
show("loss")

# %% [markdown]
# ## The learned maps
# The sites keep nothing between calls (so `nnx.state(model)` is a plain checkpoint). To see the
# maps, ask for them: `mhc.capture_maps(model)(x)` runs the model and returns, for every site
# called, the `Maps(pre, post, res)` it used (per token), keyed by the site's path in the model.
# Inside `nnx.jit` it returns them out of the compiled function. Run the trained model once on a
# batch of test signals and average over examples and tokens.

# %%
@nnx.jit
def predict_with_maps(model, x):
    return mhc.capture_maps(model)(x)  # (logits, {"blocks.0.hc_token": Maps, ...})


_, captured = predict_with_maps(with_mhc, test_x[:BATCH])
sites = [(f"block {i} {name}", captured[f"blocks.{i}.hc_{name}"])
         for i in range(BLOCKS) for name in ("token", "channel")]
fig, axes = plt.subplots(1, len(sites), figsize=(2.3 * len(sites), 2.7))
for ax, (name, maps) in zip(axes, sites):
    res = np.asarray(maps.res.mean(axis=(0, 1)))  # [N, N]
    ax.imshow(res, vmin=0, vmax=1, cmap="Blues")
    for i in range(N_STREAMS):
        for j in range(N_STREAMS):
            ax.text(j, i, f"{res[i, j]:.2f}", ha="center", va="center", fontsize=6)
    ax.set(title=name, xlabel="input stream j", xticks=[], yticks=[])
axes[0].set_ylabel("output stream i")
fig.suptitle("H_res of each site (mean over tokens)", fontsize=9)
plt.tight_layout()
show("h-res")

res_all = jnp.stack([maps.res for _, maps in sites])  # [sites, B, T, N, N]
fwd, bwd = mhc.amax_gain(mhc.composite(res_all))
row_err, col_err = mhc.doubly_stochastic_error(res_all)
for name, maps in sites:
    print(f"{name:16s} H_pre {np.asarray(maps.pre.mean((0, 1))).round(2)}  "
          f"H_post {np.asarray(maps.post.mean((0, 1))).round(2)}")
print(f"composite over {len(sites)} sites: forward gain {float(fwd.max()):.6f}, "
      f"backward gain {float(bwd.max()):.6f}; worst column error {float(col_err.max()):.2e}")

# %% [markdown]
# ## Checkpointing
# The model holds parameters only, so the standard NNX checkpoint is enough: save `nnx.state`
# with orbax and restore it into a freshly built model.

# %%
import tempfile

import orbax.checkpoint as ocp

ckpt_path = os.path.join(tempfile.mkdtemp(), "mixer_mhc")
checkpointer = ocp.StandardCheckpointer()
checkpointer.save(ckpt_path, nnx.state(with_mhc))
checkpointer.wait_until_finished()
restored = MixerMHC(rngs=nnx.Rngs(1))  # other initial weights
nnx.update(restored, checkpointer.restore(ckpt_path, nnx.state(restored)))
same = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(nnx.state(restored)),
                                                jax.tree.leaves(nnx.state(with_mhc))))
print("restored bit for bit:", same)

# %% [markdown]
# ## The same from Linen
# For Linen code there is `mhc.LinenHyperConnection` (same parameters, same math). The branch can
# be any callable, including a Linen submodule of the parent; the maps are sown into the
# `intermediates` collection.

# %%
class LinenBlock(linen.Module):
    width: int = WIDTH

    @linen.compact
    def __call__(self, streams_BxTxNxC):
        ffn = linen.Sequential([linen.LayerNorm(), linen.Dense(HIDDEN), linen.gelu,
                                linen.Dense(self.width)])
        return mhc.LinenHyperConnection(self.width, n_streams=N_STREAMS, kind="mhc")(
            streams_BxTxNxC, ffn)


x_streams = mhc.expand_streams(jnp.ones((2, TOKENS, WIDTH)), N_STREAMS)
variables = jax.jit(LinenBlock().init)(jax.random.key(0), x_streams)
out, state = LinenBlock().apply(variables, x_streams, mutable=["intermediates"])
print("output streams:", out.shape, "| merged:", mhc.collapse_streams(out).shape)
print("connection parameters:", {k: v.shape for k, v in
                                  variables["params"]["LinenHyperConnection_0"].items()})
linen_maps = state["intermediates"]["LinenHyperConnection_0"]["maps"][0]
print("sown H_res at init (first token):\n", np.round(np.asarray(linen_maps.res[0, 0]), 3))

# %% [markdown]
# ## Summary
# One JSON line (the CI test reads it).

# %%
summary = {"params_plain": int(p_plain), "params_mhc": int(p_mhc),
           "acc_plain": curves["plain residual"][1], "acc_mhc": curves["mHC (4 streams)"][1],
           "first_loss_plain": float(curves["plain residual"][0][0]),
           "last_loss_plain": float(curves["plain residual"][0][-10:].mean()),
           "first_loss_mhc": float(curves["mHC (4 streams)"][0][0]),
           "last_loss_mhc": float(curves["mHC (4 streams)"][0][-10:].mean()),
           "composite_fwd": float(fwd.max()), "linen_out_shape": list(out.shape),
           "checkpoint_restored": same}
assert summary["checkpoint_restored"]
assert summary["params_mhc"] > summary["params_plain"]
assert abs(summary["composite_fwd"] - 1) < 1e-4
print("SUMMARY " + json.dumps(summary))
