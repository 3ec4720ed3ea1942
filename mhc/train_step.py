"""The pure training step: LR schedule, optimizer, loss, `train_step_body`, evaluation and the
FLOPs a step costs. No host state: `mhc.train` runs it in the fault-tolerant loop, `mhc.aot`
compiles it ahead of time, `mhc.sharding.shard_step` shards it.

    optimizer = train_step.make_optimizer(model, cfg)
    metrics, per_layer = nnx.jit(train_step.train_step_body)(model, optimizer, batch)
"""
from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from mhc import data, diagnostics, distill, recipes
from mhc.config import Config
from mhc.model import Decoder

DECAYED = ("kernel", "embedding", "phi", "theta_pre", "theta_post", "theta_res")
# CPU MFU assumption: AVX2 with two FMA units = 8 lanes x 2 FLOP x 2 units = 32 FLOP/cycle/core,
# at 3 GHz. Accelerators: dense bf16 peak per device, by a substring of `device_kind`.
CPU_PEAK_FLOPS_PER_CORE = 32 * 3e9
PEAK_FLOPS = {"h100": 989e12, "h200": 989e12, "b200": 2250e12, "a100": 312e12,
              "v6": 918e12, "v5p": 459e12, "v5": 197e12, "v4": 275e12}


def lr_schedule(cfg: Config) -> optax.Schedule:
    """Linear warmup to `lr`, then x0.316 at 80 % and x0.1 at 90 % of training (paper Table 5),
    or `lr` to the end with `lr_schedule="constant"` (edge-of-stability runs)."""
    t = cfg.train
    warmup = optax.linear_schedule(0.0, t.lr, max(t.warmup_steps, 1)) if t.warmup_steps else None
    length = t.schedule_steps or t.steps  # an extended run keeps its schedule (config.extend)
    first, second = (max(int(f * length) - t.warmup_steps, 1) for f in (0.8, 0.9))
    decay = optax.piecewise_constant_schedule(
        t.lr, {} if t.lr_schedule == "constant" else {first: 0.316,
                                                       max(second, first + 1): 0.1 / 0.316})
    if warmup is None:
        return decay
    return optax.join_schedules([warmup, decay], [t.warmup_steps])


def _decay_mask(params):
    """Weight decay on weight matrices only; norms, static HC/mHC maps and gates are exempt."""
    def leaf_mask(path, _):
        names = [getattr(k, "key", getattr(k, "name", None)) for k in path]
        return any(n in DECAYED for n in names)
    return jax.tree_util.tree_map_with_path(leaf_mask, params)


CONNECTION_PARAMS = ("attn_hc", "ffn_hc", "head_collapse")  # modules of the connection maps


def _connection_mask(params):
    """True for the parameters of the HC/mHC sites and the HyperHead."""
    def leaf_mask(path, _):
        return any(getattr(k, "key", getattr(k, "name", None)) in CONNECTION_PARAMS for k in path)
    return jax.tree_util.tree_map_with_path(leaf_mask, params)


def make_optimizer(model: nnx.Module, cfg: Config) -> nnx.Optimizer:
    t = cfg.train
    tx = optax.adamw(lr_schedule(cfg), b1=t.b1, b2=t.b2, eps=t.adam_eps,
                     weight_decay=t.weight_decay, mask=_decay_mask)
    if t.connection_lr_mult != 1:  # AdamW's step (and its decay) scaled for those parameters
        tx = optax.chain(tx, optax.masked(optax.scale(t.connection_lr_mult), _connection_mask))
    if t.grad_clip > 0:
        tx = optax.chain(optax.clip_by_global_norm(t.grad_clip), tx)
    return nnx.Optimizer(model, tx, wrt=nnx.Param)


def cross_entropy(logits_BxTxV, targets_BxT) -> jax.Array:
    return optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, targets_BxT).mean()


def _map_metrics(maps, res0_NxN, stream_diversity_BxT=None) -> tuple[dict, dict]:
    """Scalar diagnostics (composite/single Amax and mean-zero gains, H statistics, H_res's
    movement from `res0`, the sites' initial map, the token mean of the last site's stream
    diversity) and the per-layer arrays."""
    stats = diagnostics.map_stats(maps.pre, maps.post, maps.res, res0_NxN)
    diversity = ({} if stream_diversity_BxT is None
                 else {"stream_diversity": stream_diversity_BxT.mean()})
    return {**diagnostics.summarize(stats),
            "h_pre_mean": stats["pre_mean"].mean(), "h_post_mean": stats["post_mean"].mean(),
            "h_res_diag_mean": stats["res_diag_mean"].mean(),
            "h_res_min": stats["res_min"].min(), **diversity}, stats


