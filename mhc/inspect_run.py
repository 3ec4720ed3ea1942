"""`mhc inspect RUN_DIR` and `mhc.load_run`: what a trained run's connection maps look like.

    model, cfg, step = mhc.load_run("runs/tiny-mhc-s0")          # latest checkpoint, no warnings
    report = mhc.inspect_run.inspect("runs/tiny-mhc-s0")         # RUN_DIR/inspect-<step>.png, .txt

The maps of a run are those of its model on data: the restored model runs forward on a few
held-out windows of the run's own corpus (the split the training loop evaluates on; the bundled
KJV text when a byte-level run's corpus file is gone) and every site's `H_pre`, `H_post`, `H_res`
is averaged over those tokens. The composite over depth is formed per token (the product of the
sites' `H_res` up to each site, `mhc.composite`) and then averaged, as the paper's Fig. 8 does.

Reported per site (site 2l is block l's attention, 2l + 1 its FFN), from `mhc.map_stats`:
  gain        single-site Amax gain of H_res, forward (max row sum) / backward (max column sum)
  composite   the same for the composite up to the site
  diversity   how much the site mixes streams: the entropy of H_res's rows (0 = a permutation,
              log N = uniform mixing), the off-diagonal mass (1 - mean diagonal) and the token
              std of H_res's entries (how much the dynamic term makes the map token-dependent)
  H_pre/H_post  the token-averaged read and write weights per stream
"""
from __future__ import annotations

import os
import typing

import numpy as np

from mhc.rundir import RunDirError


class LoadedRun(typing.NamedTuple):
    """`mhc.load_run`'s result; unpacks as `model, config, step`."""
    model: typing.Any  # mhc.model.Decoder
    config: typing.Any  # mhc.config.Config
    step: int


def saved_steps(run_dir: str) -> list[int]:
    """The complete checkpoints of a run, oldest first (orbax's temp directories are not steps)."""
    path = os.path.join(run_dir, "checkpoints")
    if not os.path.isdir(path):
        return []
    return sorted(int(name) for name in os.listdir(path)
                  if name.isdigit() and os.path.isdir(os.path.join(path, name)))


def load_run(run_dir: str, step: int | None = None) -> LoadedRun:
    """(model, config, step): the run's `Decoder` built from RUN_DIR/config.json with the weights
    of its latest (or the given) checkpoint; no optimizer state. Raises `RunDirError` (a
    ValueError) naming the directory or step when there is nothing to load."""
    from mhc import checkpoint

    if not os.path.isdir(run_dir):
        raise RunDirError(f"run directory {run_dir!r} does not exist")
    if not os.path.isfile(os.path.join(run_dir, "config.json")):
        raise RunDirError(f"{run_dir!r} has no config.json (not a run directory?)")
    steps = saved_steps(run_dir)
    if not steps:
        raise RunDirError(f"{run_dir!r} has no checkpoint (trained with checkpoint=false, or "
                          f"stopped before its first save)")
    if step is not None and step not in steps:
        raise RunDirError(f"{run_dir!r} has no checkpoint at step {step}; saved steps: "
                          f"{', '.join(map(str, steps))}")
    return LoadedRun(*checkpoint.load_model(run_dir, step))


