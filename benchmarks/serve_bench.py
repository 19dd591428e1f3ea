"""``pad serve`` (warm) against ``pad predict`` (a process per scan, cold), same run, same files.

Builds a small pad-tiny run as a user would (``pad synth`` → ``pad render`` with its defaults: 9
views, 336 px, ×2 supersampling → ``pad extract-features --backbone pad-tiny --pretrained random``
→ ``pad train --epochs 1``), writes two scans of exactly 5,000 and 50,000 points, then:

- ``cold_<n>_s``: wall time of one ``pad predict`` process on the scan (start, imports, model,
  renderer, the scan), and ``predict_peak_mb``: its peak memory (``ru_maxrss`` of the child);
- ``startup_s``: from starting ``pad serve --port 0`` to its ready line (model and renderer made,
  one built-in cloud scored);
- ``warm_p50_<n>_s`` / ``warm_p95_<n>_s``: latency of ``POST /predict`` (multipart upload, JSON
  answer, measured by the client) over ``--repeats`` requests, after one unmeasured request;
  ``speedup_<n>`` = cold / warm p50;
- ``render_<n>_s`` / ``encode_<n>_s`` / ``score_<n>_s``: the median of the answer's stage seconds;
- ``throughput_1c`` / ``throughput_4c``: scans (5k) answered per second by 1 client in a row and
  by 4 clients at once (``--throughput-scans`` scans each time); ``concurrency_gain`` = 4c / 1c
  (the model thread is one: the gain is what uploads and answers overlapping it bring);
- ``server_peak_mb``: ``VmHWM`` of the service process after every request above;
- ``max_abs_diff``: the largest difference between a served score (object or point) and pad predict's;
- ``load_start`` / ``load_end``: the 1-minute load average before and after (times are comparable
  between runs only on an otherwise idle machine; the ratios come from the same run).

    python benchmarks/serve_bench.py            # 5k and 50k: 20 warm requests each, 16 scans per throughput figure
    python benchmarks/serve_bench.py --quick    # the 5k scan only: 6 warm requests, 8 scans per throughput figure

``--check --checkpoint RUN --file SCAN --reference JSON`` (used by ``benchmarks/gpu_check.sh``):
start the service on ``RUN`` with ``--device auto``, send ``SCAN`` twice, and print
``serve_startup_s``, ``serve_warm_s`` and ``serve_diff`` (largest difference to pad predict's
``JSON`` of the same scan); exit 1 when that is above 1e-5.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TOL = 1e-5
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def pad_command() -> list[str]:
    """The ``pad`` command: ``$PAD``, else this checkout's .venv, else this Python's ``-m cli``."""
    if os.environ.get("PAD"):
        return [os.environ["PAD"]]
    exe = ROOT / ".venv" / "bin" / "pad"
    return [str(exe)] if os.access(exe, os.X_OK) else [sys.executable, "-m", "cli"]


def run_pad(args: list[str], log: Path) -> tuple[float, float]:
    """Run ``pad ARGS``; (wall seconds, peak memory MB). Exits with the log's tail on failure."""
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(pad_command() + args, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.stderr.write(log.read_text()[-3000:])
        raise SystemExit(f"pad {args[0]} failed with exit code {proc.returncode}")
    return seconds, usage.ru_maxrss / 1024.0


def make_run(work: Path, render_options: tuple[str, ...] = (), label: str = "serve_bench") -> tuple[Path, str]:
    """(the synthetic dataset, a pad-tiny run trained on it as a user would): pad synth, render (pad
    render's defaults plus ``render_options``), extract-features, train one epoch; progress lines
    start with ``label``."""
    data, cache, run = work / "data", work / "cache", work / "run"
    steps = [["synth", str(data), "--n-classes", "2", "--per-class", "2", "--points", "3000"],
             ["render", str(data), "--cache", str(cache), "--splits", "test", "--workers", "1", *render_options],
             ["extract-features", "--cache", str(cache), "--backbone", "pad-tiny", "--pretrained", "random",
              "--device", "cpu"]]
    for args in steps:
        print(f"{label}: pad {args[0]} ...", file=sys.stderr, flush=True)
        run_pad(args, work / f"{args[0]}.log")
    first = sorted(p.name for p in data.iterdir() if p.is_dir())[0]
    print(f"{label}: pad train ...", file=sys.stderr, flush=True)
    run_pad(["train", "--cache", str(cache), "--train-classes", first, "--out", str(run), "--epochs", "1",
             "--device", "cpu"], work / "train.log")
    return data, str(run)


def served_url(proc: subprocess.Popen, out: Path, limit_s: float) -> str | None:
    """The loopback URL ``pad serve`` prints into ``out`` once it listens; None when the process
    ends or ``limit_s`` seconds pass first."""
    t0 = time.monotonic()
    while not (found := re.search(r"http://127\.0\.0\.1:\d+", out.read_text())):
        if proc.poll() is not None or time.monotonic() - t0 > limit_s:
            return None
        time.sleep(0.05)
    return found.group(0)


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM, up to 60 s to exit, then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def write_scan(path: Path, n: int, seed: int) -> Path:
    """A lumpy closed surface of exactly ``n`` points (PLY), with a small bump."""
    from data_cache.plyio import write_ply

    rng = np.random.default_rng(seed)
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    r = 1.0 + 0.15 * np.sin(3 * d[:, 0]) * np.cos(2 * d[:, 1]) + 0.08 * np.exp(-np.sum((d - [0, 0, 1]) ** 2, 1) / 0.02)
    write_ply(path, (d * r[:, None] * 40.0).astype(np.float32))
    return path


class Served:
    """A ``pad serve --port 0`` process on 127.0.0.1."""

    def __init__(self, run: str, work: Path, device: str):
        self.log = work / "serve.log"
        out = work / "serve.out"
        t0 = time.perf_counter()
        with open(out, "w") as fo, open(self.log, "w") as fe:
            self.proc = subprocess.Popen(pad_command() + ["serve", "--checkpoint", run, "--port", "0", "--device",
                                                          device, "--queue", "16"], stdout=fo, stderr=fe, cwd=ROOT)
        url = served_url(self.proc, out, 600)
        if url is None:
            self.stop()
            sys.stderr.write(self.log.read_text()[-3000:])
            raise SystemExit("pad serve did not start")
        self.startup_s = time.perf_counter() - t0
        self.url = url

    def peak_mb(self) -> float:
        from trainer.memory import resident_mb

        return resident_mb(self.proc.pid, "VmHWM")

    def stop(self) -> None:
        stop_process(self.proc)


def post(url: str, path: Path, points: bool = True) -> tuple[float, dict]:
    """(client-side seconds, JSON answer) of one multipart ``POST /predict``; exits on an error answer."""
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode() + path.read_bytes() + \
        f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(f"{url}/predict?points={int(points)}", data=body, method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    t0 = time.perf_counter()
    try:
        with OPENER.open(req, timeout=600) as resp:
            answer = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise SystemExit(f"POST /predict {path.name}: {exc.code} {exc.read()[:300]!r}") from None
    return time.perf_counter() - t0, answer


def difference(answer: dict, reference: dict) -> float:
    """Largest absolute difference of the object score and the point scores (None where both are None)."""
    diff = abs(answer["score"] - reference["score"])
    got = np.array([np.nan if v is None else v for v in answer["point_scores"]], np.float64)
    want = np.array([np.nan if v is None else v for v in reference["point_scores"]], np.float64)
    if got.shape != want.shape or not np.array_equal(np.isnan(got), np.isnan(want)):
        return float("inf")
    ok = ~np.isnan(got)
    return max(diff, float(np.abs(got[ok] - want[ok]).max()) if ok.any() else 0.0)


def throughput(url: str, path: Path, scans: int, clients: int) -> float:
    """Scans per second with ``clients`` clients sending ``scans`` scans in all."""
    per = [scans // clients + (k < scans % clients) for k in range(clients)]
    errors: list[BaseException] = []

    def client(n: int) -> None:
        try:
            for _ in range(n):
                post(url, path, points=False)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in per]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"a client failed: {errors[0]}")
    return scans / (time.perf_counter() - t0)


def check(args) -> int:
    """One service start and one scan (benchmarks/gpu_check.sh)."""
    work = Path(tempfile.mkdtemp(prefix="pad-serve-check-"))
    served = None
    try:
        served = Served(args.checkpoint, work, "auto")
        post(served.url, Path(args.file))
        seconds, answer = post(served.url, Path(args.file))
        diff = difference(answer, json.loads(Path(args.reference).read_text()))
    finally:
        if served is not None:
            served.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"serve_startup_s={served.startup_s:.2f} serve_warm_s={seconds:.3f} serve_diff={diff:.2e}")
    return 0 if diff <= TOL else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the 5k scan only, fewer requests (6 warm, 8 per "
                                                             "throughput figure)")
    parser.add_argument("--repeats", type=int, default=None, help="warm requests per size (default 20, quick 6)")
    parser.add_argument("--throughput-scans", type=int, default=None, help="scans per throughput figure "
                                                                            "(default 16, quick 8)")
    parser.add_argument("--check", action="store_true", help="one start and one scan (see the docstring)")
    parser.add_argument("--checkpoint")
    parser.add_argument("--file")
    parser.add_argument("--reference")
    args = parser.parse_args()
    if args.check:
        return check(args)
    repeats = args.repeats or (6 if args.quick else 20)
    scans = args.throughput_scans or (8 if args.quick else 16)
    work = Path(tempfile.mkdtemp(prefix="pad-serve-bench-"))
    served = None
    fig: dict = {"mode": "quick" if args.quick else "full", "repeats": repeats, "load_start": os.getloadavg()[0]}
    try:
        run = make_run(work)[1]
        sizes = (5000,) if args.quick else (5000, 50000)
        files = {n: write_scan(work / f"scan{n // 1000}k.ply", n, seed=n) for n in sizes}
        reference = {}
        peak_predict = 0.0
        for n, path in files.items():
            print(f"serve_bench: cold pad predict of {n} points ...", file=sys.stderr, flush=True)
            out = work / f"predicted{n}"
            fig[f"cold_{n // 1000}k_s"], peak = run_pad(["predict", str(path), "--checkpoint", run, "--out", str(out),
                                                         "--device", "cpu"], work / f"predict{n}.log")
            peak_predict = max(peak_predict, peak)
            reference[n] = json.loads((out / (path.stem + ".json")).read_text())
        fig["predict_peak_mb"] = peak_predict
        print("serve_bench: pad serve ...", file=sys.stderr, flush=True)
        served = Served(run, work, "cpu")
        fig["startup_s"] = served.startup_s
        worst = 0.0
        for n, path in files.items():
            post(served.url, path)                               # one unmeasured request
            times, stages = [], []
            for _ in range(repeats):
                seconds, answer = post(served.url, path)
                times.append(seconds)
                stages.append(answer["seconds"])
                worst = max(worst, difference(answer, reference[n]))
            k = f"{n // 1000}k"
            fig[f"warm_p50_{k}_s"] = float(np.percentile(times, 50))
            fig[f"warm_p95_{k}_s"] = float(np.percentile(times, 95))
            fig[f"speedup_{k}"] = fig[f"cold_{k}_s"] / fig[f"warm_p50_{k}_s"]
            for stage in ("render", "encode", "score"):
                fig[f"{stage}_{k}_s"] = float(np.median([s[stage] for s in stages]))
            print(f"serve_bench: {n} points: warm p50 {fig[f'warm_p50_{k}_s']:.3f} s", file=sys.stderr, flush=True)
        fig["throughput_1c"] = throughput(served.url, files[5000], scans, 1)
        fig["throughput_4c"] = throughput(served.url, files[5000], scans, 4)
        fig["concurrency_gain"] = fig["throughput_4c"] / fig["throughput_1c"]
        fig["server_peak_mb"] = served.peak_mb()
        fig["max_abs_diff"] = worst
        fig["load_end"] = os.getloadavg()[0]
    finally:
        if served is not None:
            served.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fig.items()))
    return 0 if fig["max_abs_diff"] <= TOL else 1


if __name__ == "__main__":
    sys.exit(main())
