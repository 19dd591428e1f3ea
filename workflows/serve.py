"""``pad serve --checkpoint RUN``: a warm scoring service for an inspection line.

At start-up, once: the port is bound (a port in use stops here), the run is loaded into a
:class:`workflows.predict.Predictor` (backbone, the prompts' text features, the run's render
settings), and one built-in cloud is scored on the model thread, which makes the renderer's
OpenGL context there and warms every path. Then one line on stdout gives the URL, and:

- ``GET /health``: ``{"ready", "run", "backbone", "pretrained", "random_weights", "feature_tag",
  "render", "device", "uptime_s", "requests_served", "class", "decisions", "false_alarm",
  "queue": {"length", "capacity"}}`` (``decisions`` "on" or "off", ``false_alarm`` the rate in force)
  (``ready`` turns false once the service is stopping); never needs the token.
- ``POST /predict``: one scan, as a multipart upload (its file part; ``curl -F file=@scan.ply``)
  or as the raw body with ``?filename=scan.ply``. The answer is the JSON document ``pad predict``
  writes for the file (:func:`workflows.predict.prediction_json`: every field the predictor
  returns but its arrays, so a calibrated run's verdict fields come along), with ``file`` the
  upload's name and ``seconds`` per stage: ``upload``, ``queue`` (waiting for the model),
  ``read``, ``render``, ``encode``, ``score``, ``total``; ``?points=1`` adds ``point_scores``
  (one per row of the file, ``null`` where a row has no score). A file ``pad predict`` cannot
  score: 400 with ``{"error": <the one line pad predict prints for it>}``.
- ``GET /metrics``: Prometheus text (:mod:`workflows.serve_metrics`).

Faults and load: every model call runs on one thread, in arrival order (GPU work is
serialized; the predictor is never used by two scans at once). At most ``--queue`` scans wait
beyond the one being scored (uploading ones count): one more gets 503 with ``Retry-After``
(seconds, the last scan's model time rounded up). An upload whose ``Content-Length`` exceeds
``--max-upload-mb`` gets 413 before any of it is read, and one without a length is counted as
it streams (413 as soon as it passes). An upload that sends nothing for ``--upload-timeout``
seconds is dropped with 408, its place in the queue freed. An early answer is read by every
client (a lingering close), a request's headers must come within ``--header-timeout`` and at most
``--max-connections`` are open (:mod:`workflows.serve_http`). An upload's contents are read (the
checks of ``pad predict``) before it joins the model's queue. With ``--token-file`` every request
but ``/health`` needs ``Authorization: Bearer <token>`` (401 otherwise; compared with
:func:`hmac.compare_digest`). Uploads are written only into a private directory (mode 0700)
made at start, one subdirectory per request, removed when its answer is sent; the whole
directory is removed at exit. SIGTERM, SIGHUP or Ctrl-C: the port is closed, the requests already
taken are answered, and the process exits 0 (a second Ctrl-C stops at once).

Other errors: 400 for a malformed upload, 507 for an upload that cannot be stored for lack of
space (500 for another storage error), 500 (one line; the traceback goes to a log file, see
:func:`data_cache.errors.log_bug`) for a bug; the service keeps serving after any of them.
"""
from __future__ import annotations

import asyncio
import errno
import hmac
import math
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from data_cache.errors import PadError, bug_text
from data_cache.jsonsafe import null_nonfinite
from workflows.options import PredictConfig, ServeConfig
from workflows.predict import Predictor, failure_line, prediction_json, read_scan
from workflows.serve_http import drain_bytes, protocol_class
from workflows.serve_metrics import CONTENT_TYPE, STAGES, ServeMetrics
from workflows.uploads import UploadError, receive_upload

MIB = 1 << 20
WARM_UP_POINTS = 2048
TOKEN_MAX_BYTES = 4096
TRUE_WORDS = ("1", "true", "yes", "on")


