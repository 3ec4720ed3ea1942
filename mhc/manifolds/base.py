"""The declaration of a manifold and the registry that names them.

Letters (see `mhc`'s docstring): N streams, Y logits of H_res (a manifold's `num_logits(n)`).
A manifold maps logits `[..., Y]` to a stream-mixing matrix `H[..., N, N]`, applied as
`new_i = sum_j H[i, j] x_j` (rows = output streams), always in fp32. Its `Manifold` states what
it needs and what it promises; the connection layer reads nothing else, and the contract test
(tests/test_manifold_contract.py) checks every registered one against it.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

OFF_DIAGONAL_LOGIT = -8.0  # identity-like init used by mHC-lite's code: exp(-8) ~ 3e-4 off-diagonal
INITS = ("identity", "uniform")  # `res_init`: H ≈ I or H ≈ J/N at initialisation
# what a manifold may promise of every H it returns, to rounding (`Manifold.guarantees`)
GUARANTEES = ("row_sums_one", "column_sums_one", "non_negative", "symmetric", "spectral_norm_one")
DOUBLY_STOCHASTIC = ("row_sums_one", "column_sums_one", "non_negative")


@functools.lru_cache(maxsize=None)
def keyword_options(project: Callable) -> dict:
    """{name: default} of the keyword-only parameters of `project` (a manifold's options)."""
    return {p.name: p.default for p in inspect.signature(project).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY}


def square_count(n: int) -> int:
    """N*N: one logit per entry of H."""
    return n * n


def square_init(n: int, how: str, offdiag_logit: float) -> np.ndarray:
    """Logits of an `[n, n]` matrix: 0 on the diagonal and `offdiag_logit` off it ("identity",
    Sinkhorn's symmetric start), or all 0 ("uniform")."""
    if how == "identity":
        return np.where(np.eye(n, dtype=bool), 0.0, offdiag_logit).astype(np.float32).ravel()
    return np.zeros(n * n, np.float32)


def same_logit(n: int, offdiag_logit: float) -> float:
    """`Manifold.sinkhorn_start` of a manifold whose init already starts from Sinkhorn's
    diagonal for the same off-diagonal logit (Sinkhorn itself; go-mHC and sHC solve for it)."""
    return offdiag_logit


@dataclasses.dataclass(frozen=True)
class Manifold:
    """A projection from `num_logits(n, **options)` logits to an `[n, n]` mixing matrix.

    project(logits[..., Y], n, **options) -> H[..., n, n] fp32.
    count(n, **options) -> Y; call it as `num_logits`.
    initial_logits(n, how, offdiag_logit, **options) -> np.ndarray[Y]: `how` one of `inits`;
      `offdiag_logit` is the logit of the non-identity terms of the "identity" init (-8: a hard
      identity, -2: a soft one with diagonal ≈ 0.71 for n = 4). Call it as `init_logits`,
      which refuses what the declaration does not allow.
    options: {ConnectionOptions field: default}, the keyword-only parameters of `project` (e.g.
      go-mHC's `go_block`), so an option and its default are stated once, in that signature.
      The connection passes exactly these; `count` and `initial_logits` get those they name.
    guarantees: what holds for every H it returns (names from `GUARANTEES`), checked by the
      contract test; `exact_doubly_stochastic` is the first three.
    doubly_stochastic: meant to be (approximately) doubly stochastic; False where entries may be
      negative (HC's unconstrained map, sHC's spectral sphere): diagnostics read them as such.
    sinkhorn_start: (n, L) -> the `offdiag_logit` that starts this manifold from the diagonal of
      Sinkhorn's soft identity of logit L (`soft_identity_diagonal`), so that studies compare
      manifolds from the same start; None where the identity init has no tunable off-diagonal
      logit (it then refuses one).
    """
    name: str
    project: Callable[..., jax.Array]
    count: Callable[..., int] = square_count
    initial_logits: Callable[..., np.ndarray] = square_init
    guarantees: tuple[str, ...] = ()
    doubly_stochastic: bool = True
    inits: tuple[str, ...] = INITS
    sinkhorn_start: Callable[[int, float], float] | None = same_logit

    def __post_init__(self):
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"manifold name {self.name!r} must be a non-empty string")
        unknown = set(self.guarantees) - set(GUARANTEES)
        if unknown:
            raise ValueError(f"manifold {self.name!r} guarantees={sorted(unknown)}; allowed: "
                             f"{', '.join(GUARANTEES)}")

    @property
    def options(self) -> dict:
        return keyword_options(self.project)

    @property
    def exact_doubly_stochastic(self) -> bool:
        """Every output is doubly stochastic up to rounding."""
        return set(DOUBLY_STOCHASTIC) <= set(self.guarantees)

    def num_logits(self, n: int, **options) -> int:
        """Y, the number of logits of H_res for n streams."""
        return self.count(n, **self._options_of(self.count, options))

    def init_logits(self, n: int, how: str, offdiag_logit: float = OFF_DIAGONAL_LOGIT,
                    **options) -> np.ndarray:
        """The initial logits `[Y]` (H ≈ I for "identity", H ≈ J/n for "uniform"); ValueError
        for an init or an off-diagonal logit this manifold does not declare."""
        if offdiag_logit != OFF_DIAGONAL_LOGIT and self.sinkhorn_start is None:
            raise ValueError(f"res_offdiag_logit={offdiag_logit!r} has no meaning for manifold "
                             f"{self.name!r}; it applies to {', '.join(tunable_identity())}")
        if how not in self.inits:
            raise ValueError(f"res_init={how!r} is not available for {self.name}; allowed: "
                             f"{', '.join(self.inits)}")
        return self.initial_logits(n, how, offdiag_logit,
                                   **self._options_of(self.initial_logits, options))

    def _options_of(self, function: Callable, options: dict) -> dict:
        """The `options` that `function` names (ValueError for one the manifold lacks)."""
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise ValueError(f"manifold {self.name!r} takes no option {', '.join(unknown)}; "
                             f"its options: {', '.join(self.options) or 'none'}")
        named = inspect.signature(function).parameters
        return {k: v for k, v in options.items() if k in named}


