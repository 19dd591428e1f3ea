"""Per-scan time of ``pad extract-features --backbone point-mae`` (FPS + kNN + IPG + Point-MAE) on a
~20k-point scan, against the naive way (the official code's per-centre Python loops for kNN rows,
curvature and group growth) in the same run; both give the same groups (checked).

    python benchmarks/extract_tokens_bench.py [--points 20000] [--device cpu] [--threads 0] [--quick]

Prints one line of key=value figures: ``group_s`` (FPS + kNN + IPG, pad), ``naive_group_s`` (the
per-centre loops), ``group_speedup``, ``same_groups`` (both give identical groups), ``encoder_s``
(Point-MAE, eval mode), ``scan_s`` / ``naive_scan_s`` (per scan, grouping + encoder) and
``scan_speedup``. ``--quick``: a 5000-point scan.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_cache.backbones_pointmae import load_point_mae  # noqa: E402
from pipeline.musc_inputs import normalize_points  # noqa: E402
from pipeline.point_groups import build_groups, farthest_point_sample  # noqa: E402


def scan(n: int, seed: int = 0) -> torch.Tensor:
    """A scan-like surface: a height field with bumps and a ridge, normalized as MuSc-V2's input."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(-1, 1, (n, 2))
    z = 0.15 * np.sin(3 * xy[:, 0]) * np.cos(2 * xy[:, 1]) + np.where(np.abs(xy[:, 1]) < 0.1, 0.1, 0.0)
    return normalize_points(torch.from_numpy(np.column_stack([xy, z]).astype(np.float32)))


def naive_groups(p: torch.Tensor, m: int = 1024, g: int = 128, k: int = 256, k_iter: int = 80, c_thr: float = 0.01):
    """The official structure: FPS, then for every centre its kNN row, curvature (np.linalg.eig) and
    group growth (``closed_k``) in a Python loop."""
    centers = farthest_point_sample(p, m)
    groups = []
    for c in centers.tolist():
        d = ((p.double() - p[c].double()) ** 2).sum(1)
        row = torch.from_numpy(np.argsort(d.numpy(), kind="stable")[:k])
        nb = (p[row[1:g]] - p[c]).T
        nb = nb / nb.norm(dim=0).max()
        nb = nb - nb.mean(1, keepdim=True)
        ev = np.linalg.eig((nb @ nb.T / (g - 2)).numpy())[0].real
        if ev.min() / ev.sum() < c_thr:
            groups.append(row[:g])
            continue
        group = row[:k_iter]
        while len(group) < g:
            kk = min(k_iter, g - len(group))
            cand = torch.unique(row[~torch.isin(row, group)])
            dist = torch.cdist(p[group], p[cand]).reshape(-1)
            order = torch.from_numpy(np.argsort(dist.numpy(), kind="stable")[:kk])
            group = torch.cat([cand[order % len(cand)], group])
        groups.append(group)
    return centers, torch.stack(groups)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=20000)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--quick", action="store_true", help="a 5000-point scan")
    args = ap.parse_args()
    if args.quick:
        args.points = 5000
    if args.threads:
        torch.set_num_threads(args.threads)
    p = scan(args.points).to(args.device)
    model = load_point_mae("random", 0).to(args.device)
    t = time.perf_counter()
    g = build_groups(p)
    t_group = time.perf_counter() - t
    t = time.perf_counter()
    _, naive = naive_groups(p.cpu())
    t_naive = time.perf_counter() - t
    same = bool(torch.equal(naive, g["groups"].cpu()))
    t = time.perf_counter()
    with torch.inference_mode():
        model(g["neighborhood"][None], g["centers"][None])
    if p.device.type == "cuda":
        torch.cuda.synchronize()
    t_enc = time.perf_counter() - t
    flat = float((g["curvature"] < 0.01).float().mean())
    print(f"extract_tokens_bench points={args.points} groups=1024x128 flat_frac={flat:.2f} device={args.device} "
          f"threads={torch.get_num_threads()} group_s={t_group:.2f} naive_group_s={t_naive:.2f} "
          f"group_speedup={t_naive / t_group:.1f} same_groups={same} encoder_s={t_enc:.2f} "
          f"scan_s={t_group + t_enc:.2f} naive_scan_s={t_naive + t_enc:.2f} "
          f"scan_speedup={(t_naive + t_enc) / (t_group + t_enc):.2f}")

if __name__ == "__main__":
    main()