def read_token(path: str) -> bytes:
    """The token in ``path`` (surrounding whitespace removed): one line of visible ASCII, at most
    4 KiB. PadError naming the file otherwise."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(TOKEN_MAX_BYTES + 1)
    except OSError as exc:
        raise PadError(f"cannot read the token file ({exc.strerror})", path) from None
    token = data.strip()
    if len(data) > TOKEN_MAX_BYTES:
        raise PadError(f"the token file is larger than {TOKEN_MAX_BYTES} bytes; it should hold one token", path)
    if not token:
        raise PadError("the token file is empty; put one token in it (e.g. the output of: openssl rand -hex 32)",
                       path)
    if any(b < 0x21 or b > 0x7E for b in token):
        raise PadError("the token must be one word of visible ASCII characters (no spaces or line breaks)", path)
    return token


def authorized(header: bytes | None, token: bytes) -> bool:
    """Whether an ``Authorization`` header value is ``Bearer <token>`` (constant-time comparison)."""
    scheme, _, given = (header or b"").strip().partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), token)


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (``host``, ``port``), not yet listening; PadError naming the option
    for an unknown host or a port that is taken."""
    if not 0 <= int(port) <= 65535:
        raise PadError(f"--port must be between 0 and 65535 (got {port})")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise PadError(f"--host {host}: no such address ({exc.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        hint = ("another process listens there; choose another --port, or --port 0 for a free one"
                if exc.errno == errno.EADDRINUSE else exc.strerror)
        raise PadError(f"cannot listen on {host} port {port}: {hint}") from None
    return sock


def class_notes(predictor: Predictor, cfg: ServeConfig) -> list[str]:
    """A line when the run was rendered ``--style pointad`` by a script that sizes points per
    class and no ``--class`` names the scans' class (an upload carries none)."""
    if cfg.cls is not None or not predictor.sizes_points_by_class:
        return []
    return [f"this run's cache was made by 'pad render --style pointad' ({predictor.settings.layout}), whose "
            "official script sizes points per class: without --class NAME every scan is drawn with the size of "
            "classes outside its table"]


def decisions_in_force(predictor: Predictor) -> dict:
    """``class`` (the calibrated product the scans are judged as, or None), ``decisions`` ("on"
    or "off") and ``false_alarm`` (the calibration's α, or None) of /health."""
    cal = predictor.calibration
    return {"class": predictor.calibration_class if cal is not None else None,
            "decisions": "on" if cal is not None else "off",
            "false_alarm": float(cal.false_alarm) if cal is not None else None}


def warm_up_file(directory: str, settings) -> str:
    """A scan written into ``directory`` that the run reads as it reads a served scan: an even
    sphere of WARM_UP_POINTS points (.npy), or, for a run rendered ``--style pointad`` from
    organized scans, an xyz .tiff grid of that layout (:func:`pipeline.ingest.pointad.warm_up_grid`)."""
    from pipeline.ingest.pointad import ORGANIZED_LAYOUTS, warm_up_grid
    from pipeline.render.cameras import fibonacci_directions

    if settings.style == "pointad" and settings.layout in ORGANIZED_LAYOUTS:
        import tifffile

        path = os.path.join(directory, "warm-up.tiff")
        tifffile.imwrite(path, warm_up_grid(settings.layout), photometric="rgb")
        return path
    path = os.path.join(directory, "warm-up.npy")
    np.save(path, fibonacci_directions(WARM_UP_POINTS).astype(np.float32))
    return path


async def idle_limited(chunks, seconds: float):
    """The chunks of an upload stream, UploadError (408) when none comes for ``seconds``."""
    it = chunks.__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(it.__anext__(), seconds)
        except StopAsyncIteration:
            return
        except asyncio.TimeoutError:
            raise UploadError(408, f"the client sent nothing for {seconds:g} s during its upload (--upload-timeout)"
                              ) from None
        yield chunk


