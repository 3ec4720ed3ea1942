"""Named recipes: a `Config` per name, and parameter counting from abstract shapes.

    cfg = mhc.recipes.get("tiny")                  # Config(model=..., train=...)
    active, total = mhc.recipes.count_params(cfg)  # no allocation (nnx.eval_shape)
    mhc.recipes.param_counts(cfg)                  # also without the MTP module, and as released
"""
from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
from flax import nnx

from mhc.config import Config, ConfigError, ModelConfig, TrainConfig, suggest

_RECIPES: dict[str, Callable[[], Config]] = {}


def register(name: str):
    def wrap(fn: Callable[[], Config]):
        _RECIPES[name] = fn
        return fn
    return wrap


def names() -> list[str]:
    return list(_RECIPES)


def get(name: str) -> Config:
    if name not in _RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; "
                          f"{suggest(name, names(), listing='`mhc info` lists them')}")
    return _RECIPES[name]()


@register("tiny")
def tiny() -> Config:
    """~1M parameters, byte-level; trains to a clearly falling loss in about a minute on 2 cores."""
    return Config(ModelConfig(d_model=128, n_layers=4, n_heads=4, d_ff=384, max_seq_len=512),
                  TrainConfig(steps=200, batch_size=16, seq_len=128, lr=3e-3, warmup_steps=20,
                              eval_every=50, log_every=10))


@register("small")
def small() -> Config:
    """Deeper CPU model for stability studies: 12 blocks (24 connection sites), width 128."""
    return Config(ModelConfig(d_model=128, n_layers=12, n_heads=4, d_ff=384, max_seq_len=512),
                  TrainConfig(steps=400, batch_size=16, seq_len=128, lr=3e-3, warmup_steps=40,
                              eval_every=100, log_every=20))


class ParamCounts(NamedTuple):
    """Parameter counts of one model config (`param_counts`); routed biases are not Params.

    active / total: the model as built (what `count_params` returns): total is every Param,
      embedding and output head once (the MTP block shares them); active is what one token's
      forward pass uses: all but the input-embedding lookup (a gather, not a matmul: the reading
      of Table 5 under which its counts add up) and, in every MoE layer (the MTP block's
      included), only `n_active_experts / n_routed_experts` of the routed experts.
    main_active / main_total: the same without the multi-token-prediction module (its block,
      projection and two norms); equal to active / total when `mtp_depth = 0`.
    released_total: the count of a checkpoint as DeepSeek-V3 released it (arXiv 2412.19437;
      685B = 671B main model + 14B MTP module): total plus the MTP module's own copies of the
      embedding, the output head and the final norm (2·V·C + C), which the model here shares."""
    active: int
    total: int
    main_active: int
    main_total: int
    released_total: int


def count_params(cfg: Config | ModelConfig) -> tuple[int, int]:
    """(active, total) parameter counts from abstract shapes (nothing is allocated); see
    `ParamCounts` for exactly what each counts."""
    counts = _count_params(cfg.model if isinstance(cfg, Config) else cfg)
    return counts.active, counts.total


def param_counts(cfg: Config | ModelConfig) -> ParamCounts:
    """`count_params` with the main-model / MTP-module split and the released-checkpoint total."""
    return _count_params(cfg.model if isinstance(cfg, Config) else cfg)


@functools.lru_cache(maxsize=16)  # `mhc train` asks at start-up and again for the FLOPs
def _count_params(model_cfg: ModelConfig) -> ParamCounts:
    from mhc.model import Decoder  # local: keeps `import mhc.recipes` light

    abstract = nnx.eval_shape(lambda: Decoder(model_cfg, rngs=nnx.Rngs(0)))
    state = nnx.state(abstract, nnx.Param)

    def size(tree) -> int:
        return sum(x.size for x in jax.tree.leaves(tree))

    def inactive(experts) -> int:  # the routed-expert weights a token does not use
        routed = experts["w_gate_up"].size + experts["w_down"].size
        return routed - routed * model_cfg.n_active_experts // model_cfg.n_routed_experts

    total, v, c = size(state), model_cfg.vocab_size, model_cfg.d_model
    main_inactive = inactive(state["moe_blocks"]["ffn"]) if model_cfg.n_moe_layers else 0
    mtp_total = size([state[k] for k in state if str(k).startswith("mtp_")])
    mtp_inactive = inactive(state["mtp_block"]["ffn"]) if (
        model_cfg.mtp_depth and model_cfg.mtp_ffn == "moe") else 0
    active = total - v * c - main_inactive - mtp_inactive
    return ParamCounts(active, total, active - (mtp_total - mtp_inactive), total - mtp_total,
                       total + (2 * v * c + c if model_cfg.mtp_depth else 0))


