"""DeepSeek-V3's router: sigmoid affinities, top-k on affinity + a balancing bias (auxiliary-
loss-free load balancing), gating weights from the unbiased affinities normalised to sum 1 and
multiplied by the routed scaling factor; optionally group-limited (DeepSeek-V3's node-limited
routing, `noaux_tc` in its released config).

Dimension letters (see `mhc`'s docstring): S tokens (any leading dims), C width, E routed experts,
A active experts per token, G expert groups (E/G experts each), G_k groups kept per token.

Group-limited routing (DeepSeek-V3, arXiv 2412.19437, Sec. 2.1.2 and 3.2.2): the E experts are
split into G consecutive groups (one per node in V3); a group's score is the sum of its two
highest biased affinities; each token keeps the G_k groups with the highest scores and picks its
A experts among their experts only. G = 1 is plain top-k (the same program as without groups).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mhc.model_choices import router_group_error


class RouterBias(nnx.Variable):
    """Per-expert selection bias (aux-loss-free balancing). Not a Param: it is changed by
    `balance_router_bias` from the observed load, never by the gradient."""


def check_groups(n_experts: int, k: int, groups: int, topk_groups: int) -> None:
    """ValueError in one line naming the bad value and what is allowed (see
    `mhc.model_choices.router_group_error`)."""
    error = router_group_error(n_experts, k, groups, topk_groups)
    if error:
        raise ValueError(error)


def limit_to_groups(choice_SxE: jax.Array, groups: int, topk_groups: int) -> jax.Array:
    """The selection scores with every expert outside a token's `topk_groups` best groups set to
    -inf. A group's score: the sum of its top-2 entries of `choice_SxE` (affinity + bias)."""
    *lead, e = choice_SxE.shape
    grouped = choice_SxE.reshape(*lead, groups, e // groups)  # [S, G, E/G]
    group_score = jnp.sum(jax.lax.top_k(grouped, 2)[0], axis=-1)  # [S, G]
    _, kept = jax.lax.top_k(group_score, topk_groups)  # [S, G_k]
    keep = jnp.any(kept[..., None] == jnp.arange(groups), axis=-2)  # [S, G]
    return jnp.where(keep[..., None], grouped, -jnp.inf).reshape(choice_SxE.shape)


def route(x_SxC, router_CxE, bias_E, k: int, scale: float = 1.0, groups: int = 1,
          topk_groups: int = 1):
    """Sigmoid scores; top-k on score + bias (within the `topk_groups` best of `groups` expert
    groups when groups > 1); weights = selected scores normalised to sum 1, times `scale`.

    Returns (expert ids [S, A] int32, weights [S, A] fp32)."""
    scores = jax.nn.sigmoid(jnp.dot(x_SxC.astype(jnp.float32), router_CxE.astype(jnp.float32)))
    choice = scores + bias_E
    if groups > 1:
        choice = limit_to_groups(choice, groups, topk_groups)
    _, ids = jax.lax.top_k(choice, k)
    weights = jnp.take_along_axis(scores, ids, axis=-1)
    weights = weights / jnp.sum(weights, axis=-1, keepdims=True) * scale
    return ids.astype(jnp.int32), weights


def balance_router_bias(bias_E: jax.Array, load_E: jax.Array, rate: float) -> jax.Array:
    """Aux-loss-free update (DeepSeek-V3): raise the bias of under-loaded experts, lower the
    over-loaded ones, by `rate` each: `b += rate * sign(mean(load) - load)`."""
    return bias_E + rate * jnp.sign(jnp.mean(load_E, -1, keepdims=True) - load_E)
