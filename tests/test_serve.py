"""``pad serve``: the real service (``pad serve --port 0`` in a subprocess, on 127.0.0.1) driven by a
real HTTP client, checked against ``pad predict`` on the same files.

One service for the module, on a small trained pad-tiny run, with a token, uploads up to 1 MiB and
``--queue 7`` (eight scans at most: the one being scored and seven waiting, so the eight concurrent
clients fit and a ninth is turned away). Slow requests are slow uploads: a client that sent half
its file holds its place in the queue. The module ends with SIGTERM while such an upload is in
flight.
"""
from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid

import numpy as np
import pytest
from click.testing import CliRunner

from _cache_fixtures import make_cache
from cli import main
from data_cache.plyio import write_ply
from trainer.loop import train
from trainer.options import TrainConfig

pytestmark = pytest.mark.slow
TAG = "pad-tiny_random_L6_dpam20_336"     # the tag extract-features gives pad-tiny
TOKEN = "s3cret-token-for-tests"
TOL = 1e-5
MIB = 1 << 20
PAD = os.path.join(os.path.dirname(sys.executable), "pad")
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))   # loopback: never through a proxy
HEADER_TIMEOUT = 3.0


def _bumpy_sphere(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pts = rng.normal(size=(n, 3))
    pts /= np.linalg.norm(pts, axis=1, keepdims=True)
    pts[pts @ rng.normal(size=3) > 1.2] *= 1.1
    return pts * rng.uniform(5, 50) + rng.normal(size=3) * 10


def _write_good_files(folder) -> list:
    """Eight scans in every format pad predict reads, one with NaN rows; returns their paths."""
    paths = []
    for k in range(8):
        pts = _bumpy_sphere(600 + 150 * k, seed=k)
        ext = (".ply", ".pcd", ".npy", ".xyz", ".txt", ".npz", ".ply", ".npy")[k]
        path = folder / f"scan{k}{ext}"
        if k == 6:
            pts[[3, 10, 11]] = np.nan                    # rows that are not scored keep their place
        if ext == ".ply":
            write_ply(path, pts)
        elif ext == ".pcd":
            with open(path, "w") as fh:
                fh.write("# .PCD v0.7\nVERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\n"
                         f"WIDTH {len(pts)}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {len(pts)}\nDATA ascii\n")
                np.savetxt(fh, pts, fmt="%.6f")
        elif ext == ".npy":
            np.save(path, pts.astype(np.float32))
        elif ext == ".npz":
            np.savez(path, points=pts.astype(np.float32))
        else:
            np.savetxt(path, pts, fmt="%.6f")
        paths.append(path)
    return paths


def _write_bad_files(folder) -> list:
    """Empty, truncated, all-NaN, not a point cloud, too few points."""
    (folder / "empty.ply").write_bytes(b"")
    write_ply(folder / "whole.ply", _bumpy_sphere(500, 99))
    data = (folder / "whole.ply").read_bytes()
    (folder / "truncated.ply").write_bytes(data[: len(data) // 2])
    (folder / "whole.ply").unlink()
    np.save(folder / "nan.npy", np.full((400, 3), np.nan, np.float32))
    (folder / "not_a_cloud.ply").write_text("hello, I am a text file and not a point cloud\n")
    np.save(folder / "few.npy", _bumpy_sphere(5, 7).astype(np.float32))
    return [folder / n for n in ("empty.ply", "truncated.ply", "nan.npy", "not_a_cloud.ply", "few.npy")]


class Service:
    """A ``pad serve`` subprocess: its URL, its own TMPDIR (where its private directory lives), logs."""

    def __init__(self, run: str, root, *extra: str):
        root.mkdir()
        self.root, self.tmp = root, root / "tmp"
        self.tmp.mkdir()
        env = dict(os.environ, PYOPENGL_PLATFORM="osmesa", OMP_NUM_THREADS="1", TMPDIR=str(self.tmp))
        self.out, self.err = root / "stdout.txt", root / "stderr.txt"
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen([PAD, "serve", "--checkpoint", run, "--port", "0", "--device", "cpu", *extra],
                                         stdout=out, stderr=err, env=env)
        self.url = None

    def wait_ready(self, timeout: float = 240.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(r"http://127\.0\.0\.1:\d+", self.out.read_text())
            if found:
                self.url = found.group(0)
                return self.url
            if self.proc.poll() is not None:
                raise AssertionError(f"pad serve exited with {self.proc.returncode}: {self.err.read_text()[-2000:]}")
            time.sleep(0.1)
        raise AssertionError("pad serve did not print its URL in time")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)

    def private_dirs(self) -> list:
        return sorted(p for p in self.tmp.iterdir() if p.name.startswith("pad-serve-"))


def _lines_of(stderr: str, path) -> list[str]:
    """pad predict's lines on stderr about ``path`` (progress bars removed)."""
    return [ln.strip() for ln in re.split(r"[\r\n]", stderr)
            if ln.strip().startswith("pad predict: ") and f"{path}:" in ln]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    tiny = make_cache(str(root / "cache"), {"ring": (1, 2)}, tag=TAG, image_size=40, points=(150, 250))
    run = str(root / "run")
    train(TrainConfig(cache=tiny.cache, train_classes="ring", out=run, epochs=1, batch_size=4, device="cpu",
                      prompt_length=4, deep_depth=3, deep_length=2, geometry_points=128), progress=False)
    (root / "token.txt").write_text(TOKEN + "\n")
    service = Service(run, root / "service", "--token-file", str(root / "token.txt"), "--max-upload-mb", "1",
                      "--queue", "7", "--header-timeout", str(HEADER_TIMEOUT))
    try:
        scans = root / "scans"
        scans.mkdir()
        good, bad = _write_good_files(scans), _write_bad_files(scans)
        # the reference: pad predict itself (the CLI, in this process) on the very files
        out = root / "predicted"
        result = CliRunner().invoke(main, ["predict", *map(str, good + bad), "--checkpoint", run, "--out", str(out),
                                           "--device", "cpu"])
        assert result.exit_code == 2, result.output                  # the bad files failed, the good ones not
        expected = {p.name: json.loads((out / (p.stem + ".json")).read_text()) for p in good}
        refusals = {}
        for p in bad:
            lines = _lines_of(result.stderr, p)
            assert len(lines) == 1, (p, result.stderr)
            refusals[p.name] = lines[0].replace(f"{scans}/", "")       # the service knows the file by its name
        service.wait_ready()
        yield {"run": run, "good": good, "bad": bad, "expected": expected, "refusals": refusals, "service": service}
    finally:
        service.stop()


def _call(url: str, method: str = "GET", data: bytes | None = None, headers: dict | None = None,
          timeout: float = 60.0) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with OPENER.open(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def _form(name: str, content: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="note"\r\n\r\nline 4\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    return head + content + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _predict(service: Service, path, *, raw: bool = False, points: bool = True, token: str | None = TOKEN,
             name: str | None = None) -> tuple[int, dict, dict]:
    """POST one file: a multipart form, or with ``raw`` the body with ?filename=; (status, JSON, headers)."""
    content, name = path.read_bytes(), name or path.name
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    query = f"?points={int(points)}"
    if raw:
        query += "&filename=" + urllib.request.quote(name)
        headers["Content-Type"] = "application/octet-stream"
    else:
        content, headers["Content-Type"] = _form(name, content)
    status, hdrs, body = _call(service.url + "/predict" + query, "POST", content, headers)
    return status, json.loads(body), hdrs


def _assert_same_answer(answer: dict, reference: dict, name: str) -> None:
    assert answer["file"] == name
    for key in ("n_points", "n_scored", "n_dropped_nonfinite", "feature_tag", "render"):
        assert answer[key] == reference[key], key
    for key in ("score", "top1pct_mean"):
        assert abs(answer[key] - reference[key]) <= TOL, (key, answer[key], reference[key])
    np.testing.assert_allclose(answer["view_probs"], reference["view_probs"], rtol=0, atol=TOL)
    got, want = answer["point_scores"], reference["point_scores"]
    assert len(got) == len(want) == reference["n_points"]
    assert [v is None for v in got] == [v is None for v in want]
    np.testing.assert_allclose([v for v in got if v is not None], [v for v in want if v is not None], rtol=0, atol=TOL)


def test_answers_equal_pad_predict_for_forms_and_raw_bodies(world):
    service = world["service"]
    for k in (0, 1, 5, 6):                    # (every file and format: the concurrent test below)
        path = world["good"][k]
        status, answer, _ = _predict(service, path, raw=bool(k % 2))
        assert status == 200, answer
        _assert_same_answer(answer, world["expected"][path.name], path.name)
        assert set(answer["seconds"]) == {"upload", "queue", "read", "render", "encode", "score", "total"}
        assert all(v >= 0 for v in answer["seconds"].values())
        assert answer["seconds"]["total"] >= answer["seconds"]["render"] + answer["seconds"]["encode"]
    assert sum(v is None for v in answer["point_scores"]) == 3           # scan6's NaN rows
    status, answer, _ = _predict(service, world["good"][6], points=False)     # without ?points=1: no point scores
    assert status == 200 and "point_scores" not in answer
    assert abs(answer["score"] - world["expected"]["scan6.ply"]["score"]) <= TOL


def test_every_field_the_predictor_returns_is_in_the_answer(world):
    """The answer is pad predict's JSON document (so the verdict fields of a calibrated run pass through)."""
    status, answer, _ = _predict(world["service"], world["good"][0])
    assert status == 200
    reference = world["expected"]["scan0.ply"]
    assert set(answer) == set(reference)


def test_each_bad_file_gets_pad_predicts_line_and_the_service_keeps_serving(world):
    service = world["service"]
    for path in world["bad"]:
        for raw in (False, True):
            status, answer, _ = _predict(service, path, raw=raw)
            assert status == 400, (path.name, answer)
            assert answer == {"error": world["refusals"][path.name]}
    status, answer, _ = _predict(service, world["good"][1])
    assert status == 200 and abs(answer["score"] - world["expected"]["scan1.pcd"]["score"]) <= TOL


def test_malformed_uploads_are_400_with_one_line(world):
    service, auth = world["service"], {"Authorization": f"Bearer {TOKEN}"}
    content = world["good"][0].read_bytes()
    form, ctype = _form("scan0.ply", content)
    cases = {"no name": (content, {"Content-Type": "application/octet-stream"}),
             "cut short": (form[: len(form) // 2], {"Content-Type": ctype}),
             "no file part": (form.split(b"\r\n--")[0] + b"\r\n--" + ctype.split("=")[1].encode() + b"--\r\n",
                              {"Content-Type": ctype}),
             "no boundary": (form, {"Content-Type": "multipart/form-data"})}
    for what, (body, headers) in cases.items():
        status, _, raw = _call(service.url + "/predict", "POST", body, {**auth, **headers})
        answer = json.loads(raw)
        assert status == 400 and answer["error"].startswith("pad serve: "), (what, answer)
        assert "\n" not in answer["error"]
    status, answer, _ = _predict(service, world["good"][0], name="../../outside.ply")  # a hostile name stays a name
    assert status == 200 and answer["file"] == "outside.ply"
    assert not (service.root / "outside.ply").exists() and not (service.tmp / "outside.ply").exists()


def _reply(sock: socket.socket, timeout: float = 120.0) -> bytes:
    """One HTTP response read from ``sock``: its head and the Content-Length bytes of its body (or
    whatever came before the server closed the connection or ``timeout`` passed)."""
    data, deadline = b"", time.monotonic() + timeout
    while True:
        head, sep, body = data.partition(b"\r\n\r\n")
        length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        if sep and length and len(body) >= int(length.group(1)):
            return data
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([sock], [], [], left)[0]:
            return data
        try:
            part = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not part:
            return data
        data += part


def test_an_upload_over_the_limit_is_refused_before_it_is_read_whole(world):
    service = world["service"]
    host, port = service.url.split("//")[1].split(":")
    head = f"POST /predict?filename=big.ply HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n"
    # 1. a declared length over 1 MiB: the answer comes before a byte of the body is sent
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall((head + f"Content-Length: {2 * MIB}\r\n\r\n").encode())
        reply = _reply(sock)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b"--max-upload-mb" in reply
    # 2. no declared length (chunked): refused once more than 1 MiB arrived, long before 16 MiB were sent
    total, sent = 16 * MIB, 0
    chunk = b"x" * 65536
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall((head + "Transfer-Encoding: chunked\r\n\r\n").encode())
        try:
            while sent < total and not select.select([sock], [], [], 0)[0]:
                sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = _reply(sock)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert MIB < sent < total
    status, answer, _ = _predict(service, world["good"][2])
    assert status == 200 and abs(answer["score"] - world["expected"]["scan2.npy"]["score"]) <= TOL


def _status_of_big_upload(client: str, url: str, body: bytes, token: str | None = TOKEN) -> tuple[int, bytes]:
    """(status, body) a client library reads for a raw upload of ``body`` sent whole, as that
    client sends it."""
    target = f"{url}/predict?filename=big.ply"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if client == "urllib":
        try:
            request = urllib.request.Request(target, data=body, method="POST", headers=headers)
            with OPENER.open(request, timeout=60) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
    if client == "requests":
        requests = pytest.importorskip("requests")
        r = requests.post(target, data=body, headers=headers, timeout=60, proxies={"http": None})
        return r.status_code, r.content
    if client == "httpx":
        httpx = pytest.importorskip("httpx")
        r = httpx.post(target, content=body, headers=headers, timeout=60, trust_env=False)
        return r.status_code, r.content
    host, port = url.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=60) as sock:     # everything sent, then read
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        sock.sendall(f"POST /predict?filename=big.ply HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        head, _, rest = _reply(sock).partition(b"\r\n\r\n")
    return int(head.split()[1]), rest


@pytest.mark.parametrize("client", ["urllib", "requests", "httpx", "socket"])
def test_every_client_reads_the_refusal_of_an_upload_it_sends_whole(world, client, tmp_path):
    """20 MB over a 1 MiB limit: the service answers 413 at once, then reads and drops what is still
    coming before it closes, so that a client that sends everything before it reads (urllib asks for
    Connection: close) reads the 413 instead of a reset. The same for an early 401."""
    service, body = world["service"], b"x" * (20 * MIB)
    status, answer = _status_of_big_upload(client, service.url, body)
    assert status == 413 and b"--max-upload-mb" in answer, (status, answer[:200])
    if client in ("urllib", "socket"):
        status, answer = _status_of_big_upload(client, service.url, body, token=None)
        assert status == 401 and b"Bearer" in answer, (status, answer[:200])
    if client == "socket" and shutil.which("curl"):
        (tmp_path / "big.ply").write_bytes(body)
        for how in (["--data-binary", f"@{tmp_path / 'big.ply'}"], ["-F", f"file=@{tmp_path / 'big.ply'}"]):
            done = subprocess.run(["curl", "-sS", "--noproxy", "*", "-o", "-", "-w", "\n%{http_code}", *how, "-H",
                                   f"Authorization: Bearer {TOKEN}", f"{service.url}/predict?filename=big.ply"],
                                  capture_output=True, text=True, timeout=60)
            assert done.stdout.rsplit("\n", 1)[-1] == "413" and "--max-upload-mb" in done.stdout, done


def _closed(sock: socket.socket) -> bool:
    try:
        return bool(select.select([sock], [], [], 0)[0]) and sock.recv(64) == b""
    except ConnectionResetError:
        return True


def test_idle_connections_neither_delay_answers_nor_stay_open(world):
    """300 loopback sockets that send nothing (or a third of a request line): /health and /predict
    still answer within a second (the default --max-connections 256: the oldest idle ones make room),
    and every one of them is closed once --header-timeout has passed."""
    service = world["service"]
    host, port = service.url.split("//")[1].split(":")
    idle = [socket.create_connection((host, int(port)), timeout=10) for _ in range(300)]
    try:
        for sock in idle[::3]:
            sock.sendall(b"GET /health HT")
        time.sleep(0.3)
        t0 = time.monotonic()
        status, _, _ = _call(f"{service.url}/health", timeout=5)
        assert status == 200 and time.monotonic() - t0 < 1.0
        status, answer, _ = _predict(service, world["good"][2])
        assert status == 200 and answer["seconds"]["upload"] + answer["seconds"]["queue"] < 1.0, answer["seconds"]
        deadline = time.monotonic() + HEADER_TIMEOUT + 10
        while time.monotonic() < deadline and not all(_closed(sock) for sock in idle):
            time.sleep(0.2)
        assert all(_closed(sock) for sock in idle), f"{sum(map(_closed, idle))} of 300 idle sockets closed"
    finally:
        for sock in idle:
            sock.close()


def test_eight_concurrent_clients_each_get_their_own_answer(world):
    service, results = world["service"], {}
    barrier = threading.Barrier(8)

    def client(k: int) -> None:
        barrier.wait(timeout=30)
        results[k] = _predict(service, world["good"][k], raw=bool(k % 2))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(results) == list(range(8))
    for k, (status, answer, _) in results.items():
        path = world["good"][k]
        assert status == 200, answer
        _assert_same_answer(answer, world["expected"][path.name], path.name)
    waits = sorted(answer["seconds"]["queue"] for _, answer, _ in results.values())
    assert waits[-1] > waits[0]              # they took turns on the one model thread


def test_the_token_is_needed_everywhere_but_health(world):
    service = world["service"]
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
                    {"Authorization": f"Bearer {TOKEN}x"}):
        for path, method in (("/predict?filename=a.ply", "POST"), ("/metrics", "GET"), ("/elsewhere", "GET")):
            status, hdrs, body = _call(service.url + path, method, b"" if method == "POST" else None, headers)
            assert status == 401, (headers, path)
            assert hdrs.get("www-authenticate", hdrs.get("WWW-Authenticate", "")).startswith("Bearer")
            assert "Bearer <token>" in json.loads(body)["error"]
    status, _, body = _call(service.url + "/health")
    health = json.loads(body)
    assert status == 200 and health["ready"] is True
    assert (health["backbone"], health["pretrained"], health["random_weights"], health["device"]) == \
        ("pad-tiny", "random", True, "cpu")
    assert health["run"] == os.path.abspath(world["run"]) and health["queue"] == {"length": 0, "capacity": 7}
    status, _, _ = _call(service.url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200


def _metrics(service: Service) -> tuple[dict, str]:
    status, hdrs, body = _call(service.url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and hdrs["content-type"].startswith("text/plain; version=0.0.4")
    text = body.decode()
    values = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.fullmatch(r"# (HELP|TYPE) pad_serve_\w+ .+", line), line
            continue
        name, value = line.rsplit(" ", 1)
        assert re.fullmatch(r'[a-z_]+(\{([a-z]+="[^"]*",?)+\})?', name), line
        values[name] = float(value)
    return values, text


def test_metrics_count_requests_by_status_and_time_each_stage(world):
    service = world["service"]
    before, _ = _metrics(service)
    assert _predict(service, world["good"][3])[0] == 200
    assert _predict(service, world["bad"][0])[0] == 400
    assert _predict(service, world["good"][3], token=None)[0] == 401
    after, text = _metrics(service)

    def delta(key):
        return after.get(key, 0) - before.get(key, 0)

    for status, n in (("200", 1), ("400", 1), ("401", 1)):
        assert delta(f'pad_serve_requests_total{{path="/predict",status="{status}"}}') == n
    assert delta('pad_serve_requests_total{path="/metrics",status="200"}') == 1
    for stage in ("upload", "queue", "read", "render", "encode", "score", "total"):
        buckets = [v for k, v in after.items() if k.startswith(f'pad_serve_stage_seconds_bucket{{stage="{stage}"')]
        assert buckets == sorted(buckets) and len(buckets) >= 2          # cumulative
        assert buckets[-1] == after[f'pad_serve_stage_seconds_count{{stage="{stage}"}}']
        assert f'pad_serve_stage_seconds_bucket{{stage="{stage}",le="+Inf"}}' in text
        assert delta(f'pad_serve_stage_seconds_count{{stage="{stage}"}}') == 1
        assert delta(f'pad_serve_stage_seconds_sum{{stage="{stage}"}}') >= 0
    assert after["pad_serve_queue_length"] == 0 and after["pad_serve_queue_capacity"] == 7
    assert after["pad_serve_scoring"] == 0


def test_uploads_stay_in_a_private_directory_that_is_emptied_after_each_request(world):
    service = world["service"]
    assert _predict(service, world["good"][4])[0] == 200
    (private,) = service.private_dirs()
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
    assert list(private.iterdir()) == []
    assert [p.name for p in service.tmp.iterdir() if not p.name.startswith("pad-shaders-")] == [private.name]


def test_bad_start_up_input_is_one_line_and_exit_2(world, tmp_path):
    runner = CliRunner()
    empty = tmp_path / "empty-token"
    empty.write_text("\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        cases = {"no such run": (["--checkpoint", str(tmp_path / "no-run")], "no-run"),
                 "empty token file": (["--checkpoint", world["run"], "--token-file", str(empty)], "empty-token"),
                 "port in use": (["--checkpoint", world["run"], "--port", str(port)], f"port {port}")}
        for what, (args, needle) in cases.items():
            result = runner.invoke(main, ["serve", "--device", "cpu", *args])
            assert result.exit_code == 2, (what, result.output)
            lines = result.output.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("pad: error: ") and needle in lines[0], (what, lines)


def _start_upload(service: Service, path, part: float) -> socket.socket:
    """A raw upload of ``path`` of which only the fraction ``part`` is sent (the rest is not, yet)."""
    host, port = service.url.split("//")[1].split(":")
    content = path.read_bytes()
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall((f"POST /predict?filename={path.name}&points=1 HTTP/1.1\r\nHost: {host}\r\n"
                  f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/octet-stream\r\n"
                  f"Content-Length: {len(content)}\r\n\r\n").encode() + content[: int(len(content) * part)])
    return sock


def _wait_for_metric(service: Service, line: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if line in _metrics(service)[1].splitlines():
            return
        time.sleep(0.05)
    raise AssertionError(f"/metrics never said {line!r}")


def test_a_full_queue_answers_503_with_retry_after_and_recovers(world):
    """Eight slow uploads fill the queue (--queue 7 plus the model's place); a ninth scan is turned away
    at once; when the slow clients go away, the service serves again."""
    service = world["service"]
    stalled = [_start_upload(service, world["good"][k], 0.5) for k in range(8)]
    try:
        _wait_for_metric(service, "pad_serve_queue_length 8")
        t0 = time.monotonic()
        status, answer, headers = _predict(service, world["good"][0])
        assert time.monotonic() - t0 < 5
        assert status == 503 and "busy" in answer["error"], answer
        assert int({k.lower(): v for k, v in headers.items()}["retry-after"]) >= 1
    finally:
        for sock in stalled:
            sock.close()
    _wait_for_metric(service, "pad_serve_queue_length 0")
    status, answer, _ = _predict(service, world["good"][0])
    assert status == 200
    _assert_same_answer(answer, world["expected"]["scan0.ply"], "scan0.ply")


def test_a_stalled_upload_is_dropped_with_408_and_frees_its_place(world, tmp_path):
    """--queue 0: one stalled upload holds the only place (another scan gets 503); after
    --upload-timeout seconds of silence it is answered 408 and the next scan is scored."""
    service = Service(world["run"], tmp_path / "service", "--queue", "0", "--upload-timeout", "2")
    try:
        service.wait_ready()
        path = world["good"][1]
        sock = _start_upload(service, path, 0.5)
        with sock:
            _wait_for_metric(service, "pad_serve_queue_length 1")
            t0 = time.monotonic()
            assert _predict(service, world["good"][0])[0] == 503
            reply = _reply(sock)
            waited = time.monotonic() - t0
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), reply[:300]
        assert "--upload-timeout" in json.loads(body)["error"]
        assert waited < 30
        status, answer, _ = _predict(service, world["good"][0])
        assert status == 200
        _assert_same_answer(answer, world["expected"]["scan0.ply"], "scan0.ply")
        service.proc.send_signal(signal.SIGHUP)                  # a closed terminal: a clean stop too
        assert service.proc.wait(timeout=60) == 0
        assert list(service.tmp.iterdir()) == []                 # no directory of pad's left (shaders, uploads)
    finally:
        service.stop()


def test_pad_predict_checks_file_contents_before_the_model_loads(world, tmp_path):
    """Every bad file (empty, cut short, all NaN, not a cloud, 5 points) gets its one line before the
    model loads: with weights that do not exist, nothing is said about them, because nothing loads."""
    result = CliRunner().invoke(main, ["predict", *map(str, world["bad"]), "--checkpoint", world["run"], "--out",
                                       str(tmp_path / "out"), "--device", "cpu", "--pretrained",
                                       str(tmp_path / "missing-weights.pt")], terminal_width=200)
    assert result.exit_code == 2
    for path in world["bad"]:
        assert len(_lines_of(result.stderr, path)) == 1, (path, result.stderr)
    assert "missing-weights" not in result.output and not (tmp_path / "out").exists()


def test_one_predictor_compiles_its_shaders_once(world):
    """Scans through one Predictor (in this process, as the service's model thread does) after the
    first compile no shader program again: the cause of a service's memory growing 7-8 MB a scan."""
    from pipeline.render.gl import _RENDERERS
    from workflows.options import PredictConfig
    from workflows.predict import Predictor

    def programs() -> int:
        return sum(len(r._offscreen._renderer._program_cache._program_cache) for r in _RENDERERS.values())

    predictor = Predictor(PredictConfig(files=(), checkpoint=world["run"], device="cpu"))
    predictor.predict(str(world["good"][2]))
    first = programs()
    for _ in range(2):
        predictor.predict(str(world["good"][2]))
    assert programs() == first > 0


# ---------------------------------------------------------------------------- decisions: one rule
@pytest.fixture(scope="module")
def two_products(world, tmp_path_factory):
    """A copy of the run with a calibration of two products (ring, cup; 19 normal scores each, as
    pad calibrate writes them, at false-alarm rate 0.1)."""
    from scoring.calibration import calibration_document, checkpoint_digest, scoring_signature, write_calibration
    from data_cache import checkpoint as ckpt

    run = str(tmp_path_factory.mktemp("calibrated") / "run")
    shutil.copytree(world["run"], run)
    rng = np.random.default_rng(0)
    per_class = {c: (rng.uniform(0.3, 0.6, 19).tolist(), rng.uniform(0.5, 0.9, 19).tolist(),
                     [f"{c}/train/{k:03d}" for k in range(19)]) for c in ("ring", "cup")}
    write_calibration(os.path.join(run, "calibration.json"), calibration_document(
        per_class, 0.1, 3, run=run, prompts_sha256=checkpoint_digest(run),
        feature_tag=ckpt.load_config(run)["feature_tag"], scoring=scoring_signature(4.0, "points", False, None),
        cache=run, splits=["train"]))
    return run


def test_several_products_without_class_give_scores_and_one_note(world, two_products, tmp_path):
    """No --class with a calibration of two products: exit 0, scores without verdicts, one note that
    names --class NAME and --calibration none; --class cup: cup's verdicts. (The two files share a
    stem: the second is written as scan0-2.*, and the summary line says so.)"""
    out, twin = tmp_path / "out", tmp_path / "again" / world["good"][0].name     # two files, one stem
    twin.parent.mkdir()
    twin.write_bytes(world["good"][0].read_bytes())
    base = ["predict", str(world["good"][0]), str(twin), "--checkpoint", two_products, "--out", str(out), "--device",
            "cpu"]
    result = CliRunner().invoke(main, base)
    assert result.exit_code == 0, result.output
    assert f"written under other names, their stems being taken: {twin} as scan0-2.*" in result.stderr
    assert json.loads((out / "scan0-2.json").read_text())["file"] == str(twin)
    notes = [ln for ln in result.stderr.splitlines() if "calibration" in ln]
    assert len(notes) == 1 and "--class NAME" in notes[0] and "--calibration none" in notes[0], result.stderr
    assert "cup, ring" in notes[0]
    doc = json.loads((out / "scan0.json").read_text())
    assert doc["verdict"] is None and doc["class"] is None and np.isfinite(doc["score"])
    result = CliRunner().invoke(main, base + ["--class", "cup"])
    assert result.exit_code == 0 and "calibration" not in result.stderr, result.output
    doc = json.loads((out / "scan0.json").read_text())
    assert doc["class"] == "cup" and doc["verdict"] in ("normal", "anomalous") and doc["false_alarm"] == 0.1


@pytest.mark.parametrize("command", ["predict", "serve"])
def test_a_class_the_calibration_does_not_hold_is_refused(world, two_products, tmp_path, command):
    args = ([command, str(world["good"][0]), "--out", str(tmp_path / "out")] if command == "predict"
            else [command, "--port", "0"])
    result = CliRunner().invoke(main, args + ["--checkpoint", two_products, "--device", "cpu", "--class", "rnig"],
                                terminal_width=200)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "--class rnig: no such product" in lines[0] and "calibrated: cup, ring" in lines[0]


def test_health_says_which_product_decisions_and_rate_are_in_force(world, two_products, tmp_path):
    from workflows.options import PredictConfig, ServeConfig
    from workflows.predict import Predictor
    from workflows.serve import Service as Served

    status, _, body = _call(f"{world['service'].url}/health")
    assert status == 200
    assert {k: json.loads(body)[k] for k in ("class", "decisions", "false_alarm")} == \
        {"class": None, "decisions": "off", "false_alarm": None}             # the module's run: no calibration
    for cls, expected in ((None, {"class": None, "decisions": "off", "false_alarm": None}),
                          ("ring", {"class": "ring", "decisions": "on", "false_alarm": 0.1})):
        predictor = Predictor(PredictConfig(files=(), checkpoint=two_products, device="cpu", cls=cls))
        served = Served(predictor, ServeConfig(checkpoint=two_products, cls=cls), None, str(tmp_path))
        try:
            assert {k: served.health()[k] for k in expected} == expected
        finally:
            served.executor.shutdown()


def test_sigterm_answers_the_upload_in_flight_then_exits_0(world):
    service = world["service"]
    path = world["good"][5]
    content = path.read_bytes()
    sock = _start_upload(service, path, 0.5)
    with sock:
        _wait_for_metric(service, "pad_serve_queue_length 1")
        (private,) = service.private_dirs()
        (upload_dir,) = list(private.iterdir())                 # the upload, inside the private directory
        assert [p.name for p in upload_dir.iterdir()] == [path.name]
        service.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        host, port = service.url.split("//")[1].split(":")
        with pytest.raises(ConnectionRefusedError):             # no new requests while it drains
            socket.create_connection((host, int(port)), timeout=5).close()
        sock.sendall(content[int(len(content) * 0.5):])         # the rest of the file: it is scored and answered
        reply = _reply(sock)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), reply[:300]
    _assert_same_answer(json.loads(body), world["expected"][path.name], path.name)
    assert service.proc.wait(timeout=60) == 0
    assert service.private_dirs() == []                     # removed at exit
    assert list(service.tmp.iterdir()) == []                # and nothing else of pad's (shader files)
    assert "stopped;" in service.err.read_text()