def _router_metrics(router: dict) -> dict:
    if not router:
        return {}
    load = router["load"]  # [L_moe, E] assignments per expert
    return {"router_imbalance": jnp.max(load.max(-1) / jnp.maximum(load.mean(-1), 1e-9)),
            "router_dropped": router["dropped"].sum() / jnp.maximum(load.sum(), 1.0)}


def _loss_fn(model: Decoder, batch: dict, distill_args: tuple[float, float] | None = None):
    """(training objective, (ModelOutput, losses)): next-token cross-entropy ("loss"), plus
    `mtp_weight` x the multi-token-prediction loss when the model has that head. With
    `distill_args` (weight, temperature) and the teacher's logits in `batch["teacher_logits"]`,
    the next-token part is `mhc.distill.objective` of the CE and the KL to the teacher (both
    logged, "distill_kl" and "distill_objective")."""
    inputs_BxT, targets_BxT = batch["inputs"], batch["targets"]
    out = model.forward(inputs_BxT)
    losses = {"loss": cross_entropy(out.logits, targets_BxT)}
    objective = losses["loss"]
    if distill_args is not None:
        weight, temperature = distill_args
        losses["distill_kl"] = distill.kl_divergence(out.logits, batch["teacher_logits"],
                                                     temperature)
        objective = losses["distill_objective"] = distill.objective(
            objective, losses["distill_kl"], weight, temperature)
    if out.mtp_logits is not None:
        # position t predicts token t+2 = targets[:, t+1]; the last position has no target
        losses["mtp_loss"] = cross_entropy(out.mtp_logits[:, :-1], targets_BxT[:, 1:])
        objective = objective + model.cfg.mtp_weight * losses["mtp_loss"]
    return objective, (out, losses)


def _loss_and_grads(model: Decoder, batch: dict, microbatches: int,
                    distill_args: tuple[float, float] | None = None):
    """(losses, ModelOutput, grads w.r.t. Params). With microbatches > 1 the batch is split
    into interleaved slices (row i goes to slice i mod m, so a sharded batch needs no data
    movement); gradients and losses are averaged over slices, router loads summed, and the maps
    of the last slice are returned for diagnostics."""
    grad_fn = nnx.value_and_grad(_loss_fn, has_aux=True)
    if microbatches == 1:
        (_, (out, losses)), grads = grad_fn(model, batch, distill_args)
        return losses, out, grads
    b = batch["inputs"].shape[0]
    if b % microbatches:
        raise ValueError(f"batch_size={b} is not divisible by microbatches={microbatches}")
    slices = jax.tree.map(lambda a: jnp.swapaxes(a.reshape(b // microbatches, microbatches,
                                                           *a.shape[1:]), 0, 1), batch)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def one(carry, mb):
        # the state rides in the carry: NNX states must enter a traced function as arguments
        (params, rest), total_grads = carry
        (_, (out, losses)), grads = grad_fn(nnx.merge(graphdef, params, rest), mb, distill_args)
        return ((params, rest), jax.tree.map(jnp.add, total_grads, grads)), (out, losses)

    zero_grads = jax.tree.map(jnp.zeros_like, params)
    (_, grads), (outs, losses) = jax.lax.scan(one, ((params, rest), zero_grads), slices)
    out = jax.tree.map(lambda a: a[-1], outs)
    if out.router:
        out = out._replace(router={k: v.sum(0) for k, v in outs.router.items()})
    losses = jax.tree.map(lambda v: v.mean(0), losses)
    return losses, out, jax.tree.map(lambda g: g / microbatches, grads)


