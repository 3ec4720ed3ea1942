"""Named recipes: a `Config` per name, and parameter counting from abstract shapes.

    cfg = mhc.recipes.get("tiny")                  # Config(model=..., train=...)
    active, total = mhc.recipes.count_params(cfg)  # no allocation (nnx.eval_shape)
"""
from __future__ import annotations

import functools
from typing import Callable

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


def count_params(cfg: Config | ModelConfig) -> tuple[int, int]:
    """(active, total) parameter counts from abstract shapes (nothing is allocated).

    total counts every Param. active counts what one token uses: all but the input-embedding
    lookup (a gather, not a matmul: the reading of Table 5 under which its counts add up) and, in MoE layers, only
    `n_active_experts / n_routed_experts` of the routed experts. Router biases are not Params."""
    return _count_params(cfg.model if isinstance(cfg, Config) else cfg)


@functools.lru_cache(maxsize=16)  # `mhc train` asks at start-up and again for the FLOPs
def _count_params(model_cfg: ModelConfig) -> tuple[int, int]:
    from mhc.model import Decoder  # local: keeps `import mhc.recipes` light

    abstract = nnx.eval_shape(lambda: Decoder(model_cfg, rngs=nnx.Rngs(0)))
    state = nnx.state(abstract, nnx.Param)
    total = sum(x.size for x in jax.tree.leaves(state))
    routed = 0
    if model_cfg.n_moe_layers:
        experts = state["moe_blocks"]["ffn"]
        routed = experts["w_gate_up"].size + experts["w_down"].size
    inactive = routed - routed * model_cfg.n_active_experts // model_cfg.n_routed_experts
    embedding = model_cfg.vocab_size * model_cfg.d_model
    return total - embedding - inactive, total


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
