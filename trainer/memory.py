"""Process memory: keep the C heap from holding on to freed tensors.

A training step allocates and frees many CPU tensors of 1–32 MB (maps, features, gradients).
glibc serves an allocation above its mmap threshold with its own mapping, returned to the system
when freed, but it raises that threshold to the size of every such block freed (up to 32 MB), so
after the first step these tensors come from the heap, whose freed middle parts stay resident:
the peak RSS of ``pad train`` with ViT-L-14-336 grew by ~0.2 GB per epoch over the first epochs.
Fixing the threshold (``mallopt(M_MMAP_THRESHOLD)``) at 4 MiB stops that: peak RSS of a
ViT-L-14-336 run 1706 MB instead of 1821 MB (50k-point clouds, 3 epochs), at the price of the
page faults of fresh mappings, ~0.08 s more per step on 2 CPU cores (BENCHMARKS.md, "Training").
Setting ``MALLOC_MMAP_THRESHOLD_`` in the environment overrides
it (e.g. ``MALLOC_MMAP_THRESHOLD_=33554432``: glibc's largest dynamic value, for speed over
memory). Other C libraries: nothing is done.
"""
from __future__ import annotations

import ctypes
import ctypes.util

#: Allocations from this size on get their own mapping (glibc's default starts at 128 KiB and grows).
MMAP_THRESHOLD = 4 * 2 ** 20
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
_done = False


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold for this process (once); True when set. No-op (False) on
    other C libraries or when ``MALLOC_MMAP_THRESHOLD_`` is set in the environment."""
    global _done
    import os

    if _done or os.environ.get("MALLOC_MMAP_THRESHOLD_"):
        return _done
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    _done = bool(mallopt(_M_MMAP_THRESHOLD, int(threshold)))
    return _done


def resident_mb(pid: int | str = "self", field: str = "VmRSS") -> float:
    """Resident memory of a process in MB (``/proc/PID/status``; ``field`` ``VmRSS`` now or
    ``VmHWM`` its peak); NaN where that file is missing (not Linux, or the process ended)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")
