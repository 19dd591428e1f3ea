"""The whole pipeline on object storage and a Dask cluster, with real components on loopback: a local
S3 server (moto), reached through a relay the test can cut, a ``dask scheduler`` and two ``dask worker``
processes. Commands run as a user types them, from a directory that is neither the repository nor
the dataset's.

- render and extract-features on the cluster into ``s3://`` (one of the two workers killed while it
  encodes: its task runs again on the other), then info, show, train, score and calibrate read the bucket: every store is in the bucket, nothing named ``s3:`` appears on disk,
  no shard is left over, ``pad info`` sizes come from the bucket;
- the object store cut off mid-extraction: one line, exit 2, the bucket's cache still valid, and a
  rerun (line restored) finishes, merging what the first run's workers had uploaded;
- credentials missing: one line naming what s3fs needs;
- every command that takes a cache refuses a URL fsspec does not serve in one line (no server needed).
"""
from __future__ import annotations

import dataclasses
import importlib
import os
import time

os.environ.setdefault("PYOPENGL_PLATFORM", "osmesa")  # before anything imports OpenGL

import pytest  # noqa: E402
from click.testing import CliRunner  # noqa: E402

import cli  # noqa: E402
from _cloud_helpers import BUCKET, DaskProcesses, Relay, S3Server, clear_s3_instances, make_bucket, s3_env  # noqa: E402
from _render_job_helpers import write_dataset  # noqa: E402

pytestmark = pytest.mark.slow
CACHE = f"s3://{BUCKET}/cache"
TAG = "pad-tiny_random_L6_dpam20_336"
TOKEN_TAG = "point-mae_random_L4-8-12_g64x16"


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    """moto behind a relay, the S3 settings in this process's environment, a bucket, a scheduler and
    two workers; everything stopped by PID at the end."""
    for package in ("moto", "s3fs"):  # the test extra has them: pip install -e '.[test]'
        pytest.importorskip(package, reason=f"{package} is missing: pip install -e '.[test]' (make test does)")
    server = S3Server()
    relay = Relay(server.port)
    env = s3_env(relay.endpoint)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    cluster = None
    try:
        make_bucket()
        cluster = DaskProcesses(2, env)
        data = tmp_path_factory.mktemp("dataset")
        ids = write_dataset(data, classes=("cup", "ring"), n_test=2, n_train=1, points=1500)
        yield {"address": cluster.address, "data": data, "ids": ids, "relay": relay, "server": server}
    finally:
        if cluster is not None:
            cluster.stop()
        relay.stop()
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        clear_s3_instances()


def pad(*args) -> tuple[int, str]:
    result = CliRunner().invoke(cli.main, [str(a) for a in args])
    return result.exit_code, result.output


class WorkerKiller:
    """A thread that SIGKILLs the first worker seen encoding a task of ``pad extract-features`` (a task
    key ``extract-<first>-<token>``), so that task is lost mid-encoding."""

    def __init__(self, address: str, timeout: float = 120):
        import threading
        from distributed import Client
        self.client = Client(address, timeout=30)
        self.pids = self.client.run(os.getpid)
        self.timeout, self.killed = timeout, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import signal
        deadline = time.monotonic() + self.timeout
        while not self._stop.is_set() and time.monotonic() < deadline:
            for worker, keys in self.client.processing().items():
                if worker in self.pids and any(str(k).startswith("extract-0") for k in keys):
                    os.kill(self.pids[worker], signal.SIGKILL)
                    self.killed = worker
                    return
            time.sleep(0.02)

    def __enter__(self) -> "WorkerKiller":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.client.close()


def bucket_files() -> list[str]:
    import fsspec
    fs = fsspec.filesystem("s3")
    fs.invalidate_cache()
    return sorted(fs.find(BUCKET))


def extract_args(address: str, *extra) -> list:
    return ["extract-features", "--cache", CACHE, "--backbone", "pad-tiny", "--device", "cpu", "--scheduler", address,
            "--task-samples", "2", "--no-worker-timeout", "60", *extra]


