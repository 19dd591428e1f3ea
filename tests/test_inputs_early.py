"""The paths a user names are checked before anything heavy loads: ``pad predict``, ``pad render``,
``pad inspect`` and ``pad synth --from`` say what is wrong with a missing file, a directory, an
unsupported or extension-less file, an empty or an unreadable one, each on its own line, within
seconds and before torch, open_clip, Dask or OpenGL are even imported.

The commands run in one fresh Python process (so ``sys.modules`` shows what each imported); as
root it runs as ``nobody`` (setpriv), so that a file without read permission really is unreadable.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pytest

from data_cache.errors import PadError
from pipeline.ingest import check_input_file, read_cloud

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEAVY = ("torch", "open_clip", "distributed", "OpenGL", "pyrender")
SCRIPT = textwrap.dedent("""
    import contextlib, io, json, sys, time
    import cli
    out = []
    for argv in json.loads(sys.argv[1]):
        err, started = io.StringIO(), time.perf_counter()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                cli.main.main(argv, prog_name="pad")
                code = 0
            except SystemExit as exc:
                code = exc.code
        out.append({"code": code, "lines": err.getvalue().strip().splitlines(),
                    "seconds": time.perf_counter() - started,
                    "heavy": [m for m in %r if m in sys.modules]})
    print(json.dumps(out))
""" % (HEAVY,))


def _as_nobody() -> list[str]:
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: a file without read permission would still be readable")
    return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.fixture()
def place():
    """A directory every user can enter (pytest's own tmp_path is private to its owner)."""
    path = tempfile.mkdtemp(prefix="pad-inputs-")
    os.chmod(path, 0o755)
    yield path
    for root, dirs, _ in os.walk(path):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o755)
    shutil.rmtree(path, ignore_errors=True)


def _cloud(path: str, n: int = 200) -> str:
    np.savetxt(path, np.random.default_rng(0).normal(size=(n, 3)))
    return path


def test_bad_paths_are_named_one_line_each_before_anything_heavy_loads(place):
    j = lambda *parts: os.path.join(place, *parts)  # noqa: E731
    os.makedirs(j("adir"))
    for name in ("scan.fbx", "scan"):
        _cloud(j(name))
    open(j("empty.ply"), "wb").close()
    os.chmod(_cloud(j("locked.xyz")), 0)
    os.makedirs(j("locked_dir"))
    os.chmod(j("locked_dir"), 0)
    os.makedirs(j("data", "cup", "train"))                        # a dataset whose one sample cannot be read
    os.chmod(_cloud(j("data", "cup", "train", "a.xyz")), 0)
    bad = [j("missing.ply"), j("adir"), j("scan.fbx"), j("scan"), j("empty.ply"), j("locked.xyz")]
    cases = [
        ["predict", *bad, "--checkpoint", j("no-run")],
        ["render", j("nothing"), "--cache", j("c1")],
        ["render", j("scan.fbx"), "--cache", j("c2")],
        ["render", j("locked_dir"), "--cache", j("c3")],
        ["render", j("data"), "--cache", j("c4")],
        ["inspect", j("nothing")],
        ["synth", j("s1"), "--from", j("nothing")],
        ["synth", j("s2"), "--from", j("scan.fbx")],
        ["synth", j("s3"), "--from", j("locked_dir")],
    ]
    env = dict(os.environ, PYTHONPATH=ROOT, XDG_CACHE_HOME=j("xdg"))
    proc = subprocess.run(_as_nobody() + [sys.executable, "-c", SCRIPT, json.dumps(cases)], cwd=place, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])

    predict = results[0]
    expected = ["no such file", "is a directory; give the files in it", "unsupported file type '.fbx'",
                "has no file extension", "empty file", "cannot be read: permission denied"]
    assert predict["code"] == 2 and len(predict["lines"]) == len(bad) + 1, predict["lines"]
    for path, needle, line in zip(bad, expected, predict["lines"]):
        assert line.startswith(f"pad predict: {path}: ") and needle in line, line
    assert predict["lines"][-1] == f"pad predict: none of the {len(bad)} files could be scored"

    wanted = [f"{j('nothing')}: no such dataset directory",
              f"{j('scan.fbx')}: is a file, not a dataset directory",
              f"{j('locked_dir')}: cannot list the dataset directory: permission denied",
              f"{j('data', 'cup', 'train', 'a.xyz')}: cannot read the file to identify it (Permission denied)",
              f"{j('nothing')}: no such dataset directory",
              f"{j('nothing')}: no such --from directory",
              f"{j('scan.fbx')}: is a file, not a --from directory",
              f"{j('locked_dir')}: cannot list the --from directory: permission denied"]
    for argv, result, needle in zip(cases[1:], results[1:], wanted):
        assert result["code"] == 2 and len(result["lines"]) == 1, (argv, result["lines"])
        assert result["lines"][0].startswith(f"pad: error: {needle}"), (argv, result["lines"])
    for argv, result in zip(cases, results):
        assert result["seconds"] < 5, (argv, result["seconds"])
        assert not result["heavy"], (argv, result["heavy"])        # no model, no cluster, no OpenGL
    assert not os.path.exists(j("c1")) and not os.path.exists(j("s1"))


def test_every_reader_starts_with_the_same_checks(tmp_path):
    """Render workers and synth read through read_cloud: the same lines as predict's early check."""
    (tmp_path / "d.ply").mkdir()
    _cloud(str(tmp_path / "noext"))
    for path, needle in ((tmp_path / "d.ply", "is a directory"), (tmp_path / "noext", "has no file extension"),
                         (tmp_path / "gone.obj", "no such file")):
        with pytest.raises(PadError) as early:
            check_input_file(path)
        with pytest.raises(PadError) as read:
            read_cloud(path)
        assert str(early.value) == str(read.value) and needle in str(read.value)
    os.mkfifo(tmp_path / "pipe.xyz")
    assert stat.S_ISFIFO(os.stat(tmp_path / "pipe.xyz").st_mode)
    with pytest.raises(PadError, match="not a regular file"):
        check_input_file(tmp_path / "pipe.xyz")                  # would block a reader forever
