"""Real components for the object-storage and cluster tests, on loopback, stopped by their own PID:
a local S3 server (``moto.server``, from the ``moto[server]`` package), a ``dask scheduler`` and
``dask worker`` processes, and a TCP relay that can cut the line to the S3 server and restore it."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request

from _render_job_helpers import REPO

BUCKET = "padbucket"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)


def s3_env(endpoint: str) -> dict[str, str]:
    """What s3fs needs to reach the local server (any key works there), with one try per request."""
    return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint, "AWS_MAX_ATTEMPTS": "1", "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_CONFIG_FILE": os.devnull}


class S3Server:
    """``python -m moto.server`` on 127.0.0.1; :attr:`endpoint`; :meth:`stop` kills it by PID."""

    def __init__(self, timeout: float = 60):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(self.endpoint + "/moto-api/", timeout=2)
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("the local S3 server (moto) did not start")
                time.sleep(0.1)

    def stop(self) -> None:
        _stop(self.proc)


def clear_s3_instances() -> None:
    """Forget the s3fs instances fsspec keeps (they hold the credentials and endpoint they were made with)."""
    import s3fs
    s3fs.S3FileSystem.clear_instance_cache()


def make_bucket(name: str = BUCKET) -> None:
    import fsspec
    clear_s3_instances()
    fsspec.filesystem("s3").mkdir(name)


class DaskProcesses:
    """``dask scheduler`` and ``n`` ``dask worker`` processes (one thread, no nanny) on 127.0.0.1,
    the workers with ``env`` added (the S3 settings); :attr:`address`; :meth:`stop` kills them by PID."""

    def __init__(self, n: int, env: dict[str, str], timeout: float = 90):
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        base = dict(os.environ, PYOPENGL_PLATFORM="osmesa", OMP_NUM_THREADS="1",
                    PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), **env)
        self.scheduler = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host",
                                           "127.0.0.1", "--port", str(self.port), "--no-dashboard"], env=base,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.workers = [subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", self.address,
                                          "--nthreads", "1", "--no-nanny", "--no-dashboard", "--name", f"w{k}"],
                                         env=base, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         start_new_session=True) for k in range(n)]
        try:
            from distributed import Client
            with Client(self.address, timeout=timeout) as client:
                client.wait_for_workers(n, timeout=timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for proc in self.workers + [self.scheduler]:
            _stop(proc)


class Relay:
    """A TCP relay 127.0.0.1:port -> target port that can be cut (:meth:`cut`: open connections
    closed, new ones refused) and restored (:meth:`restore`): the object store 'unreachable mid-run'."""

    def __init__(self, target_port: int):
        self.target = target_port
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._open = threading.Event()
        self._open.set()
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", self.port))
        self._server.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._server.accept()
            except OSError:
                continue
            if not self._open.is_set():
                conn.close()
                continue
            try:
                up = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                conn.close()
                continue
            with self._lock:
                self._conns += [conn, up]
            for a, b in ((conn, up), (up, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        self._open.clear()
        with self._lock:
            for s in self._conns:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self._conns.clear()

    def restore(self) -> None:
        self._open.set()

    def stop(self) -> None:
        self.cut()
        self._stop.set()
        self._thread.join(timeout=5)
        self._server.close()