@pytest.fixture(scope="module")
def pipeline(cloud, tmp_path_factory):
    """render -> extract on the cluster -> train -> score -> calibrate, from another directory."""
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    before = os.getcwd()
    os.chdir(elsewhere)
    try:
        out = {}
        out["render"] = pad("render", cloud["data"], "--cache", CACHE, "--scheduler", cloud["address"], "--views", "3",
                            "--image-size", "64", "--supersample", "1", "--knn", "4")
        with WorkerKiller(cloud["address"]) as killer:
            out["extract"] = pad(*extract_args(cloud["address"]))
        out["killed"] = killer.killed
        out["files"] = bucket_files()
        out["info"] = pad("info", "--cache", CACHE)
        out["train"] = pad("train", "--cache", CACHE, "--train-classes", "cup", "--out", "run", "--epochs", "1",
                           "--batch-size", "2", "--loss-size", "32", "--device", "cpu")
        out["score"] = pad("score", "--cache", CACHE, "--checkpoint", "run", "--out", "results", "--device", "cpu")
        out["calibrate"] = pad("calibrate", "--cache", CACHE, "--checkpoint", "run", "--classes", "ring",
                               "--false-alarm", "0.5", "--device", "cpu")
        out["show"] = pad("show", "--cache", CACHE, "--sample", "0", "--out", "sheet.png")
        out["tokens"] = pad("extract-features", "--cache", CACHE, "--backbone", "point-mae", "--pretrained", "random",
                            "--n-groups", "64", "--group-size", "16", "--device", "cpu")
        out["token_files"] = bucket_files()
        out["local"] = sorted(os.listdir(elsewhere))
        out["mutual"] = pad("mutual", "--cache", CACHE, "--out", "mutual", "--device", "cpu")
        yield out
    finally:
        os.chdir(before)


def test_every_stage_runs_on_the_bucket_and_every_store_lives_there(pipeline, cloud):
    for stage in ("render", "extract", "info", "train", "score", "calibrate", "show", "tokens"):
        code, text = pipeline[stage]
        assert code == 0, (stage, text)
    files = pipeline["files"]
    assert f"{BUCKET}/cache/render.zarr/zarr.json" in files
    assert f"{BUCKET}/cache/features/{TAG}.h5" in files
    assert not [f for f in files if ".shards" in f or f.endswith(".partial")], files
    assert pipeline["mutual"][0] == 0, pipeline["mutual"][1]         # pad mutual reads the tokens from the bucket
    tokens = f"{BUCKET}/cache/features/{TOKEN_TAG}.h5"              # MuSc-V2's token store too, staged and uploaded
    assert tokens in pipeline["token_files"] and not [f for f in pipeline["token_files"] if f.endswith(".partial")]
    assert pipeline["local"] == ["results", "run", "sheet.png"]        # no 's3:' directory, no store
    assert f"-> {CACHE}/features/{TAG}.h5" in pipeline["extract"][1]
    assert pipeline["killed"], "no worker was killed mid-extraction"        # and yet every sample is done:
    info = pipeline["info"][1]
    assert f"feature store {TAG}: {len(cloud['ids'])}/{len(cloud['ids'])} samples done" in info
    assert "? on disk" not in info and ("KB on disk" in info or "MB on disk" in info)


