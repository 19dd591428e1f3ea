"""``pad serve`` at its edges: does every client read the 413, and do idle sockets delay anyone?

Starts ``pad serve --max-upload-mb 1`` on a pad-tiny run (``--checkpoint RUN``, else the soak's
small run is built in a temporary directory: :func:`soak.make_run`) on 127.0.0.1 and measures:

- ``413_<client>``: what urllib, requests, httpx (where installed), curl (where installed) and a
  raw socket read for a 20 MB upload sent whole (status, or the error they got) and in how many
  seconds; the same with uvicorn's plain h11 protocol in place of pad's (``naive_413_<client>``:
  no lingering close; patched in the child process by this script only);
- ``health_ms`` / ``health_idle_ms``: median latency of ``GET /health`` over 20 requests, alone and
  beside 300 idle loopback sockets (a third of them with part of a request line);
  ``predict_s`` / ``predict_idle_s``: one ``POST /predict`` (3,000 points) likewise; ``ratio_health``
  = idle / alone.

    python benchmarks/serve_clients.py [--checkpoint RUN]
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from serve_bench import pad_command, post, served_url, stop_process, write_scan  # noqa: E402
from soak import SERVE, make_run  # noqa: E402

MIB = 1 << 20
BODY = b"x" * (20 * MIB)
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
# uvicorn's own h11 protocol in place of pad's (the naive way): used only by this benchmark.
NAIVE = ("import workflows.serve_http as h\n"
         "def plain(*args, **kwargs):\n"
         "    from uvicorn.protocols.http.h11_impl import H11Protocol\n"
         "    return H11Protocol\n"
         "h.protocol_class = plain\n"
         "import workflows.serve as s\n"
         "s.protocol_class = plain\n")


def start(run: str, work: Path, naive: bool) -> tuple[subprocess.Popen, str]:
    out, err = work / f"clients{'-naive' * naive}.out", work / f"clients{'-naive' * naive}.log"
    args = ["serve", "--checkpoint", run, "--port", "0", "--device", "cpu", "--max-upload-mb", "1"]
    command = [sys.executable, "-c", NAIVE + SERVE, *args] if naive else pad_command() + args
    with open(out, "w") as fo, open(err, "w") as fe:
        proc = subprocess.Popen(command, stdout=fo, stderr=fe, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    url = served_url(proc, out, 1800)
    if url is None:
        raise SystemExit(f"serve_clients: pad serve did not start: {err.read_text()[-2000:]}")
    return proc, url


def big_upload(client: str, url: str, work: Path) -> str:
    """``<status or error> <seconds>`` of one 20 MB upload sent whole by ``client``."""
    target = f"{url}/predict?filename=big.ply"
    t0 = time.perf_counter()
    try:
        if client == "urllib":
            try:
                OPENER.open(urllib.request.Request(target, data=BODY, method="POST"), timeout=60).read()
                status = "200"
            except urllib.error.HTTPError as exc:
                status = str(exc.code)
        elif client == "requests":
            import requests
            status = str(requests.post(target, data=BODY, timeout=60, proxies={"http": None}).status_code)
        elif client == "httpx":
            import httpx
            status = str(httpx.post(target, content=BODY, timeout=60, trust_env=False).status_code)
        elif client == "curl":
            path = work / "big.ply"
            path.write_bytes(BODY)
            done = subprocess.run(["curl", "-sS", "--noproxy", "*", "-o", "/dev/null", "-w", "%{http_code}",
                                   "--data-binary", f"@{path}", target], capture_output=True, text=True, timeout=60)
            status = done.stdout.strip() if done.returncode == 0 else f"curl-exit-{done.returncode}"
        else:
            host, port = url.split("//")[1].split(":")
            with socket.create_connection((host, int(port)), timeout=60) as sock:
                sock.sendall(f"POST /predict?filename=big.ply HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
                             f"Content-Length: {len(BODY)}\r\n\r\n".encode() + BODY)
                status = sock.recv(64).split(b" ")[1].decode()
    except Exception as exc:  # what the client got instead of an answer
        status = type(exc).__name__
        if isinstance(exc, urllib.error.URLError) and exc.reason is not None:
            status = type(exc.reason).__name__
    return f"{status}/{time.perf_counter() - t0:.2f}s"


def clients() -> list[str]:
    found = ["urllib"]
    for name in ("requests", "httpx"):
        try:
            __import__(name)
            found.append(name)
        except ImportError:
            pass
    if shutil.which("curl"):
        found.append("curl")
    return found + ["socket"]


def health_ms(url: str, n: int = 20) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        OPENER.open(f"{url}/health", timeout=10).read()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="a pad-tiny run (default: build the soak's)")
    args = parser.parse_args()
    os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")
    with tempfile.TemporaryDirectory(prefix="pad-clients-") as tmp:
        work = Path(tmp)
        run = args.checkpoint or make_run(work, "3")[1]
        scan = write_scan(work / "scan.ply", 3000, seed=5)
        figures: dict[str, object] = {}
        for naive in (False, True):
            proc, url = start(run, work, naive)
            try:
                for client in clients():
                    figures[f"{'naive_' * naive}413_{client}"] = big_upload(client, url, work)
                if naive:
                    continue
                post(url, scan, points=False)                                  # warm
                alone_health, alone_predict = health_ms(url), post(url, scan, points=False)[0]
                host, port = url.split("//")[1].split(":")
                idle = [socket.create_connection((host, int(port))) for _ in range(300)]
                for sock in idle[::3]:
                    sock.sendall(b"GET /health HT")
                time.sleep(0.3)
                idle_health, idle_predict = health_ms(url), post(url, scan, points=False)[0]
                for sock in idle:
                    sock.close()
                figures.update(health_ms=round(alone_health, 2), health_idle_ms=round(idle_health, 2),
                               ratio_health=round(idle_health / alone_health, 2), predict_s=round(alone_predict, 3),
                               predict_idle_s=round(idle_predict, 3))
            finally:
                stop_process(proc)
        print("serve_clients: " + "  ".join(f"{k}={v}" for k, v in figures.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
