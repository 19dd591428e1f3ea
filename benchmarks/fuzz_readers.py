"""Fuzz every ingest reader with damaged files and print one line of figures.

Cases (generators in ``tests/_fuzz_cases.py``, seeded, reproducible): PLY/PCD/NPY/NPZ/XYZ/TXT
files made valid and then damaged (truncated, bytes flipped/inserted/deleted, random bytes,
mutated headers: element/point counts up to 10^12, property/field types, sizes and counts,
encodings; NaN/Inf; labels outside {0, 1}; wrong column counts), plus tiny MVTec 3D-AD trees
(tiff/png) and Real3D-AD/Anomaly-ShapeNet test samples (pcd + gt txt) read with ``load_sample``.

Every case must end in a PadError naming the file or in a valid Cloud/Sample, within a peak
allocation of ``MAX_PEAK_BYTES`` (tracemalloc) and ``CASE_TIME_LIMIT`` seconds. The naive
comparison: what a reader trusting the headers would allocate (``naive_declared_max_mb``)
against the largest peak actually measured (``naive_over_peak``).

    .venv/bin/python benchmarks/fuzz_readers.py              # 10,000 cases
    .venv/bin/python benchmarks/fuzz_readers.py --quick      # 1,000 cases, well under a minute
    .venv/bin/python benchmarks/fuzz_readers.py --cases 50000 --seed 7 --save-failures /tmp/fuzz-fail

Exit code 1 when any case broke the contract (the first few are printed on stderr).
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
import tracemalloc
import warnings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, "tests")]

import _fuzz_cases as fc  # noqa: E402

#: share of cases per generator (the rest: point files)
TREE_SHARE = {"mvtec": 0.08, "pcd_gt": 0.08}


def run(cases: int, seed: int, save: str | None) -> dict:
    warnings.simplefilter("ignore")  # numpy/loadtxt warnings about the damaged inputs themselves
    logging.getLogger("tifffile").setLevel(logging.CRITICAL)
    work = tempfile.mkdtemp(prefix="pad-fuzz-")
    counts = {"pad": 0, "valid": 0}
    bugs: dict[str, int] = {}
    first: list[str] = []
    max_peak = 0
    declared = 0
    import trimesh  # noqa: F401  the mesh reader imports it lazily: once, here, not inside a measured case
    tracemalloc.start()
    t0 = time.perf_counter()
    for i in range(cases):
        d = fc.RandomDraw(seed * 1_000_003 + i)
        u = (i * 0.6180339887) % 1.0  # a fixed, even interleaving of the kinds
        try:
            if u < TREE_SHARE["mvtec"]:
                outcome, peak = fc.run_mvtec_case(work, fc.mvtec_tree(d))
            elif u < TREE_SHARE["mvtec"] + TREE_SHARE["pcd_gt"]:
                outcome, peak = fc.run_pcd_gt_case(work, fc.pcd_gt_tree(d))
            else:
                case = fc.point_file_case(d)
                declared = max(declared, case.declared_bytes)
                outcome, peak = fc.run_point_case(work, case)
            counts[outcome] += 1
            max_peak = max(max_peak, peak)
        except fc.ReaderBug as bug:
            bugs[bug.kind] = bugs.get(bug.kind, 0) + 1
            if sum(line.startswith(f"[{bug.kind}]") for line in first) < 3:
                first.append(f"[{bug.kind}] case {i} (seed {seed}): {bug}")
            if save:
                _save(save, work, i)
    seconds = time.perf_counter() - t0
    tracemalloc.stop()
    shutil.rmtree(work, ignore_errors=True)
    for line in first:
        print(line, file=sys.stderr)
    return {"cases": cases, "padErrors": counts["pad"], "valid": counts["valid"],
            "other_exceptions": bugs.get("exception", 0),
            "contract_violations": bugs.get("contract", 0) + bugs.get("memory", 0) + bugs.get("hang", 0),
            "max_peak_mb": round(max_peak / 2 ** 20, 2), "naive_declared_max_mb": round(declared / 2 ** 20),
            "naive_over_peak": round(declared / max(max_peak, 1)), "seconds": round(seconds, 1),
            "cases_per_s": round(cases / seconds, 1)}


def _save(save: str, work: str, i: int) -> None:
    """Copy what the failing case wrote (its files) to ``save/case-<i>/``."""
    dest = os.path.join(save, f"case-{i:06d}")
    shutil.copytree(work, dest, dirs_exist_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000, help="number of cases (default 10000)")
    parser.add_argument("--quick", action="store_true", help="1000 cases")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-failures", metavar="DIR", help="copy the files of failing cases here")
    args = parser.parse_args(argv)
    figures = run(1000 if args.quick else args.cases, args.seed, args.save_failures)
    print(" ".join(f"{k}={v}" for k, v in figures.items()))
    return 1 if figures["other_exceptions"] or figures["contract_violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