def test_the_bucket_cut_off_mid_extraction_is_one_line_and_a_rerun_finishes(pipeline, cloud):
    import fsspec

    relay, address = cloud["relay"], cloud["address"]
    tag = "pad-tiny_random_L6_dpam0_336"
    direct = fsspec.filesystem("s3", endpoint_url=cloud["server"].endpoint, skip_instance_cache=True)
    shards = f"{BUCKET}/cache/features/{tag}.h5.shards"

    import threading

    def cut_after_first_shard():
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            direct.invalidate_cache()
            if direct.exists(shards) and direct.ls(shards):
                relay.cut()
                return
            time.sleep(0.05)

    cutter = threading.Thread(target=cut_after_first_shard, daemon=True)
    cutter.start()
    try:
        code, text = pad(*extract_args(address, "--dpam-layers", "0"))
    finally:
        cutter.join()
        relay.restore()
    lines = [line for line in text.splitlines() if line.startswith("pad: error:")]
    assert code == 2 and len(lines) == 1, text
    assert "object store" in lines[0] and "\n" not in lines[0]
    clear_s3_instances()
    code, text = pad("info", "--cache", CACHE, "--verify")                   # the cache is still valid
    assert code == 0, text
    left = [f for f in bucket_files() if ".shards/" in f]
    code, text = pad(*extract_args(address, "--dpam-layers", "0"))
    assert code == 0, text
    assert "merged from an earlier run's shards" in text, (left, text)
    code, text = pad("info", "--cache", CACHE)
    assert f"feature store {tag}: {len(cloud['ids'])}/{len(cloud['ids'])} samples done" in text
    assert not [f for f in bucket_files() if ".shards" in f]


def test_missing_credentials_are_one_line_naming_what_s3fs_needs(cloud, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    clear_s3_instances()
    try:
        code, text = pad("info", "--cache", CACHE)
    finally:
        clear_s3_instances()
    assert code == 2 and text.count("\n") == 1, text
    assert "no credentials for the object store" in text and "AWS_ACCESS_KEY_ID" in text


def _cache_commands():
    for table, prefix in ((cli.COMMANDS, ()), (cli.EVALUATE, ("evaluate",))):
        for name, (config, _runner, _) in table.items():
            module, cls = config.split(":")
            fields = {f.name: f for f in dataclasses.fields(getattr(importlib.import_module(module), cls))}
            for field in ("cache", "source", "target"):
                if field in fields:
                    yield prefix + (name,), fields, field


def _invocation(command, fields, field, value) -> list[str]:
    """The command with every required field given a harmless value and ``field`` set to ``value``."""
    args = list(command)
    for f in fields.values():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if f.name == field:
            args += [f"--{field}", value]
        elif required and f.metadata.get("argument"):
            args.append("x")
        elif required:
            args += [f"--{f.metadata.get('flag') or f.name.replace('_', '-')}", "x"]
    return args


@pytest.mark.parametrize("command,fields,field", list(_cache_commands()),
                         ids=lambda v: " ".join(v) if isinstance(v, tuple) else (v if isinstance(v, str) else ""))
def test_every_cache_option_refuses_a_url_fsspec_does_not_serve_in_one_line(command, fields, field, tmp_path,
                                                                            monkeypatch):
    monkeypatch.chdir(tmp_path)
    for value, reason in (("nosuch://bucket/cache", "fsspec knows no protocol 'nosuch'"),
                          ("s3:/bucket/cache", "looks like a URL but is not one")):
        code, text = pad(*_invocation(command, fields, field, value))
        assert code == 2 and text.count("\n") == 1 and reason in text, (command, text)
    assert os.listdir(tmp_path) == []                                      # no 'nosuch:' or 's3:' directory


def test_outputs_behind_a_url_are_refused_in_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, text = pad("train", "--cache", "c", "--train-classes", "a", "--out", "s3://bucket/run")
    assert code == 2 and text.count("\n") == 1 and "--out s3://bucket/run: must be a local" in text
    assert os.listdir(tmp_path) == []


def test_what_counts_as_a_url():
    from data_cache.errors import PadError
    from data_cache.location import check_location
    assert check_location("runs:2") == "runs:2"                     # a local name with a colon
    assert check_location("file:///tmp/cache") == "/tmp/cache"
    assert check_location("s3://bucket/cache/") == "s3://bucket/cache"
    for value in ("s3:/bucket/cache", "s3:bucket/cache", "nosuch://x"):
        with pytest.raises(PadError):
            check_location(value)