def _windows(cfg, batch: int, seq_len: int) -> tuple[np.ndarray, str]:
    """([B, T] token windows of the run's held-out split, where they came from)."""
    from mhc import data

    t = cfg.train
    try:
        tokens, _ = data.load_tokens(t.corpus, t.token_dtype)
        source = f"held-out split of corpus {t.corpus!r}"
    except (OSError, ValueError):
        if cfg.model.vocab_size < data.VOCAB_SIZE:
            raise
        # a byte-level run whose corpus file moved: its maps on other bytes still say how it
        # mixes streams; the text output names the substitute
        tokens, _ = data.load_tokens("kjv")
        source = f"held-out split of the bundled kjv (the run's corpus {t.corpus!r} is missing)"
    _, val = data.train_val_split(tokens, t.val_fraction)
    count = min(batch, len(val) // seq_len)
    if count < 1:
        raise ValueError(f"the held-out split has {len(val)} tokens, fewer than seq_len={seq_len}")
    return np.asarray(val[:count * seq_len], np.int32).reshape(count, seq_len), source


def run_maps(model, cfg, *, batch: int = 4, seq_len: int | None = None):
    """(`Maps` of every site `[S, B, T, ...]`, data source): the loaded model forward on `batch`
    held-out windows of `seq_len` tokens (default: the run's training length)."""
    import jax.numpy as jnp
    from flax import nnx

    seq_len = seq_len or cfg.train.seq_len
    if not 1 <= seq_len <= cfg.model.max_seq_len:
        raise ValueError(f"seq_len={seq_len}; must be in 1..{cfg.model.max_seq_len} "
                         f"(the model's max_seq_len)")
    if batch < 1:
        raise ValueError(f"batch={batch}; must be >= 1")
    windows, source = _windows(cfg, batch, seq_len)
    maps = nnx.jit(lambda m, x: m.forward(x).maps)(model, jnp.asarray(windows))
    return maps, f"{source}, {windows.shape[0]} x {seq_len} tokens"


def map_report(maps) -> dict[str, np.ndarray]:
    """Token-averaged maps and per-site statistics (numpy) of `Maps` `[S, B, T, ...]`:
    `res` / `composite` `[S, N, N]` (composite up to each site), `pre` / `post` `[S, N]`, and
    the per-site `mhc.map_stats` arrays `[S]`."""
    from mhc import diagnostics

    stats = diagnostics.map_stats(maps.pre, maps.post, maps.res)
    composite = diagnostics.composite(maps.res, cumulative=True)  # per token, then averaged
    return {"res": np.asarray(maps.res.mean((1, 2))), "composite": np.asarray(composite.mean((1, 2))),
            "pre": np.asarray(maps.pre.mean((1, 2))), "post": np.asarray(maps.post.mean((1, 2))),
            **{k: np.asarray(v) for k, v in stats.items()}}


def _site_name(site: int) -> str:
    return f"{site // 2}.{'attn' if site % 2 == 0 else 'ffn'}"


def _matrix(h: np.ndarray) -> list[str]:
    return ["  " + " ".join(f"{v:8.4f}" for v in row) + f"  | row sum {row.sum():.4f}"
            for row in h] + ["  " + " ".join(f"{v:8.4f}" for v in h.sum(0)) + "  column sums"]


def format_report(header: str, r: dict[str, np.ndarray]) -> str:
    """The text of `mhc inspect`: a per-site table and the full-depth composite."""
    n = r["res"].shape[-1]
    lines = [header, "",
             f"{'site':>9} {'gain fwd':>9} {'bwd':>7} {'comp fwd':>9} {'bwd':>7} "
             f"{'entropy':>8} {'offdiag':>8} {'tok std':>8}  H_pre / H_post (mean over tokens)"]
    for s in range(r["res"].shape[0]):
        lines.append(
            f"{_site_name(s):>9} {r['amax_fwd'][s]:9.4f} {r['amax_bwd'][s]:7.4f} "
            f"{r['composite_fwd'][s]:9.4g} {r['composite_bwd'][s]:7.4g} "
            f"{r['res_entropy'][s]:8.4f} {r['res_offdiag'][s]:8.4f} {r['res_token_std'][s]:8.4f}"
            f"  {' '.join(f'{v:.3f}' for v in r['pre'][s])} / "
            f"{' '.join(f'{v:.3f}' for v in r['post'][s])}")
    lines += ["", f"composite of all {r['res'].shape[0]} sites' H_res (n = {n}, mean over "
                  f"tokens):", *_matrix(r["composite"][-1])]
    worst = int(np.argmax(r["amax_fwd"]))
    lines += [f"site {_site_name(worst)} (largest single-site forward gain):",
              *_matrix(r["res"][worst])]
    return "\n".join(lines)


def _grid(subfig, maps: np.ndarray, title: str, max_panels: int = 48) -> None:
    """Heatmaps of `maps` `[S, N, N]` on one colour scale; at most `max_panels`, evenly spaced
    over depth (the last site always shown), so a 60-block model stays legible."""
    sites = np.arange(len(maps))
    if len(sites) > max_panels:
        sites = np.unique(np.linspace(0, len(maps) - 1, max_panels).round().astype(int))
    cols = min(len(sites), 12)
    rows = -(-len(sites) // cols)
    axes = np.atleast_1d(subfig.subplots(rows, cols, squeeze=False)).ravel()
    lim = max(1.0, float(np.abs(maps[sites]).max()))
    n = maps.shape[-1]
    for ax, s in zip(axes, sites):
        ax.imshow(maps[s], cmap="RdBu_r", vmin=-lim, vmax=lim)
        if n <= 4 and len(sites) <= 24:  # numbers only where they fit
            for i in range(n):
                for j in range(n):
                    ax.text(j, i, f"{maps[s][i, j]:.2f}", ha="center", va="center", fontsize=6)
        ax.set_title(_site_name(s), fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[len(sites):]:
        ax.set_axis_off()
    shown = "" if len(sites) == len(maps) else f" ({len(sites)} of {len(maps)} sites)"
    subfig.suptitle(f"{title}{shown}; colour scale ±{lim:.3g}", fontsize=9)


def plot_report(r: dict[str, np.ndarray], title: str, out: str) -> str:
    """One PNG: H_res per site, the composite up to each site, H_pre / H_post per site, the gains
    and the diversity over depth."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    n_sites = r["res"].shape[0]
    grid_rows = -(-min(n_sites, 48) // 12)
    fig = plt.figure(figsize=(18, 3.2 * grid_rows * 2 + 4.5), layout="constrained")
    top, middle, bottom = fig.subfigures(3, 1, height_ratios=[grid_rows, grid_rows, 1.6])
    _grid(top, r["res"], "H_res per site (mean over tokens)")
    _grid(middle, r["composite"], "composite H_res up to each site (per token, then mean)")
    axes = bottom.subplots(1, 4)
    sites = np.arange(n_sites)
    for ax, name in zip(axes[:2], ("pre", "post")):
        im = ax.imshow(r[name].T, aspect="auto", cmap="viridis")
        ax.set(title=f"H_{name} (mean over tokens)", xlabel="site", ylabel="stream")
        bottom.colorbar(im, ax=ax, fraction=0.05)
    ax = axes[2]
    ax.plot(sites, r["amax_fwd"], "o-", ms=3, label="site forward")
    ax.plot(sites, r["amax_bwd"], "s--", ms=3, label="site backward")
    ax.plot(sites, r["composite_fwd"], "o-", ms=3, label="composite forward")
    ax.plot(sites, r["composite_bwd"], "s--", ms=3, label="composite backward")
    gains = np.concatenate([r["amax_fwd"], r["amax_bwd"], r["composite_fwd"], r["composite_bwd"]])
    if gains.min() > 0 and gains.max() > 20 * gains.min():
        ax.set_yscale("log")
    ax.set(title="Amax gain over depth", xlabel="site")
    ax = axes[3]
    ax.plot(sites, r["res_entropy"], "o-", ms=3, label="row entropy (nats)")
    ax.plot(sites, r["res_offdiag"], "s--", ms=3, label="off-diagonal mass")
    ax.plot(sites, r["res_token_std"], "^:", ms=3, label="token std")
    ax.set(title="H_res diversity over depth", xlabel="site")
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes[:2]:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes[2:]:
        if ax.get_yscale() == "linear":  # gains near 1: no "1e-5+1" offset label
            ax.ticklabel_format(axis="y", useOffset=False)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


class Inspection(typing.NamedTuple):
    text: str
    png: str
    step: int
    report: dict  # map_report's arrays


def inspect(run_dir: str, step: int | None = None, out: str | None = None, *, batch: int = 4,
            seq_len: int | None = None) -> Inspection:
    """Load the run at `step` (default: latest), compute its maps on held-out data, write the PNG
    (default RUN_DIR/inspect-<step>.png) and the text beside it (same name, .txt), and return
    both."""
    model, cfg, step = load_run(run_dir, step)
    m = cfg.model
    if m.residual == "residual":
        raise ValueError(f"{run_dir!r} is a residual=residual run: one stream, no maps to inspect")
    maps, source = run_maps(model, cfg, batch=batch, seq_len=seq_len)
    r = map_report(maps)
    # HC's maps are not projected onto a manifold, so its `manifold` setting means nothing
    connection = f"residual={m.residual}" + (f" manifold={m.manifold}" if m.residual != "hc"
                                             else "")
    title = (f"{os.path.basename(os.path.abspath(run_dir))} step {step}: {connection} "
             f"n={m.n_streams}, {m.n_layers} blocks ({r['res'].shape[0]} sites)")
    header = f"{title}\nmaps on the {source}"
    out = out or os.path.join(run_dir, f"inspect-{step}.png")
    if os.path.dirname(os.path.abspath(out)):
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    text = format_report(header, r)
    with open(os.path.splitext(out)[0] + ".txt", "w") as f:  # the numbers beside the picture
        f.write(text + "\n")
    return Inspection(text, plot_report(r, title, out), step, r)
