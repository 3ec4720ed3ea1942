"""The one verdict rule of the paper-vs-ours tables, and the row they are made of.

A row is `Row(quantity, paper, ours, agrees)`: what the paper (arXiv 2512.24880) says, with its
figure/table, what this repository measured, and a verdict with its evidence. A verdict comes from
one of two helpers, so the two kinds cannot be confused:

- `seeded_verdict(values, sign)`: a measured claim, one value per seed (`RULE`);
- `exact_verdict(ok, tolerance)`: a check that does not depend on a seed (a formula against
  XLA's cost analysis, a parameter count, a compile-time memory fit, an identity that holds by
  construction), yes/no against a stated tolerance.

"n/a" is for rows where the paper gives no number. `study.report.write` saves the rows as
Markdown and CSV with `RULE` beside the verdicts. The paired helpers (`paired_seeds`, `per_seed`)
turn {kind: {seed: metrics rows}} into the per-seed differences a verdict needs.
"""
from __future__ import annotations

import dataclasses
import math

from scipy import stats

MIN_SEEDS = 3       # a paired t-test needs a spread; fewer seeds decide nothing
HEADLINE_SEEDS = 5  # the 30-block rows, Fig. 5 and the variants' gaps against mHC
ALPHA = 0.05        # two-sided
RULE = ("Verdict rule: a measured claim is a paired t-test over seeds (one paired difference per "
        "seed; t = mean / (sd / sqrt(n)), df = n - 1): \"yes\" when the two-sided p < 0.05 and "
        "the mean has the sign the paper claims, \"no\" when p < 0.05 with the opposite sign, "
        "else \"inconclusive\"; t, df, p and n are printed beside the verdict. Fewer than 3 "
        "seeds (5 for the headline claims: the 30-block rows, Fig. 5, the variants' gaps against "
        "mHC), no spread (sd = 0, e.g. equal grid LRs) or a non-finite value are "
        "\"inconclusive\". A claim made of parts is \"no\" if one part is \"no\", \"yes\" "
        "if every part is, and names the part that decided. Checks that do not depend on a seed "
        "(formulas vs XLA cost analysis, parameter counts, compile-time memory fits, identities "
        "that hold by construction) are \"yes\" or \"no\" (deterministic) against the "
        "tolerance the cell states. \"n/a\": the paper gives no number to compare with.")
VERDICTS = ("yes", "no", "inconclusive", "n/a")


@dataclasses.dataclass
class Row:
    quantity: str
    paper: str
    ours: str
    agrees: str


def paired_t(values) -> tuple[float, int, float]:
    """(t, df, two-sided p) of a one-sample t-test of `values` (paired differences) against 0.
    Needs >= 2 finite values with sd > 0."""
    v = [float(x) for x in values]
    n = len(v)
    mean = sum(v) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in v) / (n - 1))
    t = mean / (sd / math.sqrt(n))
    return t, n - 1, float(2 * stats.t.sf(abs(t), n - 1))


def seeded_verdict(values, sign: int, headline: bool = False) -> str:
    """`RULE` applied to one measured claim: `values` holds one paired difference per seed,
    signed so that `sign` (+1 or -1) is what the paper claims (e.g. loss gaps with sign -1 for
    "mHC is below the baseline", `bound - peak` with +1 for "the peak stays under the bound").
    `headline` claims need `HEADLINE_SEEDS` seeds. Returns the verdict with its evidence, e.g.
    "yes (t = 6.12, df = 4, p = 0.0036, n = 5)" or "inconclusive (2 seeds; needs >= 3)"."""
    if sign not in (1, -1):
        raise ValueError(f"sign={sign!r}; must be +1 or -1")
    v = [float(x) for x in values]
    n, need = len(v), HEADLINE_SEEDS if headline else MIN_SEEDS
    if n < need:
        return f"inconclusive ({seeds_note(n)}; needs >= {need}" + \
            (" for a headline claim)" if headline else ")")
    bad = sum(not math.isfinite(x) for x in v)
    if bad:
        return f"inconclusive ({bad} of {n} seeds not finite)"
    if max(v) == min(v):  # no spread: a t-test cannot separate this from seed noise
        return (f"inconclusive ({n} seeds, no difference on any seed)" if v[0] == 0 else
                f"inconclusive ({n} seeds, all {v[0]:+.3g}: sd = 0, no spread to test)")
    t, df, p = paired_t(v)
    evidence = f"t = {t:+.2f}, df = {df}, p = {p:.2g}, n = {n}"
    if p >= ALPHA:
        return f"inconclusive ({evidence})"
    return f"{'yes' if t * sign > 0 else 'no'} ({evidence})"


def exact_verdict(ok: bool, tolerance: str) -> str:
    """A deterministic check (no seed involved): yes/no against `tolerance`, which the cell
    states (e.g. "tolerance 1 %")."""
    return f"{'yes' if ok else 'no'} (deterministic; {tolerance})"


def all_of(parts: dict) -> str:
    """The verdict of a claim made of several parts ({label: verdict}): "no" if any part is "no"
    (the first such part is shown), "yes" if every part is "yes", else the first inconclusive
    part. Parts with the same evidence (e.g. all "inconclusive (1 seed)") collapse to it."""
    if len(set(parts.values())) == 1:
        return next(iter(parts.values()))
    words = {label: verdict_word(v) for label, v in parts.items()}
    for wanted in ("no", "inconclusive"):
        for label, v in parts.items():
            if words[label] == wanted:
                return f"{wanted} ({label}: {v[len(wanted):].strip(' ()')})"
    return "yes (" + "; ".join(f"{label}: {v[3:].strip(' ()')}" for label, v in parts.items()) + ")"


def verdict_word(cell: str) -> str:
    """The verdict of a cell without its evidence ("yes", "no", "inconclusive" or "n/a")."""
    word = cell.split(" ", 1)[0]
    if word not in VERDICTS:
        raise ValueError(f"verdict {cell!r}: must start with one of {', '.join(VERDICTS)}")
    return word


def seeds_note(n: int) -> str:
    """What an "ours" cell adds about its evidence: the number of seeds behind it."""
    return f"{n} seed{'s' * (n != 1)}"


def paired_seeds(results: dict) -> list[int]:
    """The seeds every kind of {kind: {seed: rows}} has, in order: the pairs a verdict uses."""
    return sorted(set.intersection(*(set(by_seed) for by_seed in results.values())))


def per_seed(results: dict, fn) -> list:
    """[fn({kind: rows of seed s})] over `paired_seeds(results)`: the paired per-seed values a
    verdict needs."""
    return [fn({kind: by_seed[seed] for kind, by_seed in results.items()})
            for seed in paired_seeds(results)]


def values_cell(values, fmt: str = "+.4f") -> str:
    """Per-seed values and their number, e.g. "+0.012, -0.003, +0.020 (3 seeds)"."""
    return ", ".join(f"{v:{fmt}}" for v in values) + f" ({seeds_note(len(values))})"
