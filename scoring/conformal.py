"""Split-conformal decisions: p-values and thresholds from the scores of normal scans.

The rule (Vovk et al.'s conformal p-value, as used for outlier detection by Bates, Candès,
Lei, Romano and Sesia, "Testing for outliers with conformal p-values", Ann. Statist. 2023):

- Calibration: the scores ``c_1 … c_n`` of n normal scans of one product, scored exactly as
  new scans will be (same checkpoint, features, smoothing), none of them used to train the
  prompts. Higher score = more anomalous.
- p-value of a new scan with score s::

      p(s) = (1 + #{i : c_i ≥ s}) / (n + 1)

  Ties count against the new scan (``≥``), which keeps p valid when scores repeat.
- Verdict: ``anomalous`` when p(s) ≤ α, else ``normal``. If the new scan is normal and
  exchangeable with the calibration scans, its rank among the n + 1 scores is uniform, so
  P(p ≤ α) = ⌊(n + 1)·α⌋ / (n + 1) ≤ α (equality up to ties; the bound holds for any
  score, whatever the backbone). This is a guarantee on average over calibration sets
  (marginal); a given calibration set realizes a false-alarm rate that scatters around it,
  less so as n grows (Beta(k, n + 1 − k) for continuous scores).
- Equivalent threshold: with k = ⌊(n + 1)·α⌋ and the calibration scores sorted ascending
  ``c_(1) ≤ … ≤ c_(n)``, p(s) ≤ α ⟺ 1 + #{c_i ≥ s} ≤ k ⟺ fewer than k calibration scores
  reach s ⟺ s > c_(n − k + 1) = c_(⌈(n + 1)(1 − α)⌉): the threshold is the
  ⌈(n + 1)(1 − α)⌉-th smallest normal score, and a scan is anomalous when its score is
  *strictly* above it.
- How many scans: the smallest p-value is 1/(n + 1); a decision at level α needs k ≥ 1, i.e.
  n ≥ 1/α − 1 (:func:`needed_scans`: 19 scans for α = 0.05, 99 for α = 0.01). With fewer,
  every p-value exceeds α and no threshold below the maximum can keep the guarantee.

α is compared exactly: k is computed from α as the decimal it was written as
(``Fraction(repr(alpha))``), so α = 0.29 with n + 1 = 100 gives k = 29, never 28 by a
floating-point rounding of 0.29 · 100.

All functions are plain numpy on 1-D arrays; "scores" are any real numbers (object scores,
or the largest point score of a scan for the region threshold of :mod:`scoring.calibration`).
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np


def _alpha(alpha: float) -> Fraction:
    """α as an exact fraction of the decimal it was written as; ValueError outside (0, 1)."""
    a = float(alpha)
    if not (math.isfinite(a) and 0.0 < a < 1.0):
        raise ValueError(f"the false-alarm rate must lie strictly between 0 and 1 (got {alpha})")
    return Fraction(repr(a))


def allowed_count(n: int, alpha: float) -> int:
    """k = ⌊(n + 1)·α⌋: a scan is anomalous when fewer than k of the n calibration scores reach
    its score (p ≤ α ⟺ 1 + #{c_i ≥ s} ≤ k). 0 means no scan can ever be flagged."""
    if n < 0:
        raise ValueError(f"the number of calibration scans must be 0 or more (got {n})")
    return math.floor((n + 1) * _alpha(alpha))


def needed_scans(alpha: float) -> int:
    """The fewest calibration scans with which a decision at level α is possible: the smallest n
    with ⌊(n + 1)·α⌋ ≥ 1, i.e. n = ⌈1/α⌉ − 1 (19 for α = 0.05, 99 for 0.01)."""
    return math.ceil(1 / _alpha(alpha)) - 1


def sorted_scores(scores) -> np.ndarray:
    """Calibration scores (n,) any real dtype -> (n,) float64 sorted ascending; ValueError when one
    is not finite."""
    c = np.asarray(scores, np.float64).reshape(-1)
    if not np.isfinite(c).all():
        raise ValueError("a calibration score is not finite")
    return np.sort(c)


def exceed_counts(scores, calibration_sorted: np.ndarray) -> np.ndarray:
    """#{i : c_i ≥ s} for each new score s. ``scores``: (M,) float; ``calibration_sorted``: (n,)
    float64 ascending (:func:`sorted_scores`). Returns (M,) int64. A NaN score counts every
    calibration score (the most normal rank)."""
    s = np.asarray(scores, np.float64).reshape(-1)
    c = np.asarray(calibration_sorted, np.float64).reshape(-1)
    counts = c.size - np.searchsorted(c, s, side="left")
    return np.where(np.isnan(s), c.size, counts).astype(np.int64)


def p_values(scores, calibration_sorted: np.ndarray) -> np.ndarray:
    """Conformal p-values p(s) = (1 + #{c_i ≥ s}) / (n + 1) of new scores (M,) against the sorted
    calibration scores (n,). Returns (M,) float64 in [1/(n+1), 1]."""
    n = int(np.asarray(calibration_sorted).size)
    return (1.0 + exceed_counts(scores, calibration_sorted)) / (n + 1.0)


def is_anomalous(scores, calibration_sorted: np.ndarray, alpha: float) -> np.ndarray:
    """The verdicts p(s) ≤ α of new scores (M,), computed exactly as 1 + #{c_i ≥ s} ≤ ⌊(n+1)α⌋.
    Returns (M,) bool (True: anomalous)."""
    k = allowed_count(int(np.asarray(calibration_sorted).size), alpha)
    return 1 + exceed_counts(scores, calibration_sorted) <= k


def threshold(calibration_sorted: np.ndarray, alpha: float) -> float:
    """The score threshold t of level α: a scan is anomalous exactly when its score s > t.
    t = c_(⌈(n+1)(1−α)⌉), the ⌈(n + 1)(1 − α)⌉-th smallest calibration score. ValueError when
    n < :func:`needed_scans` (α) (no finite threshold keeps the guarantee)."""
    c = np.asarray(calibration_sorted, np.float64).reshape(-1)
    k = allowed_count(c.size, alpha)
    if k < 1:
        raise ValueError(f"{c.size} calibration scans cannot set a false-alarm rate of {alpha}: "
                         f"at least {needed_scans(alpha)} are needed")
    return float(c[c.size - k])


def decision_facts(decision: dict) -> list[tuple[str, str]]:
    """The lines a view (report, ``pad predict --html``) shows for a sample's ``decision`` fields
    (``verdict``, ``p_value``, ``n_regions``): ``("verdict", "anomalous (p = 0.012)")`` and
    ``("defect regions", "2")``."""
    return [("verdict", f"{decision['verdict']} (p = {decision['p_value']:.3g})"),
            ("defect regions", str(decision["n_regions"]))]