# ----------------------------------------------------------------------- paper recipes (Table 5)
# DeepSeek-V3-style MoE with MLA (kv rank 512, rope dim 64, head dims 128), first block dense,
# 2 shared + routed experts (6 active), vocabulary 129280, sequences of 4096, AdamW (0.9, 0.95),
# weight decay 0.1, 2000 warmup steps, step decay at 80 % / 90 %; n = 4, alpha 0.01, t_max 20.
# The paper prints RMSNorm and AdamW epsilons as 1e-20; we keep them.
# Not given by the paper: the dense block's FFN width and the query rank. We use full-rank queries
# and choose the dense width so that the active count equals Table 5's (rounded to 128); the
# total then lands within 0.2 % (see README "Paper recipes").
PAPER_TABLE5 = {  # name: (active, total) from Table 5
    "3b": (612e6, 2.97e9), "9b": (1.66e9, 9.18e9), "27b": (4.14e9, 27.0e9), "3b-1t": (612e6, 2.97e9)}


def _paper(d_model, n_layers, experts, expert_ff, heads, dense_ff, batch, steps, lr) -> Config:
    model = ModelConfig(
        vocab_size=129280, d_model=d_model, n_layers=n_layers, n_heads=heads, d_ff=dense_ff,
        max_seq_len=4096, norm_eps=1e-20, dtype="bfloat16", attention="mla", kv_lora_rank=512,
        q_lora_rank=0, qk_nope_dim=128, qk_rope_dim=64, v_head_dim=128, ffn="moe",
        n_dense_layers=1, n_routed_experts=experts, n_shared_experts=2, n_active_experts=6,
        expert_ff=expert_ff, residual="mhc", n_streams=4, sinkhorn_iters=20, alpha_init=0.01)
    train = TrainConfig(steps=steps, batch_size=batch, seq_len=4096, lr=lr, warmup_steps=2000,
                        weight_decay=0.1, b1=0.9, b2=0.95, adam_eps=1e-20, eval_every=1000,
                        log_every=10)
    return Config(model, train)


@register("3b")
def paper_3b() -> Config:
    return _paper(1280, 12, 64, 896, 16, 7808, 320, 30_000, 8.6e-4)


@register("9b")
def paper_9b() -> Config:
    return _paper(1920, 18, 64, 1280, 24, 11264, 512, 50_000, 5.9e-4)


@register("27b")
def paper_27b() -> Config:
    return _paper(2560, 30, 72, 1536, 32, 14336, 1280, 50_000, 4.0e-4)


@register("3b-1t")
def paper_3b_1t() -> Config:
    """The token-scaling run: the 3B model on ~1T tokens."""
    return _paper(1280, 12, 64, 896, 16, 7808, 2560, 100_000, 9.0e-4)


