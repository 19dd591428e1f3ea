"""The figures of ``pad serve`` and their Prometheus text exposition (format 0.0.4).

Every method is called from the service's event loop only (one thread), so nothing here locks.

Exposed (``GET /metrics``):

- ``pad_serve_requests_total{path, status}``: counter, answered requests by path (``/predict``,
  ``/health``, ``/metrics``, ``other``) and HTTP status;
- ``pad_serve_stage_seconds{stage}``: histogram of the seconds of each stage of the scans answered
  with 200 (:data:`STAGES`: receiving the upload, waiting for the model, then pad predict's own
  read, render, encode and score, and the whole request);
- ``pad_serve_queue_length``: gauge, scans admitted and not yet taken by the model (uploading or
  waiting); ``pad_serve_queue_capacity``: the most that may wait (``--queue``);
- ``pad_serve_scoring``: gauge, 1 while the model works on a scan;
- ``pad_serve_uptime_seconds``: gauge.
"""
from __future__ import annotations

import bisect
from collections import Counter

#: The stages timed per scan, in order.
STAGES = ("upload", "queue", "read", "render", "encode", "score", "total")
#: Upper bounds of the histogram buckets, in seconds (``+Inf`` is added).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
#: Paths counted under their own name; any other path counts as ``other``.
PATHS = ("/predict", "/health", "/metrics")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _number(value: float) -> str:
    return repr(float(value)) if value != int(value) else str(int(value))


class ServeMetrics:
    """Request counts by path and status, and a histogram of seconds per stage."""

    def __init__(self) -> None:
        self.requests: Counter = Counter()                  # (path, status) -> count
        self.bucket_counts = {s: [0] * (len(BUCKETS) + 1) for s in STAGES}   # last: above every bound
        self.sums = {s: 0.0 for s in STAGES}

    def count_request(self, path: str, status: int) -> None:
        self.requests[(path if path in PATHS else "other", int(status))] += 1

    def observe(self, stage: str, seconds: float) -> None:
        """One scan spent ``seconds`` in ``stage`` (one of :data:`STAGES`)."""
        self.bucket_counts[stage][bisect.bisect_left(BUCKETS, seconds)] += 1
        self.sums[stage] += float(seconds)

    def served(self) -> int:
        """Scans answered with a score (``/predict``, status 200)."""
        return self.requests[("/predict", 200)]

    def exposition(self, queue_length: int, queue_capacity: int, scoring: int, uptime_s: float) -> str:
        """The Prometheus text format of every figure (ends with a newline)."""
        lines = ["# HELP pad_serve_requests_total Answered requests by path and HTTP status.",
                 "# TYPE pad_serve_requests_total counter"]
        for (path, status), count in sorted(self.requests.items()):
            lines.append(f'pad_serve_requests_total{{path="{path}",status="{status}"}} {count}')
        lines += ["# HELP pad_serve_stage_seconds Seconds of each stage of the scans answered with 200.",
                  "# TYPE pad_serve_stage_seconds histogram"]
        for stage in STAGES:
            cumulative = 0
            for bound, count in zip(BUCKETS + (float("inf"),), self.bucket_counts[stage]):
                cumulative += count
                le = "+Inf" if bound == float("inf") else _number(bound)
                lines.append(f'pad_serve_stage_seconds_bucket{{stage="{stage}",le="{le}"}} {cumulative}')
            lines.append(f'pad_serve_stage_seconds_sum{{stage="{stage}"}} {self.sums[stage]!r}')
            lines.append(f'pad_serve_stage_seconds_count{{stage="{stage}"}} {cumulative}')
        for name, value, text in (
                ("pad_serve_queue_length", queue_length, "Scans admitted and not yet taken by the model."),
                ("pad_serve_queue_capacity", queue_capacity, "Scans that may wait for the model (--queue)."),
                ("pad_serve_scoring", scoring, "1 while the model works on a scan."),
                ("pad_serve_uptime_seconds", round(uptime_s, 3), "Seconds since the service started.")):
            lines += [f"# HELP {name} {text}", f"# TYPE {name} gauge", f"{name} {_number(value)}"]
        return "\n".join(lines) + "\n"
