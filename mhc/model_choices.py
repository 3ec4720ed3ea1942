"""The allowed values of the model's string options, each list defined once.

A leaf (it imports nothing from `mhc`): `mhc.config` validates against these lists and the model
code reads them, without `config` importing the `mhc.model` package, whose `__init__` runs the
transformer, which imports `config` (tests/test_layout.py counts such package edges).
"""
ATTENTION = ("mha", "mla")  # multi-head attention with RoPE; DeepSeek's latent attention (MLA)
FFN = ("dense", "moe")  # SwiGLU everywhere; shared + routed experts after n_dense_layers
DISPATCH = ("auto", "capacity", "ragged")  # MoE token dispatch (mhc.model.moe; auto: by platform)
MTP_FFN = ("dense", "moe")  # the multi-token-prediction block's FFN (DeepSeek-V3's is MoE)
# the dense and expert GEMMs: as the compute dtype, or DeepSeek-V3's fine-grained FP8 (mhc.fp8)
FP8 = ("none", "deepseek")


def router_group_error(n_experts: int, k: int, groups: int, topk_groups: int) -> str | None:
    """Why group-limited routing (`router_groups` G, `router_topk_groups` G_k) cannot run over
    E = `n_experts` routed experts with k = `k` active per token, in one line, or None when it
    can: G must divide E into groups of at least 2 (a group's score sums its top 2), G_k must be
    in [1, G], and the G_k kept groups must hold at least k experts. G = 1 is plain top-k."""
    for name, value in (("router_groups", groups), ("router_topk_groups", topk_groups)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            return f"{name}={value!r}; must be an integer >= 1"
    if groups == 1:
        return None if topk_groups == 1 else (
            f"router_topk_groups={topk_groups} with router_groups=1; allowed: 1")
    divisors = [g for g in range(1, n_experts + 1) if n_experts % g == 0 and n_experts // g >= 2]
    if groups not in divisors:
        return (f"router_groups={groups} does not split n_routed_experts={n_experts} into equal "
                f"groups of >= 2 experts; allowed: {', '.join(map(str, divisors))}")
    if topk_groups > groups:
        return f"router_topk_groups={topk_groups}; must be in [1, router_groups={groups}]"
    kept = topk_groups * (n_experts // groups)
    if k > kept:
        return (f"n_active_experts={k} exceeds the {kept} experts of the kept groups "
                f"(router_topk_groups={topk_groups} x {n_experts // groups} experts a group); "
                f"allowed: n_active_experts <= {kept}")
    return None
