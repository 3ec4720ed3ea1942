"""Named rematerialisation policies of the decoder's blocks (`ModelConfig.remat`; the names are
listed once, in `REMAT`, in the order of `remat_policy`'s table)."""
from __future__ import annotations

import jax

from mhc.maps import BRANCH_OUT

REMAT = ("none", "full", "dots", "mhc", "streams")  # see remat_policy


def _stream_path_policy(n_streams: int, width: int):
    """Saveable unless computed from stream-shaped operands `[..., N, C]`: those values (a site's
    new streams, the read, the mix and write intermediates) are re-run from the block input."""
    def saveable(prim, *avals, **params):
        del prim, params
        return not any(getattr(a, "shape", ())[-2:] == (n_streams, width) for a in avals)
    return saveable


def remat_policy(name: str, n_streams: int = 1, width: int = 0):
    """Named rematerialisation policies (None = store everything for the backward).
      full  recompute every block from its input
      dots  keep matmul outputs, recompute element-wise work
      mhc   keep F's weight matmuls (dots without batch dimensions) and F's output
            `branch_out`, recompute everything else: the stream path (norms, coefficient
            matmul's RMS scaling, maps, Sinkhorn, read/mix/write, whose einsums carry the token
            axes as batch dimensions and so are not kept) and attention's score/value products
            (leaner than the paper's scheme: F's element-wise work is recomputed too)
      streams  the paper's selective recompute (Section 4.3): keep everything F keeps, recompute
            the connection's stream path (values computed from `[..., N, C]` streams; needs
            `n_streams` and `width`). A block stores its input streams, F's output and the
            small maps; the FFN site's input streams are re-run from them, F is not
    """
    if name not in REMAT:
        raise ValueError(f"remat={name!r}; allowed: {', '.join(REMAT)}")
    policies = jax.checkpoint_policies
    return dict(zip(REMAT, (
        None, policies.nothing_saveable, policies.checkpoint_dots,
        policies.save_from_both_policies(policies.checkpoint_dots_with_no_batch_dims,
                                         policies.save_only_these_names(BRANCH_OUT)),
        _stream_path_policy(n_streams, width))))[name]