class Service:
    """One running service: the predictor, its model thread, the admission count, the figures.

    Everything but :meth:`_score` runs on the event loop's thread; :meth:`_score` runs on the
    model thread, one scan at a time, and touches only the predictor and ``scoring``."""

    def __init__(self, predictor: Predictor, cfg: ServeConfig, token: bytes | None, private_dir: str):
        self.predictor = predictor
        self.cfg = cfg
        self.token = token
        self.private_dir = private_dir
        self.limit = int(cfg.max_upload_mb * MIB)
        self.capacity = int(cfg.queue) + 1          # waiting ones plus the one being scored
        self.admitted = 0
        self.scoring = 0
        self.model_seconds = 1.0                    # the last scan's time on the model thread
        self.draining = False
        self.started = time.monotonic()
        self.metrics = ServeMetrics()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pad-serve-model")

    def _score(self, path: str, scan: tuple) -> tuple[dict, float, float]:
        """On the model thread: (pad predict's document of ``path``, read already as ``scan``, start,
        end perf_counter)."""
        start = time.perf_counter()
        self.scoring = 1
        try:
            return self.predictor.predict(path, scan=scan), start, time.perf_counter()
        finally:
            self.scoring = 0

    def warm_up(self) -> None:
        """Score a built-in cloud on the model thread (makes the renderer there); PadError as predict."""
        directory = tempfile.mkdtemp(dir=self.private_dir)
        try:
            path = warm_up_file(directory, self.predictor.settings)
            self.executor.submit(self.predictor.predict, path).result()
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def health(self) -> dict:
        spec, device = self.predictor.spec, self.predictor.device
        pretrained = self.predictor.pretrained
        run = self.cfg.checkpoint or self.cfg.reference
        return {"ready": not self.draining, "run": os.path.abspath(run), "backbone": spec.backbone,
                "pretrained": pretrained, "random_weights": pretrained == "random",
                "feature_tag": self.predictor.config["feature_tag"], "render": self.predictor.choice.source,
                "device": device, "uptime_s": round(time.monotonic() - self.started, 3),
                "requests_served": self.metrics.served(), **decisions_in_force(self.predictor),
                "queue": {"length": self.queue_length(), "capacity": self.capacity - 1}}

    def queue_length(self) -> int:
        return max(0, self.admitted - self.scoring)

    def exposition(self) -> str:
        return self.metrics.exposition(self.queue_length(), self.capacity - 1, self.scoring,
                                       time.monotonic() - self.started)

    async def predict(self, chunks, content_type: str | None, content_length: str | None,
                      filename: str | None, points: bool) -> tuple[int, dict, dict]:
        """One ``POST /predict``: (status, JSON body, extra headers)."""
        if content_length is not None:
            try:
                declared = int(content_length)
            except ValueError:
                return 400, {"error": "pad serve: the Content-Length header is not a number"}, {}
            if declared > self.limit:
                return 413, {"error": f"pad serve: the upload ({declared} bytes) is larger than the service takes "
                                      f"({self.limit} bytes, --max-upload-mb)"}, {}
        if self.admitted >= self.capacity:
            wait = max(1, math.ceil(self.model_seconds))
            return 503, {"error": f"pad serve: busy ({self.capacity - 1} scans already wait for the model, "
                                  f"--queue); retry in {wait} s"}, {"Retry-After": str(wait)}
        self.admitted += 1
        t0 = time.perf_counter()
        directory = tempfile.mkdtemp(dir=self.private_dir)
        try:
            try:
                name, path = await receive_upload(idle_limited(chunks, self.cfg.upload_timeout), content_type,
                                                  filename, directory, self.limit)
            except UploadError as exc:
                return exc.status, {"error": f"pad serve: {exc.message}"}, {}
            except OSError as exc:    # the private directory's disk is full, or similar
                line = f"pad serve: cannot store the upload in {self.private_dir} ({exc.strerror or exc})"
                print(line, file=sys.stderr, flush=True)
                return 507 if exc.errno == errno.ENOSPC else 500, {"error": line}, {}
            t1 = time.perf_counter()
            try:   # the file's contents are checked before it joins the model's queue (another thread)
                scan = await asyncio.to_thread(read_scan, path, self.predictor.settings, self.predictor.cfg)
                t2 = time.perf_counter()
                doc, start, end = await asyncio.get_running_loop().run_in_executor(self.executor, self._score, path,
                                                                                   scan)
                doc["seconds"]["read"] = round(t2 - t1, 6)
            except PadError as exc:
                line = failure_line(name, str(exc).replace(path, name))
                print(line, file=sys.stderr, flush=True)
                return 400, {"error": line}, {}
            except Exception as exc:  # a bug: one line to the client, the traceback in a log file
                line = f"pad serve: internal error on {name}: {bug_text(exc)}"
                print(line, file=sys.stderr, flush=True)
                return 500, {"error": line}, {}
            self.model_seconds = end - start
            answer = prediction_json(doc, points=points)
            answer["file"] = name
            seconds = {"upload": t1 - t0, "queue": max(0.0, start - t2), **doc["seconds"],
                       "total": time.perf_counter() - t0}
            answer["seconds"] = {k: round(float(seconds[k]), 6) for k in STAGES}
            for stage in STAGES:
                self.metrics.observe(stage, seconds[stage])
            print(f"pad serve: {name}  score={doc['score']:.3f}  points={doc['n_points']}  "
                  f"{seconds['total']:.3f} s", file=sys.stderr, flush=True)
            return 200, null_nonfinite(answer), {}
        finally:
            shutil.rmtree(directory, ignore_errors=True)
            self.admitted -= 1