def train_step_body(model: Decoder, optimizer: nnx.Optimizer, batch: dict,
                    microbatches: int = 1, schedule: optax.Schedule | None = None,
                    teacher: Decoder | None = None, distill_args: tuple[float, float] = (0.5, 2.0)):
    """One update, in place: loss, gradients (Params only; accumulated over `microbatches`),
    AdamW, then the MoE routers' aux-loss-free balancing from this batch's load.
    Returns (scalar metrics, per-layer stats). Plain function so it can be jitted as is
    (`mhc.train.Stepper`) or with explicit shardings (`mhc.sharding.shard_step`).

    If a loss or the gradient norm is not finite the update is discarded inside the step:
    parameters, router biases and optimizer state (including its step count, hence the lr
    schedule) are unchanged and `metrics["finite"]` is False. A `batch["poison"]` entry (one
    flag per row; debug only, TrainConfig.debug_nan_steps) forces that case by making the losses
    and gradients NaN. With the optimizer's `schedule` (`lr_schedule(cfg)`), `metrics["lr"]` is
    the learning rate this update used.

    With a `teacher` (a frozen `Decoder`, `mhc.distill`), its logits on the whole batch are
    computed first, outside the differentiated function, and the objective distils them with
    `distill_args` = (distill_weight, distill_temperature); the teacher is only read.
    """
    batch = dict(batch)
    poison = batch.pop("poison", None)
    if teacher is not None:
        batch["teacher_logits"] = jax.lax.stop_gradient(teacher.forward(batch["inputs"]).logits)
    losses, out, grads = _loss_and_grads(model, batch, microbatches,
                                         distill_args if teacher is not None else None)
    if poison is not None:
        nan_or_one = jnp.where(jnp.any(poison), jnp.nan, 1.0)
        losses, grads = jax.tree.map(lambda v: v * nan_or_one, (losses, grads))
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(grad_norm) & jnp.all(jnp.isfinite(jnp.stack(jax.tree.leaves(losses))))
    # signed: nnx counts in uint32, and the schedule's `threshold - count` wraps around in
    # unsigned arithmetic (the logged lr went back up past the last decay boundary)
    updates_done = optimizer.step[...].astype(jnp.int32)
    before = jax.tree.map(lambda x: x, nnx.state((model, optimizer)))
    optimizer.update(model, grads)
    if out.router:
        model.balance_routers(out.router["load"])
    nnx.update((model, optimizer), jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                                                nnx.state((model, optimizer)), before))
    scalars, per_layer = _map_metrics(out.maps, model.initial_res(), out.stream_diversity)
    lr = {} if schedule is None else {"lr": schedule(updates_done)}
    return {**losses, "grad_norm": grad_norm, "finite": finite, **lr,
            **scalars, **_router_metrics(out.router)}, per_layer



@nnx.jit
def eval_step(model: Decoder, batch: dict):
    logits, _ = model(batch["inputs"])
    return cross_entropy(logits, batch["targets"])


def evaluate(model: Decoder, val_tokens: np.ndarray, cfg: Config) -> float:
    """Mean loss over the first `eval_batches` unshuffled batches of the held-out split."""
    t = cfg.train
    it = iter(data.batches(val_tokens, batch_size=t.batch_size, seq_len=t.seq_len, seed=0,
                           shuffle=False, num_epochs=1))
    losses = [float(eval_step(model, next(it))) for _ in range(t.eval_batches)]
    return float(np.mean(losses))


def model_flops_per_token(cfg: Config, active_params: int) -> float:
    """Training FLOPs per token: 6·N_active (matmuls, forward + backward) plus causal attention,
    3·L·H·T·(d_qk + d_v) (scores and values over T/2 keys on average, x3 for the backward)."""
    m, t = cfg.model, cfg.train.seq_len
    if m.attention == "mla":
        d_qk, d_v = m.qk_nope_dim + m.qk_rope_dim, m.v_head_dim
    else:
        d_qk = d_v = m.d_model // m.n_heads
    return 6.0 * active_params + 3.0 * m.n_layers * m.n_heads * t * (d_qk + d_v)


def flops_per_token(cfg: Config) -> float:
    """Training FLOPs per token, `model_flops_per_token`: 6 x the active parameters (every
    matmul weight a token uses: no embedding lookup, only the active experts) plus causal
    attention. The HC/mHC coefficient path is not counted (it is small)."""
    return model_flops_per_token(cfg, recipes.count_params(cfg)[0])


def peak_flops(per_device: float = 0.0) -> float:
    """Peak FLOP/s of the whole job: `per_device` (0 = auto, see PEAK_FLOPS) x devices. A CPU
    process counts as one device using every core; unknown accelerators give nan (no MFU)."""
    device = jax.devices()[0]
    if device.platform == "cpu":
        return per_device * jax.process_count() or (os.cpu_count() or 1) * CPU_PEAK_FLOPS_PER_CORE
    kind = device.device_kind.lower()
    per_device = per_device or next((v for k, v in PEAK_FLOPS.items() if k in kind), math.nan)
    return per_device * jax.device_count()
