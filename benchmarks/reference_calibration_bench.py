"""Against good parts: is ``pad calibrate --reference``'s false-alarm rate the one asked?

Normal scans are drawn from one distribution of patch features (each patch one of ``--patterns``
shared patterns plus noise, L2-normalized, float16, ``--layers`` layers). Per trial: a reference
set of ``--refs`` normal scans, calibration on them leaving each one out of its own reference
(:func:`scoring.mutual.reference.center_scores`, the same k for every scan), the conformal
threshold at each asked alpha (:func:`scoring.conformal.threshold`), and the rate at which
``--held`` new normal scans scored against the whole set (as ``pad predict --reference``) are
flagged. Object score: the max of the centre scores. Averaged over ``--trials`` trials, for:

- ``loo``: pad's rule (k = max(1, int(0.3 (R - 1))) for every scan);
- ``official_k``: the calibration scans left out as above but the new scans with the official
  k = int(0.3 R) of their R reference scans (what a plain MSM against the set would take);
- ``split``: calibration on ``--refs`` other normal scans that are not in the set (split
  conformal: exact).

Prints one line of key=value figures: per alpha, ``far_<how>_<alpha>`` the three measured rates
and ``official_over_loo_<alpha>`` their ratio.

    python benchmarks/reference_calibration_bench.py               # R = 20, 300 trials
    python benchmarks/reference_calibration_bench.py --quick       # 40 trials
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from scoring import conformal  # noqa: E402
from scoring.mutual.msm import mutual_scores  # noqa: E402
from scoring.mutual.reference import center_scores, kept_count  # noqa: E402

ALPHAS = (0.1, 0.2)


def scans(rng: np.random.Generator, patterns: np.ndarray, n: int, patches: int, noise: float) -> torch.Tensor:
    """(L, n, M, C) float16 normal scans: each patch a random shared pattern plus noise."""
    layers, count, dim = patterns.shape
    pick = rng.integers(0, count, size=(n, patches))
    z = patterns[:, pick] + noise * rng.normal(size=(layers, n, patches, dim))
    z /= np.linalg.norm(z, axis=-1, keepdims=True)
    return torch.from_numpy(z.astype(np.float16))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--refs", type=int, default=20)
    ap.add_argument("--held", type=int, default=100)
    ap.add_argument("--trials", type=int, default=300)
    ap.add_argument("--patches", type=int, default=48)
    ap.add_argument("--patterns", type=int, default=40)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--noise", type=float, default=0.35)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    trials = 40 if args.quick else args.trials
    torch.set_num_threads(1)
    rng = np.random.default_rng(args.seed)
    patterns = rng.normal(size=(args.layers, args.patterns, args.dim))
    r = args.refs
    k_pad, k_official = kept_count(r), max(1, int(0.3 * r))
    rates = {(a, how): [] for a in ALPHAS for how in ("loo", "official_k", "split")}
    t0 = time.perf_counter()
    for _ in range(trials):
        ref = scans(rng, patterns, r, args.patches, args.noise)
        other = scans(rng, patterns, r, args.patches, args.noise)
        held = scans(rng, patterns, args.held, args.patches, args.noise)
        loo = center_scores(ref, ref, leave_out=np.arange(r)).max(dim=1).values.numpy()
        split = center_scores(other, ref).max(dim=1).values.numpy()
        new = center_scores(held, ref).max(dim=1).values.numpy()
        # the official k for a scan outside the set: int(0.3 R) of its R reference scans
        new_official = torch.stack([mutual_scores(held[layer], topmin=(k_official + 0.5) / r, reference=ref[layer])
                                    for layer in range(held.shape[0])]).mean(0).max(dim=1).values.numpy()
        for a in ALPHAS:
            t_loo = conformal.threshold(conformal.sorted_scores(loo), a)
            rates[(a, "loo")].append(float(np.mean(new > t_loo)))
            rates[(a, "official_k")].append(float(np.mean(new_official > t_loo)))
            rates[(a, "split")].append(float(np.mean(new > conformal.threshold(conformal.sorted_scores(split), a))))
    seconds = time.perf_counter() - t0
    parts = [f"refs={r}", f"k={k_pad}", f"k_official={k_official}", f"trials={trials}"]
    for a in ALPHAS:
        m = {how: float(np.mean(rates[(a, how)])) for how in ("loo", "official_k", "split")}
        parts += [f"far_{how}_{a:g}={m[how]:.3f}" for how in ("loo", "official_k", "split")]
        parts.append(f"official_over_loo_{a:g}={m['official_k'] / m['loo']:.2f}" if m["loo"] > 0 else
                     f"official_over_loo_{a:g}=inf")
    print(" ".join(parts) + f" seconds={seconds:.1f}")

if __name__ == "__main__":
    main()