def as_square(logits_xY: jax.Array, n: int) -> jax.Array:
    """fp32 logits `[..., N*N]` -> `[..., N, N]` (row-major)."""
    return jnp.asarray(logits_xY, jnp.float32).reshape(*logits_xY.shape[:-1], n, n)


def soft_identity_diagonal(n: int, offdiag_logit: float) -> float:
    """The diagonal of Sinkhorn's symmetric start with logits 0 / `offdiag_logit`:
    `1 / (1 + (n-1)·e^L)`, the start the other manifolds' inits are matched to."""
    return 1.0 / (1.0 + (n - 1) * math.exp(offdiag_logit))


# ------------------------------------------------------------------------------------ registry
_REGISTRY: dict[str, Manifold] = {}


def add(manifold: Manifold) -> Manifold:
    """Register a declared manifold under its name (replacing one of the same name)."""
    _REGISTRY[manifold.name] = manifold
    return manifold


def register(name: str, project: Callable[..., jax.Array], *,
             num_logits: Callable[..., int] = square_count,
             init_logits: Callable[..., np.ndarray] = square_init,
             exact_doubly_stochastic: bool = False, doubly_stochastic: bool = True,
             guarantees: tuple[str, ...] = (),
             inits: tuple[str, ...] = INITS,
             sinkhorn_start: Callable[[int, float], float] | None = same_logit) -> Manifold:
    """Add a projection `project(logits[..., Y], n, **options) -> [..., n, n]` under `name`
    (the fields as in `Manifold`; `exact_doubly_stochastic=True` adds its three guarantees)."""
    if exact_doubly_stochastic:
        guarantees = (*DOUBLY_STOCHASTIC, *(g for g in guarantees if g not in DOUBLY_STOCHASTIC))
    return add(Manifold(name, project, count=num_logits, initial_logits=init_logits,
                        guarantees=tuple(guarantees), doubly_stochastic=doubly_stochastic,
                        inits=tuple(inits),
                        sinkhorn_start=sinkhorn_start))


def get(name: str) -> Manifold:
    """The registered manifold called `name` (ValueError naming the allowed ones otherwise)."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"manifold={name!r}; allowed: {', '.join(names())}") from None


def names() -> list[str]:
    return sorted(_REGISTRY)


def tunable_identity() -> list[str]:
    """The registered manifolds whose identity init takes an off-diagonal logit."""
    return [n for n in names() if _REGISTRY[n].sinkhorn_start is not None]