# ------------------------------------------------------------- CPU ladder of the same family
def _ladder(d_model, n_layers, heads, experts, steps) -> Config:
    model = ModelConfig(
        d_model=d_model, n_layers=n_layers, n_heads=heads, d_ff=4 * d_model, max_seq_len=512,
        attention="mla", kv_lora_rank=d_model // 2, qk_nope_dim=d_model // heads,
        qk_rope_dim=16, v_head_dim=d_model // heads, ffn="moe", n_dense_layers=1,
        n_routed_experts=experts, n_shared_experts=1, n_active_experts=2, expert_ff=d_model)
    return Config(model, TrainConfig(steps=steps, batch_size=16, seq_len=128, lr=3e-3,
                                     warmup_steps=steps // 10, eval_every=max(steps // 4, 1)))


@register("moe-xs")
def moe_xs() -> Config:
    """Smallest MLA + MoE model of the paper's shape family (byte vocabulary), for CPU."""
    return _ladder(64, 4, 4, 8, 200)


@register("moe-s")
def moe_s() -> Config:
    return _ladder(96, 6, 4, 8, 300)


@register("moe-m")
def moe_m() -> Config:
    return _ladder(128, 8, 4, 16, 400)


# ------------------------------------------------------ DeepSeek-V3 (arXiv 2412.19437)
# Its published shape (Hugging Face deepseek-ai/DeepSeek-V3, config.json): C 7168, 61 layers of
# which the first 3 dense (FFN 18432), 128 heads, MLA with query rank 1536, KV rank 512, head dims
# 128 (nope) + 64 (RoPE) and 128 (value); 1 shared + 256 routed experts of width 2048, 8 active,
# sigmoid router with aux-loss-free bias, 8 groups of which 4 kept (node-limited routing),
# gating weights x 2.5; vocabulary 129280, untied head; one MTP module, whose block is MoE.
# Published counts: 671B total (main model), 685B with the MTP module as released, 37B active.
# Training as published where this code has the knob (AdamW 0.9/0.95, wd 0.1, peak LR 2.2e-4,
# 2000 warmup steps, batch 15360 x 4096, 14.8T tokens, bias rate 1e-3, MTP weight 0.3);
# not modelled: FP8 mixed precision, the batch-size ramp and the constant-then-cosine LR
# schedule (the step schedule is this project's, x0.316 at 80 % and x0.1 at 90 %).
DSV3_COUNTS = {"total": 671e9, "released": 685e9, "active": 37e9}

_DSV3_SHAPE = dict(attention="mla", ffn="moe", n_shared_experts=1, routed_scale=2.5,
                   mtp_depth=1, mtp_weight=0.3, mtp_ffn="moe", residual="mhc", n_streams=4)


@register("dsv3-671b")
def dsv3_671b() -> Config:
    """DeepSeek-V3 at its published shape, with mHC (n = 4) by default; `residual=residual` is
    the model as published."""
    model = ModelConfig(
        **_DSV3_SHAPE, vocab_size=129280, d_model=7168, n_layers=61, n_heads=128, d_ff=18432,
        max_seq_len=4096, norm_eps=1e-6, dtype="bfloat16", q_lora_rank=1536, kv_lora_rank=512,
        qk_nope_dim=128, qk_rope_dim=64, v_head_dim=128, n_dense_layers=3, n_routed_experts=256,
        n_active_experts=8, expert_ff=2048, router_groups=8, router_topk_groups=4,
        sinkhorn_iters=20, alpha_init=0.01)
    train = TrainConfig(steps=235_000, batch_size=15360, seq_len=4096, lr=2.2e-4,
                        warmup_steps=2000, weight_decay=0.1, b1=0.9, b2=0.95, grad_clip=1.0,
                        eval_every=1000, log_every=10)
    return Config(model, train)


@register("dsv3-mini")
def dsv3_mini() -> Config:
    """DeepSeek-V3's shape rules at CPU size (byte vocabulary): 4 layers, the first dense,
    low-rank queries, 16 routed experts in 4 groups (2 kept, 4 active) + 1 shared, gating x 2.5,
    an MoE MTP block; trains on 2 CPU cores at about the speed of `moe-xs`."""
    model = ModelConfig(
        **_DSV3_SHAPE, d_model=64, n_layers=4, n_heads=4, d_ff=160, max_seq_len=512,
        q_lora_rank=24, kv_lora_rank=16, qk_nope_dim=16, qk_rope_dim=8, v_head_dim=16,
        n_dense_layers=1, n_routed_experts=16, n_active_experts=4, expert_ff=32,
        router_groups=4, router_topk_groups=2)
    return Config(model, TrainConfig(steps=200, batch_size=16, seq_len=128, lr=3e-3,
                                     warmup_steps=20, eval_every=50))
