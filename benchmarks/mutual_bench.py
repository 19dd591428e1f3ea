"""Speed and peak memory of pad's chunked mutual scoring (MSM) against the official full-matrix way.

Synthetic tokens: every scan 1024 patches × 384 channels (Point-MAE's), L2-normalized, float16, as
the official ``compute_scores_single`` receives them. Each case runs in a fresh subprocess and reads
the process's peak resident memory (``VmHWM``; on CUDA ``torch.cuda.max_memory_allocated``):

- ``compare``: N scans; the first ``--queries`` query scans scored by pad
  (:func:`scoring.mutual.msm.mutual_scores`, bounded blocks) and by the official way (one
  (L × (N−1)·L) cdist per scan, :func:`scoring.mutual.msm.official_single`), same inputs, same
  process kind, alternated ``--repeats`` times (the fastest of each: the machine's load changes in
  between): scans/s, peak memory, and that both give the same numbers;
- ``memory``: pad at N = 100, 500, 2000 scans (one layer; the three layers of a run are scored one
  after the other, so a run's peak is one layer's): the N scans' features in memory, ``--queries``
  query scans scored against the first ``--reference-limit`` of the others (default 128 = two
  distance blocks: later blocks reuse the same buffers, so the peak is reached there; the query's
  (1, L, N) minima are allocated whole as in a full run). On a 2-core CPU a full query at N = 2000
  takes half an hour; ``--reference-limit 0`` scores against all N − 1. Reported: peak memory and
  scan pairs per second (a whole class is N·(N − 1) pairs per layer).

- ``--official-sizes``: the official way's memory and speed at those N (a whole query each).

Prints one line. ``--sizes`` / ``--compare-n`` / ``--queries`` shrink it for a quick check.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATCHES, DIM = 1024, 384


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _features(n: int, seed: int, device):
    import torch

    from scoring.mutual.snamd import l2_normalize

    g = torch.Generator().manual_seed(seed)
    z = torch.empty((n, PATCHES, DIM), dtype=torch.float16)
    for start in range(0, n, 10):                     # no float32 copy of the whole class
        block = torch.randn((min(10, n - start), PATCHES, DIM), generator=g)
        z[start:start + block.shape[0]] = l2_normalize(block).half()
    return z.to(device)


def run_case(kind: str, n: int, queries: int, device_name: str, limit: int = 0) -> dict:
    """One measurement in this process: pad's way or the official's on ``queries`` query scans of N
    (pad: against the first ``limit`` others when ``limit`` > 0)."""
    import torch

    sys.path.insert(0, ROOT)
    from scoring.mutual.msm import mutual_scores, official_single

    device = torch.device(device_name)
    torch.manual_seed(0)
    z = _features(n, 0, device)
    try:                                              # restart the high-water mark: the features' creation is not measured
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass
    base = _rss_kb("VmRSS")
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_gpu = torch.cuda.memory_allocated()
    start = time.perf_counter()
    refs = n if not limit or kind != "pad" else min(n, queries + limit)
    if kind == "pad":
        # the first `queries` scans, each against the other scans (the reference set = the first `refs`
        # scans, its own copy left out: with refs = n exactly the leave-one-out numbers of a full run)
        full_minima = torch.zeros((queries, PATCHES, n), dtype=torch.float16, device=device)   # as a full run holds
        scores = mutual_scores(z[:queries], reference=z[:refs], exclude=torch.arange(queries, device=device))
        del full_minima
    else:
        scores = torch.stack([official_single(z, i) for i in range(queries)])
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    out = {"kind": kind, "n": n, "queries": queries, "seconds": seconds, "scans_per_s": queries / seconds,
           "references": refs - 1, "pairs_per_s": queries * (refs - 1) / seconds,
           "peak_rss_gb": _rss_kb("VmHWM") / 2 ** 20, "peak_over_features_gb": (_rss_kb("VmHWM") - base) / 2 ** 20,
           "features_gb": z.numel() * 2 / 2 ** 30, "checksum": scores.double().sum().item(),
           "scores": scores[:, :8].cpu().tolist()}
    if device.type == "cuda":
        out["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 2 ** 30
        out["peak_over_features_gb"] = (torch.cuda.max_memory_allocated() - base_gpu) / 2 ** 30
    return out


def _sub(kind: str, n: int, queries: int, device: str, limit: int = 0) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--case", kind, "--n", str(n), "--queries", str(queries),
           "--device", device, "--reference-limit", str(limit)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100,500,2000", help="class sizes N of the memory runs")
    ap.add_argument("--compare-n", type=int, default=20, help="class size of the pad vs official run")
    ap.add_argument("--queries", type=int, default=1, help="query scans timed per case")
    ap.add_argument("--repeats", type=int, default=2,
                    help="pad/official comparison: runs of each, alternated; the fastest of each is reported")
    ap.add_argument("--official-sizes", default="",
                    help="class sizes N at which the official full-matrix way is also measured (one whole query "
                         "each: it cannot be chunked), e.g. 100,500")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--reference-limit", type=int, default=128,
                    help="memory runs: reference scans scored per query (0: all N - 1)")
    ap.add_argument("--case", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if args.case:
        print(json.dumps(run_case(args.case, args.n, args.queries, device, args.reference_limit)))
        return
    parts = [f"mutual_bench ({device}, {PATCHES} patches x {DIM} dims, float16, {args.queries} query scan(s) "
             "timed per case)"]
    if args.compare_n:
        runs = {"pad": [], "official": []}
        for _ in range(max(1, args.repeats)):       # alternated, the fastest of each: the load changes meanwhile
            for kind in runs:
                runs[kind].append(_sub(kind, args.compare_n, args.queries, device))   # pad: against all N − 1
        pad, official = (max(runs[k], key=lambda r: r["scans_per_s"]) for k in ("pad", "official"))
        same = pad["scores"] == official["scores"] and pad["checksum"] == official["checksum"]
        parts.append(f"N={args.compare_n} pad {pad['scans_per_s']:.3f} scans/s, peak +"
                     f"{pad['peak_over_features_gb']:.3f} GB over the features; official full matrix "
                     f"{official['scans_per_s']:.3f} scans/s, peak +{official['peak_over_features_gb']:.3f} GB; "
                     f"speed ratio {pad['scans_per_s'] / official['scans_per_s']:.2f}x, memory ratio "
                     f"{official['peak_over_features_gb'] / max(pad['peak_over_features_gb'], 1e-9):.1f}x less, "
                     f"same scores: {same}")
    for n in [int(s) for s in args.official_sizes.split(",") if s]:
        r = _sub("official", n, args.queries, device)
        peak = r.get("peak_gpu_gb", r["peak_rss_gb"])
        parts.append(f"official full matrix N={n}: peak {peak:.2f} GB ({r['features_gb']:.2f} GB features + "
                     f"{r['peak_over_features_gb']:.2f} GB; {r['references']} reference scans scored, "
                     f"{r['pairs_per_s']:.2f} scan pairs/s)")
    for n in [int(s) for s in args.sizes.split(",") if s]:
        r = _sub("pad", n, args.queries, device, args.reference_limit)
        peak = r.get("peak_gpu_gb", r["peak_rss_gb"])
        parts.append(f"N={n}: peak {peak:.2f} GB ({r['features_gb']:.2f} GB features + "
                     f"{r['peak_over_features_gb']:.2f} GB; {r['references']} reference scans scored, "
                     f"{r['pairs_per_s']:.2f} scan pairs/s)")
    print("; ".join(parts))


if __name__ == "__main__":
    main()