class Guard:
    """ASGI middleware: the token (every path but ``/health``) and the count of answers by status."""

    def __init__(self, app, service: Service):
        self.app = app
        self.service = service

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [500]

        async def counted(message):
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            token = self.service.token
            if token is not None and scope["path"] != "/health" and not authorized(
                    dict(scope["headers"]).get(b"authorization"), token):
                from starlette.responses import JSONResponse

                response = JSONResponse({"error": "pad serve: this service needs 'Authorization: Bearer <token>' "
                                                  "(the token in its --token-file)"}, status_code=401,
                                        headers={"WWW-Authenticate": 'Bearer realm="pad serve"'})
                await response(scope, receive, counted)
            else:
                await self.app(scope, receive, counted)
        finally:
            self.service.metrics.count_request(scope["path"], status[0])


def make_app(service: Service):
    """The Starlette application of ``service``."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    async def health(request: Request) -> Response:
        return JSONResponse(service.health())

    async def metrics(request: Request) -> Response:
        return Response(service.exposition(), media_type=CONTENT_TYPE)

    async def predict(request: Request) -> Response:
        query = request.query_params
        try:
            status, body, headers = await service.predict(
                request.stream(), request.headers.get("content-type"), request.headers.get("content-length"),
                query.get("filename"), query.get("points", "0").strip().lower() in TRUE_WORDS)
        except ClientDisconnect:      # the client went away during its upload: nobody reads this answer
            status, body, headers = 400, {"error": "pad serve: the client closed the connection during the upload"}, {}
        return JSONResponse(body, status_code=status, headers=headers)

    routes = [Route("/health", health, methods=["GET"]), Route("/metrics", metrics, methods=["GET"]),
              Route("/predict", predict, methods=["POST"])]
    return Starlette(routes=routes, middleware=[Middleware(Guard, service=service)])


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _ignore(signum, frame) -> None:
    """Signal handler of the serving phase: uvicorn re-raises the signal that stopped it once it
    has drained; by then the work is done and the exit code must be 0."""


async def _serve(server, sock: socket.socket, ready_line: str) -> None:
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.02)
    if server.started:
        print(ready_line, flush=True)
    await task


def serve_forever(service: Service, sock: socket.socket) -> None:
    """Serve on ``sock`` until SIGTERM / SIGINT / SIGHUP, then drain (uvicorn on asyncio, h11)."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            service.draining = True
            super().handle_exit(sig, frame)

    cfg = service.cfg
    config = uvicorn.Config(make_app(service), log_level="warning", access_log=False, lifespan="off",
                            http=protocol_class(cfg.max_connections, cfg.header_timeout, drain_bytes(service.limit)),
                            limit_concurrency=cfg.max_connections + 1, loop="asyncio",
                            timeout_graceful_shutdown=None, server_header=False)
    server = Server(config)
    host, port = sock.getsockname()[:2]
    predictor = service.predictor
    pretrained = predictor.pretrained
    model = (f"run {service.cfg.checkpoint}" if service.cfg.checkpoint is not None
             else f"reference set {service.cfg.reference}")
    line = (f"pad serve: {_url(host, port)} ({model}, backbone {predictor.spec.backbone} "
            f"{pretrained}, {predictor.device}); POST /predict, GET /health, GET /metrics; Ctrl-C stops")
    handled = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, _ignore) for sig in handled}
    # a closed terminal (SIGHUP) stops as SIGTERM does: drained, the private directory removed
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, lambda sig, frame: server.handle_exit(signal.SIGTERM, frame))
    try:
        asyncio.run(_serve(server, sock, line))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stopped_while_starting(signum, frame) -> None:
    raise KeyboardInterrupt("pad serve: stopped before it was ready")


