"""Frozen dataclass configs with validation that names the bad field, and `key=value` overrides."""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import typing

from mhc import connections, manifolds
from mhc.metrics import WANDB_MODES
from mhc.model_choices import ATTENTION, DISPATCH, FFN, FP8, MTP_FFN, router_group_error
from mhc.remat import REMAT

DTYPES = ("auto", "float32", "bfloat16")  # auto: bfloat16 on GPU/TPU, float32 on CPU
COLLAPSE = (*connections.COLLAPSE, "head")  # head: a learned HyperHead (mhc.layers)
TOKEN_DTYPES = ("auto", "uint16", "uint32")
LR_SCHEDULES = ("paper", "constant")  # after the linear warmup (see mhc.train_step.lr_schedule)


class ConfigError(ValueError):
    """A bad configuration value; the message names the field and what is allowed."""


def _check(ok: bool, message: str):
    if not ok:
        raise ConfigError(message)


def _positive_int(obj, *names):
    for name in names:
        value = getattr(obj, name)
        _check(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
               f"{name}={value!r}; must be an integer >= 1")


def _choice(obj, name, allowed):
    value = getattr(obj, name)
    _check(value in allowed, f"{name}={value!r}; allowed: {', '.join(map(str, allowed))}")


@dataclasses.dataclass(frozen=True)
class ModelConfig(connections.ConnectionOptions):
    """Decoder-only byte-level model; the residual connection is chosen by `residual` alone. The
    connection's options (`n_streams`, `manifold`, `sinkhorn_iters`, ...) are inherited from
    `connections.ConnectionOptions`, defined there once and validated by `connection_spec()`."""
    vocab_size: int = 256
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 384
    max_seq_len: int = 512
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6
    init_std: float = 0.02
    dtype: str = "auto"  # compute dtype; the HC/mHC coefficient path is fp32 regardless
    remat: str = "none"  # none | full | dots | mhc | streams (see mhc/model/transformer.py)
    remat_group: int = 1  # blocks recomputed together (L_r of paper Eq. 20); 0 = the optimum
    # the connection: its kind, plus the inherited ConnectionOptions (see mhc.connections)
    residual: str = "mhc"
    # > 0: a learned per-stream offset [N, C], drawn N(0, std), is added to the copied streams at
    # expansion, so the streams differ from the first site on (copies make every doubly
    # stochastic H_res act as the identity until the streams diverge)
    stream_offset_std: float = 0.0
    collapse: str = "sum"
    # DeepSeek-V4.1's single-pass mHC: each site reads its streams with the previous site's
    # H_pre (the first with a one-hot on stream 0) and the final merge uses the last site's
    # H_pre in place of `collapse`; post and res stay at their own site (mhc.model.transformer)
    single_pass: bool = False
    learned_maps: str = "pre,post,res"  # Table 1 ablation: the others are fixed (1/N, 1, I)
    # attention: "mha" (RoPE on d_model/n_heads) or "mla" (DeepSeek latent attention)
    attention: str = "mha"
    kv_lora_rank: int = 512
    # > 0: low-rank queries q = W_up RMSNorm(W_down x) of this rank (DeepSeek-V2/V3; V3: 1536);
    # 0 = full-rank queries q = W x (the mHC paper gives no query rank)
    q_lora_rank: int = 0
    qk_nope_dim: int = 128
    qk_rope_dim: int = 64
    v_head_dim: int = 128
    # feed-forward: "dense" (SwiGLU of width d_ff everywhere) or "moe" (first n_dense_layers
    # dense, then shared + routed experts, DeepSeek-V3 style)
    ffn: str = "dense"
    n_dense_layers: int = 1  # DeepSeek-V3's first_k_dense_replace
    n_routed_experts: int = 64
    n_shared_experts: int = 2
    n_active_experts: int = 6
    expert_ff: int = 896
    capacity_factor: float = 1.25
    moe_dispatch: str = "auto"
    routed_scale: float = 1.0  # gating weights (normalised to sum 1) x this; DeepSeek-V3: 2.5
    router_bias_rate: float = 1e-3
    # group-limited routing (DeepSeek-V3's node-limited routing; its n_group / topk_group): the
    # routed experts form router_groups equal groups, and each token picks its experts within
    # the router_topk_groups groups whose two best biased scores sum highest (mhc.model.routing).
    # 1 group = plain top-k over all experts
    router_groups: int = 1
    router_topk_groups: int = 1
    # multi-token prediction (DeepSeek-V3 style, depth 1): predicts token t+2 from the final
    # hidden state and the embedding of token t+1; adds mtp_weight x its loss. 0 = off.
    mtp_depth: int = 0
    mtp_weight: float = 0.1
    mtp_ffn: str = "dense"  # the MTP block's FFN: dense (d_ff) or moe (as V3's; needs ffn=moe)
    # "deepseek": DeepSeek-V3's FP8 training (mhc.fp8) for the attention projections, dense FFNs,
    # shared and routed experts and the MTP projection: e4m3 inputs forward and backward, 1x128
    # activation tiles, 128x128 weight blocks, fp32 promotion every 128. Embeddings, LM head,
    # router, norms, attention scores and the whole HC/mHC coefficient path keep their precision
    fp8: str = "none"

    def __post_init__(self):
        _positive_int(self, "vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_seq_len")
        _choice(self, "attention", ATTENTION)
        _choice(self, "ffn", FFN)
        _choice(self, "moe_dispatch", DISPATCH)
        _check(self.mtp_depth in (0, 1), f"mtp_depth={self.mtp_depth!r}; allowed: 0, 1")
        _check(self.mtp_weight >= 0, f"mtp_weight={self.mtp_weight!r}; must be >= 0")
        _choice(self, "mtp_ffn", MTP_FFN)
        _choice(self, "fp8", FP8)
        _check(self.fp8 == "none" or self.ffn == "dense" or self.moe_dispatch != "ragged",
               f"fp8={self.fp8!r} with moe_dispatch='ragged': the FP8 expert GEMMs are batched "
               f"per expert; allowed: moe_dispatch=capacity or auto (capacity under fp8)")
        _check(self.mtp_ffn == "dense" or self.ffn == "moe",
               f"mtp_ffn={self.mtp_ffn!r} needs ffn='moe' (got ffn={self.ffn!r})")
        if self.attention == "mha":
            _check(self.d_model % self.n_heads == 0,
                   f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
            _check((self.d_model // self.n_heads) % 2 == 0,
                   f"head dim d_model/n_heads={self.d_model // self.n_heads} must be even for RoPE")
        else:
            _positive_int(self, "kv_lora_rank", "qk_nope_dim", "qk_rope_dim", "v_head_dim")
            _check(self.qk_rope_dim % 2 == 0, f"qk_rope_dim={self.qk_rope_dim} must be even")
            _check(isinstance(self.q_lora_rank, int) and self.q_lora_rank >= 0,
                   f"q_lora_rank={self.q_lora_rank!r}; must be an integer >= 0")
        if self.ffn == "moe":
            _positive_int(self, "n_routed_experts", "n_active_experts", "expert_ff")
            _check(self.n_active_experts <= self.n_routed_experts,
                   f"n_active_experts={self.n_active_experts} exceeds "
                   f"n_routed_experts={self.n_routed_experts}")
            _check(0 <= self.n_dense_layers <= self.n_layers,
                   f"n_dense_layers={self.n_dense_layers}; must be in [0, n_layers={self.n_layers}]")
            _check(self.n_shared_experts >= 0,
                   f"n_shared_experts={self.n_shared_experts}; must be >= 0")
            _check(self.capacity_factor > 0, f"capacity_factor={self.capacity_factor}; must be > 0")
            error = router_group_error(self.n_routed_experts, self.n_active_experts,
                                       self.router_groups, self.router_topk_groups)
            _check(error is None, error)
        _choice(self, "dtype", DTYPES)
        _choice(self, "remat", REMAT)
        _check(isinstance(self.remat_group, int) and self.remat_group >= 0,
               f"remat_group={self.remat_group!r}; must be an integer >= 0 (0 = automatic)")
        _choice(self, "collapse", COLLAPSE)
        _check(self.norm_eps > 0, f"norm_eps={self.norm_eps!r}; must be > 0")
        _check(self.init_std > 0, f"init_std={self.init_std!r}; must be > 0")
        _check(self.stream_offset_std >= 0,
               f"stream_offset_std={self.stream_offset_std!r}; must be >= 0 (0 = plain copies)")
        _choice(self, "residual", connections.KINDS)  # the spec's `kind`, by its config name
        _check(isinstance(self.single_pass, bool), f"single_pass={self.single_pass!r}; must be "
               f"true or false")
        if self.single_pass:
            _check(self.residual in ("mhc", "mhc_lite"), f"single_pass=true needs residual=mhc "
                   f"(or mhc_lite); got residual={self.residual!r}")
            _check(self.collapse == "sum", f"collapse={self.collapse!r} with single_pass=true: "
                   f"the final merge is the last site's H_pre; leave collapse=sum")
            _check("pre" in self.learned_maps, f"learned_maps={self.learned_maps!r} with "
                   f"single_pass=true: the carried pre-mix must be learned")
        try:  # the connection's options, validated once, where they are defined
            self.connection_spec()
        except ValueError as e:
            raise ConfigError(str(e)) from None

    @property
    def n_moe_layers(self) -> int:
        return self.n_layers - self.n_dense_layers if self.ffn == "moe" else 0

    @property
    def streams(self) -> int:
        """Streams actually carried: a plain residual needs one."""
        return 1 if self.residual == "residual" else self.n_streams

    @property
    def compute_dtype(self) -> str:
        """The resolved compute dtype: "auto" is bfloat16 on GPU/TPU and float32 on CPU (the
        platform of the mesh in context, `mhc.targets.current_platform`)."""
        if self.dtype != "auto":
            return self.dtype
        from mhc import targets
        return "bfloat16" if targets.current_platform() in ("gpu", "tpu") else "float32"

    def connection_spec(self) -> connections.ConnectionSpec:
        """The spec of every site: the inherited options as they are, plus width, kind, streams
        carried (1 for a plain residual), norm epsilon and the learned maps."""
        options = {f.name: getattr(self, f.name)
                   for f in dataclasses.fields(connections.ConnectionOptions)}
        return connections.ConnectionSpec(
            **{**options, "n_streams": self.streams}, width=self.d_model, kind=self.residual,
            norm_eps=self.norm_eps,
            learned_maps=tuple(m.strip() for m in self.learned_maps.split(",") if m.strip()))


def _resume_safe(default):
    """A TrainConfig field that `mhc train --resume` may change: it does not touch the math of the
    run (logging, eval, checkpoints, faults), or it reshards it (`mesh`; `microbatches` changes
    only the order of float sums, to fit the memory of another mesh)."""
    return dataclasses.field(default=default, metadata={"resume_safe": True})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation, data and logging. Schedule: linear warmup, then the paper's step decay
    (x0.316 at 80 % and x0.1 at 90 % of `steps`) or, with lr_schedule=constant, `lr` throughout."""
    steps: int = 200
    batch_size: int = 16
    seq_len: int = 128
    lr: float = 3e-3
    lr_schedule: str = "paper"  # paper: x0.316 at 80 %, x0.1 at 90 % of steps; constant: none
    # the length the schedule is laid out over (0 = steps). `mhc train --resume --steps N` pins it
    # to the finished length, so an extended run continues at its final LR (no re-warm-up jump
    # from x0.1 back to lr; see extend)
    schedule_steps: int = 0
    warmup_steps: int = 20
    weight_decay: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    adam_eps: float = 1e-8
    grad_clip: float = 1.0
    # learning-rate multiplier of the connection parameters (HC/mHC maps, HyperHead): the
    # short-run stand-in for the paper's 50k steps, so that H_res moves within a CPU budget
    connection_lr_mult: float = 1.0
    # gradient accumulation: the batch is split into this many slices
    microbatches: int = _resume_safe(1)
    # e.g. "fsdp=4,expert=2" (axes data, fsdp, expert, tensor); "" = one device
    mesh: str = _resume_safe("")
    seed: int = 0
    corpus: str = "kjv"
    val_fraction: float = 0.05
    eval_every: int = _resume_safe(50)
    eval_batches: int = _resume_safe(4)
    log_every: int = _resume_safe(10)
    out_dir: str = _resume_safe("runs")
    run_name: str = _resume_safe("")
    wandb: str = _resume_safe("offline")
    wandb_project: str = _resume_safe("mhc")
    # data: `corpus` is "kjv", "shakespeare", a .txt file / directory, or a pre-tokenized .bin
    # (see `mhc data prepare`); `token_dtype` only matters for a .bin without its .json sidecar
    token_dtype: str = "auto"
    # checkpoints (orbax, async): every `checkpoint_every` steps (0 = only at the end), keep the
    # last `keep_last`, and also keep every step divisible by `keep_every` (0 = off)
    checkpoint: bool = _resume_safe(True)
    checkpoint_every: int = _resume_safe(100)
    keep_last: int = _resume_safe(3)
    keep_every: int = _resume_safe(0)
    async_checkpoint: bool = _resume_safe(True)
    # fault handling: a step whose loss or gradients are not finite is skipped (no update);
    # `nan_patience` bad steps in a row save a checkpoint and abort. A loss above
    # mean + spike_sigma * std of the last `spike_window` losses is logged as a spike (0 = off).
    nan_patience: int = _resume_safe(5)
    spike_window: int = _resume_safe(50)
    spike_sigma: float = _resume_safe(6.0)
    # MFU: peak FLOP/s per device (0 = auto: a table for known accelerators; CPU assumes
    # 32 fp32 FLOP/cycle/core at 3 GHz x all cores, i.e. AVX2 with two FMA units)
    peak_flops: float = _resume_safe(0.0)
    # DEBUG ONLY (tests of the NaN guard): steps whose loss and gradients are forced to NaN
    debug_nan_steps: tuple[int, ...] = _resume_safe(())
    # knowledge distillation (Hinton et al. 2015; mhc.distill): `teacher` is a run directory
    # (its config.json and latest checkpoint; "" = off), frozen and run in the same jitted step;
    # the objective is (1 - distill_weight) x CE(data) + distill_weight x T^2 x
    # KL(p_teacher^T || p_student^T), T = distill_temperature. Teacher and student share the
    # vocabulary; any residual kind on either side
    teacher: str = ""
    distill_weight: float = 0.5
    distill_temperature: float = 2.0

    def __post_init__(self):
        _positive_int(self, "steps", "batch_size", "seq_len", "eval_every", "eval_batches",
                      "log_every", "microbatches", "keep_last", "nan_patience")
        for name in ("checkpoint_every", "keep_every", "schedule_steps"):
            value = getattr(self, name)
            _check(isinstance(value, int) and not isinstance(value, bool) and value >= 0,
                   f"{name}={value!r}; must be an integer >= 0 (0 = "
                   f"{'steps' if name == 'schedule_steps' else 'off'})")
        _check(isinstance(self.spike_window, int) and self.spike_window >= 2,
               f"spike_window={self.spike_window!r}; must be an integer >= 2")
        _check(self.spike_sigma >= 0, f"spike_sigma={self.spike_sigma!r}; must be >= 0 (0 = off)")
        _check(self.peak_flops >= 0, f"peak_flops={self.peak_flops!r}; must be >= 0 (0 = auto)")
        _choice(self, "token_dtype", TOKEN_DTYPES)
        _choice(self, "lr_schedule", LR_SCHEDULES)
        _check(isinstance(self.debug_nan_steps, tuple)
               and all(isinstance(s, int) and s >= 1 for s in self.debug_nan_steps),
               f"debug_nan_steps={self.debug_nan_steps!r}; must be step numbers >= 1")
        _check(self.batch_size % self.microbatches == 0,
               f"batch_size={self.batch_size} is not divisible by microbatches={self.microbatches}")
        _check(isinstance(self.warmup_steps, int) and 0 <= self.warmup_steps,
               f"warmup_steps={self.warmup_steps!r}; must be an integer >= 0")
        _check(self.lr > 0 and math.isfinite(self.lr), f"lr={self.lr!r}; must be > 0")
        _check(self.weight_decay >= 0, f"weight_decay={self.weight_decay!r}; must be >= 0")
        _check(0 <= self.b1 < 1, f"b1={self.b1!r}; must be in [0, 1)")
        _check(0 <= self.b2 < 1, f"b2={self.b2!r}; must be in [0, 1)")
        _check(self.adam_eps >= 0, f"adam_eps={self.adam_eps!r}; must be >= 0")
        _check(self.grad_clip >= 0, f"grad_clip={self.grad_clip!r}; must be >= 0 (0 = off)")
        _check(self.connection_lr_mult > 0 and math.isfinite(self.connection_lr_mult),
               f"connection_lr_mult={self.connection_lr_mult!r}; must be > 0")
        _check(0 < self.val_fraction < 1, f"val_fraction={self.val_fraction!r}; must be in (0, 1)")
        _choice(self, "wandb", WANDB_MODES)
        _check(isinstance(self.out_dir, str) and self.out_dir != "", "out_dir must be non-empty")
        _check(isinstance(self.teacher, str), f"teacher={self.teacher!r}; must be a run "
               f"directory or empty (off)")
        _check(0 <= self.distill_weight <= 1,  # False for NaN too
               f"distill_weight={self.distill_weight!r}; must be in [0, 1]")
        _check(0 < self.distill_temperature < math.inf,
               f"distill_temperature={self.distill_temperature!r}; must be > 0")


@dataclasses.dataclass(frozen=True)
class Config:
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()

    def __post_init__(self):
        _check(self.train.seq_len <= self.model.max_seq_len,
               f"seq_len={self.train.seq_len} exceeds max_seq_len={self.model.max_seq_len}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _parse_value(field: dataclasses.Field, raw: str, hints: dict):
    kind = hints[field.name]
    try:
        if kind is bool:
            lowered = raw.lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return lowered in ("true", "1", "yes")
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
        if kind == (float | None):  # "none" / "off" = None
            return None if raw.lower() in ("none", "off", "") else float(raw)
        if typing.get_origin(kind) is tuple:  # tuple[int, ...] as "3,4,5" ("" = empty)
            return tuple(int(x) for x in raw.split(",") if x.strip())
    except ValueError:
        expected = ("comma-separated integers" if typing.get_origin(kind) is tuple
                    else "a number or none" if kind == (float | None) else kind.__name__)
        raise ConfigError(f"{field.name}={raw!r}; expected {expected}") from None
    return raw


def apply_overrides(cfg: Config, overrides: typing.Iterable[str]) -> Config:
    """Apply `key=value` strings (model or train field names; `model.x`/`train.x` also accepted,
    and `connection.x` for the connection options, `connections.ConnectionOptions`, which the
    model config holds)."""
    sections = {"model": ModelConfig, "train": TrainConfig}
    changes: dict[str, dict] = {"model": {}, "train": {}}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        section, _, name = key.rpartition(".")
        if section == "connection":
            options = [f.name for f in dataclasses.fields(connections.ConnectionOptions)]
            if name not in options:
                raise ConfigError(f"unknown connection option {key!r}; "
                                  f"{suggest(name, options, 'connection.')}")
            section = "model"
        candidates = [section] if section else [s for s, c in sections.items()
                                                 if name in {f.name for f in dataclasses.fields(c)}]
        if section and section not in sections:
            raise ConfigError(f"unknown config section {section!r}; allowed: model, train, "
                              f"connection")
        fields = {f.name: f for s in candidates for f in dataclasses.fields(sections[s])}
        if not candidates or name not in fields:
            allowed = sorted({f.name for c in sections.values() for f in dataclasses.fields(c)})
            raise ConfigError(f"unknown config key {key!r}; {suggest(name, allowed)}")
        hints = typing.get_type_hints(sections[candidates[0]])
        changes[candidates[0]][name] = _parse_value(fields[name], raw, hints)
    return Config(dataclasses.replace(cfg.model, **changes["model"]),
                  dataclasses.replace(cfg.train, **changes["train"]))


def config_from_dict(d: dict) -> Config:
    """Inverse of `Config.to_dict()` (e.g. a run's saved config.json); JSON lists become tuples."""
    sections = {}
    for section in dataclasses.fields(Config):
        cls, values = typing.get_type_hints(Config)[section.name], dict(d.get(section.name, {}))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"saved config has unknown {section.name} key(s) {', '.join(unknown)}")
        sections[section.name] = cls(**{k: tuple(v) if isinstance(v, list) else v
                                        for k, v in values.items()})
    return Config(**sections)


def suggest(name: str, allowed: typing.Sequence[str], prefix: str = "",
            listing: str = "`mhc keys` lists every key") -> str:
    """"did you mean X?" for a near miss (difflib), else the whole list: the tail of an
    unknown-name message."""
    close = difflib.get_close_matches(name, allowed, n=3, cutoff=0.6)
    if close:
        return f"did you mean {' or '.join(prefix + c for c in close)}? ({listing})"
    return f"allowed: {', '.join(prefix + a for a in allowed)}"


def extend(saved: Config, steps: int) -> Config:
    """`saved` trained to `steps` (> its own): the LR schedule keeps the length it was laid out
    over (`schedule_steps`), so past it the LR stays at its final value (x0.1 lr for the paper
    schedule, lr for a constant one), instead of jumping back up as a schedule re-laid over
    `steps` would. Extending a constant-schedule run therefore equals a run of `steps` from the
    start."""
    t = saved.train
    _check(steps >= t.steps, f"steps={steps} is less than the run's steps={t.steps}: a resumed "
                             f"run can only be extended")
    return dataclasses.replace(saved, train=dataclasses.replace(
        t, steps=steps, schedule_steps=t.schedule_steps or t.steps))


def keys(cfg: Config) -> list[tuple[str, str, str, typing.Any]]:
    """(section, key, type, value in `cfg`) of every config key, in declaration order."""
    rows = []
    for section in ("model", "train"):
        obj = getattr(cfg, section)
        hints = typing.get_type_hints(type(obj))
        for f in dataclasses.fields(obj):
            kind = hints[f.name]
            kind = kind.__name__ if isinstance(kind, type) else str(kind).replace("typing.", "")
            rows.append((section, f.name, kind, getattr(obj, f.name)))
    return rows


def changed(cfg: Config, base: Config) -> list[str]:
    """`key=value` of every field of `cfg` that differs from `base` (e.g. the recipe)."""
    return [f"{name}={_show(value)}" for (_, name, _, value), (*_, was) in zip(keys(cfg), keys(base))
            if value != was]


def _show(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


# The keys that say which connection a run trains, beside `residual`: a run that changes one of
# them is another variant (runs/tiny-mhc-manifold=go_mhc-s0), while scale, optimisation and
# logging changes keep the recipe's directory (an existing run there is never overwritten
# silently). `kernels` picks an implementation of the same math, so it is not among them.
NAMING_KEYS = tuple(f.name for f in dataclasses.fields(connections.ConnectionOptions)
                    if f.name != "kernels") + ("stream_offset_std", "collapse", "single_pass",
                                               "learned_maps")


def default_run_dir(cfg: Config, recipe: str, recipe_cfg: Config) -> str:
    """<out_dir>/<recipe>-<residual>[-key=value ...]-s<seed>, the key=value parts being the
    `NAMING_KEYS` in which `cfg` differs from `recipe_cfg` (the recipe's own config;
    `run_name` replaces the whole name)."""
    if cfg.train.run_name:
        return os.path.join(cfg.train.out_dir, cfg.train.run_name)
    base = recipe_cfg.model
    variant = [f"{k}={_show(getattr(cfg.model, k))}" for k in NAMING_KEYS
               if getattr(cfg.model, k) != getattr(base, k)]
    name = "-".join([recipe, cfg.model.residual, *variant, f"s{cfg.train.seed}"])
    return os.path.join(cfg.train.out_dir, name)


# the TrainConfig fields `mhc train --resume` may override (marked with _resume_safe)
RESUME_SAFE = tuple(f.name for f in dataclasses.fields(TrainConfig)
                    if f.metadata.get("resume_safe"))
