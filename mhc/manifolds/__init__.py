"""Projections of residual-mixing logits onto constraint sets (the "manifold" of mHC).

Every projection maps logits `[..., Y]` to a stream-mixing matrix `H[..., N, N]` that is applied
as `new_i = sum_j H[i, j] x_j` (rows = output streams). Computation is always fp32. A manifold
is a `Manifold` declaration (base.py): its projection, logit count, inits, options, guarantees
and how it starts from Sinkhorn's diagonal; `get(name)` returns one, `register(name, project,
...)` adds one. Built in (one module per family):
  sinkhorn         Sinkhorn-Knopp onto the Birkhoff polytope (paper Eq. 9), Y = N*N
                   (sinkhorn_knopp.py; iterations and backward passes in sinkhorn_*.py)
  mhc_lite         convex combination of the N! permutation matrices (mHC-lite), exact, Y = N!
  kromhc           Kronecker product of log2(N) 2x2 doubly stochastic factors (KromHC), exact
                   and symmetric, N a power of two, Y = 2 log2(N)            (permutations.py)
  orthostochastic  H = Q∘Q with Q = Cayley(skew(A)) orthogonal, exact, Y = N*N
  go_mhc           generalized orthostochastic (go-mHC): block sums of Q∘Q for a Cayley-orthogonal
                   Q of size N·s (s = go_block), exact, Y = Ns(Ns - 1)/2
  spectral_sphere  sHC: J/N + a Cayley-parametrised SVD on the complement of 1; row and column
                   sums and spectral norm exactly 1, entries may be negative (NOT doubly
                   stochastic), Y = (N - 1)²                                   (orthogonal.py)
  identity         H = I (plain residual mixing), Y = 0
  unconstrained    H = reshape(logits) (Hyper-Connections), Y = N*N                 (plain.py)
A new manifold: a module declaring its `Manifold`, imported on the line of the families below,
and its entry in `BUILT_IN`; tests/test_manifold_contract.py then checks it like the others.
"""
from mhc.manifolds import orthogonal, permutations, plain, sinkhorn_knopp
from mhc.manifolds.base import (_REGISTRY, DOUBLY_STOCHASTIC, GUARANTEES, INITS,
                                OFF_DIAGONAL_LOGIT, Manifold, add, get, names, register,
                                soft_identity_diagonal)
from mhc.manifolds.orthogonal import (GO_BLOCK, SHC_SIGMA_LOGIT, go_mhc, helmert_basis,
                                      orthostochastic, spectral_sphere)
from mhc.manifolds.permutations import (kromhc, kromhc_logit_matching_sinkhorn,
                                        lite_logit_matching_sinkhorn, mhc_lite,
                                        permutation_matrices)
from mhc.manifolds.sinkhorn_grads import GRADS
from mhc.manifolds.sinkhorn_iterations import CONVENTIONS
from mhc.manifolds.sinkhorn_knopp import range_cap, sinkhorn

BUILT_IN = (
    sinkhorn_knopp.SINKHORN,
    permutations.MHC_LITE,
    permutations.KROMHC,
    orthogonal.ORTHOSTOCHASTIC,
    orthogonal.GO_MHC,
    orthogonal.SPECTRAL_SPHERE,
    plain.IDENTITY,
    plain.UNCONSTRAINED,
)
for _manifold in BUILT_IN:
    add(_manifold)

__all__ = [
    "BUILT_IN", "CONVENTIONS", "DOUBLY_STOCHASTIC", "GO_BLOCK", "GRADS", "GUARANTEES", "INITS",
    "OFF_DIAGONAL_LOGIT", "SHC_SIGMA_LOGIT", "Manifold", "add", "get", "go_mhc", "helmert_basis",
    "kromhc", "kromhc_logit_matching_sinkhorn", "lite_logit_matching_sinkhorn", "mhc_lite",
    "names", "orthostochastic", "permutation_matrices", "range_cap", "register", "sinkhorn",
    "soft_identity_diagonal", "spectral_sphere",
]