def run_serve(cfg: ServeConfig, make_predictor=None) -> int:
    """CLI runner of ``pad serve`` (see :class:`workflows.options.ServeConfig`); ``make_predictor``
    (default :class:`Predictor`): ``--reference`` passes its own (:mod:`workflows.predict_reference`)."""
    if cfg.queue < 0:
        raise PadError(f"--queue must be 0 or more (got {cfg.queue})")
    if not (cfg.max_upload_mb > 0 and math.isfinite(cfg.max_upload_mb)):
        raise PadError(f"--max-upload-mb must be more than 0 (got {cfg.max_upload_mb})")
    if not (cfg.upload_timeout > 0 and math.isfinite(cfg.upload_timeout)):
        raise PadError(f"--upload-timeout must be more than 0 seconds (got {cfg.upload_timeout})")
    if cfg.max_connections < 1:
        raise PadError(f"--max-connections must be 1 or more (got {cfg.max_connections})")
    if not (cfg.header_timeout > 0 and math.isfinite(cfg.header_timeout)):
        raise PadError(f"--header-timeout must be more than 0 seconds (got {cfg.header_timeout})")
    token = read_token(cfg.token_file) if cfg.token_file is not None else None
    sock = bind_socket(cfg.host, cfg.port)
    stops = (signal.SIGTERM, signal.SIGHUP)     # until serving: clean up as Ctrl-C does
    previous = {sig: signal.signal(sig, _stopped_while_starting) for sig in stops}
    try:
        predictor = (make_predictor or Predictor)(PredictConfig(files=(), checkpoint=cfg.checkpoint, device=cfg.device,
                                                                calibration=cfg.calibration, cls=cfg.cls,
                                                                reference=cfg.reference))
        for note in predictor.notes + predictor.calibration_notes + class_notes(predictor, cfg):
            print(f"pad serve: note: {note}", file=sys.stderr)
        private_dir = tempfile.mkdtemp(prefix="pad-serve-")       # mode 0700
        service = Service(predictor, cfg, token, private_dir)
        try:
            service.warm_up()
            serve_forever(service, sock)
        finally:
            service.executor.shutdown(wait=True)
            shutil.rmtree(private_dir, ignore_errors=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    print(f"pad serve: stopped; {service.metrics.served()} scan(s) served", file=sys.stderr)
    return 0
