"""mhc: Manifold-Constrained Hyper-Connections (DeepSeek, arXiv 2512.24880) in JAX / Flax NNX.

Conventions of the whole package (module docstrings and shape-suffixed names such as
`streams_BxTxNxC` use them; each module's docstring lists the letters it uses):

  Shape suffixes: a name ends in its shape, one letter per axis joined by `x` (`streams_BxTxNxC`
  is `[B, T, N, C]`). A leading `x` stands for any number of leading axes: `streams_xNxC` is
  `[..., N, C]`, taken with whatever batch shape the caller has (`logits_xY`: `[..., Y]`).

  Dimension letters (one meaning each)
    B batch            T tokens of a sequence     M tokens flattened (B*T rows of a kernel)
    N streams (n)      C width (d_model)          D = N*C, the streams flattened
    Q = N*N entries of H_res                      Y logits of H_res (the manifold's count;
    Z = 2N + Y logits of a site (pre, post, res)    N*N for Sinkhorn, N! for mHC-lite)
    V vocabulary       L layers (blocks; 2L connection sites)
    H attention heads  K query/key head dim       J value head dim (MLA's differs from K)
    R rank of MLA's KV latent
    E routed experts   A active experts per token F expert width
    G dispatch groups  S tokens of a group        U capacity (slots per expert)
    A trailing `p` (Qp, Zp, Mp, Cp) is that size padded for a kernel's block.
  `P` in code is `jax.sharding.PartitionSpec`, not a dimension.
  Mesh axes: data, fsdp, expert, tensor (`mhc.sharding`; logical parameter axes map onto them).
  Dtypes: parameters fp32; compute dtype `ModelConfig.dtype` ("auto": bf16 on GPU/TPU, fp32 on
  CPU); the HC/mHC coefficient path (norms, projections, sigmoid, Sinkhorn) is always fp32; the
  loss is computed in fp32 from fp32 logits.
"""
from mhc import targets

targets.keep_host_on_cpu()  # the `.[aot]` compilers' plugins stay quiet on a CPU-only host

from mhc import manifolds  # noqa: E402  (after the platform choice above)
from mhc.connections import (ConnectionSpec, Maps, apply_site, collapse_streams, compute_maps,
                             expand_streams)
from mhc.diagnostics import amax_gain, composite, doubly_stochastic_error, map_stats
from mhc.inspect_run import load_run
from mhc.layers import (HyperConnection, HyperHead, LinenHyperConnection, LinenHyperHead, Sites,
                        capture_maps)
from mhc.manifolds import sinkhorn

__version__ = "0.1.0"
__all__ = [
    "ConnectionSpec", "HyperConnection", "HyperHead", "LinenHyperConnection", "LinenHyperHead",
    "Maps", "Sites", "amax_gain", "apply_site", "capture_maps", "collapse_streams", "composite",
    "compute_maps",
    "doubly_stochastic_error", "expand_streams", "load_run", "manifolds", "map_stats", "sinkhorn",
]
